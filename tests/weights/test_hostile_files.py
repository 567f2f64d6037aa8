"""Hostile and damaged weight files: refused cleanly, before any allocation.

Every file is crafted here by hand (no torch needed): small files that
declare huge sizes, tensors that reach outside their storage, zip bombs,
pickles that make an unpickler allocate or crash. Each must raise the
module's error naming the file (and the tensor or array), and must do so
without allocating more than a few MB (measured with tracemalloc, which also
sees numpy's allocations). Cases that crashed the interpreter before they
were refused run in a subprocess, so a regression fails only its test.
"""

import contextlib
import io
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from typing import Any, NamedTuple
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxface.weights import npz
from jaxface.weights import torch_pickle

_MB = 1 << 20
_PEAK_LIMIT = 4 * _MB


@contextlib.contextmanager
def _peak_memory():
  """Yields a list that holds the traced peak bytes once the block exits."""
  result = []
  tracemalloc.start()
  try:
    yield result
  finally:
    result.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()


def _assert_refused(load, path, error, *fragments):
  """`load(path)` raises `error` naming the file and `fragments`, cheaply."""
  with _peak_memory() as peak:
    with pytest.raises(error) as e:
      load(path)
  message = str(e.value)
  assert str(path) in message
  for fragment in fragments:
    assert fragment in message
  assert peak[0] < _PEAK_LIMIT, f'peak {peak[0]} bytes for: {message}'
  return message


# A tiny pickle writer, so that files can say anything a hostile one could.


class Global(NamedTuple):
  module: str
  name: str


class Call(NamedTuple):
  func: Any
  args: tuple[Any, ...]


class PersistentId(NamedTuple):
  pid: tuple[Any, ...]


class Raw(bytes):
  """Opcodes written as they are."""


def _ops(obj) -> bytes:
  """Pickle opcodes (protocol 3) that build `obj`."""
  if isinstance(obj, Raw):
    return bytes(obj)
  if isinstance(obj, Global):
    return f'c{obj.module}\n{obj.name}\n'.encode()
  if isinstance(obj, Call):
    return _ops(obj.func) + _ops(tuple(obj.args)) + b'R'
  if isinstance(obj, PersistentId):
    return _ops(obj.pid) + b'Q'
  if obj is None:
    return b'N'
  if isinstance(obj, bool):
    return b'\x88' if obj else b'\x89'
  if isinstance(obj, int):
    data = obj.to_bytes(obj.bit_length() // 8 + 1, 'little', signed=True)
    return b'\x8a' + bytes([len(data)]) + data  # LONG1
  if isinstance(obj, str):
    data = obj.encode()
    return b'X' + struct.pack('<I', len(data)) + data
  if isinstance(obj, bytes):
    return b'B' + struct.pack('<I', len(obj)) + obj
  if isinstance(obj, tuple):
    return b'(' + b''.join(_ops(x) for x in obj) + b't'
  if isinstance(obj, list):
    return b']' + b'(' + b''.join(_ops(x) for x in obj) + b'e'
  if isinstance(obj, dict):
    return b'}' + b'(' + b''.join(
        _ops(k) + _ops(v) for k, v in obj.items()) + b'u'
  raise TypeError(obj)


def _pickle(obj) -> bytes:
  return b'\x80\x03' + _ops(obj) + b'.'


def _tensor(key, numel, offset, size, stride, storage='FloatStorage'):
  """A tensor over storage `key`, as torch pickles it."""
  pid = PersistentId(('storage', Global('torch', storage), key, 'cpu', numel))
  return Call(Global('torch._utils', '_rebuild_tensor_v2'),
              (pid, offset, tuple(size), tuple(stride), False,
               Call(Global('collections', 'OrderedDict'), ())))


def _write_zip(path, obj, storages=(), pickle_bytes=None):
  """A zip-format checkpoint; `storages` are (key, bytes) pairs."""
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl',
                pickle_bytes if pickle_bytes is not None else _pickle(obj))
    zf.writestr('archive/byteorder', 'little')
    for key, data in storages:
      zf.writestr(f'archive/data/{key}', data)
  return path


