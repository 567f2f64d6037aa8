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

A hostile or damaged file is bounded data too: every size it declares is
checked against the bytes really there before anything is allocated. Each
storage must fit in its zip member (or in the rest of a legacy file); zip
members must be plausible for the archive (`_MAX_COMPRESSION_RATIO`, no
overlaps) and are never decompressed further than their storage needs; each
tensor's size, stride and offset must stay inside its storage; tensor copies
may total only a small multiple of the storage bytes (`_Budget`); and the
pickle itself cannot make the unpickler allocate ahead of its input (see
`_RestrictedUnpickler`). Every failure is a `TorchPickleError` naming the file
and, for a tensor, its storage key.
"""

import collections
import functools
import io
import math
import operator
import os
import pickle
import reprlib
import struct
import sys
import tarfile
from typing import Any, Callable, Mapping
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

# Deflate cannot expand data more than ~1032 times; a member claiming more is
# a bomb (bz2/lzma can) or a lying directory. torch itself never compresses.
_MAX_COMPRESSION_RATIO = 1100
# Tensor copies may total this many times the storage bytes loaded, plus the
# slack: a checkpoint copies each storage about once (tied weights a few
# times), while a few pickled bytes could otherwise copy one storage endlessly
# or broadcast one element (stride 0) to any size.
_TENSOR_BYTES_FACTOR = 8
_TENSOR_BYTES_SLACK = 64 << 20
_MAX_NDIM = 64  # numpy's limit.
_MAX_INT = 2**63  # Sizes, strides and offsets are int64 in torch.
# Hashing a tuple recurses in C without a depth check, so a deep enough one
# (a megabyte of TUPLE1 opcodes) crashes the interpreter.
_MAX_TUPLE_DEPTH = 1000

_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxstring = _short.maxother = 80


def _short_repr(value: Any) -> str:
  """A bounded repr of an untrusted value for error messages."""
  try:
    return _short.repr(value)
  except ValueError:  # An int too long to print.
    return f'<{type(value).__name__}>'


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


class _Budget:
  """Bounds the bytes that one load may allocate for tensor copies.

  Storages are bytes that are really in the file; tensors are copies of parts
  of them, and the pickle alone decides how many and how large (see
  `_TENSOR_BYTES_FACTOR`).
  """

  def __init__(self):
    self.storage_bytes = 0
    self.tensor_bytes = 0

  def add_storage(self, nbytes: int) -> None:
    self.storage_bytes += nbytes

  def take(self, nbytes: int, what: str) -> None:
    """Accounts for a copy of `nbytes`; raises if it goes over the budget."""
    limit = _TENSOR_BYTES_FACTOR * self.storage_bytes + _TENSOR_BYTES_SLACK
    if self.tensor_bytes + nbytes > limit:
      raise TorchPickleError(
          f'{what}: a tensor of {nbytes} bytes would bring the tensor copies '
          f'to {self.tensor_bytes + nbytes} bytes, more than {limit} for '
          f'{self.storage_bytes} bytes of storages (broadcast or repeated '
          'views of a storage)')
    self.tensor_bytes += nbytes


class _Storage:
  """A loaded storage: its elements, its key for messages, the load's budget."""

  def __init__(self, array: np.ndarray, key: str, budget: _Budget):
    self.array = array
    self.key = key
    self.budget = budget


def _int_tuple(value: Any, name: str, where: str) -> tuple[int, ...]:
  """`value` (a tensor's size or stride) as a tuple of int64-range ints."""
  if not isinstance(value, (tuple, list)) or len(value) > _MAX_NDIM:
    raise TorchPickleError(
        f'{where}: malformed tensor {name} {_short_repr(value)}')
  try:
    ints = tuple(operator.index(v) for v in value)
  except TypeError:
    raise TorchPickleError(
        f'{where}: malformed tensor {name} {_short_repr(value)}') from None
  if any(abs(v) >= _MAX_INT for v in ints):
    raise TorchPickleError(f'{where}: tensor {name} out of the int64 range')
  return ints


