"""Read PyTorch checkpoints (`.pth`, `.pt`) with numpy only, without torch.

Two on-disk formats exist and both are read:

* **zip** (`torch.save` default since torch 1.6): `<archive>/data.pkl` is the
  pickled object; each storage is a raw little- or big-endian byte blob at
  `<archive>/data/<key>` (order in `<archive>/byteorder`, little if absent).
  Persistent ids are `('storage', storage_type, key, location, numel)`.
* **legacy** (torch < 1.6, e.g. torchvision's `vgg19-dcbb9e9d.pth`): a
  sequence of pickles (magic number, protocol version, sys info, the object,
  the sorted list of storage keys) followed, for each key in that order, by an
  int64 little-endian element count and the storage's raw little-endian bytes.
  Persistent ids are `('storage', storage_type, root_key, location, numel,
  view_metadata)`.

Every tensor comes back as a C-contiguous `numpy.ndarray` that owns its data
(views and shared storages are resolved into copies), on the host whatever
device it was saved from. bfloat16 and float8 tensors use `ml_dtypes`.

Unpickling is restricted to a whitelist of globals (tensor rebuilders, storage
and dtype names, `collections.OrderedDict`, numpy arrays and scalars, a few
builtins), so a malicious file cannot execute code: anything else (a pickled
`nn.Module`, `os.system`, ...) raises `ForbiddenGlobalError`.
"""

import collections
import functools
import io
import math
import os
import pickle
import struct
import sys
import tarfile
from typing import Any, BinaryIO, Callable, Mapping
import zipfile
import zlib

import ml_dtypes
import numpy as np

try:  # numpy >= 2
  from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core import multiarray as _np_multiarray

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


class TorchPickleError(ValueError):
  """A file is not a readable PyTorch checkpoint (corrupt, truncated, ...)."""


class ForbiddenGlobalError(TorchPickleError):
  """The pickle references a global that is not on the whitelist."""


# torch dtype name -> numpy dtype. Aliases (`float`, `half`, ...) are included
# because `torch.float` pickles under whatever name the writer used.
_TORCH_DTYPES: dict[str, Any] = {
    'float32': np.float32, 'float': np.float32,
    'float64': np.float64, 'double': np.float64,
    'float16': np.float16, 'half': np.float16,
    'bfloat16': ml_dtypes.bfloat16,
    'complex64': np.complex64, 'cfloat': np.complex64,
    'complex128': np.complex128, 'cdouble': np.complex128,
    'int64': np.int64, 'long': np.int64,
    'int32': np.int32, 'int': np.int32,
    'int16': np.int16, 'short': np.int16,
    'int8': np.int8,
    'uint8': np.uint8,
    'uint16': np.uint16,
    'uint32': np.uint32,
    'uint64': np.uint64,
    'bool': np.bool_,
    'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
    'float8_e5m2': ml_dtypes.float8_e5m2,
    'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
    'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
    'float8_e8m0fnu': ml_dtypes.float8_e8m0fnu,
}

# Typed storage class name -> torch dtype name.
_STORAGE_DTYPES: dict[str, str] = {
    'FloatStorage': 'float32',
    'DoubleStorage': 'float64',
    'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16',
    'ComplexFloatStorage': 'complex64',
    'ComplexDoubleStorage': 'complex128',
    'LongStorage': 'int64',
    'IntStorage': 'int32',
    'ShortStorage': 'int16',
    'CharStorage': 'int8',
    'ByteStorage': 'uint8',
    'BoolStorage': 'bool',
    # Raw bytes; the tensor's dtype comes with `_rebuild_tensor_v3`.
    'UntypedStorage': 'uint8',
}

_QUANTIZED_STORAGES = ('QInt8Storage', 'QUInt8Storage', 'QInt32Storage',
                       'QUInt4x2Storage', 'QUInt2x4Storage')


class TorchDtype:
  """A torch dtype that appears as a value (not a tensor) in a checkpoint."""

  def __init__(self, name: str):
    self.name = name

  @property
  def numpy(self) -> np.dtype:
    """The numpy dtype; raises TorchPickleError when there is none."""
    if self.name not in _TORCH_DTYPES:
      raise TorchPickleError(
          f'torch.{self.name} tensors have no numpy equivalent')
    return np.dtype(_TORCH_DTYPES[self.name])

  def __eq__(self, other):
    return isinstance(other, TorchDtype) and other.name == self.name

  def __hash__(self):
    return hash(('TorchDtype', self.name))

  def __repr__(self):
    return f'torch.{self.name}'


