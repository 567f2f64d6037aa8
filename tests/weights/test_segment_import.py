"""The torchvision Mask R-CNN importer against a PyTorch re-statement.

The reference below restates, in PyTorch, torchvision's
`maskrcnn_resnet50_fpn` modules under their state-dict names: ResNet with
FrozenBatchNorm2d, FPN with the max-pool P6, the RPN head, RoIAlign
(sampling ratio 2, `aligned` False as torchvision's, or True) over P2-P5
with torchvision's level mapper, the
two-MLP box head and predictor, and the mask head and predictor. Its random
weights go through the importer; both sides must agree to 1e-4 of each
output's largest magnitude (torch computes in float64).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import segment as seg
from jaxface.weights import segment as importer

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

ARCH = dict(stage_sizes=(1, 2, 1, 1), width=16, fpn_channels=32,
            representation=64, mask_channels=32)
COCO_CLASSES = 91


class FrozenBN(nn.Module):

  def __init__(self, c, eps=0.0):
    super().__init__()
    self.eps = eps
    for name, init in (("weight", torch.rand(c) + 0.5),
                       ("bias", torch.randn(c) * 0.1),
                       ("running_mean", torch.randn(c) * 0.1),
                       ("running_var", torch.rand(c) + 0.5)):
      self.register_buffer(name, init.double())

  def forward(self, x):
    scale = self.weight * (self.running_var + self.eps).rsqrt()
    shift = self.bias - self.running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


class Bottleneck(nn.Module):

  def __init__(self, cin, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = FrozenBN(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = FrozenBN(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = FrozenBN(planes * 4)
    self.downsample = (nn.Sequential(
        nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
        FrozenBN(planes * 4)) if downsample else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (self.downsample(x) if self.downsample else x))


class Body(nn.Module):

  def __init__(self, stage_sizes, width):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = FrozenBN(width)
    cin = width
    for s, n in enumerate(stage_sizes):
      planes = width * 2 ** s
      blocks = []
      for b in range(n):
        blocks.append(Bottleneck(cin, planes, 2 if (s and not b) else 1,
                                 b == 0))
        cin = planes * 4
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    out = []
    for s in range(4):
      x = getattr(self, f"layer{s + 1}")(x)
      out.append(x)
    return out


def _wrap(module, layout):
  return nn.Sequential(module) if layout == "v2" else module


class FPN(nn.Module):

  def __init__(self, in_channels, channels, layout):
    super().__init__()
    self.inner_blocks = nn.ModuleList(
        [_wrap(nn.Conv2d(c, channels, 1), layout) for c in in_channels])
    self.layer_blocks = nn.ModuleList(
        [_wrap(nn.Conv2d(channels, channels, 3, padding=1), layout)
         for _ in in_channels])

  def forward(self, xs):
    last = self.inner_blocks[-1](xs[-1])
    results = [self.layer_blocks[-1](last)]
    for i in range(len(xs) - 2, -1, -1):
      lateral = self.inner_blocks[i](xs[i])
      last = lateral + F.interpolate(last, size=lateral.shape[-2:],
                                     mode="nearest")
      results.insert(0, self.layer_blocks[i](last))
    results.append(F.max_pool2d(results[-1], 1, 2, 0))
    return results


class RPNHead(nn.Module):

  def __init__(self, c, a, layout):
    super().__init__()
    conv = nn.Conv2d(c, c, 3, padding=1)
    self.conv = (nn.Sequential(nn.Sequential(conv)) if layout == "v2"
                 else conv)
    self.cls_logits = nn.Conv2d(c, a, 1)
    self.bbox_pred = nn.Conv2d(c, 4 * a, 1)

  def forward(self, features):
    logits, deltas = [], []
    for f in features:
      t = F.relu(self.conv(f))
      n, _, h, w = t.shape
      lo = self.cls_logits(t)                      # [N, A, H, W]
      logits.append(lo.permute(0, 2, 3, 1).reshape(n, -1))
      de = self.bbox_pred(t).view(n, -1, 4, h, w)  # [N, A, 4, H, W]
      deltas.append(de.permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(logits, 1), torch.cat(deltas, 1)


def roi_align(f, rois, out, scale, g=2, aligned=False):
  """torchvision's roi_align of one image, [C, H, W]."""
  c, h, w = f.shape
  res = torch.zeros(len(rois), c, out, out, dtype=f.dtype)

  def bilinear(y, x):
    if y < -1.0 or y > h or x < -1.0 or x > w:
      return torch.zeros(c, dtype=f.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
      y0 = y1 = h - 1
      y = float(y0)
    else:
      y1 = y0 + 1
    if x0 >= w - 1:
      x0 = x1 = w - 1
      x = float(x0)
    else:
      x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])

  shift = 0.5 if aligned else 0.0
  for r, (x1, y1, x2, y2) in enumerate(rois.tolist()):
    sx, sy = x1 * scale - shift, y1 * scale - shift
    rw, rh = (x2 - x1) * scale, (y2 - y1) * scale
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    bw, bh = rw / out, rh / out
    for p in range(out):
      for q in range(out):
        acc = 0
        for iy in range(g):
          for ix in range(g):
            acc = acc + bilinear(sy + p * bh + (iy + 0.5) * bh / g,
                                 sx + q * bw + (ix + 0.5) * bw / g)
        res[r, :, p, q] = acc / (g * g)
  return res


