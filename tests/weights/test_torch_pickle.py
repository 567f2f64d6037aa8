"""Tests for jaxface.weights.torch_pickle on checkpoints written by torch."""

import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxface.weights import torch_pickle

torch = pytest.importorskip('torch')

FORMATS = {'zip': True, 'legacy': False}


def _save(obj, path, fmt):
  torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
  return path


def _assert_same(ours, ref):
  """Exact comparison of a loaded array with the torch tensor it came from."""
  assert isinstance(ours, np.ndarray)
  assert ours.flags.c_contiguous and ours.flags.owndata
  assert ours.shape == tuple(ref.shape)
  ref = ref.detach()
  if ref.dtype == torch.bfloat16:
    assert ours.dtype == ml_dtypes.bfloat16
    # bf16 -> f32 is exact, so this compares every bit pattern but NaNs.
    np.testing.assert_array_equal(ours.astype(np.float32), ref.float().numpy())
  else:
    expected = ref.numpy()
    assert ours.dtype == expected.dtype
    np.testing.assert_array_equal(ours, expected)


def _checkpoint():
  """A state-dict-like object exercising dtypes, views and nesting."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(3, 4, 5, generator=g)
  shared = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  return collections.OrderedDict(
      f32=torch.randn(2, 3, generator=g),
      f16=torch.randn(7, generator=g).half(),
      bf16=torch.randn(3, 5, generator=g).to(torch.bfloat16),
      f64=torch.randn(2, 2, generator=g).double(),
      i64=torch.arange(-5, 5),
      i32=torch.tensor([1, -2, 3], dtype=torch.int32),
      u8=torch.tensor([0, 255, 7], dtype=torch.uint8),
      bool=torch.tensor([[True, False], [False, True]]),
      scalar=torch.tensor(3.25),
      empty=torch.zeros(0, 3),
      transposed=base.transpose(0, 2),
      sliced=base[:, 1:3, ::2],
      offset=base[2, 1],
      expanded=torch.arange(3.0).expand(4, 3),
      shared_full=shared,
      shared_row=shared[1],
      shared_col=shared[:, 4],
      shared_reshaped=shared.view(6, 4),
      param=torch.nn.Parameter(torch.ones(2, 2)),
      nested={'inner': {'w': torch.full((2,), 1.5)}, 'step': 7,
              'lr': [0.1, 0.01], 'name': 'gen'},
  )


def _flat_tensors(obj, prefix=''):
  if isinstance(obj, torch.Tensor):
    yield prefix, obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      yield from _flat_tensors(v, f'{prefix}/{k}')


def _get(obj, path):
  for part in path.strip('/').split('/'):
    obj = obj[part]
  return obj


@pytest.mark.parametrize('fmt', FORMATS)
def test_round_trip_exact(tmp_path, fmt):
  ckpt = _checkpoint()
  loaded = torch_pickle.load(_save(ckpt, tmp_path / 'ckpt.pth', fmt))
  assert isinstance(loaded, collections.OrderedDict)
  assert list(loaded) == list(ckpt)
  n = 0
  for path, tensor in _flat_tensors(ckpt):
    _assert_same(_get(loaded, path), tensor)
    n += 1
  assert n == 20
  assert loaded['nested']['step'] == 7
  assert loaded['nested']['lr'] == [0.1, 0.01]
  assert loaded['nested']['name'] == 'gen'


@pytest.mark.parametrize('fmt', FORMATS)
def test_shared_storage_becomes_independent_copies(tmp_path, fmt):
  loaded = torch_pickle.load(
      _save(_checkpoint(), tmp_path / 'ckpt.pth', fmt))
  before = loaded['shared_row'].copy()
  loaded['shared_full'][:] = -1
  np.testing.assert_array_equal(loaded['shared_row'], before)


@pytest.mark.parametrize('fmt', FORMATS)
def test_state_dict_of_a_module(tmp_path, fmt):
  model = torch.nn.Sequential(
      torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
  sd = model.state_dict()
  loaded = torch_pickle.load(_save(sd, tmp_path / 'm.pt', fmt))
  assert list(loaded) == list(sd)
  for k, v in sd.items():
    _assert_same(loaded[k], v)
  # The `_metadata` attribute that torch attaches survives as an attribute.
  assert hasattr(loaded, '_metadata')


@pytest.mark.parametrize('fmt', FORMATS)
def test_torch_values_and_numpy_values(tmp_path, fmt):
  param = torch.nn.Parameter(torch.arange(4.0))
  param.tag = 'with python state'  # Pickled via _rebuild_parameter_with_state.
  obj = {
      'size': torch.Size([2, 3]),
      'device': torch.device('cuda', 1),
      'cpu': torch.device('cpu'),
      'dtype': torch.float16,
      'param': param,
      'np_array': np.arange(6, dtype=np.int16).reshape(2, 3),
      'np_scalar': np.float64(2.5),
      'bytes': b'\x00\xffabc',
      'f8': torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn),
  }
  loaded = torch_pickle.load(_save(obj, tmp_path / 'v.pt', fmt))
  assert loaded['size'] == (2, 3) and type(loaded['size']) is tuple
  assert loaded['device'] == 'cuda:1'
  assert loaded['cpu'] == 'cpu'
  assert loaded['dtype'] == torch_pickle.TorchDtype('float16')
  assert loaded['dtype'].numpy == np.float16
  _assert_same(loaded['param'], param)
  np.testing.assert_array_equal(loaded['np_array'], obj['np_array'])
  assert loaded['np_array'].dtype == np.int16
  assert loaded['np_scalar'] == 2.5
  assert loaded['bytes'] == b'\x00\xffabc'
  assert loaded['f8'].dtype == ml_dtypes.float8_e4m3fn
  np.testing.assert_array_equal(loaded['f8'].astype(np.float32),
                                [0.5, -2.0, 448.0])


def test_big_endian_zip(tmp_path):
  """A zip checkpoint written on a big-endian machine is byte-swapped."""
  x = torch.randn(3, 4)
  src = _save({'x': x}, tmp_path / 'le.pt', 'zip')
  dst = tmp_path / 'be.pt'
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
    for info in zin.infolist():
      data = zin.read(info)
      if info.filename.endswith('/byteorder'):
        data = b'big'
      elif '/data/' in info.filename:
        data = np.frombuffer(data, np.float32).byteswap().tobytes()
      zout.writestr(info, data)
  _assert_same(torch_pickle.load(dst)['x'], x)


def test_strip_prefix():
  sd = collections.OrderedDict(
      [('module.a.weight', 1), ('module.b.bias', 2), ('c', 3)])
  assert torch_pickle.strip_prefix(sd) == {
      'a.weight': 1, 'b.bias': 2, 'c': 3}
  assert list(torch_pickle.strip_prefix(sd)) == ['a.weight', 'b.bias', 'c']
  assert torch_pickle.strip_prefix({'gen.x': 1}, 'gen.') == {'x': 1}
  with pytest.raises(ValueError, match='collides'):
    torch_pickle.strip_prefix({'module.a': 1, 'a': 2})


def test_data_parallel_checkpoint(tmp_path):
  model = torch.nn.DataParallel(torch.nn.Linear(3, 2))
  path = _save(model.state_dict(), tmp_path / 'dp.pth', 'legacy')
  sd = torch_pickle.strip_prefix(torch_pickle.load(path))
  assert set(sd) == {'weight', 'bias'}
  _assert_same(sd['weight'], model.module.weight)


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('keep', [0.5, 0.98, 40])
def test_truncated_file_names_the_file(tmp_path, fmt, keep):
  path = _save(_checkpoint(), tmp_path / 'ckpt.pth', fmt)
  data = path.read_bytes()
  n = keep if isinstance(keep, int) else int(len(data) * keep)
  path.write_bytes(data[:n])
  with pytest.raises(torch_pickle.TorchPickleError) as e:
    torch_pickle.load(path)
  assert str(path) in str(e.value)


def test_garbage_and_missing_files(tmp_path):
  path = tmp_path / 'junk.pth'
  path.write_bytes(b'this is not a checkpoint' * 10)
  with pytest.raises(torch_pickle.TorchPickleError, match='junk.pth'):
    torch_pickle.load(path)
  with pytest.raises(FileNotFoundError, match='nope.pth'):
    torch_pickle.load(tmp_path / 'nope.pth')


class _Evil:
  """Unpickling this would run a shell command that creates `marker`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def _legacy_bytes(payload: bytes) -> bytes:
  header = b''.join(pickle.dumps(x, protocol=2) for x in (
      0x1950A86A20F9469CFC6C, 1001,
      {'protocol_version': 1001, 'little_endian': True}))
  return header + payload + pickle.dumps([], protocol=2)