class _StorageType:
  """Stands for a `torch.*Storage` class inside persistent ids."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_TORCH_DTYPES[_STORAGE_DTYPES[name]])

  def __repr__(self):
    return f'torch.{self.name}'


class _TensorClass:
  """Stands for `torch.Tensor` / `torch.nn.Parameter` class references."""

  def __init__(self, name: str):
    self.name = name


class _PendingStorage:
  """A storage whose bytes are not read yet (first pass over legacy files)."""


def _is_pending(storage) -> bool:
  return isinstance(storage, _PendingStorage)


def _as_strided_copy(storage: np.ndarray, offset: int, size, stride,
                     dtype: np.dtype | None = None) -> np.ndarray:
  """The tensor `storage[offset]` + strides, as an owned C-contiguous array."""
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise TorchPickleError(f'tensor rebuilt from a non-storage {storage!r}')
  if dtype is not None and storage.dtype != dtype:
    # `_rebuild_tensor_v3` hands over untyped (uint8) storage.
    if storage.nbytes % dtype.itemsize:
      raise TorchPickleError(
          f'storage of {storage.nbytes} bytes is not a whole number of '
          f'{dtype} elements')
    storage = storage.view(np.uint8).view(dtype)
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  offset = int(offset)
  if len(size) != len(stride):
    raise TorchPickleError(f'tensor size {size} and stride {stride} differ '
                           'in length')
  if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise TorchPickleError(
        f'negative tensor size/stride/offset {size}/{stride}/{offset}')
  if math.prod(size) == 0:
    return np.empty(size, storage.dtype)
  # Bounds check so a corrupt file cannot make as_strided read outside the
  # buffer.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.shape[0]:
    raise TorchPickleError(
        f'tensor (offset {offset}, size {size}, stride {stride}) runs past '
        f'the end of its storage of {storage.shape[0]} elements')
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size,
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view, order='C', copy=True)


def _rebuild_tensor(storage, storage_offset, size, stride):
  if _is_pending(storage):
    return storage
  return _as_strided_copy(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
  del requires_grad, backward_hooks, metadata  # Meaningless for numpy.
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if _is_pending(storage):
    return storage
  if isinstance(dtype, TorchDtype):
    dtype = dtype.numpy
  return _as_strided_copy(storage, storage_offset, size, stride,
                          np.dtype(dtype))


def _rebuild_parameter(data, requires_grad, backward_hooks):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state  # Python attributes of the param.
  return data


def _rebuild_from_type(func, new_type, args, state):
  """Tensor subclasses: only plain tensors and `nn.Parameter` are allowed."""
  del state
  if not isinstance(new_type, _TensorClass):
    raise ForbiddenGlobalError(
        f'tensor subclass {new_type!r} is not supported')
  return func(*args)


def _torch_device(type_, index=None) -> str:
  return str(type_) if index is None else f'{type_}:{index}'


def _codecs_encode(text, encoding='utf-8', errors='strict'):
  # Protocol-2 pickles written by Python 3 store `bytes` as
  # `_codecs.encode(str, 'latin1')`.
  if encoding not in ('latin1', 'latin-1', 'utf-8', 'utf8', 'ascii'):
    raise ForbiddenGlobalError(f'_codecs.encode with encoding {encoding!r}')
  return text.encode(encoding, errors)


def _np_reconstruct(subtype, shape, dtype):
  if subtype is not np.ndarray:
    raise ForbiddenGlobalError(f'numpy reconstruct of {subtype!r}')
  return _np_multiarray._reconstruct(subtype, shape, dtype)


_REBUILDERS: dict[str, Callable[..., Any]] = {
    '_rebuild_tensor': _rebuild_tensor,
    '_rebuild_tensor_v2': _rebuild_tensor_v2,
    '_rebuild_tensor_v3': _rebuild_tensor_v3,
    '_rebuild_parameter': _rebuild_parameter,
    '_rebuild_parameter_with_state': _rebuild_parameter_with_state,
}

_SAFE_BUILTINS = {
    'set': set, 'frozenset': frozenset, 'complex': complex, 'slice': slice,
}


def _resolve_global(module: str, name: str) -> Any:
  """The whitelisted object for `module.name`; raises otherwise."""
  if module == 'collections' and name == 'OrderedDict':
    return collections.OrderedDict
  if module == 'builtins' and name in _SAFE_BUILTINS:
    return _SAFE_BUILTINS[name]
  if module == '_codecs' and name == 'encode':
    return functools.partial(_codecs_encode)
  if module in ('torch._utils',) and name in _REBUILDERS:
    return functools.partial(_REBUILDERS[name])
  if module in ('torch._tensor', 'torch.tensor') and name in (
      '_rebuild_from_type', '_rebuild_from_type_v2'):
    return functools.partial(_rebuild_from_type)
  if module in ('torch', 'torch.cuda'):
    if name in _STORAGE_DTYPES:
      return _StorageType(name)
    if name in _QUANTIZED_STORAGES:
      raise ForbiddenGlobalError(f'quantized storage torch.{name} is not '
                                 'supported')
  if module == 'torch.storage' and name == 'UntypedStorage':
    return _StorageType('UntypedStorage')
  if module == 'torch':
    if name == 'Size':
      return tuple
    if name == 'device':
      return functools.partial(_torch_device)
    if name == 'Tensor':
      return _TensorClass(name)
    if name in _TORCH_DTYPES or name in (
        'complex32', 'chalf', 'float4_e2m1fn_x2', 'bits8', 'bits16',
        'bits1x8', 'bits2x4', 'bits4x2', 'qint8', 'quint8', 'qint32',
        'quint4x2', 'quint2x4'):
      return TorchDtype(name)
  if module == 'torch.nn.parameter' and name == 'Parameter':
    return _TensorClass(name)
  if module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    if name == '_reconstruct':
      return functools.partial(_np_reconstruct)
    if name == 'scalar':
      return functools.partial(_np_multiarray.scalar)
  if module == 'numpy' and name == 'ndarray':
    return np.ndarray
  if module == 'numpy' and name == 'dtype':
    return np.dtype
  if module.startswith('numpy.dtypes') and name.endswith('DType'):
    # numpy >= 1.25 pickles dtypes as instances of `numpy.dtypes.*DType`.
    return np.dtype
  hint = ''
  if module.startswith('torch.nn') or module.startswith('__torch__'):
    hint = (' (a whole pickled nn.Module or TorchScript object; save and '
            'load its state_dict() instead)')
  raise ForbiddenGlobalError(
      f'refusing to unpickle global {module}.{name}{hint}')


class _RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler that only resolves whitelisted globals."""

  def __init__(self, file: BinaryIO,
               persistent_load_fn: Callable[[Any], Any] | None = None):
    super().__init__(file, encoding='utf-8')
    self._persistent_load_fn = persistent_load_fn

  def find_class(self, module: str, name: str) -> Any:
    return _resolve_global(module, name)

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent_load_fn is None:
      raise TorchPickleError(f'unexpected persistent id {pid!r}')
    return self._persistent_load_fn(pid)


