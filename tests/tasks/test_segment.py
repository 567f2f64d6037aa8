"""The segmentation task: examples, scenes, steps of both networks, summary."""

import dataclasses
import pathlib
import sys

import jax
import numpy as np
import pytest

from jaxface.data import examples
from jaxface.data import pipeline
from jaxface.data import schema
from jaxface.models import segment as seg
from jaxface.tasks import segment
from jaxface.train import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import segment as segment_config


def small_config(model):
  c = segment_config.get_config(f"tiny,model={model}")
  c.data.source = "procedural:num_records=64"
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.augment.mosaic = 0.5
  c.train.update(dict(num_steps=8, log_every=2, image_every=0, eval_every=0,
                      checkpoint_every=100))
  return c


# ---------------------------------------------------------------- examples
def _face(size=64):
  rng = np.random.default_rng(0)
  landmarks = rng.uniform(16, 48, (98, 2)).astype(np.float32)
  mask = np.zeros((size, size, 1), np.uint8)
  mask[36:52, 20:44] = 1
  return examples.Face(
      image=np.full((size, size, 3), 200, np.uint8),
      masked_image=np.full((size, size, 3), 90, np.uint8), mask=mask,
      landmarks=landmarks, landmarks_approx=np.zeros(98, bool),
      gender=np.int32(0), mask_style=np.int32(3), key="face")


def test_face_box_is_the_landmarks_extent_and_the_forehead():
  pts = np.array([[10, 20], [30, 40], [20, 30]], np.float32)
  # Pixels 10..30 x 20..40 -> [10, 31) x [20, 41); forehead 0.25 * 21.
  np.testing.assert_allclose(segment.face_box(pts),
                             [10, 20 - 0.25 * 21, 31, 41])


def test_make_example_keys_and_paths():
  face = _face()
  make = segment.MakeExample(rotation=10, scale_min=0.6, scale_max=1.1,
                             translation=0.1, brightness=0.1, unmasked=0.0)
  plain = make(face, np.random.default_rng(0), False)
  assert set(plain) == set(segment.KEYS)
  np.testing.assert_array_equal(plain[schema.MASK], face.mask)
  np.testing.assert_allclose(plain[segment.FACE_BOX],
                             segment.face_box(face.landmarks))
  np.testing.assert_array_equal(plain[segment.MASK_BOXES][0],
                                [20, 36, 44, 52])
  assert plain[schema.MASK_STYLE] == 3
  moved = make(face, np.random.default_rng(1), True)
  assert moved[schema.MASK].shape == (64, 64, 1)
  assert not np.array_equal(moved[schema.MASK], face.mask)
  clean = segment.MakeExample(unmasked=1.0)(face, np.random.default_rng(0),
                                            True)
  assert not clean[schema.MASK].any()
  assert np.isnan(clean[segment.MASK_BOXES]).all()
  np.testing.assert_array_equal(clean[schema.MASKED_IMAGE], face.image)
  # A photo wearing a real mask (no clean face behind it) keeps its mask.
  real = dataclasses.replace(face, image=face.masked_image)
  kept = segment.MakeExample(unmasked=1.0)(real, np.random.default_rng(0),
                                           True)
  np.testing.assert_array_equal(kept[schema.MASK], face.mask)


# ------------------------------------------------------------------ scenes
def test_mask_boxes_one_per_part_largest_first():
  m = np.zeros((32, 32, 1), np.uint8)
  m[2:6, 2:10] = 1       # 32 px
  m[20:30, 20:30] = 1    # 100 px
  m[20:30, 31] = 1       # 1 px away from it: the same mask
  m[0, 31] = 1           # a stray pixel: noise
  boxes = segment.mask_boxes(m)
  np.testing.assert_array_equal(boxes[0], [20, 20, 32, 30])
  np.testing.assert_array_equal(boxes[1], [2, 2, 10, 6])
  assert np.isnan(boxes[2]).all()
  assert np.isnan(segment.mask_boxes(np.zeros_like(m))).all()


