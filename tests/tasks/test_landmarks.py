"""The landmark task: its examples, its step on the shared loop, its summary.

The network is the tiny config made smaller still (64 px, width 16, two
stacks of depth 2, batch 8 on the four fake devices). Compiling its
initialiser and step dominates the cost, so this module keeps a persistent
compilation cache for its own duration: the loop's runs in the resume test
build the same programs as `setup` below and load them instead of
compiling them again.
"""

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from jaxface import losses
from jaxface import metrics
from jaxface.data import examples
from jaxface.data import pipeline
from jaxface.data import wflw
from jaxface.tasks import landmarks
from jaxface.train import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import landmarks as landmarks_config


pytestmark = pytest.mark.usefixtures("module_compilation_cache")


def small_config(**train):
  """`tiny` with width 16 and a constant learning rate (no schedule that
  depends on `num_steps`, so that runs of 2 and 4 steps share a program)."""
  c = landmarks_config.get_config("tiny")
  c.model.width = 16
  c.model.stem_width = 8
  c.data.source = "procedural:num_records=64"
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.train.update(dict(num_steps=4, log_every=2, image_every=0, eval_every=0,
                      checkpoint_every=100))
  c.train.update(train)
  return c


@pytest.fixture(scope="module")
def setup():
  return loop.build(small_config())


@pytest.fixture(scope="module")
def host_batch(setup):
  return pipeline.fixed_batch(setup.task.examples, setup.config,
                              setup.config.train.batch_size)


@pytest.fixture(scope="module")
def initial(setup):
  """The initial state on the host (the step donates its input)."""
  return jax.device_get(setup.init(jax.random.key(setup.config.seed)))


def _leaves_equal(a, b):
  a, b = jax.device_get((a, b))
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                           jax.tree.leaves(b)))


# ---------------------------------------------------------------- examples
S = 64


def _coded_face(landmarks_xy):
  """A face whose pixels say where they are: R = 30 + 3x, G = 30 + 3y.

  Linear in x and y, so bilinear interpolation reproduces it exactly; the
  mask is the left half (x < 32).
  """
  y, x = np.mgrid[0:S, 0:S]
  coded = np.stack([30 + 3 * x, 30 + 3 * y, np.full_like(x, 128)],
                   -1).astype(np.uint8)
  return examples.Face(
      image=np.full((S, S, 3), 200, np.uint8), masked_image=coded,
      mask=(x < 32).astype(np.uint8)[..., None],
      landmarks=np.asarray(landmarks_xy, np.float32),
      landmarks_approx=np.zeros(98, bool), gender=np.int32(1),
      mask_style=np.int32(0), key="coded")


def _bilinear(image, x, y):
  """[K, C] float64 bilinear samples of image [H, W, C] at (x, y)."""
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  im = image.astype(np.float64)
  return ((1 - fy) * ((1 - fx) * im[y0, x0] + fx * im[y0, x0 + 1])
          + fy * ((1 - fx) * im[y0 + 1, x0] + fx * im[y0 + 1, x0 + 1]))