def _write_legacy(path, obj, storages):
  """A legacy-format checkpoint; `storages` are (key, numel, bytes)."""
  header = b''.join(pickle.dumps(x, protocol=2) for x in (
      0x1950A86A20F9469CFC6C, 1001,
      {'protocol_version': 1001, 'little_endian': True}))
  body = b''.join(struct.pack('<q', numel) + data
                  for _, numel, data in storages)
  keys = pickle.dumps([key for key, _, _ in storages], protocol=2)
  path.write_bytes(header + _pickle(obj) + keys + body)
  return path


_SIX = np.arange(6, dtype=np.float32)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_handmade_checkpoint_loads(tmp_path, fmt):
  """The writer above makes files the loader accepts (so refusals count)."""
  obj = {'w': _tensor('0', 6, 0, (2, 3), (3, 1)),
         't': _tensor('0', 6, 1, (2, 2), (1, 3)),
         'b': _tensor('0', 6, 5, (4,), (0,))}
  path = tmp_path / 'ok.pth'
  if fmt == 'zip':
    _write_zip(path, obj, [('0', _SIX.tobytes())])
  else:
    _write_legacy(path, obj, [('0', 6, _SIX.tobytes())])
  loaded = torch_pickle.load(path)
  np.testing.assert_array_equal(loaded['w'], _SIX.reshape(2, 3))
  np.testing.assert_array_equal(loaded['t'], [[1, 4], [2, 5]])
  np.testing.assert_array_equal(loaded['b'], [5, 5, 5, 5])


def test_zip_storage_larger_than_its_member(tmp_path):
  path = _write_zip(
      tmp_path / 'huge.pth',
      {'w': _tensor('huge_storage', 2**40, 0, (2**20, 2**20), (2**20, 1))},
      [('huge_storage', b'\0' * 16)])
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage huge_storage', 'needs 4398046511104 bytes')


def test_zip_member_is_read_only_as_far_as_its_storage(tmp_path):
  """A 32 MiB deflated member behind a 4-element storage: 16 bytes read."""
  path = tmp_path / 'long_member.pth'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    zf.writestr('archive/data.pkl', _pickle({'w': _tensor('0', 4, 0, (4,),
                                                          (1,))}))
    with zf.open('archive/data/0', 'w') as member:
      for _ in range(32):
        member.write(bytes(_MB))
  with _peak_memory() as peak:
    loaded = torch_pickle.load(path)
  np.testing.assert_array_equal(loaded['w'], np.zeros(4, np.float32))
  assert peak[0] < _PEAK_LIMIT


def _write_lzma_zeros(zf, name, header=b'', nbytes=32 * _MB):
  with zf.open(name, 'w') as member:
    member.write(header)
    for _ in range(nbytes // _MB):
      member.write(bytes(_MB))


def test_zip_bomb_member_is_refused(tmp_path):
  """LZMA packs 32 MiB of zeros into a few KB, beyond deflate's ratio."""
  path = tmp_path / 'bomb.pth'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_LZMA) as zf:
    # Stored: merely opening an LZMA member allocates an 8 MiB dictionary.
    zf.writestr('archive/data.pkl', _pickle(
        {'w': _tensor('bomb', 8 * _MB, 0, (8 * _MB,), (1,))}),
                compress_type=zipfile.ZIP_STORED)
    _write_lzma_zeros(zf, 'archive/data/bomb')
  assert path.stat().st_size < 64 * 1024
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage bomb', 'zip bomb')


