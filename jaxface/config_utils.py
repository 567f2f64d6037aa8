"""Helpers for the experiment configs: argument parsing, shared checks.

`parse_arg` reads the `file.py:args` argument of a config file;
`validate_common` checks the sections every task's config has.
"""

from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxface.data import schema


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """Parses a config-file argument such as `"tiny,gender=male,size=128"`.

  `--config=configs/inpaint.py:tiny,gender=male` passes the text after the
  colon to `get_config(arg)`. Bare words set booleans to True; `key=value`
  pairs are converted to the type of the default. Unknown keys are an error
  that lists the known ones.

  Args:
    arg: the string after the colon, or None.
    **defaults: every allowed key with its default value.

  Returns:
    A dict with a value for every key of `defaults`.
  """
  out = dict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; "
                       f"known: {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} is not a boolean")
      out[key] = value.lower() in ("true", "1")
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config argument {key}={value!r} is not a "
                         f"{type(default).__name__}") from None
  return out


# ---------------------------------------------------------------------------
# Checks shared by every task. A task's constructor calls `validate_common`
# first, then checks its own sections (model, losses) with `check`.

# config.compute_dtype -> the dtype of activations and matmul inputs.
# Parameters, losses and metrics stay float32 whatever this says.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}


def check(ok: bool, key: str, value: Any, expected: str) -> None:
  """Raises a ValueError naming `config.<key>` when `ok` is false."""
  if not ok:
    raise ValueError(f"config.{key}={value!r}: expected {expected}")


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The jnp dtype of `config.compute_dtype` (a clear error if unknown)."""
  check(config.compute_dtype in DTYPES, "compute_dtype",
        config.compute_dtype, " | ".join(sorted(DTYPES)))
  return DTYPES[config.compute_dtype]


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_common(config: ml_collections.ConfigDict) -> None:
  """Checks the sections every task's config has.

  `train`, `eval`, `optim` (learning rates, betas), `data`, `mesh`, `seed`
  and `compute_dtype`.

  Raises a ValueError naming the first bad key and what it should be. What
  only one task knows (network widths, loss weights) is that task's to
  check.
  """
  compute_dtype(config)
  check(_is_int(config.seed), "seed", config.seed, "an integer")
  t = config.train
  for key in ("batch_size", "num_steps", "log_every", "checkpoint_every",
              "max_to_keep"):
    check(_is_int(t[key]) and t[key] > 0, f"train.{key}", t[key],
          "a positive integer")
  for key in ("image_every", "eval_every", "keep_every"):
    check(_is_int(t[key]) and t[key] >= 0, f"train.{key}", t[key],
          "an integer >= 0 (0 = never)")
  check(t.keep_every % t.checkpoint_every == 0,  # both ints by now
        "train.keep_every",
        t.keep_every, f"a multiple of train.checkpoint_every "
        f"({t.checkpoint_every}): only saved steps can be kept")
  e = config.eval
  check(_is_int(e.batch_size) and e.batch_size > 0, "eval.batch_size",
        e.batch_size, "a positive integer")
  check(_is_int(e.num_batches) and e.num_batches >= 0, "eval.num_batches",
        e.num_batches, "an integer >= 0 (0 = the whole split)")
  for key, value in config.optim.items():
    number = isinstance(value, (int, float, np.number)) and not isinstance(
        value, bool)
    if key == "lr" or key.endswith("_lr"):
      check(number and value >= 0, f"optim.{key}", value, "a number >= 0")
    elif key in ("b1", "b2", "decay", "momentum"):
      check(number and 0 <= value < 1, f"optim.{key}", value,
            "a number in [0, 1)")
  d = config.data
  check(d.gender in schema.GENDER_FILTERS, "data.gender", d.gender,
        " | ".join(schema.GENDER_FILTERS))
  check(_is_int(d.image_size) and d.image_size >= 16, "data.image_size",
        d.image_size, "an integer >= 16")
  for key in ("num_threads", "prefetch", "worker_count"):
    check(_is_int(d[key]) and d[key] >= 0, f"data.{key}", d[key],
          "an integer >= 0")
  for key in ("data", "fsdp"):
    check(_is_int(config.mesh[key]), f"mesh.{key}", config.mesh[key],
          "an integer (data: -1 = all remaining devices)")
