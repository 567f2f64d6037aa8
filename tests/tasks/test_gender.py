"""The gender task: examples, a frozen-backbone step, summary, resume."""

import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest

from jaxface.data import examples
from jaxface.data import pipeline
from jaxface.data import schema
from jaxface.tasks import gender
from jaxface.train import loop
from jaxface.weights import gender as gender_weights

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import gender as gender_config

pytestmark = pytest.mark.usefixtures("module_compilation_cache")
WIDTH = 0.125  # the tiny config's


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
  """Backbone weights as `jaxface.weights.gender` writes them (random)."""
  semantics = {"bn_scale": True, "avg_pool_include_pad": False}
  tmpl = gender_weights.template(WIDTH, **semantics)
  rng = np.random.default_rng(0)

  def draw(path, z):  # He-scaled kernels: the features stay informative
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0, np.sqrt(2 / np.prod(z.shape[:3])), z.shape)
    if name in ("scale", "var"):
      return rng.uniform(0.8, 1.2, z.shape)
    return rng.normal(0, 0.05, z.shape)

  variables = jax.tree.map(lambda v: np.asarray(v, np.float32),
                           jax.tree.map_with_path(draw, tmpl))
  path = tmp_path_factory.mktemp("weights") / "backbone.npz"
  gender_weights.save(path, variables, semantics)
  return str(path), variables


def small_config(init_from="", **train):
  """The smallest InceptionV3 (75 px, width 1/8), its backbone frozen."""
  c = gender_config.get_config("tiny")
  c.model.init_from = init_from
  c.data.source = "procedural:num_records=64"
  c.data.image_size = 75
  c.model.head_widths = (16,)
  c.model.dropout = 0.0
  c.model.freeze_backbone = bool(init_from)
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.train.update(dict(batch_size=8, num_steps=4, log_every=2, image_every=0,
                      eval_every=0, checkpoint_every=2))
  c.train.update(train)
  c.eval.batch_size = 8
  return c


def _leaves_equal(a, b):
  a, b = jax.device_get((a, b))
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                           jax.tree.leaves(b)))


# ---------------------------------------------------------------- examples
@pytest.mark.parametrize("key,age", [
    ("images/26_1_0_20170116234737426.jpg.chip.jpg", 26),
    ("3_0_2_20161219140530307.jpg", 3), ("face_0001.png", -1),
    ("procedural/12", -1)])
def test_age_from_the_record_name(key, age):
  assert gender.age_from_key(key) == age


def _face(g=1, key="40_0_0_x.jpg"):
  return examples.Face(
      image=np.full((80, 80, 3), 200, np.uint8),
      masked_image=np.full((80, 80, 3), 90, np.uint8),
      mask=np.ones((80, 80, 1), np.uint8),
      landmarks=np.full((98, 2), 40, np.float32),
      landmarks_approx=np.zeros(98, bool), gender=np.int32(g),
      mask_style=np.int32(0), key=key)


def test_make_example_keys_unknown_gender_and_unmasked_share():
  make = gender.MakeExample(rotation=10, scale=0.1, translation=0.05)
  ex = make(_face(), np.random.default_rng(0), False)
  assert set(ex) == set(gender.KEYS)
  assert ex[gender.AGE] == 40 and ex[schema.GENDER] == 1
  assert np.all(ex[schema.MASKED_IMAGE] == 90)  # evaluation: as it is
  assert make(_face(g=-1), np.random.default_rng(0), True) is None
  clean = gender.MakeExample(unmasked=1.0)(_face(), np.random.default_rng(0),
                                           True)
  assert np.all(clean[schema.MASKED_IMAGE] == 200)


# ------------------------------------------------------------------- steps
# Both tests below run the loop's compiled functions of this config; the
# module's compilation cache compiles each once.
DEVICES = 1


@pytest.fixture(scope="module")
def setup(backbone_file):
  return loop.build(small_config(backbone_file[0]),
                    devices=jax.devices()[:DEVICES])


