"""The toy task's config as a config file, for commands run as subprocesses.

  python -m jaxface.main --config=tests/toy_config.py --workdir=...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
import toy_task  # registers the toy task


def get_config(arg: str | None = None):
  del arg
  return toy_task.toy_config()
