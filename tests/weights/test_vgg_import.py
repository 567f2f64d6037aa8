"""Tests for jaxface.weights.vgg (torchvision import, .npz) and weights.npz."""

import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxface.models import vgg as vgg_model
from jaxface.weights import npz
from jaxface.weights import vgg

_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


@pytest.fixture
def torch_state_dict(torch_vgg19):
  return torch_vgg19.state_dict()


@pytest.fixture
def legacy_pth(torch_state_dict, tmp_path_factory):
  """The state dict in the legacy format, like `vgg19-dcbb9e9d.pth`."""
  import torch  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('vgg') / 'vgg19-legacy.pth'
  torch.save(torch_state_dict, path, _use_new_zipfile_serialization=False)
  return path


def _check_params(params, state_dict, last_layer='relu5_4'):
  layers = vgg_model.layers_up_to(last_layer)
  assert list(params) == [vgg_model.conv_name(n) for n in layers]
  for layer, index in zip(layers, _CONV_INDICES):
    entry = params[vgg_model.conv_name(layer)]
    weight = state_dict[f'features.{index}.weight'].numpy()
    bias = state_dict[f'features.{index}.bias'].numpy()
    assert entry['kernel'].dtype == np.float32
    np.testing.assert_array_equal(entry['kernel'],
                                  weight.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(entry['bias'], bias)


def test_from_torchvision_legacy_file(legacy_pth, torch_state_dict):
  params = vgg.from_torchvision(legacy_pth)
  _check_params(params, torch_state_dict)
  assert type(params) is dict
  assert all(type(v) is dict for v in params.values())


def test_from_torchvision_zip_file_and_module_prefix(tmp_path,
                                                     torch_state_dict):
  import torch  # pylint: disable=g-import-not-at-top
  prefixed = {f'module.{k}': v for k, v in torch_state_dict.items()}
  path = tmp_path / 'vgg19.pt'
  torch.save(prefixed, path)
  _check_params(vgg.from_torchvision(path), torch_state_dict)


def test_from_torchvision_in_memory_state_dict(torch_state_dict):
  # torch tensors are accepted directly as well as numpy arrays.
  _check_params(vgg.from_torchvision(torch_state_dict), torch_state_dict)
  as_numpy = {k: v.numpy() for k, v in torch_state_dict.items()}
  params = vgg.from_torchvision(as_numpy, last_layer='relu2_1')
  _check_params(params, torch_state_dict, last_layer='relu2_1')


def test_params_drive_the_model(torch_state_dict):
  params = vgg.from_torchvision(torch_state_dict, last_layer='relu2_1')
  model = vgg_model.VGG19(outputs=('relu2_1',), last_layer='relu2_1')
  x = jnp.zeros((1, 8, 8, 3))
  expected = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(
      lambda a: a.shape, expected)


def test_shape_mismatch_names_key_and_file(tmp_path, torch_state_dict):
  import torch  # pylint: disable=g-import-not-at-top
  bad = dict(torch_state_dict)
  bad['features.5.weight'] = torch.zeros(128, 32, 3, 3)
  path = tmp_path / 'bad.pth'
  torch.save(bad, path, _use_new_zipfile_serialization=False)
  with pytest.raises(ValueError) as e:
    vgg.from_torchvision(path)
  message = str(e.value)
  assert 'features.5.weight' in message and str(path) in message
  assert '(128, 32, 3, 3)' in message and '(128, 64, 3, 3)' in message


def test_missing_key_names_key_and_file(tmp_path, torch_state_dict):
  import torch  # pylint: disable=g-import-not-at-top
  partial = {k: v for k, v in torch_state_dict.items()
             if k != 'features.34.bias'}
  path = tmp_path / 'partial.pth'
  torch.save(partial, path)
  with pytest.raises(KeyError) as e:
    vgg.from_torchvision(path)
  assert 'features.34.bias' in str(e.value) and str(path) in str(e.value)
  # Not needed when converting only up to relu5_2.
  params = vgg.from_torchvision(path, last_layer='relu5_2')
  assert list(params)[-1] == 'conv5_2'


def test_npz_round_trip_is_exact(tmp_path, legacy_pth):
  params = vgg.from_torchvision(legacy_pth)
  path = tmp_path / 'vgg19.npz'
  vgg.save_npz(path, params)
  loaded = vgg.load_npz(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  assert os.listdir(tmp_path) == ['vgg19.npz']  # No temporary files left.


def test_generic_npz_keeps_dtypes_and_overwrites(tmp_path):
  tree = {
      'enc': {'conv': {'kernel': jnp.arange(6.0).reshape(2, 3),
                       'bias': np.array([1, 2], np.int32)}},
      'bf16': jnp.array([1.5, -2.25], jnp.bfloat16),
      'f8': np.array([0.5, 2.0], ml_dtypes.float8_e4m3fn),
      'scalar': np.float32(3.0),
  }
  path = tmp_path / 'tree.npz'
  npz.save_npz(path, {'old': np.zeros(1)})
  npz.save_npz(path, tree)  # Replaces the old file atomically.
  loaded = npz.load_npz(path)
  assert set(loaded) == {'enc', 'bf16', 'f8', 'scalar'}
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(tree)):
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.astype(np.float32),
                                  want.astype(np.float32))
  assert sorted(os.listdir(tmp_path)) == ['tree.npz']


def test_npz_rejects_slash_in_keys(tmp_path):
  with pytest.raises(ValueError, match='/'):
    npz.save_npz(tmp_path / 'x.npz', {'a/b': np.zeros(1)})
  assert not os.listdir(tmp_path)


def test_npz_shape_check(tmp_path, torch_state_dict):
  params = vgg.from_torchvision(torch_state_dict, last_layer='relu2_1')
  params['conv1_2']['bias'] = np.zeros(3, np.float32)
  path = tmp_path / 'bad.npz'
  vgg.save_npz(path, params)
  with pytest.raises(ValueError, match='conv1_2/bias'):
    vgg.load_npz(path, last_layer='relu2_1')
  params['conv1_2']['bias'] = np.zeros(64, np.float32)
  vgg.save_npz(path, params)
  assert list(vgg.load_npz(path, last_layer='relu2_1')) == [
      'conv1_1', 'conv1_2', 'conv2_1']
  with pytest.raises(KeyError, match='conv2_2/kernel'):
    vgg.load_npz(path, last_layer='relu2_2')


@pytest.mark.parametrize('name', ['vgg19.pth', 'vgg19.pt', 'vgg19.pth.tar',
                                  'vgg19.npz'])
def test_load_vgg19_dispatches_on_extension(tmp_path, name, legacy_pth,
                                            torch_state_dict):
  path = tmp_path / name
  if name.endswith('.npz'):
    vgg.save_npz(path, vgg.from_torchvision(legacy_pth))
  else:
    path.write_bytes(legacy_pth.read_bytes())
  _check_params(vgg.load_vgg19(path), torch_state_dict)


def test_load_vgg19_errors(tmp_path):
  missing = tmp_path / 'absent.pth'
  with pytest.raises(FileNotFoundError, match='absent.pth'):
    vgg.load_vgg19(missing)
  other = tmp_path / 'vgg19.h5'
  other.write_bytes(b'x')
  with pytest.raises(ValueError, match='vgg19.h5'):
    vgg.load_vgg19(other)