def test_augmentation_moves_the_landmarks_exactly_with_the_pixels():
  """Where a landmark lands, the warped image holds what was under it.

  The coded image's R and G at a point give back its x and y, so the
  warped image, read at the moved landmark, must say where the landmark
  came from. Bound: OpenCV's warpAffine rounds its source positions to a
  1/32 px grid (within 1/32, plus 2/1024 from the fixed-point matrix), its
  15-bit interpolation weights are off by at most 2/2^15 each (4 of them,
  values <= 255), it rounds to uint8 (0.5), and the moved landmarks are
  float32 (u * S); divided by the code's 3 grey levels per pixel.
  """
  rng = np.random.default_rng(0)
  xs = np.concatenate([rng.uniform(16, 29, 49), rng.uniform(35, 48, 49)])
  pts = np.stack([xs, rng.uniform(16, 48, 98)], -1)
  face = _coded_face(pts)
  make = landmarks.MakeExample(rotation=20.0, scale=0.1, translation=0.05)
  grey_bound = (0.5 + 3 * (1 / 32 + 2 / 1024) + 4 * 2 * 255 / 2**15
                + 3 * numerics.U32 * S)
  moved = []
  for seed in range(5):
    ex = make(face, np.random.default_rng(seed), True)
    lm = ex["landmarks"].astype(np.float64)
    assert ex["landmarks"].dtype == np.float32 and lm.shape == (98, 2)
    assert ex["masked_image"].shape == (S, S, 3)
    assert ex["masked_image"].dtype == np.uint8
    assert ex["mask"].shape == (S, S, 1) and ex["gender"] == 1
    sampled = _bilinear(ex["masked_image"], lm[:, 0], lm[:, 1])
    came_from = (sampled[:, :2] - 30) / 3
    numerics.assert_within(came_from, pts, grey_bound / 3,
                           f"seed {seed}: source of the moved landmarks")
    # The mask moves with them (nearest neighbour: within 1.5 px, and the
    # points are 2.5 px or more from its edge).
    r = np.round(lm).astype(int)
    np.testing.assert_array_equal(ex["mask"][r[:, 1], r[:, 0], 0],
                                  (pts[:, 0] < 32).astype(np.uint8))
    moved.append(np.max(np.abs(lm - pts)))
  assert max(moved) > 2.0  # the transforms were not the identity


def test_make_example_without_augmentation_and_its_other_paths():
  """No augment: the face as given; `unmasked`: the clean face, no mask;
  colour jitter keeps the points; NaN landmarks drop the record."""
  rng = np.random.default_rng(1)
  pts = rng.uniform(8, 56, (98, 2))
  face = _coded_face(pts)
  full = landmarks.MakeExample(rotation=20.0, scale=0.1, translation=0.05,
                               brightness=0.1, contrast=0.2,
                               saturation=0.2, unmasked=0.5)
  ex = full(face, np.random.default_rng(0), False)
  np.testing.assert_array_equal(ex["masked_image"], face.masked_image)
  np.testing.assert_array_equal(ex["mask"], face.mask)
  np.testing.assert_array_equal(ex["landmarks"], face.landmarks)
  assert set(ex) == set(landmarks.KEYS)

  clean = landmarks.MakeExample(unmasked=1.0)(face, rng, True)
  np.testing.assert_array_equal(clean["masked_image"], face.image)
  assert not np.any(clean["mask"])
  np.testing.assert_array_equal(clean["landmarks"], face.landmarks)

  colour = landmarks.MakeExample(brightness=0.1, contrast=0.2,
                                 saturation=0.2)(face, rng, True)
  np.testing.assert_array_equal(colour["landmarks"], face.landmarks)
  np.testing.assert_array_equal(colour["mask"], face.mask)
  assert colour["masked_image"].dtype == np.uint8
  assert not np.array_equal(colour["masked_image"], face.masked_image)

  pts[5] = np.nan
  assert full(_coded_face(pts), rng, True) is None
  assert full(_coded_face(pts), rng, False) is None


# -------------------------------------------------------------------- step
def test_one_step_updates_params_and_batch_stats_with_finite_metrics(
    setup, host_batch, initial):
  state, m = setup.train_step(jax.device_put(initial, setup.state_sharding),
                              setup.put(host_batch), setup.constants())
  m = jax.device_get(m)
  assert int(state.step) == 1
  assert bool(m["finite"])
  for key in ("loss", "grad_norm", "nme", "loss/stack0", "loss/stack1"):
    assert np.isfinite(float(m[key])), key
  assert float(m["loss"]) > 0 and float(m["grad_norm"]) > 0
  # The total is one float32 addition of the two stacks' terms.
  assert float(m["loss"]) == pytest.approx(
      float(m["loss/stack0"]) + float(m["loss/stack1"]), rel=numerics.U32)
  new = jax.device_get(state)
  # Every module of the network moved, and every running statistic.
  for name in initial.params:
    assert not _leaves_equal(initial.params[name], new.params[name]), name
  for old, now in zip(jax.tree.leaves(initial.model_state),
                      jax.tree.leaves(new.model_state)):
    assert not np.array_equal(old, now)
  assert set(new.model_state) == {"batch_stats"}


