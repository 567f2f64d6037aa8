"""grain pipelines: task examples, determinism, resume, bad files."""

import csv
import importlib.util
import logging
import pathlib
import sys

import numpy as np
import pytest

from jaxface import tasks
from jaxface.data import examples
from jaxface.data import facemask
from jaxface.data import masked_faces
from jaxface.data import pipeline
from jaxface.data import procedural
from jaxface.data import schema

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import inpaint as inpaint_config


def make_folder(root: pathlib.Path, n: int = 12, size: int = 96,
                corrupt: bool = False) -> str:
  """n procedural faces as JPEGs with a labels.csv (gender, 98 points)."""
  faces = procedural.ProceduralFaces(size=size, num_records=n, seed=5)
  with open(root / "labels.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "gender"] + [f"{a}{i}" for i in range(98)
                                     for a in ("x", "y")])
    for i in range(n):
      r = faces[i]
      (root / f"{i:03d}.jpg").write_bytes(
          masked_faces.encode_image(r["image"], "jpeg", 95))
      w.writerow([f"{i:03d}.jpg", "male" if r["gender"] else "female"]
                 + [f"{v:.3f}" for v in r["landmarks"].reshape(-1)])
  if corrupt:
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  return f"folder:{root},splits=1/0/0"


def _everything(face, rng, augment):
  del rng, augment
  return {schema.IMAGE: face.image, schema.MASKED_IMAGE: face.masked_image,
          schema.MASK: face.mask, schema.LANDMARKS: face.landmarks,
          schema.LANDMARKS_APPROX: face.landmarks_approx,
          schema.GENDER: face.gender, schema.MASK_STYLE: face.mask_style}


# Every field of a Face, under its schema key.
EVERYTHING = examples.ExampleSpec(keys=schema.KEYS, make=_everything)
INPAINT = tasks.get("inpaint").examples


def _labelled(face, rng, augment):
  del rng, augment
  if face.gender < 0:
    return None  # the task declines: no label to learn from
  return {schema.IMAGE: face.masked_image, schema.GENDER: face.gender}


LABELLED = examples.ExampleSpec(keys=(schema.IMAGE, schema.GENDER),
                                make=_labelled)


def config_for(source: str, size: int = 64, batch: int = 4, **data):
  c = inpaint_config.get_config("tiny")
  c.data.source = source
  c.data.image_size = size
  c.train.batch_size = batch
  c.eval.batch_size = batch
  c.data.num_threads = 1
  c.data.prefetch = 1
  c.data.update(data)
  return c


def train_batches(spec, c, **kw):
  return iter(pipeline.train_dataset(spec, c, batch_size=c.train.batch_size,
                                     **kw))