def test_scenes_single_and_mosaic_boxes():
  b, s, k = 4, 32, segment.MASKS_PER_FACE
  image = np.stack([np.full((s, s, 3), i / 4, np.float32) for i in range(b)])
  mask = np.zeros((b, s, s, 1), np.float32)
  mboxes = np.full((b, k, 4), np.nan, np.float32)
  for i in range(b):
    mask[i, 8 + i:16 + i, 4:20] = 1
    mboxes[i, 0] = [4, 8 + i, 20, 16 + i]
  mboxes[2, 1] = [24, 24, 30, 30]       # a second mask on face 2
  # Face 3 reaches past its image: in a mosaic it stays in its tile.
  faces = np.array([[2, 2, 22, 26], [2, 2, 22, 27], [2, 2, 22, 28],
                    [-6, 2, 40, 29]], np.float32)
  out = segment.scenes(image, mask, mboxes, faces,
                       np.array([False, True, False, False]))
  boxes, valid = np.asarray(out["boxes"]), np.asarray(out["valid"])
  classes = np.asarray(out["classes"])
  per_tile = k + 1
  assert boxes.shape == (b, segment.MAX_OBJECTS, 4)
  np.testing.assert_array_equal(
      classes[0, :per_tile], [seg.FACE_MASK] * k + [seg.FACE])
  # Single face 0: its mask box and face box, nothing else.
  np.testing.assert_array_equal(boxes[0, 0], mboxes[0, 0])
  np.testing.assert_array_equal(boxes[0, k], faces[0])
  want = np.zeros(segment.MAX_OBJECTS, bool)
  want[[0, k]] = True
  np.testing.assert_array_equal(valid[0], want)
  np.testing.assert_array_equal(out["map"][0], mask[0, ..., 0])
  # Face 3 alone: clipped to the image.
  np.testing.assert_array_equal(boxes[3, k], [0, 2, 32, 29])
  # Mosaic of example 1: faces 1, 2, 3, 0 at half size in the four tiles.
  for t, src in enumerate([1, 2, 3, 0]):
    oy, ox = (t // 2) * 16, (t % 2) * 16
    np.testing.assert_allclose(out["image"][1, oy + 3, ox + 3], src / 4)
    shift = np.array([ox, oy, ox, oy])
    tile = slice(t * per_tile, (t + 1) * per_tile)
    want_face = np.clip(faces[src] / 2 + shift, [ox, oy] * 2,
                        [ox + 16, oy + 16] * 2)
    np.testing.assert_allclose(boxes[1, tile][k], want_face)
    np.testing.assert_allclose(boxes[1, tile][0], mboxes[src, 0] / 2 + shift)
    n_masks = 2 if src == 2 else 1
    np.testing.assert_array_equal(valid[1, tile],
                                  [True] * n_masks + [False] * (k - n_masks)
                                  + [True])


def test_instances_split_the_map_by_box():
  m = np.zeros((1, 8, 8), np.float32)
  m[0, 1:3, 1:3] = 1
  m[0, 5:7, 5:7] = 1
  boxes = np.array([[[0, 0, 4, 4], [4, 4, 8, 8]]], np.float32)
  inst = np.asarray(segment.instances(m, boxes))
  assert inst[0, 0].sum() == 4 and inst[0, 0, 1:3, 1:3].all()
  assert inst[0, 1].sum() == 4 and inst[0, 1, 5:7, 5:7].all()


# -------------------------------------------------------------------- steps
@pytest.mark.parametrize("model", ["maskrcnn", "unet"])
def test_steps_on_one_batch_reduce_every_loss(model):
  """Every loss term of one batch, with the same draws (samplers, mosaic),
  is lower after a few steps on it than before.

  The step is jitted with a fixed rng, so the metrics of step k are the
  losses of the parameters after k updates under the same draws.
  """
  setup = loop.build(small_config(model), devices=jax.devices()[:1])
  task = setup.task
  batch = pipeline.fixed_batch(task.examples, setup.config,
                               setup.config.train.batch_size)
  step = jax.jit(lambda s, b: task.train_step(s, b, {}, jax.random.key(7)))
  state = jax.jit(task.init_state)(jax.random.key(0))
  history = []
  for _ in range(9):
    state, m = step(state, batch)
    history.append(jax.device_get(m))
  assert all(bool(m["finite"]) for m in history)
  before, after = history[0], history[-1]
  terms = [k for k in before if k.startswith("loss/")]
  assert ("loss/mask" in terms) == (model == "maskrcnn")
  for key in terms + ["loss"]:
    assert np.isfinite(before[key]) and after[key] < before[key], (
        key, before[key], after[key])
  if model == "unet":
    per = jax.device_get(jax.jit(task.eval_step)(state, batch, {}))
    assert per["iou"].shape == (8,)
    summary = task.summarize_eval(per)
    for key in ("iou", "dice", "boundary_f", "uncovered", "iou/female",
                "iou/male"):
      assert 0 <= summary[key] <= 1, key
    assert any(k.startswith("iou/style/") for k in summary)


# ------------------------------------------------------------------- config
@pytest.mark.parametrize("key,value", [
    ("model.name", "yolo"), ("model.norm", "layer"), ("data.image_size", 48),
    ("augment.scale_min", 0.0), ("augment.mosaic", 1.5),
    ("model.dilation", -1), ("optim.name", "lamb")])
def test_bad_config_names_its_key(key, value):
  c = segment_config.get_config("tiny")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    segment.SegmentTask(c)


# ------------------------------------------------------------------ summary
def test_summary_of_hand_made_detections():
  # Two images; each: a face mask and a face. Image 0 detects both well;
  # image 1 misses its face and has a false face mask scoring highest.
  per = {
      "iou": np.array([1.0, 0.5]), "dice": np.array([1.0, 0.6]),
      "boundary_f": np.array([1.0, 0.4]),
      "mask_pixels": np.array([100, 100]),
      "missed_pixels": np.array([0, 30]),
      "gender": np.array([0, 1]), "mask_style": np.array([0, 4]),
      "det_scores": np.array([[0.9, 0.8, 0.0], [0.95, 0.7, 0.0]]),
      "det_classes": np.array([[1, 2, 0], [1, 1, 0]]),
      "det_valid": np.array([[True, True, False], [True, True, False]]),
      "gt_classes": np.array([[1, 2], [1, 2]]),
      "gt_valid": np.array([[True, True], [True, True]]),
      "box_iou": np.array([[[0.9, 0.1], [0.1, 0.8], [0, 0]],
                           [[0.0, 0.0], [0.75, 0.2], [0, 0]]]),
      "mask_iou": np.array([[[0.9, 0], [0, 0], [0, 0]],
                            [[0.0, 0], [0.6, 0], [0, 0]]]),
  }
  out = segment.summarize(per)
  assert out["uncovered"] == pytest.approx(0.15)
  assert out["uncovered/male"] == pytest.approx(0.30)
  assert out["iou/style/surgical"] == 1.0 and out["iou/style/cloth"] == 0.5
  # Face masks by score: 0.95 (FP), 0.9 (TP), 0.7 (TP) of 2 -> precision
  # envelope 2/3 at every recall: AP 2/3.
  assert out["box_ap50/face_mask"] == pytest.approx(2 / 3)
  # Faces: one TP of two ground truths -> recall <= 0.5: 51 of 101 points.
  assert out["box_ap50/face"] == pytest.approx(51 / 101)
  # Mask IoUs 0.9 and 0.6 pass thresholds 0.5..0.6 (3 of 10) both, 0.65..0.9
  # (6 more) one of them (the 0.9, after the FP: precision 1/2).
  assert out["mask_ap/face_mask"] == pytest.approx(
      (3 * 2 / 3 + 6 * 0.5 * 51 / 101) / 10)


def test_init_from_puts_imported_weights_into_a_fresh_state(tmp_path):
  from jaxface.weights import npz  # pylint: disable=g-import-not-at-top
  c = segment_config.get_config("tiny")
  c.model.norm = "frozen"
  task = segment.SegmentTask(c)
  shapes = jax.eval_shape(task.init_state, jax.random.key(0))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  saved = {"params": jax.tree.map(lambda z: z + 0.5, zeros.params),
           "batch_stats": jax.tree.map(lambda z: z + 2.0,
                                       zeros.model_state["batch_stats"])}
  npz.save_npz(tmp_path / "w.npz", saved)
  c.model.init_from = str(tmp_path / "w.npz")
  state = segment.SegmentTask(c).pretrained(zeros)
  assert all(np.all(l == 0.5) for l in jax.tree.leaves(state.params))
  assert all(np.all(l == 2.0) for l in jax.tree.leaves(
      state.model_state["batch_stats"]))
  # Not for a norm whose statistics are not COCO's frozen ones.
  c.model.norm = "group"
  with pytest.raises(ValueError, match="model.norm"):
    segment.SegmentTask(c)


def test_make_example_occludes_and_greys_when_asked():
  face = _face()
  face = dataclasses.replace(face, masked_image=np.random.default_rng(0)
                             .integers(0, 256, (64, 64, 3), np.uint8))
  make = segment.MakeExample(occlusion=1.0, grey=1.0)
  out = make(face, np.random.default_rng(0), True)
  image = out[schema.MASKED_IMAGE]
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  assert 0 < out[schema.MASK].sum() < face.mask.sum()
  # Evaluation examples are never augmented.
  plain = make(face, np.random.default_rng(0), False)
  np.testing.assert_array_equal(plain[schema.MASK], face.mask)


def test_augment_probabilities_are_checked():
  config = segment_config.get_config("tiny,model=unet")
  config.augment.occlusion = 1.5
  with pytest.raises(ValueError, match="augment.occlusion"):
    segment.validate_config(config)