def test_thirty_steps_on_one_batch_reduce_the_loss(setup, host_batch,
                                                   initial):
  state = jax.device_put(initial, setup.state_sharding)
  batch, consts = setup.put(host_batch), setup.constants()
  loss = []
  for _ in range(30):
    state, m = setup.train_step(state, batch, consts)
    loss.append(float(m["loss"]))
  assert all(np.isfinite(loss))
  assert loss[-1] < 0.6 * loss[0], loss


def test_loss_weights_pixels_near_a_point_w_plus_one_times():
  """Per stack: mean of AWing x (W * M + 1) x the channel's weight."""
  config = small_config()
  config.losses.boundary = 0.5
  task = landmarks.LandmarksTask(config)
  target = np.zeros((1, 8, 8, 3), np.float32)  # 2 landmarks + boundary
  target[0, 4, 4, 0] = 1.0
  target[0, 1, 1, 2] = 1.0
  out0 = np.zeros_like(target)
  out0[0, 4, 5, 0] = 0.25  # beside the peak: M = 1
  out0[0, 0, 7, 0] = 0.25  # far from it: M = 0
  out1 = np.zeros_like(target)
  total, terms = task.loss([jnp.asarray(out0), jnp.asarray(out1)],
                           jnp.asarray(target))
  # The per-pixel losses as the task computes them: nonzero only where
  # the prediction is off.
  aw0 = np.asarray(losses.adaptive_wing(out0, target), np.float64)
  aw1 = np.asarray(losses.adaptive_wing(out1, target), np.float64)
  off = [(0, 4, 4, 0), (0, 4, 5, 0), (0, 0, 7, 0), (0, 1, 1, 2)]
  assert np.count_nonzero(aw0) == 4 and all(aw0[i] > 0 for i in off)
  assert np.count_nonzero(aw1) == 2
  w, n = config.losses.weight + 1, target.size
  want = [(w * aw0[off[0]] + w * aw0[off[1]] + aw0[off[2]]
           + 0.5 * w * aw0[off[3]]) / n,
          (w * aw1[off[0]] + 0.5 * w * aw1[off[3]]) / n]
  # Per term two products (W * M + 1 is exact); an n-term mean.
  bounds = [(numerics.gamma(n) + 2 * numerics.U32 + numerics.DIV_U) * v
            for v in want]
  for i, (value, bound) in enumerate(zip(want, bounds)):
    numerics.assert_within(float(terms[f"loss/stack{i}"]), value, bound,
                           f"stack {i}")
  numerics.assert_within(float(total), sum(want),
                         sum(bounds) + numerics.U32 * sum(want), "total")
  # A perfect prediction costs nothing.
  zero, _ = task.loss([jnp.asarray(target)] * 2, jnp.asarray(target))
  assert float(zero) == 0.0


def test_exact_resume(tmp_path, initial):
  """4 steps straight == 2 steps, a restart from the workdir, 2 more."""
  straight = loop.train_and_evaluate(small_config(num_steps=4),
                                     str(tmp_path / "straight"))
  resumed_dir = tmp_path / "resumed"
  loop.train_and_evaluate(small_config(num_steps=2), str(resumed_dir))
  assert (resumed_dir / "checkpoints" / "2").is_dir()
  resumed = loop.train_and_evaluate(small_config(num_steps=4),
                                    str(resumed_dir))
  assert int(straight.step) == int(resumed.step) == 4
  assert not _leaves_equal(straight.params, initial.params)
  assert _leaves_equal(straight, resumed)