def multiscale(features, rois, out, aligned):
  area = (rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])
  levels = torch.clamp(torch.floor(4 + torch.log2(area.sqrt() / 224)
                                   + 1e-6), 2, 5).long() - 2
  res = torch.zeros(len(rois), features[0].shape[1], out, out,
                    dtype=features[0].dtype)
  for r in range(len(rois)):
    k = int(levels[r])
    res[r] = roi_align(features[k][0], rois[r:r + 1], out,
                       1.0 / seg.STRIDES[k], aligned=aligned)[0]
  return res


class Reference(nn.Module):
  """torchvision's maskrcnn_resnet50_fpn modules, state-dict names kept."""

  def __init__(self, layout, num_classes=COCO_CLASSES, aligned=False):
    super().__init__()
    a = ARCH
    self.backbone = nn.Module()
    self.backbone.body = Body(a["stage_sizes"], a["width"])
    ins = [a["width"] * 2 ** s * 4 for s in range(4)]
    self.backbone.fpn = FPN(ins, a["fpn_channels"], layout)
    self.rpn = nn.Module()
    self.rpn.head = RPNHead(a["fpn_channels"], 3, layout)
    self.roi_heads = nn.Module()
    c, rep, mc = a["fpn_channels"], a["representation"], a["mask_channels"]
    self.roi_heads.box_head = nn.Module()
    self.roi_heads.box_head.fc6 = nn.Linear(c * 49, rep)
    self.roi_heads.box_head.fc7 = nn.Linear(rep, rep)
    self.roi_heads.box_predictor = nn.Module()
    self.roi_heads.box_predictor.cls_score = nn.Linear(rep, num_classes)
    self.roi_heads.box_predictor.bbox_pred = nn.Linear(rep, 4 * num_classes)
    convs = [nn.Conv2d(c if k == 0 else mc, mc, 3, padding=1)
             for k in range(4)]
    if layout == "v2":
      self.roi_heads.mask_head = nn.Sequential(
          *[nn.Sequential(conv) for conv in convs])
    else:
      self.roi_heads.mask_head = nn.Module()
      for k, conv in enumerate(convs):
        setattr(self.roi_heads.mask_head, f"mask_fcn{k + 1}", conv)
    self.roi_heads.mask_predictor = nn.Module()
    self.roi_heads.mask_predictor.conv5_mask = nn.ConvTranspose2d(mc, mc, 2, 2)
    self.roi_heads.mask_predictor.mask_fcn_logits = nn.Conv2d(
        mc, num_classes, 1)
    self.layout = layout
    self.aligned = aligned

  def forward(self, images, rois):
    mean = torch.tensor(seg.PIXEL_MEAN, dtype=images.dtype)[:, None, None]
    std = torch.tensor(seg.PIXEL_STD, dtype=images.dtype)[:, None, None]
    feats = self.backbone.fpn(self.backbone.body((images - mean) / std))
    logits, deltas = self.rpn.head(feats)
    box = self.roi_heads.box_head
    x = multiscale(feats[:4], rois, 7, self.aligned).flatten(1)
    x = F.relu(box.fc7(F.relu(box.fc6(x))))
    pred = self.roi_heads.box_predictor
    m = multiscale(feats[:4], rois, 14, self.aligned)
    head = self.roi_heads.mask_head
    for k in range(4):
      conv = head[k] if self.layout == "v2" else getattr(
          head, f"mask_fcn{k + 1}")
      m = F.relu(conv(m))
    mp = self.roi_heads.mask_predictor
    m = mp.mask_fcn_logits(F.relu(mp.conv5_mask(m)))
    return {"features": feats, "rpn_logits": logits, "rpn_deltas": deltas,
            "cls": pred.cls_score(x), "box": pred.bbox_pred(x), "mask": m}


