"""Helpers for the experiment configs in `configs/`."""

from typing import Any


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