# ------------------------------------------------------------- evaluation
def test_points_in_mask_by_hand():
  """The rounded pixel decides; points outside the image are visible."""
  mask = np.zeros((2, 4, 6, 1), np.float32)
  mask[0, 0:3, 2:6] = 1.0
  mask[1] = 1.0
  points = np.array([[
      [2.0, 1.0],    # in the mask
      [4.4, 2.4],    # rounds to (4, 2): in
      [1.4, 1.0],    # rounds to (1, 1): out
      [3.0, 3.4],    # row 3: out
      [3.0, -1.0],   # above the image (row 0 below it is masked)
      [6.6, 1.0],    # right of it (column 5 beside it is masked)
      [-0.6, 0.0],   # left of it
      [5.4, 2.49],   # (5, 2): in
  ]] * 2, np.float32)
  got = np.asarray(landmarks.points_in_mask(jnp.asarray(mask),
                                            jnp.asarray(points)))
  np.testing.assert_array_equal(
      got, [[True, True, False, False, False, False, False, True],
            [True, True, True, True, False, False, False, True]])


def test_summarize_nme_keys_and_values_per_group_and_gender():
  """nme / fr / auc / count for all, masked and visible, per gender."""
  per_example = {
      "nme": np.array([0.05, 0.2, 0.0, 0.1]),
      "nme_masked": np.array([np.nan, 0.3, 0.0, 0.1]),
      "nme_visible": np.array([0.05, 0.1, 0.0, np.nan]),
  }
  genders = np.array([0, 1, 1, -1])  # -1: counted overall only
  out = landmarks.summarize_nme(per_example, genders)
  assert set(out) == {f"{stat}{group}{suffix}"
                      for stat in ("nme", "fr", "auc", "count")
                      for group in ("", "_masked", "_visible")
                      for suffix in ("", "/female", "/male")}
  exact = {
      "nme": 0.0875, "fr": 0.25, "count": 4.0,
      "nme/female": 0.05, "fr/female": 0.0, "count/female": 1.0,
      "nme/male": 0.1, "fr/male": 0.5, "count/male": 2.0,
      "fr_masked": 1 / 3, "count_masked": 3.0,
      "nme_masked/male": 0.15, "fr_masked/male": 0.5,
      "count_masked/male": 2.0, "count_masked/female": 0.0,
      "nme_visible": 0.05, "fr_visible": 0.0, "count_visible": 3.0,
      "nme_visible/male": 0.05, "count_visible/male": 2.0,
  }
  for key, value in exact.items():
    assert out[key] == pytest.approx(value, rel=4 * numerics.U64), key
  assert out["nme_masked"] == pytest.approx(0.4 / 3, rel=4 * numerics.U64)
  for stat in ("nme", "fr", "auc"):
    assert math.isnan(out[f"{stat}_masked/female"]), stat
  assert out["auc/female"] == metrics.ced_auc(np.array([0.05]))
  assert out["auc_masked"] == metrics.ced_auc(np.array([0.3, 0.0, 0.1]))
  # Without genders (or with one only) there are fewer keys.
  assert set(landmarks.summarize_nme(per_example)) == {
      f"{stat}{group}" for stat in ("nme", "fr", "auc", "count")
      for group in ("", "_masked", "_visible")}
  males = landmarks.summarize_nme(per_example, np.ones(4, int))
  assert not any(k.endswith("/female") for k in males)
  assert males["nme/male"] == out["nme"]