def _as_strided_copy(storage: Any, offset: Any, size: Any, stride: Any,
                     dtype: np.dtype | None = None) -> np.ndarray:
  """The tensor `storage[offset]` + strides, as an owned C-contiguous array.

  Everything is checked before anything is allocated: the size, stride and
  offset must keep every element inside the storage, and the copy must fit
  in the load's `_Budget`.
  """
  if not isinstance(storage, _Storage):
    raise TorchPickleError(
        f'tensor rebuilt from {_short_repr(storage)} instead of a storage')
  where = f'storage {storage.key}'
  arr = storage.array
  if dtype is not None and arr.dtype != dtype:
    # `_rebuild_tensor_v3` hands over untyped (uint8) storage.
    if arr.nbytes % dtype.itemsize:
      raise TorchPickleError(
          f'{where}: {arr.nbytes} bytes are not a whole number of {dtype} '
          'elements')
    arr = arr.view(np.uint8).view(dtype)
  size = _int_tuple(size, 'size', where)
  stride = _int_tuple(stride, 'stride', where)
  offset = _int_tuple((offset,), 'storage offset', where)[0]
  if len(size) != len(stride):
    raise TorchPickleError(f'{where}: tensor size {size} and stride {stride} '
                           'differ in length')
  if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise TorchPickleError(
        f'{where}: negative tensor size/stride/offset {size}/{stride}/'
        f'{offset}')
  itemsize = arr.dtype.itemsize
  # Zero-size dimensions aside, the shape must be one numpy can index (an
  # empty tensor allocates nothing but numpy still refuses absurd shapes).
  if math.prod(max(n, 1) for n in size) * itemsize >= _MAX_INT:
    raise TorchPickleError(f'{where}: tensor size {size} is too large')
  if math.prod(size) == 0:
    return np.empty(size, arr.dtype)
  # Bounds check so a corrupt file cannot make as_strided read outside the
  # buffer.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= arr.shape[0]:
    raise TorchPickleError(
        f'{where}: tensor (offset {offset}, size {size}, stride {stride}) '
        f'runs past the end of its storage of {arr.shape[0]} elements')
  storage.budget.take(math.prod(size) * itemsize, where)
  # A stride of a size-1 dimension is never used; zero it so that a huge one
  # cannot overflow the byte strides.
  strides = tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride))
  view = np.lib.stride_tricks.as_strided(
      arr[offset:], shape=size, strides=strides, writeable=False)
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
  if not isinstance(dtype, TorchDtype):
    raise TorchPickleError(f'tensor dtype {_short_repr(dtype)} is not a '
                           'torch dtype')
  return _as_strided_copy(storage, storage_offset, size, stride, dtype.numpy)


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
  if not isinstance(type_, str) or not (index is None or
                                        isinstance(index, (int, str))):
    raise TorchPickleError(
        f'malformed torch.device{_short_repr((type_, index))}')
  return type_ if index is None else f'{type_}:{index}'


def _codecs_encode(text, encoding='utf-8', errors='strict'):
  # Protocol-2 pickles written by Python 3 store `bytes` as
  # `_codecs.encode(str, 'latin1')`.
  if encoding not in ('latin1', 'latin-1', 'utf-8', 'utf8', 'ascii'):
    raise ForbiddenGlobalError(
        f'_codecs.encode with encoding {_short_repr(encoding)}')
  return text.encode(encoding, errors)


class _NumpyNdarray:
  """Stands for `numpy.ndarray`, which pickles name only for `_reconstruct`.

  The real class is never handed out: called (or instantiated by NEWOBJ) it
  would allocate any shape the pickle asks for.
  """


_NUMPY_NDARRAY = _NumpyNdarray()


def _check_np_dtype(dtype: Any) -> np.dtype:
  """Refuses numpy dtypes other than plain ones with numpy's own flags.

  numpy's `dtype.__setstate__` (BUILD) takes any flags, and flags that claim
  Python objects in a dtype that holds none crash numpy when an array of it
  is unpickled; object dtypes would unpickle Python objects.
  """
  if not isinstance(dtype, np.dtype):
    raise TorchPickleError(f'{_short_repr(dtype)} is not a numpy dtype')
  if dtype.hasobject:
    raise ForbiddenGlobalError('numpy object dtypes are refused')
  if dtype.fields is not None or dtype.subdtype is not None:
    raise TorchPickleError(
        f'structured numpy dtype {_short_repr(dtype)} is not supported')
  if dtype.flags != np.dtype(dtype.str).flags:
    raise TorchPickleError(f'numpy dtype {dtype.str} with forged flags '
                           f'{dtype.flags:#x}')
  return dtype