@pytest.mark.parametrize('fmt', FORMATS)
def test_forbidden_global_is_refused(tmp_path, fmt):
  marker = tmp_path / 'pwned'
  payload = pickle.dumps({'w': _Evil(marker)}, protocol=2)
  path = tmp_path / 'evil.pth'
  if fmt == 'zip':
    with zipfile.ZipFile(path, 'w') as zf:
      zf.writestr('archive/data.pkl', payload)
      zf.writestr('archive/version', b'3\n')
  else:
    path.write_bytes(_legacy_bytes(payload))
  with pytest.raises(torch_pickle.ForbiddenGlobalError) as e:
    torch_pickle.load(path)
  assert 'system' in str(e.value) and str(path) in str(e.value)
  assert not marker.exists()


@pytest.mark.parametrize('fmt', FORMATS)
def test_pickled_module_is_refused(tmp_path, fmt):
  path = _save(torch.nn.Linear(2, 2), tmp_path / 'model.pt', fmt)
  with pytest.raises(torch_pickle.ForbiddenGlobalError, match='state_dict'):
    torch_pickle.load(path)


def test_out_of_bounds_view_is_refused(tmp_path):
  """A corrupt stride cannot make the loader read outside a storage."""
  buf = io.BytesIO()
  torch.save({'x': torch.arange(4.0)}, buf,
             _use_new_zipfile_serialization=False)
  data = buf.getvalue()
  # The size tuple (4,) is pickled as BININT1 4 then TUPLE1; make it (40,).
  patched = data.replace(b'K\x04\x85', b'K\x28\x85', 1)
  assert patched != data
  path = tmp_path / 'oob.pth'
  path.write_bytes(patched)
  with pytest.raises(torch_pickle.TorchPickleError, match='past the end'):
    torch_pickle.load(path)
