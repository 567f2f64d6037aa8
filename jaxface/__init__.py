"""jaxface: reconstruct the face hidden by a face mask, in JAX/Flax."""

from jaxface import xla_flags as _xla_flags

# Before any JAX backend exists (see xla_flags: XLA:CPU convolution kernels).
_xla_flags.apply()

__version__ = "0.1.0"