def test_zip_members_claiming_more_than_the_archive(tmp_path):
  """Members whose compressed sizes add up to more than the file overlap."""
  path = _write_zip(tmp_path / 'overlap.pth',
                    {'a': _tensor('a', 4, 0, (4,), (1,)),
                     'b': _tensor('b', 4, 0, (4,), (1,))},
                    [('a', bytes(16)), ('b', bytes(16))])
  data = bytearray(path.read_bytes())
  # Member a's central directory entry (46 bytes before its name) claims
  # nearly the whole file as its compressed size (at +20); read as stored
  # data only its 16 bytes would be used, so nothing else would notice.
  entry = data.index(b'archive/data/a', data.index(b'PK\x01\x02')) - 46
  assert data[entry:entry + 4] == b'PK\x01\x02'
  data[entry + 20:entry + 24] = struct.pack('<I', len(data) - 100)
  path.write_bytes(bytes(data))
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage a', 'overlap')


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
@pytest.mark.parametrize('offset,size,stride', [
    (0, (2, 3), (3, 1)),  # Needs 6 elements of 4.
    (3, (2,), (1,)),  # Starts inside, ends outside.
    (0, (2, 2), (1, 4)),  # A stride past the end.
    (4, (1,), (1,)),  # Starts at the end.
])
def test_tensor_reaching_past_its_storage(tmp_path, fmt, offset, size,
                                          stride):
  obj = {'w': _tensor('short', 4, offset, size, stride)}
  path = tmp_path / 'past.pth'
  if fmt == 'zip':
    _write_zip(path, obj, [('short', bytes(16))])
  else:
    _write_legacy(path, obj, [('short', 4, bytes(16))])
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage short', 'past the end')


@pytest.mark.parametrize('offset,size,stride', [
    (0, (2,), (-1,)),
    (-1, (2,), (1,)),
    (0, (-2,), (1,)),
    (2, (2, 2), (-1, 1)),
])
def test_negative_size_stride_or_offset(tmp_path, offset, size, stride):
  path = _write_zip(tmp_path / 'negative.pth',
                    {'w': _tensor('neg', 4, offset, size, stride)},
                    [('neg', bytes(16))])
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage neg', 'negative')


def test_empty_tensors_need_no_storage(tmp_path):
  path = _write_zip(tmp_path / 'empty.pth',
                    {'e': _tensor('e', 0, 0, (0, 3), (3, 1)),
                     'f': _tensor('e', 0, 7, (5, 0), (0, 0))},
                    [('e', b'')])
  loaded = torch_pickle.load(path)
  assert loaded['e'].shape == (0, 3) and loaded['f'].shape == (5, 0)


def test_empty_tensor_with_absurd_shape(tmp_path):
  path = _write_zip(
      tmp_path / 'absurd.pth',
      {'w': _tensor('absurd', 0, 0, (0, 2**62, 2**62), (0, 0, 0))},
      [('absurd', b'')])
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage absurd', 'too large')


def test_broadcast_beyond_the_copy_budget(tmp_path):
  """Stride 0 makes one stored float a 1 GiB tensor: refused, not copied."""
  path = _write_zip(tmp_path / 'broadcast.pth',
                    {'w': _tensor('one', 1, 0, (2**14, 2**14), (0, 0))},
                    [('one', bytes(4))])
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage one', 'more than')


def test_legacy_storage_larger_than_the_file(tmp_path):
  path = _write_legacy(
      tmp_path / 'legacy_huge.pth',
      {'w': _tensor('huge_legacy', 2**40, 0, (2**40,), (1,))},
      [('huge_legacy', 2**40, bytes(16))])
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'storage huge_legacy', 'bytes are left in the file')


@pytest.mark.parametrize('pickle_bytes', [
    # BINBYTES8 declaring 8 GiB, then 10 bytes.
    b'\x80\x04\x8e' + struct.pack('<Q', 2**33) + b'x' * 10 + b'.',
    # LONG_BINPUT at memo index 2**24 (a 128 MiB memo in the C unpickler),
    # then the end of the data.
    b'\x80\x02N' + b'r' + struct.pack('<I', 2**24),
    # numpy.ndarray((2**28,)): a 2 GiB array from 60 bytes.
    _pickle(Call(Global('numpy', 'ndarray'), ((2**28,),))),
], ids=['binbytes8', 'memo', 'ndarray'])
def test_pickle_cannot_allocate_ahead_of_its_input(tmp_path, pickle_bytes):
  path = _write_zip(tmp_path / 'pickle.pth', None,
                    pickle_bytes=pickle_bytes)
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError)


def test_numpy_object_dtype_is_refused(tmp_path):
  path = _write_zip(tmp_path / 'object.pth',
                    {'d': Call(Global('numpy', 'dtype'), ('O8', False, True))})
  _assert_refused(torch_pickle.load, path, torch_pickle.ForbiddenGlobalError,
                  'object')