def _decode(s: Any) -> Any:
  return s.decode('ascii') if isinstance(s, bytes) else s


def _parse_storage_pid(pid: Any) -> tuple[_StorageType, str, int, Any]:
  """(storage type, key, numel, view metadata) from a persistent id."""
  if not isinstance(pid, tuple) or not pid:
    raise TorchPickleError(f'malformed persistent id {pid!r}')
  typename = _decode(pid[0])
  if typename == 'module':
    raise ForbiddenGlobalError(
        'the file holds a whole pickled nn.Module; save and load its '
        'state_dict() instead')
  if typename != 'storage' or len(pid) not in (5, 6):
    raise TorchPickleError(f'unknown persistent id {pid!r}')
  storage_type, key, _, numel = pid[1:5]
  view_metadata = pid[5] if len(pid) == 6 else None
  if not isinstance(storage_type, _StorageType):
    raise TorchPickleError(f'persistent id with storage type {storage_type!r}')
  return storage_type, str(_decode(key)), int(numel), view_metadata


def _storage_array(buf: bytes | memoryview, dtype: np.dtype,
                   little_endian: bool) -> np.ndarray:
  """A 1-D array over the raw bytes, converted to native byte order."""
  if len(buf) % dtype.itemsize:
    raise TorchPickleError(
        f'storage of {len(buf)} bytes is not a whole number of {dtype} '
        'elements')
  arr = np.frombuffer(buf, dtype=dtype)
  if dtype.itemsize > 1 and little_endian != (sys.byteorder == 'little'):
    if dtype.kind == 'c':
      arr = arr.view(np.dtype(f'f{dtype.itemsize // 2}')).byteswap().view(
          dtype)
    else:
      arr = arr.byteswap()
  return arr