def _task_config(name):
  """configs/<task>.py:tiny, the config every task ships (DEVELOPING.md)."""
  spec = importlib.util.spec_from_file_location(
      f"config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


@pytest.mark.parametrize("name", tasks.names())
def test_every_registered_task_yields_its_declared_keys(tmp_path, name):
  c = _task_config(name)
  c.data.update(source=make_folder(tmp_path), image_size=64,
                mask_styles="surgical,n95,cloth_printed", num_threads=1,
                prefetch=1, worker_count=0)
  c.train.batch_size = 4
  spec = tasks.examples(c)
  batch = next(train_batches(spec, c))
  assert set(batch) == set(spec.keys)
  for key in (schema.IMAGE, schema.MASKED_IMAGE):
    if key in batch:
      assert batch[key].shape == (4, 64, 64, 3)
      assert batch[key].dtype == np.uint8
  if schema.MASK in batch:
    assert batch[schema.MASK].shape == (4, 64, 64, 1)
    assert set(np.unique(batch[schema.MASK])) <= {0, 1}
    assert batch[schema.MASK].mean() > 0.05
  if schema.LANDMARKS in batch:
    assert batch[schema.LANDMARKS].shape == (4, 98, 2)
    assert np.all(np.isfinite(batch[schema.LANDMARKS]))
  if schema.GENDER in batch:
    assert set(batch[schema.GENDER]) <= {0, 1}


def test_face_is_clean_and_masked_image_wears_the_mask(tmp_path):
  c = config_for(make_folder(tmp_path), flip=False, mask_styles="surgical")
  batch = pipeline.fixed_batch(EVERYTHING, c, 2)
  inp = pipeline.fixed_batch(INPAINT, c, 2)
  np.testing.assert_array_equal(inp[schema.IMAGE], batch[schema.IMAGE])
  np.testing.assert_array_equal(inp[schema.MASK], batch[schema.MASK])
  hole = batch[schema.MASK][..., 0] == 1
  outside = batch[schema.MASK][..., 0] == 0
  changed = np.any(batch[schema.IMAGE] != batch[schema.MASKED_IMAGE],
                   axis=-1)
  assert changed[hole].mean() > 0.9
  # Outside the mask (away from its soft edge) the pixels are untouched.
  assert changed[outside].mean() < 0.05
  assert batch[schema.LANDMARKS_APPROX].shape == (2, 98)
  assert not batch[schema.LANDMARKS_APPROX].any()  # labels.csv: 98 points


def _augment_flag(face, rng, augment):
  return {schema.IMAGE: face.image, "augmented": np.bool_(augment),
          "draw": np.float32(rng.random())}


def test_make_knows_training_from_evaluation_and_adds_own_keys(tmp_path):
  spec = examples.ExampleSpec(keys=(schema.IMAGE, "augmented", "draw"),
                              make=_augment_flag)
  c = config_for(make_folder(tmp_path))
  assert next(train_batches(spec, c))["augmented"].all()
  evaluated = pipeline.eval_batches(spec, c, batch_size=4, split="train")
  assert not evaluated[0]["augmented"].any()
  assert not pipeline.fixed_batch(spec, c, 2)["augmented"].any()
  with pytest.raises(ValueError, match="cannot be pickled"):
    examples.ExampleSpec(keys=(schema.IMAGE,), make=lambda f, r, a: {})


def test_an_example_with_undeclared_keys_names_the_maker(tmp_path):
  spec = examples.ExampleSpec(keys=(schema.IMAGE, schema.GENDER),
                              make=_everything)
  c = config_for(make_folder(tmp_path))
  with pytest.raises(ValueError, match="_everything.*declares"):
    pipeline.fixed_batch(spec, c, 2)
  with pytest.raises(ValueError, match="distinct identifiers"):
    examples.ExampleSpec(keys=("image", "image"), make=_everything)


def test_examples_depend_only_on_record_and_epoch(tmp_path):
  source = make_folder(tmp_path)
  c = config_for(source)
  maker = pipeline.ExampleMaker(
      INPAINT, c.data, pipeline.open_split(c.data, "train"), seed=c.seed,
      augment=True)
  n = maker.num_records
  a = maker(0, 3)               # record 3, epoch 0
  b = maker(5, 3)               # same record and epoch, another position
  c_ = maker(n + 1, 3)          # record 3 in epoch 1
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not all(np.array_equal(a[k], c_[k]) for k in a)


def test_same_batches_for_same_seed_and_different_for_another(tmp_path):
  source = make_folder(tmp_path)
  first = [next(train_batches(INPAINT, config_for(source)))
           for _ in range(2)]
  for key in first[0]:
    np.testing.assert_array_equal(first[0][key], first[1][key])
  other = config_for(source)
  other.seed = 9
  batch = next(train_batches(INPAINT, other))
  assert not np.array_equal(batch[schema.IMAGE], first[0][schema.IMAGE])


def test_restored_iterator_yields_the_same_next_batch(tmp_path):
  c = config_for(make_folder(tmp_path))
  it = train_batches(INPAINT, c)
  for _ in range(5):  # past the end of the first epoch (12 records)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = train_batches(INPAINT, c)
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_corrupt_jpeg_is_skipped_with_a_warning(tmp_path, caplog):
  source = make_folder(tmp_path, n=12, corrupt=True)
  c = config_for(source, batch=4)
  with caplog.at_level(logging.WARNING):
    it = train_batches(INPAINT, c)
    batches = [next(it) for _ in range(6)]  # two epochs of 12 good images
  assert "broken.jpg" in caplog.text
  for b in batches:
    assert b[schema.IMAGE].shape[0] == 4


def test_per_process_shards_are_disjoint(tmp_path):
  c = config_for(make_folder(tmp_path, n=12), batch=4, flip=False)
  seen = []
  for index in range(2):
    it = train_batches(EVERYTHING, c, process_index=index, process_count=2)
    seen.append({next(it)[schema.IMAGE].tobytes() for _ in range(3)})
  # Each process's 3 batches cover its 6 records; no image is shared.
  assert not seen[0] & seen[1]


def test_eval_batches_are_fixed(tmp_path):
  c = config_for(make_folder(tmp_path, n=12), batch=4)
  c.eval.num_batches = 2
  first = pipeline.eval_batches(INPAINT, c, batch_size=4, split="train")
  again = pipeline.eval_batches(INPAINT, c, batch_size=4, split="train")
  assert len(first) == 2
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a[schema.IMAGE], b[schema.IMAGE])
    np.testing.assert_array_equal(a[schema.MASK], b[schema.MASK])