def _load_in_subprocess(path):
  """Output of loading `path` in a fresh interpreter (which may crash)."""
  code = textwrap.dedent(f'''
      from jaxface.weights import torch_pickle
      try:
        torch_pickle.load({str(path)!r})
      except torch_pickle.TorchPickleError as e:
        print('refused:', str(e)[:2000])
  ''')
  root = pathlib.Path(torch_pickle.__file__).parents[2]  # Holds jaxface/.
  return subprocess.run([sys.executable, '-c', code], cwd=root,
                        capture_output=True, text=True, timeout=120,
                        check=False)


def test_deeply_nested_tuple_is_refused(tmp_path):
  """Hashing a million-deep tuple (a dict key) overflows the C stack."""
  key = Raw(b'N' + b'\x85' * 1_000_000)
  path = _write_zip(tmp_path / 'deep.pth', None,
                    pickle_bytes=b'\x80\x02}' + _ops(key) + b'Ns.')
  result = _load_in_subprocess(path)
  assert result.returncode == 0, result
  assert 'refused:' in result.stdout and 'nested' in result.stdout
  assert str(path) in result.stdout


def _forged_dtype(flags):
  """Opcodes for a void dtype whose BUILD sets numpy's `flags`."""
  return Raw(_ops(Call(Global('numpy', 'dtype'), ('V8', False, True))) +
             _ops((3, '|', None, None, None, 8, 1, flags)) + b'b')


def test_numpy_array_with_forged_dtype_flags_is_refused(tmp_path):
  """A void dtype flagged as holding objects: numpy crashes on the array."""
  array = Raw(
      _ops(Call(Global('numpy.core.multiarray', '_reconstruct'),
                (Global('numpy', 'ndarray'), (0,), b'b'))) +
      b'(' + _ops(1) + _ops((2**25,)) + _forged_dtype(0x3f) + _ops(False) +
      _ops([1]) + b't' + b'b')
  path = _write_zip(tmp_path / 'flags.pth', None,
                    pickle_bytes=b'\x80\x03' + array + b'.')
  result = _load_in_subprocess(path)
  assert result.returncode == 0, result
  assert 'refused:' in result.stdout and 'dtype' in result.stdout
  assert str(path) in result.stdout


@pytest.mark.parametrize('flags', [0x3f, 0x02])
def test_numpy_dtype_with_forged_flags_is_refused(tmp_path, flags):
  path = _write_zip(tmp_path / 'flags.pth', {'d': _forged_dtype(flags)})
  _assert_refused(torch_pickle.load, path, torch_pickle.TorchPickleError,
                  'numpy', 'dtype')


def test_numpy_values_still_load(tmp_path):
  """Arrays, dtypes and scalars that numpy pickles itself are accepted."""
  data = pickle.dumps({'a': np.arange(6, dtype=np.int16).reshape(2, 3),
                       'f': np.asfortranarray(np.ones((2, 3), '>f8')),
                       'd': np.dtype('>M8[s]'), 's': np.float32(1.5)},
                      protocol=2)
  loaded = torch_pickle.load(
      _write_zip(tmp_path / 'numpy.pth', None, pickle_bytes=data))
  for key, value in pickle.loads(data).items():
    np.testing.assert_array_equal(loaded[key], value)
    assert np.asarray(loaded[key]).dtype == np.asarray(value).dtype
    assert type(loaded[key]) is type(value)


# .npz


def _npy(header: dict[str, Any], body: bytes, version=(1, 0)) -> bytes:
  f = io.BytesIO()
  if version == (1, 0):
    np.lib.format.write_array_header_1_0(f, header)
  else:
    np.lib.format.write_array_header_2_0(f, header)
  return f.getvalue() + body


def _write_npz(path, members, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, 'w', compression) as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  return path


def test_npz_header_larger_than_its_member(tmp_path):
  big = _npy({'descr': '<f8', 'fortran_order': False,
              'shape': (2**20, 2**20)}, bytes(16))
  path = _write_npz(tmp_path / 'big.npz',
                    {'fine.npy': _npy({'descr': '<f4', 'fortran_order': False,
                                       'shape': (2,)}, bytes(8)),
                     'conv1_1/kernel.npy': big})
  _assert_refused(npz.load_npz, path, npz.NpzError, "'conv1_1/kernel'",
                  'holds 16 bytes')