def _load_zip(zf: zipfile.ZipFile) -> Any:
  """Loads the zip (torch >= 1.6) format."""
  names = zf.namelist()
  pkl_names = [n for n in names if n.endswith('data.pkl') and
               n.count('/') == 1]
  if len(pkl_names) != 1:
    if any(n.endswith('constants.pkl') for n in names):
      raise TorchPickleError('this is a TorchScript archive (torch.jit.save), '
                             'not a torch.save checkpoint')
    raise TorchPickleError(
        f'zip archive without a single <archive>/data.pkl (found {pkl_names})')
  prefix = pkl_names[0][:-len('data.pkl')]
  if f'{prefix}constants.pkl' in names:
    raise TorchPickleError('this is a TorchScript archive (torch.jit.save), '
                           'not a torch.save checkpoint')
  little_endian = True
  if f'{prefix}byteorder' in names:
    order = zf.read(f'{prefix}byteorder').decode('ascii').strip()
    if order not in ('little', 'big'):
      raise TorchPickleError(f'unknown byteorder {order!r}')
    little_endian = order == 'little'

  raw: dict[str, bytes] = {}

  def persistent_load(pid):
    storage_type, key, numel, _ = _parse_storage_pid(pid)
    if key not in raw:
      member = f'{prefix}data/{key}'
      if member not in names:
        raise TorchPickleError(f'storage {member} is missing from the archive')
      raw[key] = zf.read(member)
    dtype = storage_type.dtype
    nbytes = numel * dtype.itemsize
    buf = raw[key]
    if len(buf) < nbytes:
      raise TorchPickleError(
          f'storage {key} has {len(buf)} bytes, expected {nbytes}')
    # A memoryview slice does not copy the (possibly huge) buffer.
    return _storage_array(memoryview(buf)[:nbytes], dtype, little_endian)

  data = zf.read(f'{prefix}data.pkl')
  return _RestrictedUnpickler(io.BytesIO(data), persistent_load).load()


def _load_legacy(f: BinaryIO) -> Any:
  """Loads the legacy (torch < 1.6) format."""
  plain = _RestrictedUnpickler(f)
  magic = plain.load()
  if magic != _LEGACY_MAGIC_NUMBER:
    raise TorchPickleError('not a PyTorch checkpoint (bad magic number)')
  protocol = _RestrictedUnpickler(f).load()
  if protocol != _LEGACY_PROTOCOL_VERSION:
    raise TorchPickleError(f'unsupported legacy protocol version {protocol}')
  _RestrictedUnpickler(f).load()  # sys_info; data is little-endian anyway.

  # Pass 1: the storages' bytes come after the main pickle, so first walk it
  # only to learn each storage's dtype, then read the bytes, then unpickle
  # again for real. Pickles are small next to the data.
  main_start = f.tell()
  storage_dtypes: dict[str, np.dtype] = {}

  def record_storage(pid):
    storage_type, key, _, _ = _parse_storage_pid(pid)
    # The writer used the element size of the first reference to a storage.
    storage_dtypes.setdefault(key, storage_type.dtype)
    return _PendingStorage()

  _RestrictedUnpickler(f, record_storage).load()
  main_end = f.tell()
  keys = _RestrictedUnpickler(f).load()
  if not isinstance(keys, list):
    raise TorchPickleError(f'malformed storage key list {keys!r}')

  storages: dict[str, np.ndarray] = {}
  for key in keys:
    key = str(_decode(key))
    if key not in storage_dtypes:
      raise TorchPickleError(f'storage {key} is not referenced by the pickle')
    dtype = storage_dtypes[key]
    header = f.read(8)
    if len(header) != 8:
      raise TorchPickleError(f'truncated before storage {key}')
    (numel,) = struct.unpack('<q', header)
    nbytes = numel * dtype.itemsize
    if numel < 0:
      raise TorchPickleError(f'storage {key} has negative size {numel}')
    buf = f.read(nbytes)
    if len(buf) != nbytes:
      raise TorchPickleError(
          f'truncated in storage {key}: {len(buf)} of {nbytes} bytes')
    storages[key] = _storage_array(buf, dtype, little_endian=True)
  missing = set(storage_dtypes) - set(storages)
  if missing:
    raise TorchPickleError(f'storages {sorted(missing)} have no data')

  def persistent_load(pid):
    storage_type, key, _, view_metadata = _parse_storage_pid(pid)
    storage = storages[key]
    if storage_type.dtype != storage.dtype:
      storage = storage.view(np.uint8).view(storage_type.dtype)
    if view_metadata is not None:
      # Storage views of torch < 0.4: (view_key, offset, size) in elements.
      _, offset, size = view_metadata
      offset, size = int(offset), int(size)
      if offset < 0 or size < 0 or offset + size > storage.shape[0]:
        raise TorchPickleError(f'storage view {view_metadata!r} out of bounds')
      storage = storage[offset:offset + size]
    return storage

  end = f.tell()
  f.seek(main_start)
  result = _RestrictedUnpickler(f, persistent_load).load()
  if f.tell() != main_end:
    raise TorchPickleError('main pickle changed length between passes')
  f.seek(end)
  return result