def _np_dtype(obj, align=False, copy=False):
  # Always a private copy, never numpy's shared instance: BUILD may set its
  # state next (and `_build_np_dtype` checks the result).
  del copy
  return _check_np_dtype(np.dtype(obj, bool(align), True))


def _np_scalar(dtype, data):
  return _np_multiarray.scalar(_check_np_dtype(dtype), data)


def _np_reconstruct(subtype, shape, dtype):
  # numpy pickles every array as `_reconstruct(ndarray, (0,), b'b')` plus
  # BUILD with the real shape, dtype and bytes (checked in `_build_np_array`).
  del dtype
  if subtype is not _NUMPY_NDARRAY:
    raise ForbiddenGlobalError(
        f'numpy reconstruct of {_short_repr(subtype)}')
  if shape != (0,):
    raise TorchPickleError(
        f'numpy reconstruct with shape {_short_repr(shape)}')
  return np.empty(0, np.int8)


def _build_np_dtype(dtype: np.dtype, state: Any) -> None:
  dtype.__setstate__(state)
  _check_np_dtype(dtype)


def _build_np_array(array: np.ndarray, state: Any) -> None:
  """BUILD of an array: `(version, shape, dtype, is_fortran, bytes)`."""
  if not isinstance(state, tuple) or len(state) not in (4, 5):
    raise TorchPickleError(f'malformed numpy array state {_short_repr(state)}')
  _check_np_dtype(state[-3])
  if not isinstance(state[-1], bytes):
    raise TorchPickleError('numpy array data is not bytes')
  # numpy checks that the bytes match the shape before it allocates.
  array.__setstate__(state)


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
      return functools.partial(_np_scalar)
  if module == 'numpy' and name == 'ndarray':
    return _NUMPY_NDARRAY
  if module == 'numpy' and name == 'dtype':
    return functools.partial(_np_dtype)
  if module.startswith('numpy.dtypes') and name.endswith('DType'):
    # numpy >= 1.25 pickles dtypes as instances of `numpy.dtypes.*DType`.
    return functools.partial(_np_dtype)
  hint = ''
  if module.startswith('torch.nn') or module.startswith('__torch__'):
    hint = (' (a whole pickled nn.Module or TorchScript object; save and '
            'load its state_dict() instead)')
  raise ForbiddenGlobalError(
      f'refusing to unpickle global {module[:200]}.{name[:200]}{hint}')


# The pure-Python unpickler, on purpose (see `_RestrictedUnpickler`).
_PyUnpickler = pickle._Unpickler  # pylint: disable=protected-access


class _RestrictedUnpickler(_PyUnpickler):
  """An unpickler that only resolves whitelisted globals, within bounds.

  It reads from memory and is the pure-Python one: the C unpickler allocates
  what a BINBYTES8 opcode declares, and a memo as long as the largest
  LONG_BINPUT index, before it reads anything, so a pickle of a few bytes
  could claim GiBs; here every read is bounded by the input. Its dispatch
  table is also ours to extend: BUILD (`__setstate__`) is limited to what
  torch and numpy pickle that way, and tuples may not nest deeper than
  `_MAX_TUPLE_DEPTH`.
  """

  dispatch = dict(_PyUnpickler.dispatch)

  def __init__(self, file: io.BytesIO,
               persistent_load_fn: Callable[[Any], Any] | None = None):
    super().__init__(file, encoding='utf-8')
    self._persistent_load_fn = persistent_load_fn
    # id -> (tuple, nesting depth) for every tuple built; holding the tuple
    # keeps its id from being reused.
    self._tuple_depths: dict[int, tuple[tuple[Any, ...], int]] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ('torch', 'Size'):
      return self._make_tuple
    return _resolve_global(module, name)

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent_load_fn is None:
      raise TorchPickleError(f'unexpected persistent id {_short_repr(pid)}')
    return self._persistent_load_fn(pid)

  def _make_tuple(self, items=()) -> tuple[Any, ...]:
    return self._check_tuple(tuple(items))

  def _check_tuple(self, value: tuple[Any, ...]) -> tuple[Any, ...]:
    """Records the nesting depth of a new tuple; refuses too deep ones."""
    depth = 1
    for item in value:
      if isinstance(item, tuple) and item:
        known = self._tuple_depths.get(id(item))
        # Every tuple is built here; assume the worst of any other.
        item_depth = (known[1] if known is not None and known[0] is item
                      else _MAX_TUPLE_DEPTH)
        depth = max(depth, item_depth + 1)
    if depth > _MAX_TUPLE_DEPTH:
      raise TorchPickleError(
          f'tuples nested more than {_MAX_TUPLE_DEPTH} deep')
    self._tuple_depths[id(value)] = (value, depth)
    return value

  def _load_build(self) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    kind = type(inst)
    if isinstance(inst, np.dtype):
      _build_np_dtype(inst, state)
    elif kind is np.ndarray:
      _build_np_array(inst, state)
    elif kind is collections.OrderedDict:
      # Attributes of a state dict, such as torch's `_metadata`.
      if not isinstance(state, dict) or not all(
          isinstance(k, str) for k in state):
        raise TorchPickleError(
            f'malformed OrderedDict state {_short_repr(state)}')
      inst.__dict__.update(state)
    else:
      raise TorchPickleError(
          f'refusing to set the state of a {type(inst).__name__}')

  dispatch[pickle.BUILD[0]] = _load_build


