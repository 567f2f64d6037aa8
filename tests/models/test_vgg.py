"""Tests for jaxface.models.vgg.VGG19, including parity with torchvision's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import vgg
from jaxface.weights import vgg as vgg_weights

# torchvision `features` index of each ReLU (the module after its conv).
_RELU_INDEX = {name: i + 1 for name, i in vgg.TORCHVISION_CONV_INDEX.items()}


@pytest.fixture
def torch_reference(tmp_path, torch_vgg19):
  """(torch features, path of its legacy-format torchvision-style .pth)."""
  torch = pytest.importorskip('torch')
  path = tmp_path / 'vgg19.pth'
  torch.save(torch_vgg19.state_dict(), path,
             _use_new_zipfile_serialization=False)
  model = torch_vgg19
  return model.features, path


def _input(shape=(2, 64, 64, 3), seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_param_tree_names_and_shapes():
  model = vgg.VGG19(outputs=('relu3_1',), last_layer='relu3_1')
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 32, 32, 3)))
  shapes = jax.tree.map(lambda x: x.shape, variables['params'])
  assert list(shapes) == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2',
                          'conv3_1']
  assert shapes == vgg_weights.expected_shapes('relu3_1')
  assert shapes['conv3_1'] == {'kernel': (3, 3, 128, 256), 'bias': (256,)}

  default = jax.eval_shape(vgg.VGG19().init, jax.random.key(0),
                           jnp.zeros((1, 32, 32, 3)))
  assert list(default['params'])[-1] == 'conv5_2'
  assert len(default['params']) == 14


def test_output_shapes():
  outputs = ('relu4_2', 'relu1_1', 'relu2_2', 'relu5_1')
  model = vgg.VGG19(outputs=outputs, last_layer='relu5_1')
  x = jnp.zeros((2, 48, 40, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert set(out) == set(outputs)
  assert out['relu1_1'].shape == (2, 48, 40, 64)
  assert out['relu2_2'].shape == (2, 24, 20, 128)
  assert out['relu4_2'].shape == (2, 6, 5, 512)
  assert out['relu5_1'].shape == (2, 3, 2, 512)  # Odd sizes floor, as torch.


@pytest.mark.parametrize('kwargs', [
    {'outputs': ('relu5_3',)},  # Past the default last_layer relu5_2.
    {'outputs': ('relu6_1',), 'last_layer': 'relu5_4'},
    {'outputs': ('conv1_1',)},
    {'outputs': ('relu1_1',), 'last_layer': 'pool5'},
])
def test_rejects_bad_layer_names(kwargs):
  model = vgg.VGG19(**kwargs)
  with pytest.raises(ValueError, match='layer'):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_matches_torchvision_float32(torch_reference):
  import torch  # pylint: disable=g-import-not-at-top
  features, path = torch_reference
  x = _input()
  with torch.no_grad():
    h = torch.from_numpy(x.transpose(0, 3, 1, 2))
    expected = {}
    index_to_name = {i: n for n, i in _RELU_INDEX.items()}
    for i, layer in enumerate(features):
      h = layer(h)
      if i in index_to_name:
        expected[index_to_name[i]] = h.numpy().transpose(0, 2, 3, 1)

  params = vgg_weights.from_torchvision(path)
  model = vgg.VGG19(outputs=vgg.LAYERS, last_layer='relu5_4')
  out = jax.jit(model.apply)({'params': params}, x)
  assert set(out) == set(vgg.LAYERS)
  for name, ref in expected.items():
    got = np.asarray(out[name])
    assert got.dtype == np.float32 and got.shape == ref.shape, name
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=name)


def test_bfloat16_compute_is_close(torch_reference):
  _, path = torch_reference
  params = vgg_weights.from_torchvision(path, last_layer='relu5_2')
  x = _input(seed=1)
  outs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = vgg.VGG19(dtype=dtype)
    outs[dtype] = jax.jit(model.apply)({'params': params}, x)
  for name in vgg.DEFAULT_OUTPUTS:
    low, ref = outs[jnp.bfloat16][name], np.asarray(outs[jnp.float32][name])
    assert low.dtype == jnp.bfloat16
    err = np.abs(np.asarray(low, np.float32) - ref).max()
    assert err <= 0.1 * np.abs(ref).max(), name


def test_imagenet_normalize():
  model = vgg.VGG19(outputs=('relu1_2',), last_layer='relu1_2')
  x = jnp.asarray(_input((1, 16, 16, 3)))
  variables = model.init(jax.random.key(0), x)
  normalized = model.clone(imagenet_normalize=True).apply(variables, x)
  mean = jnp.asarray(vgg.IMAGENET_MEAN)
  std = jnp.asarray(vgg.IMAGENET_STD)
  manual = model.apply(variables, (x - mean) / std)
  np.testing.assert_allclose(normalized['relu1_2'], manual['relu1_2'],
                             rtol=1e-5, atol=1e-5)


def test_gradient_reaches_the_input():
  model = vgg.VGG19(outputs=('relu2_1',), last_layer='relu2_1')
  x = jnp.asarray(_input((1, 16, 16, 3)))
  variables = model.init(jax.random.key(0), x)
  grad = jax.grad(lambda x: model.apply(variables, x)['relu2_1'].sum())(x)
  assert grad.shape == x.shape
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