def _ours(variables, images, rois, num_classes, aligned):
  model = seg.MaskRCNN(num_classes=num_classes, norm="frozen", **ARCH)

  def run(module, images, rois):
    f = module.features(images)
    logits, deltas = module.rpn(f)
    levels = [p[0] for p in f[:4]]
    pooled = seg.multiscale_roi_align(levels, rois, 7, aligned=aligned)
    cls, box = module.box_head(pooled)
    mask = module.mask_head(seg.multiscale_roi_align(levels, rois, 14,
                                                     aligned=aligned))
    return {"features": f, "rpn_logits": logits, "rpn_deltas": deltas,
            "cls": cls, "box": box.reshape(len(rois), -1), "mask": mask}

  return jax.jit(lambda v, x, r: model.apply(v, x, r, method=run))(
      variables, images, rois)


ROIS = np.array([[4, 6, 30, 40], [0, 0, 64, 64], [10, 12, 16, 20],
                 [33, 2, 63, 25], [20, 20, 22.5, 50]], np.float32)


def _random_template(num_classes, seed):
  """Variables of the right shapes (no compiled init: only shapes and
  distinct values matter here)."""
  model = seg.MaskRCNN(num_classes=num_classes, norm="frozen", **ARCH)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
      method=seg.MaskRCNN.init_all))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), dict(shapes))


@pytest.fixture(scope="module")
def coco_template():
  return _random_template(COCO_CLASSES, 0)


@pytest.fixture(scope="module")
def our_template():
  return _random_template(len(seg.CLASSES), 1)


@pytest.fixture(scope="module")
def image():
  return np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)


def _state_dict(ref):
  return {k: v.float().numpy() for k, v in ref.state_dict().items()}


def _close(ours, theirs, what):
  ours = np.asarray(ours, np.float64)
  theirs = np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  scale = np.abs(theirs).max()
  err = np.abs(ours - theirs).max()
  assert err <= 1e-4 * scale, (f"{what}: max error {err:.3g} > 1e-4 x "
                               f"{scale:.3g}")


@pytest.mark.parametrize("layout,aligned", [("v1", False), ("v2", True)])
def test_imported_weights_reproduce_the_reference(layout, aligned, image,
                                                  coco_template):
  torch.manual_seed(0)
  ref = Reference(layout, aligned=aligned)
  state = _state_dict(ref)
  assert importer.detect_layout(state) == layout
  variables = importer.from_torch(state, coco_template)
  ours = _ours(variables, image, ROIS, COCO_CLASSES, aligned)
  with torch.no_grad():
    theirs = ref.double()(torch.from_numpy(image.transpose(0, 3, 1, 2))
                          .double(), torch.from_numpy(ROIS).double())
  for i, (a, b) in enumerate(zip(ours["features"], theirs["features"])):
    _close(a, b.numpy().transpose(0, 2, 3, 1), f"P{i + 2}")
  for key in ("rpn_logits", "rpn_deltas", "cls", "box"):
    _close(ours[key], theirs[key].numpy(), key)
  _close(ours["mask"], theirs["mask"].numpy().transpose(0, 2, 3, 1), "mask")