def _tuple_op(load_op: Callable[[Any], None]) -> Callable[[Any], None]:
  def load(self: _RestrictedUnpickler) -> None:
    load_op(self)
    self._check_tuple(self.stack[-1])  # pylint: disable=protected-access
  return load


for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
  _RestrictedUnpickler.dispatch[_op[0]] = _tuple_op(
      _PyUnpickler.dispatch[_op[0]])
del _op


def _decode(s: Any) -> Any:
  return s.decode('ascii') if isinstance(s, bytes) else s


def _parse_storage_pid(pid: Any) -> tuple[_StorageType, str, int, Any]:
  """(storage type, key, numel, view metadata) from a persistent id."""
  if not isinstance(pid, tuple) or not pid:
    raise TorchPickleError(f'malformed persistent id {_short_repr(pid)}')
  typename = _decode(pid[0])
  if typename == 'module':
    raise ForbiddenGlobalError(
        'the file holds a whole pickled nn.Module; save and load its '
        'state_dict() instead')
  if typename != 'storage' or len(pid) not in (5, 6):
    raise TorchPickleError(f'unknown persistent id {_short_repr(pid)}')
  storage_type, key, _, numel = pid[1:5]
  view_metadata = pid[5] if len(pid) == 6 else None
  key = _decode(key)
  if not isinstance(storage_type, _StorageType):
    raise TorchPickleError(
        f'persistent id with storage type {_short_repr(storage_type)}')
  if not isinstance(key, (str, int)) or len(str(key)) > 1000:
    raise TorchPickleError(f'malformed storage key {_short_repr(key)}')
  if not isinstance(numel, int) or not 0 <= numel < _MAX_INT:
    raise TorchPickleError(
        f'storage {key} has a bad element count {_short_repr(numel)}')
  return storage_type, str(key), numel, view_metadata


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


class _ZipReader:
  """Reads archive members, never more bytes than the caller needs.

  The central directory is untrusted: a member's sizes must be plausible for
  the archive (compressed bytes inside it, no more than
  `_MAX_COMPRESSION_RATIO` expansion) and the members read may not overlap
  (together they cannot hold more compressed bytes than the file).
  """

  def __init__(self, zf: zipfile.ZipFile, archive_size: int):
    self.zf = zf
    self.names = set(zf.namelist())
    self._archive_size = archive_size
    self._compressed = 0
    self._seen: set[str] = set()

  def info(self, name: str, what: str) -> zipfile.ZipInfo:
    """The checked directory entry of member `name`, for `what` it holds."""
    if name not in self.names:
      raise TorchPickleError(f'{what}: {name} is missing from the archive')
    info = self.zf.getinfo(name)
    if (info.compress_size > self._archive_size or
        info.file_size > _MAX_COMPRESSION_RATIO * info.compress_size):
      raise TorchPickleError(
          f'{what}: archive member {name} claims {info.file_size} bytes '
          f'from {info.compress_size} compressed ones in a '
          f'{self._archive_size}-byte file (a zip bomb or a corrupt '
          'directory)')
    if name not in self._seen:
      self._seen.add(name)
      self._compressed += info.compress_size
      if self._compressed > self._archive_size:
        raise TorchPickleError(
            f'{what}: archive members overlap (their compressed sizes add up '
            f'to more than the {self._archive_size}-byte file)')
    return info

  def read(self, info: zipfile.ZipInfo, nbytes: int, what: str) -> bytes:
    """The first `nbytes` of a member that `info` checked to hold them."""
    with self.zf.open(info) as member:
      data = member.read(nbytes)
    if len(data) != nbytes:
      raise TorchPickleError(f'{what}: archive member {info.filename} is '
                             f'truncated ({len(data)} of {nbytes} bytes)')
    return data