@pytest.mark.parametrize('version', [(1, 0), (2, 0)])
def test_npz_header_smaller_than_its_member(tmp_path, version):
  path = _write_npz(tmp_path / 'small.npz', {'x.npy': _npy(
      {'descr': '<f4', 'fortran_order': False, 'shape': (2,)}, bytes(12),
      version)})
  _assert_refused(npz.load_npz, path, npz.NpzError, "'x'", 'holds 12 bytes')


def test_npz_object_array_is_refused(tmp_path):
  f = io.BytesIO()
  np.lib.format.write_array(f, np.array([1, None], dtype=object),
                            allow_pickle=True)
  path = _write_npz(tmp_path / 'object.npz', {'evil.npy': f.getvalue()})
  _assert_refused(npz.load_npz, path, npz.NpzError, "'evil'",
                  'object arrays are refused')


def test_npz_bad_header_names_the_array(tmp_path):
  path = _write_npz(tmp_path / 'header.npz',
                    {'bad.npy': b'\x93NUMPY\x01\x00' + b'\xff' * 40})
  _assert_refused(npz.load_npz, path, npz.NpzError, "'bad'")


def test_npz_zip_bomb_member_is_refused(tmp_path):
  path = tmp_path / 'bomb.npz'
  header = _npy({'descr': '|u1', 'fortran_order': False,
                 'shape': (32 * _MB,)}, b'')
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_LZMA) as zf:
    _write_lzma_zeros(zf, 'bomb.npy', header)
  _assert_refused(npz.load_npz, path, npz.NpzError, "'bomb'", 'zip bomb')


def _saved_npz(tmp_path):
  path = tmp_path / 'params.npz'
  npz.save_npz(path, {'conv': {'kernel': np.arange(4096, dtype=np.float32),
                               'bias': np.ones(3, ml_dtypes.bfloat16)}})
  return path


@pytest.mark.parametrize('keep', [0.3, 0.9, 0.99, 10])
def test_npz_truncated_names_the_file(tmp_path, keep):
  path = _saved_npz(tmp_path)
  data = path.read_bytes()
  path.write_bytes(data[:keep if isinstance(keep, int) else
                        int(len(data) * keep)])
  _assert_refused(npz.load_npz, path, npz.NpzError)


def test_npz_corrupt_member_names_the_array(tmp_path):
  path = _saved_npz(tmp_path)
  data = bytearray(path.read_bytes())
  data[data.index(b'\x93NUMPY') + 1000] ^= 0xff  # Inside conv/kernel's data.
  path.write_bytes(bytes(data))
  _assert_refused(npz.load_npz, path, npz.NpzError, "'conv/kernel'")


def test_npz_round_trip_still_loads(tmp_path):
  loaded = npz.load_npz(_saved_npz(tmp_path))
  np.testing.assert_array_equal(loaded['conv']['kernel'], np.arange(4096))
  assert loaded['conv']['bias'].dtype == ml_dtypes.bfloat16
  assert loaded['conv']['kernel'].flags.writeable


def test_npz_stored_member_claiming_more_than_it_holds(tmp_path):
  """A stored (uncompressed) member holds exactly its bytes: a directory that
  claims more is refused before numpy allocates the claim."""
  body = bytes(16)
  claim = 100 * (len(_npy({'descr': '|u1', 'fortran_order': False,
                           'shape': (16,)}, body)))
  header = _npy({'descr': '|u1', 'fortran_order': False,
                 'shape': (claim - 128,)}, b'')
  member = header + body
  path = _write_npz(tmp_path / 'liar.npz', {'liar.npy': member})
  data = bytearray(path.read_bytes())
  claimed = (len(header) + claim - 128).to_bytes(4, 'little')
  local = data.index(b'PK\x03\x04')
  central = data.index(b'PK\x01\x02')
  data[local + 22:local + 26] = claimed  # uncompressed size, both headers
  data[central + 24:central + 28] = claimed
  path.write_bytes(bytes(data))
  _assert_refused(npz.load_npz, path, npz.NpzError, "'liar'",
                  'corrupt directory')
