"""InceptionV3 importers: Keras HDF5 and torchvision state dicts.

Both are checked on random weights the tests write in each source's exact
layout: torchvision's against a PyTorch re-statement of its InceptionV3
(written here, skips without torch), Keras's against a NumPy re-statement
of the layers whose semantics differ from torchvision's (BatchNorm without
scale, "same" average pooling that leaves the padding out).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import inception
from jaxface.weights import gender as gw

WIDTH = 0.125
EPS = 1e-3


def c(n):
  """Channels at the test's width (as `inception.channels`)."""
  return max(1, int(round(n * WIDTH)))


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


# -------------------------------------------------------------------- Keras
def _write_keras(path, rng, offset=94):
  """A legacy Keras notop file of random weights; counters start at
  `offset + 1` (as in a session that built other models first) and the
  layer list is in no particular order, with weightless layers mixed in."""
  h5py = pytest.importorskip("h5py")
  tmpl = gw.template(WIDTH, **gw.SEMANTICS["keras"])
  weights = {}
  for i, (path_, _, _) in enumerate(inception.UNITS):
    mods = path_.split("/")
    p = tmpl["params"]
    s = tmpl["batch_stats"]
    for m in mods:
      p, s = p[m], s[m]
    n = offset + 1 + i
    kernel = p["conv"]["kernel"]
    fan_in = np.prod(kernel.shape[:3])
    weights[f"conv2d_{n}"] = {"kernel": rng.normal(
        0, np.sqrt(2 / fan_in), kernel.shape).astype(np.float32)}
    ch = kernel.shape[-1]
    weights[f"batch_normalization_{n}"] = {
        "beta": rng.normal(0, 0.1, ch).astype(np.float32),
        "moving_mean": rng.normal(0, 0.1, ch).astype(np.float32),
        "moving_variance": rng.uniform(0.5, 1.5, ch).astype(np.float32)}
  names = list(weights) + ["input_1", "activation_3", "mixed0",
                           "max_pooling2d_1", "average_pooling2d_2"]
  order = rng.permutation(len(names))
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [names[i].encode() for i in order]
    for name in names:
      g = f.create_group(name)
      ws = weights.get(name, {})
      g.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w in ws]
      for w, value in ws.items():
        g.create_dataset(f"{name}/{w}:0", data=value)
  return weights