def test_frozen_backbone_stays_bit_identical_while_the_head_learns(
    setup, backbone_file):
  task = setup.task
  batch = setup.put(pipeline.fixed_batch(task.examples, setup.config, 8))
  state0 = task.pretrained(jax.device_get(setup.init(jax.random.key(0))))
  # model.init_from's weights are in, the head's are fresh.
  assert _leaves_equal(state0.params["backbone"],
                       backbone_file[1]["params"])
  assert _leaves_equal(state0.model_state["batch_stats"]["backbone"],
                       backbone_file[1]["batch_stats"])
  state, history = jax.device_put(state0, setup.state_sharding), []
  for _ in range(6):
    state, m = setup.train_step(state, batch, {})
    history.append(jax.device_get(m))
  assert all(bool(m["finite"]) for m in history)
  assert history[-1]["loss"] < history[0]["loss"]
  # The optimiser holds the head alone; the backbone is untouched.
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      task.tx.init({"head": state0.params["head"]}))
  assert _leaves_equal(state0.params["backbone"], state.params["backbone"])
  assert _leaves_equal(state0.model_state["batch_stats"]["backbone"],
                       state.model_state["batch_stats"]["backbone"])
  assert not _leaves_equal(state0.params["head"], state.params["head"])
  per = jax.device_get(setup.eval_step(state, batch, {}))
  assert per["p_masked"].shape == per["p_clean"].shape == (8,)
  assert np.all((per["p_masked"] >= 0) & (per["p_masked"] <= 1))
  summary = task.summarize_eval(per)
  assert 0 <= summary["masked/accuracy"] <= 1
  assert summary["count"] == 8


def test_resume_is_exact(setup, tmp_path):
  """A run stopped after its step-2 checkpoint and resumed ends bit for bit
  where the uninterrupted run did."""
  workdir = tmp_path / "run"
  devices = jax.devices()[:DEVICES]
  straight = jax.device_get(loop.train_and_evaluate(
      setup.config, str(workdir), devices))
  # Lose everything after the step-2 checkpoint, as a preemption would.
  for step_dir in (workdir / "checkpoints").iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > 2:
      shutil.rmtree(step_dir)
  resumed = loop.train_and_evaluate(setup.config, str(workdir), devices)
  assert int(resumed.step) == 4
  assert _leaves_equal(straight, resumed)


# ------------------------------------------------------------------ summary
def test_summary_of_hand_made_probabilities():
  per = {
      # female, female, male, male, male (ages 10, 30, 15, 50, unknown)
      "gender": np.array([0, 0, 1, 1, 1]),
      "age": np.array([10, 30, 15, 50, -1]),
      "p_masked": np.array([0.2, 0.6, 0.9, 0.7, 0.4]),
      "p_clean": np.array([0.1, 0.1, 0.9, 0.9, 0.9]),
  }
  out = gender.summarize(per, num_bins=10)
  assert out["masked/accuracy"] == pytest.approx(3 / 5)
  assert out["masked/accuracy/female"] == pytest.approx(1 / 2)
  assert out["masked/accuracy/male"] == pytest.approx(2 / 3)
  assert out["masked/balanced_accuracy"] == pytest.approx(7 / 12)
  # Male scores 0.9, 0.7, 0.4 against female 0.2, 0.6: 5 of 6 pairs.
  assert out["masked/auc"] == pytest.approx(5 / 6)
  assert out["clean/accuracy"] == 1.0 and out["clean/auc"] == 1.0
  assert out["masked/accuracy/age/adult"] == pytest.approx(1 / 2)
  assert out["masked/accuracy/age/under18"] == 1.0
  assert np.isnan(out["masked/auc/age/00-12"])  # one class only
  assert out["count/age/adult"] == 2 and out["count/male"] == 3
  assert "masked/accuracy/age/60+" not in out  # no such faces


@pytest.mark.parametrize("key,value", [
    ("model.width", 0.0), ("model.input_scale", "imagenet"),
    ("model.dropout", 1.0), ("model.input_size", 64),
    ("augment.unmasked", 2.0), ("optim.name", "lamb"),
    ("eval.calibration_bins", 0), ("model.freeze_backbone", True),
    ("model.bn_momentum", 1.0)])
def test_bad_config_names_its_key(key, value):
  c = gender_config.get_config("tiny")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    gender.GenderTask(c)


def test_init_from_semantics_must_match_the_config(backbone_file):
  c = small_config(backbone_file[0])
  c.model.avg_pool_include_pad = True  # not what the weights were made with
  task = gender.GenderTask(c)
  shapes = jax.eval_shape(task.init_state, jax.random.key(0))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  with pytest.raises(ValueError, match="model.avg_pool_include_pad"):
    task.pretrained(zeros)