def _load_zip(zf: zipfile.ZipFile, archive_size: int) -> Any:
  """Loads the zip (torch >= 1.6) format."""
  reader = _ZipReader(zf, archive_size)
  names = reader.names
  pkl_names = [n for n in names if n.endswith('data.pkl') and
               n.count('/') == 1]
  if len(pkl_names) != 1:
    if any(n.endswith('constants.pkl') for n in names):
      raise TorchPickleError('this is a TorchScript archive (torch.jit.save), '
                             'not a torch.save checkpoint')
    raise TorchPickleError('zip archive without a single <archive>/data.pkl '
                           f'(found {_short_repr(sorted(pkl_names))})')
  prefix = pkl_names[0][:-len('data.pkl')]
  if f'{prefix}constants.pkl' in names:
    raise TorchPickleError('this is a TorchScript archive (torch.jit.save), '
                           'not a torch.save checkpoint')
  little_endian = True
  if f'{prefix}byteorder' in names:
    info = reader.info(f'{prefix}byteorder', 'byteorder')
    order = reader.read(info, min(info.file_size, 8), 'byteorder')
    order = order.decode('ascii', 'replace').strip()
    if order not in ('little', 'big'):
      raise TorchPickleError(f'unknown byteorder {order!r}')
    little_endian = order == 'little'

  budget = _Budget()
  raw: dict[str, bytes] = {}

  def persistent_load(pid):
    storage_type, key, numel, _ = _parse_storage_pid(pid)
    dtype = storage_type.dtype
    nbytes = numel * dtype.itemsize
    what = f'storage {key} ({numel} {dtype} elements)'
    if key not in raw or len(raw[key]) < nbytes:
      info = reader.info(f'{prefix}data/{key}', what)
      # Checked before reading: only the bytes the storage needs are read
      # (and decompressed), and only if the member has them.
      if info.file_size < nbytes:
        raise TorchPickleError(
            f'{what} needs {nbytes} bytes but its archive member '
            f'{info.filename} holds {info.file_size}')
      old = len(raw.get(key, b''))
      raw[key] = reader.read(info, nbytes, what)
      budget.add_storage(nbytes - old)
    # A memoryview slice does not copy the (possibly huge) buffer.
    array = _storage_array(memoryview(raw[key])[:nbytes], dtype, little_endian)
    return _Storage(array, key, budget)

  info = reader.info(f'{prefix}data.pkl', 'pickle')
  data = reader.read(info, info.file_size, 'pickle')
  return _RestrictedUnpickler(io.BytesIO(data), persistent_load).load()


