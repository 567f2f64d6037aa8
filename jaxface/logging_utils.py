"""Console logging: our progress lines stay readable.

orbax, grain and JAX's backend discovery log through the same absl logger as
we do and emit dozens of INFO lines per checkpoint. `quiet_libraries` keeps
their warnings and errors but drops their INFO chatter (pass `--verbose` to
`jaxface.main` to see everything).
"""

import logging
import os

from absl import logging as absl_logging

_NOISY = tuple(os.sep + name + os.sep for name in (
    "orbax", "grain", "tensorstore", "etils", "array_record"))
_NOISY_FILES = ("xla_bridge.py",)


class _LibraryInfoFilter(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname or ""
    return not (any(n in path for n in _NOISY)
                or os.path.basename(path) in _NOISY_FILES)


def quiet_libraries() -> None:
  """Installs the filter on absl's handler, which prints every library's
  records (idempotent)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())
