"""Tests for jaxface.models.vgg.VGG19, including parity with torchvision's.

Through 16 layers a worst-case running error bound grows by about sqrt(9 C)
a layer more than the error does, so the network is checked layer by layer
instead: each ReLU output we compute must be within its conv's own rounding
bound of the layer recomputed in float64 from our previous output (pools and
ReLUs are exact, or 1-Lipschitz).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
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


def _layerwise(torch, x, out, names, convs):
  """Yields (name, float64 output, sum of |terms| of its conv, Cin).

  Each layer (pool if a block starts, conv, ReLU) runs in float64 on our
  previous output `out[...]` (or the input x), so the comparison isolates
  that layer's rounding.

  Args:
    torch: the torch module.
    x: [B, H, W, 3] input of the first conv (as the network saw it).
    out: our outputs by ReLU name, for every name in `names`.
    names: the ReLU names, in order from relu1_1.
    convs: name -> float64 `torch.nn.Conv2d`.
  """
  f = torch.nn.functional
  prev = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2))
  block = 1
  for name in names:
    if int(name[len('relu')]) != block:
      prev = f.max_pool2d(prev, 2)
      block = int(name[len('relu')])
    conv = convs[name]
    with torch.no_grad():
      want = torch.relu(conv(prev))
      terms = f.conv2d(prev.abs(), conv.weight.abs(), conv.bias.abs(),
                       padding=1)
    yield (name, want.numpy().transpose(0, 2, 3, 1),
           terms.numpy().transpose(0, 2, 3, 1), prev.shape[1])
    prev = torch.from_numpy(np.asarray(out[name], np.float64).transpose(
        0, 3, 1, 2))


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
  params = vgg_weights.from_torchvision(path)
  model = vgg.VGG19(outputs=vgg.LAYERS, last_layer='relu5_4')
  out = jax.jit(model.apply)({'params': params}, x)
  assert set(out) == set(vgg.LAYERS)
  # torchvision's own layers, in float64.
  features = copy.deepcopy(features).double()
  convs = {name: features[i] for name, i in vgg.TORCHVISION_CONV_INDEX.items()}
  assert all(isinstance(features[i], torch.nn.ReLU)
             for i in _RELU_INDEX.values())
  for name, want, terms, cin in _layerwise(torch, x, out, vgg.LAYERS, convs):
    got = np.asarray(out[name])
    assert got.dtype == np.float32 and got.shape == want.shape, name
    # 9 Cin products and the bias per output; the ReLU is 1-Lipschitz.
    numerics.assert_within(got, want, numerics.gamma(9 * cin + 1) * terms,
                           name)


def test_bfloat16_compute_is_close(torch_reference):
  import torch  # pylint: disable=g-import-not-at-top
  _, path = torch_reference
  params = vgg_weights.from_torchvision(path, last_layer='relu5_2')
  x = _input(seed=1)
  names = vgg.layers_up_to('relu5_2')
  outs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = vgg.VGG19(dtype=dtype, outputs=names)
    outs[dtype] = jax.jit(model.apply)({'params': params}, x)
  low = {k: np.asarray(v.astype(jnp.float32)) for k, v in
         outs[jnp.bfloat16].items()}
  # Each bfloat16 layer: the kernel and bias rounded to bfloat16 (U16 of
  # each term), the conv accumulated in float32 (gamma(9 Cin + 1)), its
  # result and the bias sum rounded to bfloat16 (U16 each).
  convs = {}
  for name in names:
    p = params[vgg.conv_name(name)]
    conv = torch.nn.Conv2d(p['kernel'].shape[2], p['kernel'].shape[3], 3,
                           padding=1).double()
    with torch.no_grad():
      conv.weight.copy_(torch.from_numpy(
          np.asarray(p['kernel'], np.float64).transpose(3, 2, 0, 1)))
      conv.bias.copy_(torch.from_numpy(np.asarray(p['bias'], np.float64)))
    convs[name] = conv
  x16 = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
  for name, want, terms, cin in _layerwise(torch, x16, low, names, convs):
    assert outs[jnp.bfloat16][name].dtype == jnp.bfloat16
    bound = ((numerics.U16 + numerics.gamma(9 * cin + 1)) * terms
             + numerics.U16 * (terms + np.abs(want)))
    numerics.assert_within(low[name], want, bound, f'bfloat16 {name}')
  # End to end, a semantic check rather than a rounding bound: bfloat16
  # features stay within 10% of float32 ones, relative to the layer's
  # largest value (about 1% at relu5_2 here; a worst-case bound through 14
  # layers would be vacuous).
  for name in vgg.DEFAULT_OUTPUTS:
    ref = np.asarray(outs[jnp.float32][name])
    err = np.abs(low[name] - ref).max()
    assert err <= 0.1 * np.abs(ref).max(), name


def test_imagenet_normalize():
  model = vgg.VGG19(outputs=('relu1_2',), last_layer='relu1_2')
  x = jnp.asarray(_input((1, 16, 16, 3)))
  variables = model.init(jax.random.key(0), x)
  normalized = model.clone(imagenet_normalize=True).apply(variables, x)
  mean = jnp.asarray(vgg.IMAGENET_MEAN)
  std = jnp.asarray(vgg.IMAGENET_STD)
  manual = model.apply(variables, (x - mean) / std)
  # Both against float64 with a running bound: the normalisation (its
  # float32 constants, a subtraction, a division), then per conv its own
  # 9 Cin + 1 terms plus the input error through |W| (ReLU 1-Lipschitz).
  h = (numerics.Bounded(np.asarray(x))
       - numerics.Bounded.const(vgg.IMAGENET_MEAN)) / numerics.Bounded.const(
           vgg.IMAGENET_STD)
  want, err = h.value, h.err
  for name in ('conv1_1', 'conv1_2'):
    kernel = np.asarray(variables['params'][name]['kernel'], np.float64)
    bias = np.asarray(variables['params'][name]['bias'], np.float64)
    k_abs = np.abs(kernel)
    err = (numerics.conv_bound(np.abs(want), k_abs, np.abs(bias), pad=1)
           + numerics.np_conv(err, k_abs, pad=1))
    want = np.maximum(numerics.np_conv(want, kernel, pad=1) + bias, 0)
  numerics.assert_within(normalized['relu1_2'], want, err, 'normalized')
  numerics.assert_within(manual['relu1_2'], want, err, 'manual')


def test_gradient_reaches_the_input():
  model = vgg.VGG19(outputs=('relu2_1',), last_layer='relu2_1')
  x = jnp.asarray(_input((1, 16, 16, 3)))
  variables = model.init(jax.random.key(0), x)
  grad = jax.grad(lambda x: model.apply(variables, x)['relu2_1'].sum())(x)
  assert grad.shape == x.shape
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
