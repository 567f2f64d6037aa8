"""XLA flags jaxface sets by default, before JAX creates its backends.

Importing `jaxface` calls `apply()`: each flag of `DEFAULTS` that `XLA_FLAGS`
does not already set is appended to it. XLA reads `XLA_FLAGS` once, when the
first backend is created (the first `jax.devices()` or computation), so the
defaults take effect in every jaxface command and in any program that imports
`jaxface` before it computes anything with JAX. Set `JAXFACE_XLA_DEFAULTS=0`
to leave `XLA_FLAGS` alone, or set a flag yourself to override its default.

The flags only concern XLA:CPU; GPU and TPU compiles ignore them.
"""

import os
from typing import MutableMapping

# flag name (without "--") -> value.
DEFAULTS = {
    # XLA:CPU hands convolutions to YNNPACK by default. Its kernels for the
    # convolutions of a backward pass (kernel gradients: 5-20 GFLOP/s) and
    # for few output channels (1-3 GFLOP/s) are far slower than the Eigen
    # kernels XLA uses without it (50-100 and 7 GFLOP/s on a 2-core AVX-512
    # machine; `python -m jaxface.bench.vs_torch` measures a whole step).
    # An empty list of fusion types turns the YNNPACK fusions off.
    "xla_cpu_experimental_ynn_fusion_type": "",
}

OPT_OUT = "JAXFACE_XLA_DEFAULTS"


def _names(flags: str) -> set[str]:
  return {f.split("=", 1)[0].lstrip("-") for f in flags.split() if f}


def apply(environ: MutableMapping[str, str] = os.environ) -> list[str]:
  """Appends the default flags that `XLA_FLAGS` does not set.

  Args:
    environ: the environment to edit (the process's by default).

  Returns:
    The flags added, e.g. ["--xla_cpu_experimental_ynn_fusion_type="].
  """
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return []
  current = environ.get("XLA_FLAGS", "")
  present = _names(current)
  added = [f"--{name}={value}" for name, value in DEFAULTS.items()
           if name not in present]
  if added:
    environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
  return added