def _np_conv(x, kernel, stride=1, pad=(0, 0)):
  """float64 cross-correlation, x [H, W, I], kernel [kh, kw, I, O]."""
  x = np.pad(x, ((pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
  kh, kw = kernel.shape[:2]
  h = (x.shape[0] - kh) // stride + 1
  w = (x.shape[1] - kw) // stride + 1
  out = np.zeros((h, w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[i:i + stride * h:stride, j:j + stride * w:stride]
      out += patch @ kernel[i, j].astype(np.float64)
  return out


def _keras_unit(x, layers, n, stride=1, pad=(0, 0)):
  """Conv2D (no bias) -> BatchNormalization(scale=False) -> ReLU."""
  y = _np_conv(x, layers[f"conv2d_{n}"]["kernel"], stride, pad)
  bn = layers[f"batch_normalization_{n}"]
  y = (y - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + EPS)
  return np.maximum(y + bn["beta"], 0)


def _keras_same_avg_pool(x):
  """AveragePooling2D(3, strides=1, padding='same'): real pixels only."""
  ones = np.ones(x.shape[:2] + (1,))
  k = np.ones((3, 3, 1, 1))
  sums = np.stack([_np_conv(x[..., i:i + 1], k, 1, (1, 1))[..., 0]
                   for i in range(x.shape[-1])], -1)
  return sums / _np_conv(ones, k, 1, (1, 1))


def test_keras_file_imports_by_creation_order(tmp_path):
  rng = np.random.default_rng(0)
  layers = _write_keras(tmp_path / "notop.h5", rng)
  variables = gw.from_keras(tmp_path / "notop.h5", WIDTH)
  # Unit k (creation order) holds layers conv2d_{95+k} / b_n_{95+k}.
  for k, (path, _, _) in enumerate(inception.UNITS):
    p, s = variables["params"], variables["batch_stats"]
    for m in path.split("/"):
      p, s = p[m], s[m]
    n = 95 + k
    np.testing.assert_array_equal(p["conv"]["kernel"],
                                  layers[f"conv2d_{n}"]["kernel"])
    np.testing.assert_array_equal(p["bn"]["bias"],
                                  layers[f"batch_normalization_{n}"]["beta"])
    np.testing.assert_array_equal(
        s["bn"]["var"], layers[f"batch_normalization_{n}"]["moving_variance"])
    assert "scale" not in p["bn"]

  # The first stem unit (stride 2, valid) and Mixed_5b (units 6-12, with
  # the pooled branch) against the NumPy re-statement of Keras's layers.
  x = rng.uniform(-1, 1, (17, 17, 3))
  unit = inception.ConvUnit(c(32), (3, 3), 2, bn_scale=False)
  ours = jax.jit(unit.apply, static_argnums=2)(
      {"params": variables["params"]["Conv2d_1a_3x3"],
       "batch_stats": variables["batch_stats"]["Conv2d_1a_3x3"]},
      jnp.asarray(x[None], jnp.float32), False)[0]
  want = _keras_unit(x, layers, 95, stride=2)
  np.testing.assert_allclose(ours, want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())

  x = rng.uniform(0, 1, (9, 9, c(192)))
  block = inception.InceptionBlock(kind="A", arg=32, width=WIDTH,
                                   bn_scale=False,
                                   avg_pool_include_pad=False)
  ours = jax.jit(block.apply, static_argnums=2)(
      {"params": variables["params"]["Mixed_5b"],
       "batch_stats": variables["batch_stats"]["Mixed_5b"]},
      jnp.asarray(x[None], jnp.float32), False)[0]
  n = 95 + 5  # Mixed_5b's first unit follows the five stem units
  b1 = _keras_unit(x, layers, n)
  b5 = _keras_unit(_keras_unit(x, layers, n + 1), layers, n + 2, pad=(2, 2))
  b3 = _keras_unit(_keras_unit(_keras_unit(x, layers, n + 3), layers, n + 4,
                               pad=(1, 1)), layers, n + 5, pad=(1, 1))
  bp = _keras_unit(_keras_same_avg_pool(x), layers, n + 6)
  want = np.concatenate([b1, b5, b3, bp], -1)
  np.testing.assert_allclose(ours, want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())


def test_keras_file_errors_name_the_file(tmp_path):
  h5py = pytest.importorskip("h5py")
  rng = np.random.default_rng(1)
  _write_keras(tmp_path / "ok.h5", rng)
  with h5py.File(tmp_path / "ok.h5", "a") as f:
    del f["batch_normalization_97"]["batch_normalization_97/beta:0"]
    f["batch_normalization_97"].attrs["weight_names"] = [
        b"batch_normalization_97/moving_mean:0",
        b"batch_normalization_97/moving_variance:0"]
  with pytest.raises(ValueError, match=r"ok\.h5.*1 missing.*"
                     r"batch_normalization_97/beta"):
    gw.from_keras(tmp_path / "ok.h5", WIDTH)
  (tmp_path / "text.h5").write_text("not hdf5")
  with pytest.raises(ValueError, match=r"text\.h5: not an HDF5 file"):
    gw.from_keras(tmp_path / "text.h5", WIDTH)
  with pytest.raises(ValueError, match=r"wrongly shaped: "
                     r"'batch_normalization_95/beta' float32 \(4,\) "
                     r"\(expected float \(32,\)\)"):
    gw.from_keras(tmp_path / "ok.h5", 1.0)  # weights of another width
  with h5py.File(tmp_path / "ok.h5", "a") as f:
    f.attrs["layer_names"] = [n for n in f.attrs["layer_names"]
                              if n != "conv2d_120"]
  with pytest.raises(ValueError, match="93 conv2d layers with weights, "
                     "InceptionV3 has 94"):
    gw.from_keras(tmp_path / "ok.h5", WIDTH)


# -------------------------------------------------------------- torchvision
def _torch_inception(torch, width):
  """torchvision's InceptionV3 features (names and layers as in
  torchvision/models/inception.py), channels scaled by `width`."""
  nn, F = torch.nn, torch.nn.functional
  ch = lambda n: max(1, int(round(n * width)))  # pylint: disable=unnecessary-lambda-assignment

  class Basic(nn.Module):
    def __init__(self, i, o, **kw):
      super().__init__()
      self.conv = nn.Conv2d(i, ch(o), bias=False, **kw)
      self.bn = nn.BatchNorm2d(ch(o), eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class A(nn.Module):
    def __init__(self, i, pool):
      super().__init__()
      self.branch1x1 = Basic(i, 64, kernel_size=1)
      self.branch5x5_1 = Basic(i, 48, kernel_size=1)
      self.branch5x5_2 = Basic(ch(48), 64, kernel_size=5, padding=2)
      self.branch3x3dbl_1 = Basic(i, 64, kernel_size=1)
      self.branch3x3dbl_2 = Basic(ch(64), 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = Basic(ch(96), 96, kernel_size=3, padding=1)
      self.branch_pool = Basic(i, pool, kernel_size=1)

    def forward(self, x):
      return torch.cat([
          self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
          self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)

  class B(nn.Module):
    def __init__(self, i):
      super().__init__()
      self.branch3x3 = Basic(i, 384, kernel_size=3, stride=2)
      self.branch3x3dbl_1 = Basic(i, 64, kernel_size=1)
      self.branch3x3dbl_2 = Basic(ch(64), 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = Basic(ch(96), 96, kernel_size=3, stride=2)

    def forward(self, x):
      return torch.cat([
          self.branch3x3(x),
          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
          F.max_pool2d(x, 3, 2)], 1)

  class C(nn.Module):
    def __init__(self, i, c7):
      super().__init__()
      self.branch1x1 = Basic(i, 192, kernel_size=1)
      self.branch7x7_1 = Basic(i, c7, kernel_size=1)
      self.branch7x7_2 = Basic(ch(c7), c7, kernel_size=(1, 7),
                               padding=(0, 3))
      self.branch7x7_3 = Basic(ch(c7), 192, kernel_size=(7, 1),
                               padding=(3, 0))
      self.branch7x7dbl_1 = Basic(i, c7, kernel_size=1)
      self.branch7x7dbl_2 = Basic(ch(c7), c7, kernel_size=(7, 1),
                                  padding=(3, 0))
      self.branch7x7dbl_3 = Basic(ch(c7), c7, kernel_size=(1, 7),
                                  padding=(0, 3))
      self.branch7x7dbl_4 = Basic(ch(c7), c7, kernel_size=(7, 1),
                                  padding=(3, 0))
      self.branch7x7dbl_5 = Basic(ch(c7), 192, kernel_size=(1, 7),
                                  padding=(0, 3))
      self.branch_pool = Basic(i, 192, kernel_size=1)

    def forward(self, x):
      d = x
      for k in range(1, 6):
        d = getattr(self, f"branch7x7dbl_{k}")(d)
      return torch.cat([
          self.branch1x1(x),
          self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), d,
          self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)

  class D(nn.Module):
    def __init__(self, i):
      super().__init__()
      self.branch3x3_1 = Basic(i, 192, kernel_size=1)
      self.branch3x3_2 = Basic(ch(192), 320, kernel_size=3, stride=2)
      self.branch7x7x3_1 = Basic(i, 192, kernel_size=1)
      self.branch7x7x3_2 = Basic(ch(192), 192, kernel_size=(1, 7),
                                 padding=(0, 3))
      self.branch7x7x3_3 = Basic(ch(192), 192, kernel_size=(7, 1),
                                 padding=(3, 0))
      self.branch7x7x3_4 = Basic(ch(192), 192, kernel_size=3, stride=2)

    def forward(self, x):
      d = x
      for k in range(1, 5):
        d = getattr(self, f"branch7x7x3_{k}")(d)
      return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), d,
                        F.max_pool2d(x, 3, 2)], 1)

  class E(nn.Module):
    def __init__(self, i):
      super().__init__()
      self.branch1x1 = Basic(i, 320, kernel_size=1)
      self.branch3x3_1 = Basic(i, 384, kernel_size=1)
      self.branch3x3_2a = Basic(ch(384), 384, kernel_size=(1, 3),
                                padding=(0, 1))
      self.branch3x3_2b = Basic(ch(384), 384, kernel_size=(3, 1),
                                padding=(1, 0))
      self.branch3x3dbl_1 = Basic(i, 448, kernel_size=1)
      self.branch3x3dbl_2 = Basic(ch(448), 384, kernel_size=3, padding=1)
      self.branch3x3dbl_3a = Basic(ch(384), 384, kernel_size=(1, 3),
                                   padding=(0, 1))
      self.branch3x3dbl_3b = Basic(ch(384), 384, kernel_size=(3, 1),
                                   padding=(1, 0))
      self.branch_pool = Basic(i, 192, kernel_size=1)

    def forward(self, x):
      b3 = self.branch3x3_1(x)
      bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      return torch.cat([
          self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
          self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd),
          self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.Conv2d_1a_3x3 = Basic(3, 32, kernel_size=3, stride=2)
      self.Conv2d_2a_3x3 = Basic(ch(32), 32, kernel_size=3)
      self.Conv2d_2b_3x3 = Basic(ch(32), 64, kernel_size=3, padding=1)
      self.Conv2d_3b_1x1 = Basic(ch(64), 80, kernel_size=1)
      self.Conv2d_4a_3x3 = Basic(ch(80), 192, kernel_size=3)
      a_out = lambda pool: ch(64) + ch(64) + ch(96) + ch(pool)  # pylint: disable=unnecessary-lambda-assignment
      self.Mixed_5b = A(ch(192), 32)
      self.Mixed_5c = A(a_out(32), 64)
      self.Mixed_5d = A(a_out(64), 64)
      self.Mixed_6a = B(a_out(64))
      c_in = ch(384) + ch(96) + a_out(64)
      self.Mixed_6b = C(c_in, 128)
      self.Mixed_6c = C(4 * ch(192), 160)
      self.Mixed_6d = C(4 * ch(192), 160)
      self.Mixed_6e = C(4 * ch(192), 192)
      self.Mixed_7a = D(4 * ch(192))
      e_in = ch(320) + ch(192) + 4 * ch(192)
      self.Mixed_7b = E(e_in)
      e_out = ch(320) + 4 * ch(384) + ch(192)
      self.Mixed_7c = E(e_out)
      # The ImageNet classifiers: in the file, not needed by the features.
      self.AuxLogits = nn.Module()
      self.AuxLogits.fc = nn.Linear(4, 10)
      self.fc = nn.Linear(e_out, 10)

    def forward(self, x):
      x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
      x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
      x = F.max_pool2d(x, 3, 2)
      for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a",
                   "7b", "7c"):
        x = getattr(self, f"Mixed_{name}")(x)
      return x.mean((2, 3))

  torch.manual_seed(0)
  net = Net()
  for m in net.modules():
    if isinstance(m, nn.BatchNorm2d):  # statistics that matter
      nn.init.uniform_(m.weight, 0.5, 1.5)
      nn.init.normal_(m.bias, 0, 0.1)
      m.running_mean.normal_(0, 0.1)
      m.running_var.uniform_(0.5, 1.5)
    elif isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
  return net.eval()


def test_torchvision_state_dict_equals_a_pytorch_restatement(tmp_path):
  torch = pytest.importorskip("torch")
  net = _torch_inception(torch, WIDTH)
  torch.save({"model": {f"module.{k}": v
                        for k, v in net.state_dict().items()}},
             tmp_path / "inception_v3_google-test.pth")
  variables, semantics = gw.load(tmp_path / "inception_v3_google-test.pth",
                                 WIDTH)
  assert semantics == {"bn_scale": True, "avg_pool_include_pad": True}
  x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3))
  with torch.no_grad():
    want = net(torch.tensor(x.transpose(0, 3, 1, 2),
                            dtype=torch.float32)).numpy()
  model = inception.InceptionV3(width=WIDTH, **semantics)
  ours = jax.jit(lambda v, x: model.apply(v, x))(
      variables, jnp.asarray(x, jnp.float32))
  assert ours.shape == want.shape == (2, inception.feature_width(WIDTH))
  np.testing.assert_allclose(ours, want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())

  # The .npz round trip keeps the weights and their semantics.
  gw.save(tmp_path / "w.npz", variables, semantics)
  again, sem = gw.load(tmp_path / "w.npz", WIDTH)
  assert sem == semantics
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, again,
                                          variables)))


def test_torchvision_errors_name_the_keys(tmp_path):
  torch = pytest.importorskip("torch")
  sd = _torch_inception(torch, WIDTH).state_dict()
  del sd["Mixed_6b.branch7x7_2.bn.running_var"]
  sd["Mixed_6b.extra.weight"] = torch.zeros(3)
  sd["Mixed_7c.branch1x1.conv.weight"] = torch.zeros(1, 1, 1, 1)
  with pytest.raises(ValueError) as err:
    gw.from_torch(sd, WIDTH)
  text = str(err.value)
  assert "1 missing: 'Mixed_6b.branch7x7_2.bn.running_var'" in text
  assert "1 unexpected: 'Mixed_6b.extra.weight'" in text
  assert "'Mixed_7c.branch1x1.conv.weight'" in text and "wrongly" in text


def test_every_full_size_variable_has_a_distinct_torchvision_name():
  flat = _flat(gw.template(1.0, **gw.SEMANTICS["torchvision"]))
  names = {gw.torch_name(k) for k in flat}
  assert len(names) == len(flat) == 94 * 5
  assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in names
  assert "Conv2d_1a_3x3.conv.weight" in names
