"""Save and load any flax param tree as a flat `.npz` file.

Keys are the tree paths joined with '/', e.g. `conv1_1/kernel`. Dtypes that
`.npz` cannot describe (bfloat16, float8 from `ml_dtypes`) are stored as
unsigned integers of the same width and restored from a small index stored
under `__dtypes__`. Writes are atomic: a temporary file in the same folder is
renamed over the target, so a crash never leaves a half-written file.

Reading treats the file as untrusted, bounded data: each member's `.npy`
header is checked against the member's size (and that against the archive)
before its array is allocated, object arrays are refused, and every problem
is an `NpzError` naming the file and the array.
"""

import json
import math
import os
import tempfile
from typing import Any, Mapping
import zipfile
import zlib

from flax import traverse_util
import jax
import ml_dtypes
import numpy as np

_SEP = '/'
_DTYPES_KEY = '__dtypes__'
# Deflate cannot expand data more than ~1032 times; a member claiming more is
# a bomb (bz2/lzma can) or a lying zip directory.
_MAX_COMPRESSION_RATIO = 1100
# Errors that a damaged archive or `.npy` header raise while being read.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError,
                TypeError, OverflowError, NotImplementedError, KeyError,
                RuntimeError)


class NpzError(ValueError):
  """An `.npz` file is corrupt, truncated or holds what we refuse to load."""


def _is_ml_dtype(dtype: np.dtype) -> bool:
  """True for the `ml_dtypes` extension types that `.npy` cannot describe."""
  return dtype.type.__module__.startswith('ml_dtypes')


def _ml_dtype(name: Any) -> np.dtype | None:
  """The `ml_dtypes` dtype called `name`, None if there is no such dtype."""
  if not isinstance(name, str):
    return None
  scalar_type = getattr(ml_dtypes, name, None)
  if not isinstance(scalar_type, type):
    return None
  dtype = np.dtype(scalar_type)  # `object` for a class that is no dtype.
  return dtype if _is_ml_dtype(dtype) else None


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


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                 where: str) -> np.ndarray:
  """Reads one `.npy` member after checking its header against its size."""
  with zf.open(info) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise NpzError(f'{where}: unsupported .npy format version {version}')
    body = info.file_size - f.tell()
  if dtype.hasobject:
    # Object arrays are pickles: refused whatever the header says.
    raise NpzError(f'{where}: object arrays are refused')
  if any(n < 0 for n in shape):
    raise NpzError(f'{where}: negative shape {shape}')
  nbytes = math.prod(shape) * dtype.itemsize
  if nbytes != body:
    raise NpzError(
        f'{where}: header declares shape {shape} of {dtype} ({nbytes} bytes) '
        f'but the member holds {body} bytes of data')
  # Allocates no more than the member's checked size.
  with zf.open(info) as f:
    return np.lib.format.read_array(f, allow_pickle=False)


def _read_arrays(path: str) -> dict[str, np.ndarray]:
  """All arrays of the archive, each checked before it is allocated."""
  archive_size = os.path.getsize(path)
  try:
    zf = zipfile.ZipFile(path)
  except _READ_ERRORS as e:
    raise NpzError(
        f'{path}: not a readable .npz archive (corrupt or truncated: {e})'
    ) from e
  flat: dict[str, np.ndarray] = {}
  compressed = 0
  with zf:
    for info in zf.infolist():
      name = info.filename
      if not name.endswith('.npy'):
        raise NpzError(f'{path}: member {name!r} is not an .npy array')
      key = name[:-len('.npy')]
      where = f'{path}: array {key!r}'
      if key in flat:
        raise NpzError(f'{where} appears twice')
      # The directory is untrusted: sizes must be possible in this file, and
      # members may not overlap (their compressed bytes add up to the file).
      compressed += info.compress_size
      stored = info.compress_type == zipfile.ZIP_STORED
      if (info.compress_size > archive_size or compressed > archive_size or
          info.file_size > _MAX_COMPRESSION_RATIO * info.compress_size or
          (stored and info.file_size != info.compress_size)):
        raise NpzError(
            f'{where}: member claims {info.file_size} bytes from '
            f'{info.compress_size} compressed ones in a {archive_size}-byte '
            'file (a zip bomb or a corrupt directory)')
      try:
        flat[key] = _read_member(zf, info, where)
      except NpzError:
        raise
      except _READ_ERRORS as e:
        raise NpzError(f'{where}: corrupt or truncated ({e})') from e
  return flat


def load_npz(path: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads a file written by `save_npz` back into a nested dict of arrays.

  Args:
    path: the `.npz` file.

  Returns:
    Nested dicts of numpy arrays with the saved dtypes (bfloat16 included).

  Raises:
    FileNotFoundError: `path` does not exist.
    NpzError: (a ValueError) the file is corrupt or truncated, declares more
      data than it holds, or holds object arrays; the message names the file
      and, where one is at fault, the array.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'npz file not found: {path}')
  flat = _read_arrays(path)
  special = {}
  if _DTYPES_KEY in flat:
    try:
      special = json.loads(str(flat.pop(_DTYPES_KEY)))
    except ValueError as e:
      raise NpzError(f'{path}: array {_DTYPES_KEY!r} is not JSON ({e})') from e
    if not isinstance(special, dict):
      raise NpzError(f'{path}: array {_DTYPES_KEY!r} is not a JSON object')
  for key, name in special.items():
    dtype = _ml_dtype(name)
    if (key not in flat or dtype is None or
        flat[key].dtype.itemsize != dtype.itemsize):
      raise NpzError(f'{path}: bad dtype entry {key!r}: {name!r}')
    flat[key] = flat[key].view(dtype)
  return traverse_util.unflatten_dict(
      {tuple(key.split(_SEP)): value for key, value in flat.items()})
