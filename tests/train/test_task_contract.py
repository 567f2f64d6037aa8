"""A second task (tests/toy_task.py) on the unchanged loop.

The contract suffices: if the loop, the pipeline or the benchmark needed to
know about a task, these tests would not pass.
"""

import logging
import pathlib

from absl import flags
import jax
import numpy as np
import pytest

from jaxface.bench import train as bench_train
from jaxface.data import schema
from jaxface.train import loop
from toy_task import toy_config
from toy_task import ToyPoints


def _leaves_equal(a, b):
  a, b = jax.device_get((a, b))
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                           jax.tree.leaves(b)))


def test_trains_evaluates_draws_and_checkpoints_on_the_shared_loop(
    tmp_path, caplog):
  workdir = pathlib.Path(tmp_path / "run")
  config = toy_config(num_steps=4, image_every=4, eval_every=4)
  with caplog.at_level(logging.INFO):
    state = loop.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 4
  # The task's BatchNorm statistics moved and were carried by the loop.
  fresh = ToyPoints(config).init_state(jax.random.key(0))
  assert not _leaves_equal(fresh.model_state, state.model_state)
  # The console line shows the task's metrics, the evaluation its summary
  # (overall and per gender).
  assert "| loss " in caplog.text and " noise " in caplog.text
  assert "eval @ step 4:" in caplog.text
  assert "error/female=" in caplog.text and "error/male=" in caplog.text
  assert (workdir / "samples" / "00000004.png").is_file()
  assert (workdir / "checkpoints" / "4").is_dir()
  assert list(workdir.glob("**/events.out.tfevents.*"))


def test_resume_is_bit_exact_with_the_per_step_rng(tmp_path):
  straight = loop.train_and_evaluate(toy_config(num_steps=4),
                                     str(tmp_path / "straight"))
  loop.train_and_evaluate(toy_config(num_steps=2), str(tmp_path / "resumed"))
  resumed = loop.train_and_evaluate(toy_config(num_steps=4),
                                    str(tmp_path / "resumed"))
  assert int(resumed.step) == 4
  assert _leaves_equal(straight, resumed)


def test_each_step_gets_its_own_rng_from_seed_and_step():
  config = toy_config()
  setup = loop.build(config)
  state = setup.init(jax.random.key(config.seed))
  from jaxface.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = setup.put(pipeline.fixed_batch(ToyPoints.examples, config, 8))
  consts = setup.constants()
  noise = []
  for _ in range(3):
    state, metrics = setup.train_step(state, batch, consts)
    noise.append(float(metrics["noise"]))
  assert len(set(noise)) == 3
  # The same step of another run draws the same numbers.
  again = setup.init(jax.random.key(config.seed))
  _, metrics = setup.train_step(again, batch, consts)
  assert float(metrics["noise"]) == noise[0]
  key = loop.step_rng(config.seed, 0)
  assert float(metrics["noise"]) == pytest.approx(
      0.02 * float(jax.random.normal(key, (8, 32, 32, 3))[0, 0, 0, 0]))


def test_the_step_compiles_ahead_of_time_from_shapes_alone():
  setup = loop.build(toy_config())
  batch = setup.abstract_batch()
  assert batch[schema.IMAGE].shape == (8, 32, 32, 3)
  assert batch[schema.IMAGE].dtype == np.uint8
  compiled = setup.train_step.lower(setup.abstract_state, batch,
                                    setup.abstract_constants()).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] > 0


def test_the_training_benchmark_runs_any_registered_task():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  row = bench_train.bench_one(toy_config(), 8, "float32", "")
  assert row["batch"] == 8 and row["ms"] > 0 and row["gflop_img"] > 0
  assert row["attention"] == "-"
  flags.FLAGS.mode = "eval"  # the evaluation step instead
  try:
    row = bench_train.bench_one(toy_config(), 8, "float32", "")
  finally:
    flags.FLAGS.mode = "train"
  assert row["ms"] > 0 and row["gflop_img"] > 0


def test_bad_shared_config_values_name_the_key():
  for key, value, match in [("train.batch_size", 0, "config.train.batch_size"),
                            ("optim.lr", -1.0, "config.optim.lr"),
                            ("optim.b2", 1.0, "config.optim.b2"),
                            ("data.gender", "x", "config.data.gender"),
                            ("eval.num_batches", -1,
                             "config.eval.num_batches")]:
    config = toy_config()
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(ValueError, match=match):
      ToyPoints(config)
  config = toy_config(batch_size=6)  # 4 devices
  with pytest.raises(ValueError, match="config.train.batch_size=6.*multiple "
                     "of the 4"):
    loop.build(config)


class _PretrainedToy(ToyPoints):
  """Puts 0.25 into every parameter of a fresh state, and counts calls."""
  calls = 0

  def pretrained(self, state):
    type(self).calls += 1
    return state.replace(params=jax.tree.map(
        lambda p: np.full(p.shape, 0.25, np.float32), jax.device_get(
            state.params)))


def test_pretrained_weights_go_into_a_fresh_run_only(tmp_path):
  from jaxface import tasks  # pylint: disable=g-import-not-at-top
  tasks.register("toy_points_pretrained", _PretrainedToy)
  config = toy_config(num_steps=2)
  config.task = "toy_points_pretrained"
  config.optim.lr = 1e-12  # the steps leave the weights where they start
  state = loop.train_and_evaluate(config, str(tmp_path))
  for leaf in jax.tree.leaves(jax.device_get(state.params)):
    np.testing.assert_allclose(leaf, 0.25, atol=1e-6)
  config.train.num_steps = 3
  loop.train_and_evaluate(config, str(tmp_path))  # resumes: not again
  assert _PretrainedToy.calls == 1