def test_three_classes_skip_the_class_specific_layers(our_template):
  torch.manual_seed(1)
  state = _state_dict(Reference("v2"))
  template = our_template
  variables = importer.from_torch(state, template)
  p = variables["params"]
  # Class-specific: the template's; everything else: the checkpoint's.
  np.testing.assert_array_equal(p["box_head"]["cls_score"]["kernel"],
                                template["params"]["box_head"]["cls_score"]
                                ["kernel"])
  np.testing.assert_array_equal(
      p["mask_head"]["mask_fcn_logits"]["kernel"],
      template["params"]["mask_head"]["mask_fcn_logits"]["kernel"])
  np.testing.assert_array_equal(
      p["box_head"]["fc7"]["kernel"],
      state["roi_heads.box_head.fc7.weight"].T)
  np.testing.assert_array_equal(
      variables["batch_stats"]["backbone"]["body"]["bn1"]["var"],
      state["backbone.body.bn1.running_var"])


def test_bad_checkpoints_name_their_keys(coco_template):
  torch.manual_seed(2)
  state = _state_dict(Reference("v1"))
  template = coco_template
  broken = dict(state)
  del broken["backbone.body.layer1.0.conv2.weight"]
  broken["rpn.head.extra.weight"] = np.zeros(3, np.float32)
  broken["roi_heads.box_head.fc7.weight"] = np.zeros((5, 5), np.float32)
  with pytest.raises(ValueError) as e:
    importer.from_torch(broken, template)
  msg = str(e.value)
  for part in ("1 missing", "layer1.0.conv2.weight", "1 unexpected",
               "rpn.head.extra.weight", "1 wrongly shaped", "fc7.weight"):
    assert part in msg, part
  with pytest.raises(ValueError, match="norm='frozen'"):
    importer.from_torch(state, {"params": template["params"]})


def test_npz_round_trip(tmp_path, our_template, coco_template):
  torch.manual_seed(3)
  template = our_template
  variables = importer.from_torch(_state_dict(Reference("v2")), template)
  from jaxface.weights import npz  # pylint: disable=g-import-not-at-top
  path = tmp_path / "m.npz"
  npz.save_npz(path, variables)
  back = importer.load(path, template)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, variables))
  with pytest.raises(ValueError, match="m.npz"):
    importer.load(path, coco_template)


def test_full_size_names_cover_the_model():
  """Every variable of the ResNet-50-FPN model has a distinct torchvision
  name in both layouts (the real checkpoint's key set, by construction)."""
  model = seg.MaskRCNN(norm="frozen", num_classes=COCO_CLASSES)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
      method=seg.MaskRCNN.init_all))
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(dict(shapes))
  for layout in importer.LAYOUTS:
    names = {importer.torch_name(k, layout) for k in flat}
    assert len(names) == len(flat)
  # torchvision's v1 file: 2 x 4 tensors per FrozenBN ... spot checks.
  names = {importer.torch_name(k, "v1") for k in flat}
  for name in ("backbone.body.layer4.2.bn3.running_var",
               "backbone.body.layer2.0.downsample.1.weight",
               "backbone.fpn.inner_blocks.3.weight", "rpn.head.conv.weight",
               "roi_heads.mask_head.mask_fcn4.bias",
               "roi_heads.mask_predictor.conv5_mask.weight"):
    assert name in names, name
  assert sum(math.prod(s.shape) for s in jax.tree.leaves(
      shapes["params"])) == 44_401_393