def test_summarize_eval_groups_points_by_the_mask():
  """From eval_step's columns: NME of all, masked and visible points."""
  config = small_config()
  task = landmarks.LandmarksTask(config)
  target = np.zeros((2, 98, 2))
  target[:, :, 0] = np.arange(98) % 14 * 2 + 10
  target[:, :, 1] = np.arange(98) // 14 * 2 + 10
  target[0, wflw.LEFT_EYE_OUTER] = [20.0, 40.0]
  target[0, wflw.RIGHT_EYE_OUTER] = [30.0, 40.0]  # 10 px apart
  target[1, wflw.LEFT_EYE_OUTER] = [20.0, 40.0]
  target[1, wflw.RIGHT_EYE_OUTER] = [40.0, 40.0]  # 20 px apart
  masked = np.zeros((2, 98), bool)
  masked[0, :49] = True
  pred = target.copy()
  pred[0, :49, 0] += 1.0  # face 0: its masked points 1 px off
  pred[1, :, 1] += 2.0  # face 1: everything 2 px off, nothing masked
  out = task.summarize_eval({"pred": pred, "target": target,
                             "masked": masked,
                             "gender": np.array([0, 1])})
  rel = 4 * numerics.U64
  assert out["nme"] == pytest.approx((0.05 + 0.1) / 2, rel=rel)
  assert out["nme/female"] == pytest.approx(0.05, rel=rel)
  assert out["nme_masked"] == pytest.approx(0.1, rel=rel)
  assert out["count_masked"] == 1.0 and math.isnan(out["nme_masked/male"])
  assert out["nme_visible"] == pytest.approx(0.05, rel=rel)
  assert out["nme_visible/female"] == 0.0
  assert out["fr"] == 0.0 and out["count"] == 2.0


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("key, value", [
    ("model.num_stacks", 0),
    ("model.depth", 0),
    ("model.width", 6),
    ("data.image_size", 72),  # depth 2: a multiple of 16
    ("model.input_size", -1),
    ("model.input_size", 40),  # set: it, not data.image_size, must divide
    ("augment.rotation", -1.0),
    ("augment.scale", 1.0),
    ("augment.unmasked", 2.0),
    ("losses.weight", -1.0),
    ("losses.boundary", -0.5),
    ("losses.theta", 0.0),
    ("optim.name", "sgd"),
    ("optim.schedule", "step"),
    ("optim.warmup_steps", -1),
    ("optim.grad_clip", -1.0),
])
def test_bad_config_values_name_the_key(key, value):
  config = small_config()
  section, leaf = key.split(".")
  config[section][leaf] = value
  with pytest.raises(ValueError, match=rf"config\.{key}="):
    landmarks.LandmarksTask(config)


def test_input_size_resizes_images_and_maps_points_by_the_resize_rule():
  """model.input_size: images resized on the device, x -> (x + .5) s - .5."""
  config = small_config()
  config.model.input_size = 32
  task = landmarks.LandmarksTask(config)
  assert task.image_size == 32 and task.heatmap_size == 8
  image = jnp.ones((2, 64, 64, 3)) * 0.25
  resized = np.asarray(task.to_network(image))
  assert resized.shape == (2, 32, 32, 3)
  # A constant image stays constant (normalised weights: a few roundings).
  numerics.assert_within(resized, np.full(resized.shape, 0.25),
                         numerics.gamma(16) * 0.25, "resized")
  pts = jnp.array([[[0.0, 63.0], [31.5, 7.5]]])
  scale = task._scale  # pylint: disable=protected-access
  np.testing.assert_array_equal(scale(pts, 64, 32),
                                [[[-0.25, 31.25], [15.5, 3.5]]])
  assert scale(pts, 64, 64) is pts


def test_the_tiny_and_lite_configs_are_valid():
  for arg in (None, "tiny", "lite", "tiny,size=96"):
    landmarks.LandmarksTask(landmarks_config.get_config(arg))


def test_every_width_the_config_accepts_builds():
  """Widths the stem cannot split 2:1:1 are refused, naming the key."""
  for width in (8, 16):
    config = small_config()
    config.model.width = width
    task = landmarks.LandmarksTask(config)
    jax.eval_shape(task.init_state, jax.random.key(0))
  for width in (12, 4, 20):
    config = small_config()
    config.model.width = width
    with pytest.raises(ValueError, match=r"config\.model\.width="):
      landmarks.LandmarksTask(config)


@pytest.mark.parametrize("key, value", [
    ("losses.epsilon", 0.0), ("losses.omega", 0.0), ("losses.alpha", 1.5),
    ("losses.weight_threshold", 1.0), ("model.stem_width", 0)])
def test_awing_and_map_constants_name_their_own_key(key, value):
  config = small_config()
  section, leaf = key.split(".")
  config[section][leaf] = value
  with pytest.raises(ValueError, match=rf"config\.{key}="):
    landmarks.LandmarksTask(config)
