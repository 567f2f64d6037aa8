"""Tests for jaxface.weights.landmarks (AdaptiveWing FAN weights import).

The PyTorch side is a re-statement of the reference network written from
its description (REFERENCE.md section 7.1, 7.3 "Checkpoint"), with the
reference's module names so that its state dict has the published keys;
unlike the reference its widths are parameters, so the numerical test can
run a small network. Tests that need torch skip without it.
"""

import copy
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import landmarks as landmarks_model
from jaxface.weights import landmarks

# The numerical test's network: 2 stacks at 64x64 (16x16 heatmaps, the
# depth-4 hourglass reaches 1x1), narrow so that it runs in seconds.
SMALL = dict(num_stacks=2, num_landmarks=98, width=64, depth=4,
             stem_width=16)
SIDE = 64
# The reference FAN(4, 98) (REFERENCE.md 7.1).
REFERENCE_PARAMS = 24_153_036


def _reference_fan_class():
  """The reference FAN as a torch module class (skips without torch)."""
  torch = pytest.importorskip('torch')
  nn = torch.nn
  functional = torch.nn.functional

  def add_coords(x, heatmaps=None):
    # Appended channels, in order: c1 (varies along rows), c2 (along
    # columns), r = |(c1, c2)| / max, then with heatmaps c1 and c2 where
    # the clamped boundary heatmap (last channel) exceeds 0.05.
    b, _, h, w = x.shape
    c1 = (torch.arange(h, dtype=x.dtype) / (h - 1) * 2 - 1)[:, None]
    c2 = (torch.arange(w, dtype=x.dtype) / (w - 1) * 2 - 1)[None, :]
    c1, c2 = c1.expand(h, w), c2.expand(h, w)
    r = torch.sqrt(c1 ** 2 + c2 ** 2)
    coords = torch.stack([c1, c2, r / r.max()])[None].expand(b, 3, h, w)
    channels = [x, coords]
    if heatmaps is not None:
      on = torch.clamp(heatmaps[:, -1:], 0.0, 1.0) > 0.05
      channels.append(torch.where(on, coords[:, :2],
                                  torch.zeros((), dtype=x.dtype)))
    return torch.cat(channels, dim=1)

  class CoordConv(nn.Module):
    """Conv2d (with bias) of the input and its coordinate channels."""

    def __init__(self, cin, cout, kernel, stride, with_boundary):
      super().__init__()
      extra = 5 if with_boundary else 3
      self.conv = nn.Conv2d(cin + extra, cout, kernel, stride, kernel // 2)

    def forward(self, x, heatmaps=None):
      return self.conv(add_coords(x, heatmaps))

  class ConvBlock(nn.Module):
    """BN-ReLU-conv3x3 three times (out/2, out/4, out/4), concat + skip."""

    def __init__(self, cin, cout):
      super().__init__()
      self.bn1 = nn.BatchNorm2d(cin)
      self.conv1 = nn.Conv2d(cin, cout // 2, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout // 2)
      self.conv2 = nn.Conv2d(cout // 2, cout // 4, 3, 1, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(cout // 4)
      self.conv3 = nn.Conv2d(cout // 4, cout // 4, 3, 1, 1, bias=False)
      self.downsample = None
      if cin != cout:
        self.downsample = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
      a = self.conv1(functional.relu(self.bn1(x)))
      b = self.conv2(functional.relu(self.bn2(a)))
      c = self.conv3(functional.relu(self.bn3(b)))
      skip = x if self.downsample is None else self.downsample(x)
      return torch.cat([a, b, c], dim=1) + skip

  class HourGlass(nn.Module):
    """CoordConv 1x1, then b1_L + up(b3_L(inner(b2_L(pool(x)))))."""

    def __init__(self, width, depth, first):
      super().__init__()
      self.depth = depth
      self.coordconv = CoordConv(width, width, 1, 1, not first)
      for level in range(depth, 0, -1):
        for name in ('b1', 'b2', 'b3'):
          self.add_module(f'{name}_{level}', ConvBlock(width, width))
      self.add_module('b2_plus_1', ConvBlock(width, width))

    def level(self, level, x):
      up = getattr(self, f'b1_{level}')(x)
      low = getattr(self, f'b2_{level}')(functional.avg_pool2d(x, 2, 2))
      low = (self.level(level - 1, low) if level > 1 else
             self.b2_plus_1(low))
      low = getattr(self, f'b3_{level}')(low)
      return up + functional.interpolate(low, scale_factor=2,
                                         mode='nearest')

    def forward(self, x, heatmaps):
      return self.level(self.depth, self.coordconv(x, heatmaps))

  class FAN(nn.Module):
    """Stem, then stacked hourglasses, each giving K + 1 heatmaps."""

    def __init__(self, num_stacks, num_landmarks, width, depth, stem_width):
      super().__init__()
      self.num_stacks = num_stacks
      self.conv1 = CoordConv(3, stem_width, 7, 2, False)
      self.bn1 = nn.BatchNorm2d(stem_width)
      self.conv2 = ConvBlock(stem_width, width // 2)
      self.conv3 = ConvBlock(width // 2, width // 2)
      self.conv4 = ConvBlock(width // 2, width)
      for i in range(num_stacks):
        self.add_module(f'm{i}', HourGlass(width, depth, i == 0))
        self.add_module(f'top_m_{i}', ConvBlock(width, width))
        self.add_module(f'conv_last{i}', nn.Conv2d(width, width, 1))
        self.add_module(f'bn_end{i}', nn.BatchNorm2d(width))
        self.add_module(f'l{i}', nn.Conv2d(width, num_landmarks + 1, 1))
        if i < num_stacks - 1:
          self.add_module(f'bl{i}', nn.Conv2d(width, width, 1))
          self.add_module(f'al{i}', nn.Conv2d(num_landmarks + 1, width, 1))

    def forward(self, x):
      x = functional.relu(self.bn1(self.conv1(x)))
      x = self.conv3(functional.avg_pool2d(self.conv2(x), 2, 2))
      previous, heatmaps, outputs = self.conv4(x), None, []
      for i in range(self.num_stacks):
        hg = getattr(self, f'm{i}')(previous, heatmaps)
        ll = getattr(self, f'top_m_{i}')(hg)
        ll = functional.relu(getattr(self, f'bn_end{i}')(
            getattr(self, f'conv_last{i}')(ll)))
        heatmaps = getattr(self, f'l{i}')(ll)
        outputs.append(heatmaps)
        if i < self.num_stacks - 1:
          previous = (previous + getattr(self, f'bl{i}')(ll)
                      + getattr(self, f'al{i}')(heatmaps))
      return outputs

  return FAN


def _randomize(model, seed):
  """Random weights and BatchNorm statistics, so every tensor matters.

  He-scaled convs keep the activations O(1) through the blocks; running
  variances stay positive and away from 0 (BN divides by their root).
  """
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, (1.0 / fan_in) ** 0.5, generator=gen)
        if module.bias is not None:
          module.bias.normal_(0.0, 0.1, generator=gen)
      elif isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5, generator=gen)
        module.bias.normal_(0.0, 0.1, generator=gen)
        module.running_mean.normal_(0.0, 0.1, generator=gen)
        module.running_var.uniform_(0.5, 2.0, generator=gen)
        module.num_batches_tracked.fill_(7)
  return model.eval()


def _straddle_threshold(model, image):
  """Shifts stack 0's boundary bias so its heatmap straddles 0.05.

  Random weights leave the boundary heatmap of stack 0 all above (or all
  below) the threshold at which stack 1 sees boundary coordinates; the
  shift puts the threshold into the widest gap between the middle half of
  its values on `image`, so both branches run and no pixel sits near it.
  """
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    heatmaps = copy.deepcopy(model).double()(torch.from_numpy(image))[0]
    values = np.sort(heatmaps[:, -1].numpy().ravel())
    middle = values[len(values) // 4:3 * len(values) // 4]
    i = np.argmax(np.diff(middle))
    target = (middle[i] + middle[i + 1]) / 2
    model.l0.bias[-1] += landmarks_model.BOUNDARY_THRESHOLD - target
  return model


@pytest.fixture(scope='module')
def image():
  """A batch of two NCHW images in [0, 1], float64."""
  return np.random.default_rng(0).uniform(size=(2, 3, SIDE, SIDE))


@pytest.fixture(scope='module')
def small_torch_fan(image):
  model = _randomize(_reference_fan_class()(**SMALL), seed=0)
  return _straddle_threshold(model, image)


@pytest.fixture(scope='module')
def small_pth(small_torch_fan, tmp_path_factory):
  """The small network saved like `WFLW_4HG.pth`: {'state_dict': ...}."""
  import torch  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('fan') / 'WFLW_small.pth'
  torch.save({'state_dict': small_torch_fan.state_dict()}, path)
  return path


@pytest.fixture(scope='module')
def small_variables(small_pth):
  return landmarks.from_torch(small_pth, **{
      k: v for k, v in SMALL.items() if k != 'num_stacks'})


def _assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_heatmaps_match_the_torch_reference(small_torch_fan,
                                            small_variables, image):
  import torch  # pylint: disable=g-import-not-at-top
  x = image
  with torch.no_grad():
    # The float64 reference: its own rounding error is negligible here.
    want = [t.numpy() for t in copy.deepcopy(small_torch_fan).double()(
        torch.from_numpy(x))]
  model = landmarks_model.FAN(**SMALL)
  got = jax.jit(model.apply)(small_variables,
                             jnp.asarray(x.transpose(0, 2, 3, 1),
                                         jnp.float32))
  assert len(got) == len(want) == SMALL['num_stacks']
  errors = []
  for stack, (g, w) in enumerate(zip(got, want)):
    w = w.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    assert g.shape == w.shape == (2, SIDE // 4, SIDE // 4, 99)
    error = np.max(np.abs(np.asarray(g, np.float64) - w))
    errors.append(error)
    # A tight worst-case bound does not exist for 30 sequential blocks
    # (gamma(9 * 64) alone is 3e-5 per conv, compounded through BN scales);
    # float32 errors grow like sqrt(terms) u per layer, ~1e-6 relative
    # here, so 1e-4 of the heatmaps' range leaves two orders of margin.
    assert error <= 1e-4 * np.max(np.abs(w)), (stack, error)
    if stack == 0:
      # Stack 1 sees where stack 0's boundary heatmap exceeds 0.05; the
      # comparison of stack 1 holds only if float32 cannot flip a pixel.
      boundary = w[..., -1]
      on = boundary > landmarks_model.BOUNDARY_THRESHOLD
      assert 0 < on.sum() < on.size  # Both branches are exercised.
      margin = np.min(np.abs(boundary
                             - landmarks_model.BOUNDARY_THRESHOLD))
      assert margin > 10 * error, (margin, error)


def test_reference_layout_imports_at_full_size():
  # The published FAN(4, 98): shapes from the re-statement, built on the
  # meta device (no memory, no forward pass).
  import torch  # pylint: disable=g-import-not-at-top
  fan_class = _reference_fan_class()
  with torch.device('meta'):
    reference = fan_class(4, 98, 256, 4, 64)
  assert sum(p.numel() for p in reference.parameters()) == REFERENCE_PARAMS
  shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
  # Keys and shapes REFERENCE.md 7.3 lists for WFLW_4HG.pth.
  for key, shape in (('conv1.conv.weight', (64, 6, 7, 7)),
                     ('m0.coordconv.conv.weight', (256, 259, 1, 1)),
                     ('m3.coordconv.conv.weight', (256, 261, 1, 1)),
                     ('conv2.downsample.2.weight', (128, 64, 1, 1)),
                     ('m2.b2_plus_1.bn3.running_var', (64,)),
                     ('l3.weight', (99, 256, 1, 1)),
                     ('al2.weight', (256, 99, 1, 1))):
    assert shapes[key] == shape, key
  assert 'al3.weight' not in shapes and 'conv3.downsample.0.weight' not in (
      shapes)
  state_dict = {k: np.zeros(s, np.int64 if k.endswith('num_batches_tracked')
                            else np.float32) for k, s in shapes.items()}
  variables = landmarks.from_torch({'state_dict': state_dict})
  assert landmarks.count(variables) == REFERENCE_PARAMS
  assert jax.tree.map(np.shape, variables) == landmarks.expected_shapes(4)


def test_module_prefix_and_torch_tensors(small_torch_fan, small_variables):
  # A bare state dict of torch tensors, as saved from DataParallel.
  prefixed = {f'module.{k}': v
              for k, v in small_torch_fan.state_dict().items()}
  _assert_trees_equal(landmarks.from_torch(prefixed, **SMALL),
                      small_variables)


def test_npz_round_trip_is_exact(tmp_path, small_variables):
  path = tmp_path / 'fan.npz'
  landmarks.save_npz(path, small_variables)
  _assert_trees_equal(landmarks.load_npz(path, **SMALL), small_variables)
  assert os.listdir(tmp_path) == ['fan.npz']  # No temporary files left.


def test_torch_round_trip_is_exact(small_torch_fan, small_variables):
  import torch  # pylint: disable=g-import-not-at-top
  exported = landmarks.to_torch_state_dict(small_variables)
  _assert_trees_equal(landmarks.from_torch(exported, **SMALL),
                      small_variables)
  # The export loads strictly into the reference and reproduces it (its
  # num_batches_tracked aside, which nothing reads in eval mode).
  fresh = _reference_fan_class()(**SMALL)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                        strict=True)
  original = small_torch_fan.state_dict()
  for key, value in fresh.state_dict().items():
    if not key.endswith('num_batches_tracked'):
      assert torch.equal(value, original[key]), key


@pytest.mark.parametrize('name', ['fan.pth', 'fan.pt', 'fan.pth.tar',
                                  'fan.npz'])
def test_load_dispatches_on_suffix(tmp_path, name, small_pth,
                                   small_variables):
  path = tmp_path / name
  if name.endswith('.npz'):
    landmarks.save_npz(path, small_variables)
  else:
    path.write_bytes(small_pth.read_bytes())
  config = {k: v for k, v in SMALL.items() if k != 'num_stacks'}
  _assert_trees_equal(landmarks.load(path, **config), small_variables)


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='absent.pth'):
    landmarks.load(tmp_path / 'absent.pth')
  other = tmp_path / 'fan.h5'
  other.write_bytes(b'x')
  with pytest.raises(ValueError, match='fan.h5'):
    landmarks.load(other)


def _edit_missing(state_dict):
  del state_dict['m1.b2_plus_1.conv3.weight']
  return 'm1.b2_plus_1.conv3.weight'


def _edit_shape(state_dict):
  import torch  # pylint: disable=g-import-not-at-top
  state_dict['l0.weight'] = torch.zeros(98, 64, 1, 1)
  return "'l0.weight' float32 (98, 64, 1, 1) (expected float (99, 64, 1, 1))"


def _edit_unexpected(state_dict):
  import torch  # pylint: disable=g-import-not-at-top
  state_dict['m0.b1_4.conv4.weight'] = torch.zeros(16, 16, 3, 3)
  return 'm0.b1_4.conv4.weight'


@pytest.mark.parametrize('edit', [_edit_missing, _edit_shape,
                                  _edit_unexpected])
def test_bad_state_dict_names_key_and_file(tmp_path, small_torch_fan, edit):
  import torch  # pylint: disable=g-import-not-at-top
  state_dict = dict(small_torch_fan.state_dict())
  expected_in_message = edit(state_dict)
  path = tmp_path / 'bad.pth'
  torch.save({'state_dict': state_dict}, path)
  with pytest.raises(ValueError) as e:
    landmarks.from_torch(path, **SMALL)
  message = str(e.value)
  assert expected_in_message in message and str(path) in message, message


def test_wrong_configuration_is_reported(small_torch_fan):
  state_dict = small_torch_fan.state_dict()
  with pytest.raises(ValueError, match=r"missing: [^;]*'al1\.weight'"):
    landmarks.from_torch(state_dict, **{**SMALL, 'num_stacks': 3})
  with pytest.raises(ValueError, match=r"'conv2\.conv1\.weight'"):
    landmarks.from_torch(state_dict, num_landmarks=98, width=32, depth=4,
                         stem_width=16)
  with pytest.raises(ValueError, match='cannot infer num_stacks'):
    landmarks.from_torch({'conv1.conv.weight': np.zeros((16, 6, 7, 7))})


def test_npz_shape_check_names_key_and_file(tmp_path, small_variables):
  variables = jax.tree.map(np.copy, small_variables)
  variables['batch_stats']['m1']['b3_2']['bn2']['var'] = np.ones(3,
                                                                 np.float32)
  path = tmp_path / 'bad.npz'
  landmarks.save_npz(path, variables)
  with pytest.raises(ValueError) as e:
    landmarks.load_npz(path, **SMALL)
  assert 'batch_stats/m1/b3_2/bn2/var' in str(e.value)
  assert str(path) in str(e.value)


def test_command_line(tmp_path, small_pth, small_variables):
  output = tmp_path / 'fan.npz'
  result = subprocess.run(
      [sys.executable, '-m', 'jaxface.weights.landmarks',
       f'--input={small_pth}', f'--output={output}', '--width=64',
       '--stem_width=16'], capture_output=True, text=True, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr
  count = landmarks.count(small_variables)
  assert f'{count:,} parameters' in result.stdout
  assert f'wrote {output}' in result.stdout
  _assert_trees_equal(landmarks.load_npz(output, **SMALL), small_variables)