def _load_legacy(data: bytes) -> Any:
  """Loads the legacy (torch < 1.6) format from the file's bytes."""
  f = io.BytesIO(data)
  magic = _RestrictedUnpickler(f).load()
  if magic != _LEGACY_MAGIC_NUMBER:
    raise TorchPickleError('not a PyTorch checkpoint (bad magic number)')
  protocol = _RestrictedUnpickler(f).load()
  if protocol != _LEGACY_PROTOCOL_VERSION:
    raise TorchPickleError(
        f'unsupported legacy protocol version {_short_repr(protocol)}')
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
    raise TorchPickleError(f'malformed storage key list {_short_repr(keys)}')

  budget = _Budget()
  storages: dict[str, np.ndarray] = {}
  pos = f.tell()
  for key in keys:
    key = _decode(key)
    if not isinstance(key, (str, int)) or str(key) not in storage_dtypes:
      raise TorchPickleError(
          f'storage {_short_repr(key)} is not referenced by the pickle')
    key = str(key)
    if key in storages:
      raise TorchPickleError(f'storage {key} is listed twice')
    dtype = storage_dtypes[key]
    if len(data) - pos < 8:
      raise TorchPickleError(f'truncated before storage {key}')
    (numel,) = struct.unpack_from('<q', data, pos)
    pos += 8
    nbytes = numel * dtype.itemsize
    if numel < 0:
      raise TorchPickleError(f'storage {key} has negative size {numel}')
    # Checked before anything is sliced or copied.
    if nbytes > len(data) - pos:
      raise TorchPickleError(
          f'storage {key} declares {numel} {dtype} elements ({nbytes} '
          f'bytes) but only {len(data) - pos} bytes are left in the file')
    storages[key] = _storage_array(memoryview(data)[pos:pos + nbytes], dtype,
                                   little_endian=True)
    budget.add_storage(nbytes)
    pos += nbytes
  missing = set(storage_dtypes) - set(storages)
  if missing:
    raise TorchPickleError(
        f'storages {_short_repr(sorted(missing))} have no data')

  def persistent_load(pid):
    storage_type, key, _, view_metadata = _parse_storage_pid(pid)
    storage = storages[key]
    if storage_type.dtype != storage.dtype:
      if storage.nbytes % storage_type.dtype.itemsize:
        raise TorchPickleError(
            f'storage {key}: {storage.nbytes} bytes are not a whole number '
            f'of {storage_type.dtype} elements')
      storage = storage.view(np.uint8).view(storage_type.dtype)
    if view_metadata is not None:
      # Storage views of torch < 0.4: (view_key, offset, size) in elements.
      if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
        raise TorchPickleError(
            f'storage {key}: malformed view {_short_repr(view_metadata)}')
      _, offset, size = view_metadata
      offset, size = operator.index(offset), operator.index(size)
      if offset < 0 or size < 0 or offset + size > storage.shape[0]:
        raise TorchPickleError(
            f'storage {key}: view {_short_repr(view_metadata)} out of bounds')
      storage = storage[offset:offset + size]
      key = f'{key}[{offset}:{offset + size}]'
    return _Storage(storage, key, budget)

  f.seek(main_start)
  result = _RestrictedUnpickler(f, persistent_load).load()
  if f.tell() != main_end:
    raise TorchPickleError('main pickle changed length between passes')
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
      size = os.fstat(f.fileno()).st_size
      head = f.read(4)
      f.seek(0)
      if head.startswith(b'PK'):
        try:
          zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
          raise TorchPickleError(f'corrupt or truncated zip archive ({e})')
        with zf:
          return _load_zip(zf, size)
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
      # Read whole (its storages are most of it anyway), so that no read can
      # ask for more than the file holds.
      return _load_legacy(f.read(size))
  except ForbiddenGlobalError as e:
    raise ForbiddenGlobalError(f'{path}: {e}') from e
  except TorchPickleError as e:
    raise TorchPickleError(f'{path}: {e}') from e
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error,
          struct.error, ValueError, TypeError, KeyError, IndexError,
          AttributeError, UnicodeDecodeError, OverflowError, RuntimeError,
          LookupError) as e:
    raise TorchPickleError(
        f'{path}: corrupt or truncated PyTorch checkpoint '
        f'({type(e).__name__}: {str(e)[:500]})') from e


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


def read_state_dict(path_or_state_dict: 'str | os.PathLike[str] | Mapping',
                    wrappers: tuple[str, ...] = ('model', 'state_dict')
                    ) -> tuple[str, dict[str, Any]]:
  """(name of the source, its flat state dict) of a `.pth` or a given dict.

  A dict found under one of `wrappers` (a training checkpoint's 'model' or
  'state_dict') is taken instead of the top level, and `module.` prefixes
  (DataParallel) are dropped.

  Raises:
    ValueError: naming the file, when it holds no state dict.
  """
  if isinstance(path_or_state_dict, Mapping):
    source, loaded = 'the given state dict', path_or_state_dict
  else:
    source = os.fspath(path_or_state_dict)
    loaded = load(source)
  state_dict = loaded
  for wrapper in wrappers:
    if isinstance(state_dict, Mapping) and isinstance(
        state_dict.get(wrapper), Mapping):
      state_dict = state_dict[wrapper]
  if not isinstance(state_dict, Mapping):
    raise ValueError(f'{source}: not a state dict ({type(loaded).__name__})')
  return source, strip_prefix(state_dict, 'module.')


def to_numpy(value: Any) -> np.ndarray:
  """NumPy from NumPy / jax arrays or (CPU) torch tensors, without
  importing torch (a state dict passed in directly may hold tensors)."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value)