def load(path: str | os.PathLike[str]) -> Any:
  """Loads a PyTorch checkpoint written by `torch.save`, without torch.

  Args:
    path: a `.pth` / `.pt` file in the zip (torch >= 1.6) or legacy format.

  Returns:
    The saved object with every tensor (and `nn.Parameter`) as a C-contiguous
    `numpy.ndarray`, `torch.Size` as tuple, `torch.device` as a string such
    as `'cuda:0'`, and torch dtypes that appear as values as `TorchDtype`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ForbiddenGlobalError: the pickle references a non-whitelisted global.
    TorchPickleError: the file is corrupt, truncated or of an unsupported
      kind; the message names the file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'PyTorch checkpoint not found: {path}')
  try:
    with open(path, 'rb') as f:
      head = f.read(4)
      f.seek(0)
      if head.startswith(b'PK'):
        try:
          zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
          raise TorchPickleError(f'corrupt or truncated zip archive ({e})')
        with zf:
          return _load_zip(zf)
      if head[:1] != b'\x80':
        # The earliest torch releases wrote tar archives; anything else that
        # does not start with a pickle PROTO opcode is not from torch.save.
        f.seek(0)
        try:
          with tarfile.open(fileobj=f, mode='r:'):
            pass
        except tarfile.TarError:
          raise TorchPickleError(
              'not a PyTorch checkpoint (neither a zip archive nor a pickle)'
          ) from None
        raise TorchPickleError('the tar-based format of the earliest torch '
                               'releases is not supported')
      return _load_legacy(f)
  except ForbiddenGlobalError as e:
    raise ForbiddenGlobalError(f'{path}: {e}') from e
  except TorchPickleError as e:
    raise TorchPickleError(f'{path}: {e}') from e
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error,
          struct.error, ValueError, TypeError, KeyError, IndexError,
          AttributeError, UnicodeDecodeError) as e:
    raise TorchPickleError(
        f'{path}: corrupt or truncated PyTorch checkpoint '
        f'({type(e).__name__}: {e})') from e


def strip_prefix(state_dict: Mapping[str, Any],
                 prefix: str = 'module.') -> dict[str, Any]:
  """Removes `prefix` from the keys that have it (DataParallel checkpoints).

  Args:
    state_dict: a flat mapping of names to arrays.
    prefix: the prefix to drop, `'module.'` by default.

  Returns:
    A new dict, in the same order, with `prefix` removed where present.

  Raises:
    ValueError: stripping makes two keys equal.
  """
  out: dict[str, Any] = {}
  for key, value in state_dict.items():
    new_key = key[len(prefix):] if key.startswith(prefix) else key
    if new_key in out:
      raise ValueError(f'stripping {prefix!r} from {key!r} collides with an '
                       'existing key')
    out[new_key] = value
  return out
