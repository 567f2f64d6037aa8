"""jaxface: reconstruct the face hidden by a face mask, in JAX/Flax."""

from jaxface import xla_flags as _xla_flags

# Before any JAX backend exists (see xla_flags: XLA:CPU convolution kernels).
_xla_flags.apply()

__version__ = "0.1.0"


def __getattr__(name):
  # `jaxface.Reconstructor` without importing the networks on `import
  # jaxface` (the CLI modules set flags before JAX starts).
  if name == "Reconstructor":
    from jaxface.pipeline import Reconstructor  # pylint: disable=g-import-not-at-top
    return Reconstructor
  raise AttributeError(f"module 'jaxface' has no attribute {name!r}")
