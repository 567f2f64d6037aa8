"""Save and load any flax param tree as a flat `.npz` file.

Keys are the tree paths joined with '/', e.g. `conv1_1/kernel`. Dtypes that
`.npz` cannot describe (bfloat16, float8 from `ml_dtypes`) are stored as
unsigned integers of the same width and restored from a small index stored
under `__dtypes__`. Writes are atomic: a temporary file in the same folder is
renamed over the target, so a crash never leaves a half-written file.
"""

import json
import os
import tempfile
from typing import Any, Mapping

from flax import traverse_util
import jax
import ml_dtypes
import numpy as np

_SEP = '/'
_DTYPES_KEY = '__dtypes__'


def _is_ml_dtype(dtype: np.dtype) -> bool:
  """True for the `ml_dtypes` extension types that `.npy` cannot describe."""
  return dtype.type.__module__.startswith('ml_dtypes')


def save_npz(path: str | os.PathLike[str], params: Mapping[str, Any]) -> None:
  """Writes a nested mapping of arrays to `path` atomically.

  Args:
    path: the target file; written exactly there (no suffix is added).
    params: a nested mapping (e.g. a flax `params` tree) whose leaves are
      arrays (numpy or jax; fetched to the host).

  Raises:
    ValueError: a key contains '/' or is the reserved `__dtypes__`.
  """
  path = os.fspath(path)
  flat = traverse_util.flatten_dict(dict(params))
  arrays: dict[str, np.ndarray] = {}
  special: dict[str, str] = {}
  for key_path, value in flat.items():
    for part in key_path:
      if not isinstance(part, str) or _SEP in part or not part:
        raise ValueError(f'cannot save key {part!r} of {key_path}: keys must '
                         f"be non-empty strings without '{_SEP}'")
    key = _SEP.join(key_path)
    if key == _DTYPES_KEY:
      raise ValueError(f'{_DTYPES_KEY!r} is a reserved key')
    arr = np.asarray(jax.device_get(value))
    if _is_ml_dtype(arr.dtype):
      special[key] = arr.dtype.name
      arr = arr.view(np.dtype(f'u{arr.dtype.itemsize}'))
    arrays[key] = arr
  if special:
    arrays[_DTYPES_KEY] = np.array(json.dumps(special, sort_keys=True))

  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                             suffix='-' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_npz(path: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads a file written by `save_npz` back into a nested dict of arrays.

  Args:
    path: the `.npz` file.

  Returns:
    Nested dicts of numpy arrays with the saved dtypes (bfloat16 included).

  Raises:
    FileNotFoundError: `path` does not exist.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'npz file not found: {path}')
  with np.load(path, allow_pickle=False) as data:
    flat = {key: data[key] for key in data.files}
  special = {}
  if _DTYPES_KEY in flat:
    special = json.loads(str(flat.pop(_DTYPES_KEY)))
  for key, name in special.items():
    dtype = getattr(ml_dtypes, name, None)
    if (key not in flat or not isinstance(dtype, type) or
        not _is_ml_dtype(np.dtype(dtype))):
      raise ValueError(f'{path}: bad dtype entry {key!r}: {name!r}')
    flat[key] = flat[key].view(np.dtype(dtype))
  return traverse_util.unflatten_dict(
      {tuple(key.split(_SEP)): value for key, value in flat.items()})