def test_examples_a_task_declines_are_dropped(tmp_path):
  source = make_folder(tmp_path, n=8)
  rows = list(csv.reader(open(tmp_path / "labels.csv")))
  for row in rows[1:5]:
    row[1] = ""  # unknown gender
  with open(tmp_path / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  c = config_for(source, batch=4)
  it = train_batches(LABELLED, c)
  for _ in range(3):  # several epochs of the 4 labelled faces
    assert set(next(it)[schema.GENDER]) <= {0, 1}


def test_bad_source_names_the_config_key():
  c = config_for("nowhere:/x")
  with pytest.raises(ValueError, match="config.data.source"):
    train_batches(INPAINT, c)
  c = config_for("procedural", mask_styles="surgical,disco")
  with pytest.raises(ValueError, match="mask_styles"):
    train_batches(INPAINT, c)


def test_source_masks_only_where_the_source_has_them(tmp_path):
  c = config_for(make_folder(tmp_path), mask_styles="source")
  with pytest.raises(ValueError, match="config.data.mask_styles.*no face "
                     "masks of its own"):
    train_batches(INPAINT, c)


def test_procedural_default_uses_its_own_masks():
  c = config_for("procedural", size=64)
  batch = pipeline.fixed_batch(INPAINT, c, 2)
  source = pipeline.open_split(c.data, "train")
  np.testing.assert_array_equal(batch[schema.MASK][0, ..., 0],
                                source[0][schema.MASK])


@pytest.mark.parametrize("workers", [2, 3])
def test_batches_do_not_depend_on_the_worker_count(tmp_path, workers):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  # Corrupt files in the folder make some records yield no example.
  source = make_folder(tmp_path, n=12)
  for i in (1, 5, 6):
    (tmp_path / f"{i:03d}.jpg").write_bytes(b"\xff\xd8 broken")
  c = config_for(source)
  want = [b for _, b in zip(range(4), train_batches(INPAINT, c))]
  c.data.worker_count = workers
  it = train_batches(INPAINT, c)
  got = [next(it) for _ in range(4)]
  it.close()
  for a, b in zip(want, got):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_faces_carry_the_mask_style(tmp_path):
  c = config_for(make_folder(tmp_path), mask_styles="kn95")
  batch = pipeline.fixed_batch(EVERYTHING, c, 2)
  assert list(batch[schema.MASK_STYLE]) == [facemask.STYLE_ID["kn95"]] * 2
  # The procedural source's own masks, named in the same table.
  c = config_for("procedural")
  batch = pipeline.fixed_batch(EVERYTHING, c, 8)
  names = {schema.MASK_STYLES[i] for i in batch[schema.MASK_STYLE]}
  assert names <= set(procedural.MASK_STYLES)
  assert len(names) > 1


def _damage_labels(root: pathlib.Path) -> None:
  """Off-scale landmarks for 001.jpg, all points at one spot for 002.jpg."""
  rows = list(csv.reader(open(root / "labels.csv")))
  for row in rows[1:]:
    if row[0] == "001.jpg":
      row[2:] = [f"{10 * float(v):.3f}" for v in row[2:]]
    if row[0] == "002.jpg":
      row[2:] = ["40.0"] * len(row[2:])
  with open(root / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)


def _fails_on_004(face, rng, augment):
  if face.key == "004.jpg":
    raise ValueError("cannot augment this one")
  return _everything(face, rng, augment)


FAILS_ON_004 = examples.ExampleSpec(keys=schema.KEYS, make=_fails_on_004)


def test_bad_records_are_replaced_counted_and_named(tmp_path, caplog):
  source = make_folder(tmp_path, n=16, corrupt=True)
  _damage_labels(tmp_path)
  c = config_for(source, batch=4)
  with caplog.at_level(logging.WARNING):
    it = train_batches(FAILS_ON_004, c)
    batches = [next(it) for _ in range(6)]  # 24 of the 13 good faces
  assert all(b[schema.IMAGE].shape[0] == 4 for b in batches)
  for name, reason in [("broken.jpg", "unreadable image"),
                       ("001.jpg", "landmarks far outside the image"),
                       ("002.jpg", "too small a face"),
                       ("004.jpg", "ValueError: cannot augment this one")]:
    assert f"{name}: " in caplog.text and reason in caplog.text, name
  # Each bad record is skipped once per epoch: all of the first epoch's,
  # some of the second's.
  assert 4 < it.skipped <= 8
  # The count is part of the iterator state: a restart continues it, and
  # with exactly the same batches.
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  again = train_batches(FAILS_ON_004, c)
  again.set_state(state)
  assert again.skipped == state["skipped"]
  for want in expected:
    got = next(again)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  assert again.skipped == it.skipped
  # A state saved before skips were counted (grain's own) still restores.
  older = train_batches(FAILS_ON_004, c)
  older.set_state(state["parent"])
  assert older.skipped == 0
  np.testing.assert_array_equal(next(older)[schema.IMAGE],
                                expected[0][schema.IMAGE])


def test_a_mask_that_covers_nothing_is_skipped(tmp_path):
  c = config_for(make_folder(tmp_path, n=4), batch=2)
  source = pipeline.open_split(c.data, "train")
  maker = pipeline.ExampleMaker(EVERYTHING, c.data, source, seed=0,
                                augment=False)
  assert pipeline.SKIPPED not in maker(0, 0)

  class Nothing:  # a renderer whose mask misses the face entirely
    def __call__(self, image, landmarks, rng):
      del landmarks, rng
      return facemask.RenderedMask(masked_image=image,
                                   mask=np.zeros(image.shape[:2], np.uint8),
                                   style=0)

  maker.renderer = Nothing()
  marker = maker(0, 0)
  assert marker == {pipeline.SKIPPED: "000.jpg: the face mask covers nothing "
                                      "(is the face in the image?)"}


def test_a_run_of_skipped_records_stops_with_the_reason(tmp_path):
  source = make_folder(tmp_path, n=8)
  rows = list(csv.reader(open(tmp_path / "labels.csv")))
  with open(tmp_path / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows([rows[0]] + [r[:2] + ["40"] * 196
                                         for r in rows[1:]])
  c = config_for(source, batch=4)
  with pytest.raises(RuntimeError, match="records in a row yielded no "
                     "example; the last: 00.\\.jpg: landmarks span"):
    next(train_batches(INPAINT, c))


def test_training_over_bad_records_resumes_bit_exact(tmp_path, caplog):
  import jax  # pylint: disable=g-import-not-at-top
  import toy_task as toy  # pylint: disable=g-import-not-at-top
  from jaxface.train import loop  # pylint: disable=g-import-not-at-top
  (tmp_path / "faces").mkdir()
  source = make_folder(tmp_path / "faces", n=16, corrupt=True)
  _damage_labels(tmp_path / "faces")

  def config(num_steps):
    c = toy.toy_config(num_steps=num_steps, checkpoint_every=2,
                       batch_size=4, log_every=1)
    c.data.source = source
    return c

  with caplog.at_level(logging.INFO):
    straight = loop.train_and_evaluate(config(8), str(tmp_path / "straight"))
  # (Which files: warned once per process, see the test above.)
  assert "records skipped" in caplog.text
  loop.train_and_evaluate(config(4), str(tmp_path / "resumed"))
  resumed = loop.train_and_evaluate(config(8), str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)),
                  jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(a, b)
