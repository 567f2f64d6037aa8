"""The inpainting task (the GAN step) on the shared loop, tiny configs (CPU)."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxface import sharding
from jaxface.data import pipeline
from jaxface.models import layers
from jaxface.tasks import inpaint
from jaxface.train import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from configs import inpaint as inpaint_config  # pylint: disable=g-import-not-at-top


def tiny_config(**train):
  """The smallest config that still runs every piece of the GAN."""
  c = inpaint_config.get_config("tiny")
  c.model.generator.width = 8
  c.model.generator.num_res_blocks = 2
  c.model.discriminator.width = 8
  c.losses.vgg_width = 8
  c.data.source = "procedural:num_records=160"  # 144 train, 8 val, 8 test
  c.train.batch_size = 4
  c.eval.batch_size = 4
  c.eval.num_batches = 1
  c.train.update(dict(num_steps=4, log_every=2, image_every=0, eval_every=0,
                      checkpoint_every=100))
  c.train.update(train)
  return c


def fixed_batch(config, n=None):
  return pipeline.fixed_batch(inpaint.EXAMPLES, config,
                              n or config.train.batch_size)


RNG = jax.random.key(0)  # the task's rng argument: unused by the GAN step


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(jax.device_get(a)),
                 jax.tree.leaves(jax.device_get(b))))


def test_gan_step_updates_both_networks_with_finite_metrics():
  config = tiny_config()
  task = inpaint.InpaintTask(config)
  state = task.init_state(jax.random.key(0))
  consts = task.constants()
  new_state, metrics = jax.jit(task.train_step)(state, fixed_batch(config),
                                                consts, RNG)
  assert int(new_state.step) == 1
  assert not _leaves_equal(state.g_params, new_state.g_params)
  assert not _leaves_equal(state.d_params, new_state.d_params)
  # Training advances the spectral-norm power iteration of both networks.
  assert not _leaves_equal(state.d_stats, new_state.d_stats)
  assert not _leaves_equal(state.g_stats, new_state.g_stats)
  assert bool(metrics["finite"])
  for key in ("g_loss", "d_loss", "loss/l1", "loss/perceptual", "loss/style",
              "loss/tv", "loss/adversarial", "d_real", "d_fake"):
    assert np.isfinite(float(metrics[key])), key
  # The generator total is the configured weighted sum of its terms.
  w = config.losses
  total = sum(w[k] * float(metrics[f"loss/{k}"]) for k in
              ("l1", "perceptual", "style", "tv", "adversarial"))
  assert float(metrics["g_loss"]) == pytest.approx(total, rel=1e-5)


def test_generator_update_goes_through_the_pre_update_discriminator():
  config = tiny_config()
  config.losses.adversarial = 1.0  # make D's pull on G large
  task = inpaint.InpaintTask(config)
  state = task.init_state(jax.random.key(0))
  consts, batch = task.constants(), fixed_batch(config)
  step = jax.jit(task.train_step)
  a, _ = step(state, batch, consts, RNG)
  # Same D parameters, another Adam state: D's *update* changes, D before
  # the update does not. G must not notice.
  adam = state.d_opt[0]
  other_opt = (adam._replace(nu=jax.tree.map(lambda x: x + 1e-4, adam.nu)),
               *state.d_opt[1:])
  b, _ = step(state.replace(d_opt=other_opt), batch, consts, RNG)
  assert not _leaves_equal(a.d_params, b.d_params)
  assert _leaves_equal(a.g_params, b.g_params)
  # Other D parameters do change G's update: D really is in the G loss.
  c, _ = step(state.replace(d_params=task.init_state(
      jax.random.key(1)).d_params), batch, consts, RNG)
  assert not _leaves_equal(a.g_params, c.g_params)


def test_thirty_steps_on_one_batch_halve_the_l1_term():
  config = tiny_config()
  config.optim.g_lr = 1e-3
  task = inpaint.InpaintTask(config)
  state = task.init_state(jax.random.key(0))
  consts, batch = task.constants(), fixed_batch(config)
  step = jax.jit(task.train_step, donate_argnums=0)
  l1 = []
  for _ in range(30):
    state, metrics = step(state, batch, consts, RNG)
    l1.append(float(metrics["loss/l1"]))
  assert l1[-1] <= 0.5 * l1[0], l1


def test_resume_is_bit_exact(tmp_path):
  straight = loop.train_and_evaluate(tiny_config(num_steps=4),
                                     str(tmp_path / "straight"))
  resumed_dir = str(tmp_path / "resumed")
  loop.train_and_evaluate(tiny_config(num_steps=2), resumed_dir)
  assert os.path.isdir(os.path.join(resumed_dir, "checkpoints", "2"))
  resumed = loop.train_and_evaluate(tiny_config(num_steps=4), resumed_dir)
  assert int(resumed.step) == 4
  assert _leaves_equal(straight, resumed)


def test_four_devices_match_one_device(tmp_path):
  assert jax.device_count() == 4
  config = tiny_config(num_steps=2)
  one = loop.train_and_evaluate(config, str(tmp_path / "one"),
                                devices=jax.devices()[:1])
  four = loop.train_and_evaluate(config, str(tmp_path / "four"))
  one, four = jax.device_get((one, four))
  # Parameters agree tightly, except the generator's conv biases that feed an
  # instance norm: their gradient is zero up to rounding noise, which Adam
  # scales up to a full learning-rate step in a random direction, so they may
  # differ by up to twice the total step size.
  noise = 2.02 * config.train.num_steps * config.optim.g_lr
  flat_one = jax.tree_util.tree_flatten_with_path(one)[0]
  flat_four = jax.tree.leaves(four)
  for (path, a), b in zip(flat_one, flat_four):
    name = jax.tree_util.keystr(path)
    noisy = name.endswith("['bias']") and ("g_params" in name
                                           or "g_opt" in name)
    if noisy and "g_opt" in name:
      continue  # Adam moments of noise
    if "_opt" in name:  # gradient statistics: summation-order rounding
      np.testing.assert_allclose(a, b, rtol=1e-2,
                                 atol=1e-3 * float(np.max(np.abs(a))),
                                 err_msg=name)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-4,
                                 atol=noise if noisy else 1e-6, err_msg=name)
  # What the networks compute agrees tightly.
  task = inpaint.InpaintTask(config)
  batch = fixed_batch(config)
  sample = jax.jit(task.sample)
  out_one = sample(one, batch, {})
  out_four = sample(four, batch, {})
  np.testing.assert_allclose(out_one["output"], out_four["output"], atol=2e-5)
  lmap = layers.landmark_map(batch["landmarks"], 64, 64)
  d_one = task.discriminator.apply(
      {"params": one.d_params, inpaint.SN: one.d_stats}, out_one["target"],
      lmap)
  d_four = task.discriminator.apply(
      {"params": four.d_params, inpaint.SN: four.d_stats}, out_one["target"],
      lmap)
  np.testing.assert_allclose(d_one, d_four, atol=2e-5)


def test_fsdp_mesh_shards_large_parameters(tmp_path):
  config = tiny_config(num_steps=1)
  config.mesh.fsdp = 2
  task = inpaint.InpaintTask(config)
  mesh = sharding.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2}
  shapes = jax.eval_shape(task.init_state, jax.random.key(0))
  shardings = sharding.state_shardings(mesh, shapes, min_fsdp_size=512)
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  assert any("fsdp" in tuple(spec) for spec in specs)
  state = loop.train_and_evaluate(config, str(tmp_path / "fsdp"))
  assert int(state.step) == 1


def test_bad_mesh_config_names_the_key():
  config = tiny_config()
  config.mesh.fsdp = 3
  with pytest.raises(ValueError, match="config.mesh.fsdp"):
    sharding.make_mesh(config.mesh)


def test_workdir_outputs_and_eval_per_gender(tmp_path):
  config = tiny_config(num_steps=2, image_every=2, eval_every=2)
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, str(workdir))
  assert (workdir / "config.json").is_file()
  assert (workdir / "samples" / "00000002.png").is_file()
  events = list(workdir.glob("**/events.out.tfevents.*"))
  assert events, "no TensorBoard event file"


def test_nan_aborts_naming_the_step_and_saves_nothing_bad(tmp_path):
  config = tiny_config(num_steps=3, checkpoint_every=1)
  config.optim.g_lr = float("inf")  # finite loss, non-finite parameters
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 1\b"):
    loop.train_and_evaluate(config, str(tmp_path / "nan"))
  assert not list((tmp_path / "nan" / "checkpoints").glob("[0-9]*"))


def test_sigterm_saves_and_resume_continues(tmp_path):
  workdir = tmp_path / "preempted"
  args = [sys.executable, "-m", "jaxface.main",
          "--config=configs/inpaint.py:tiny", f"--workdir={workdir}",
          "--config.train.num_steps=100000", "--config.train.log_every=1",
          "--config.train.eval_every=0", "--config.train.image_every=0",
          "--config.model.generator.width=8",
          "--config.model.generator.num_res_blocks=2",
          "--config.model.discriminator.width=8",
          "--config.losses.vgg_width=8", "--config.train.batch_size=4",
          "--config.data.source=procedural:num_records=160",
          "--config.eval.batch_size=4",
          "--config.eval.num_batches=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  deadline = time.monotonic() + 240
  for line in proc.stdout:
    lines.append(line)
    m = re.search(r"step (\d+)/", line)
    if m and int(m.group(1)) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
    assert time.monotonic() < deadline, "".join(lines[-20:])
  rest, _ = proc.communicate(timeout=120)
  output = "".join(lines) + rest
  assert proc.returncode == 0, output
  m = re.search(r"SIGTERM received: checkpoint of step (\d+) saved", output)
  assert m, output
  saved = int(m.group(1))
  assert saved >= 3

  args[args.index("--config.train.num_steps=100000")] = (
      f"--config.train.num_steps={saved + 2}")
  again = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stdout + again.stderr
  log = again.stdout + again.stderr
  assert f"Resumed from the checkpoint of step {saved}" in log, log
  assert f"Done: {saved + 2} steps" in log, log


@pytest.mark.parametrize("key,value,match", [
    ("data.gender", "other", "config.data.gender"),
    ("data.image_size", 66, "config.data.image_size"),
    ("compute_dtype", "fp8", "config.compute_dtype"),
    ("model.attention_impl", "flash", "config.model.attention_impl"),
    ("train.batch_size", 0, "config.train.batch_size"),
    ("losses.style_layers", ("relu9_9",), "config.losses.style_layers"),
])
def test_bad_config_values_name_the_key(key, value, match):
  config = tiny_config()
  section, _, leaf = key.rpartition(".")
  (config[section] if section else config)[leaf] = value
  with pytest.raises(ValueError, match=match):
    inpaint.InpaintTask(config)


def test_vgg_weights_are_loaded_from_the_configured_file(tmp_path):
  from jaxface.weights import vgg as vgg_weights  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.losses.vgg_width = 64
  task = inpaint.InpaintTask(config)
  params = task.vgg.init(jax.random.key(3), np.zeros((1, 32, 32, 3),
                                                    np.float32))["params"]
  path = str(tmp_path / "vgg19.npz")
  vgg_weights.save_npz(path, jax.device_get(params))
  config.vgg_weights = path
  loaded = inpaint.InpaintTask(config).constants()["vgg"]
  assert _leaves_equal(loaded, params)
  config.vgg_weights = str(tmp_path / "missing.pth")
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    inpaint.InpaintTask(config).constants()
  config.losses.vgg_width = 16
  config.vgg_weights = path
  with pytest.raises(ValueError, match="vgg_width"):
    inpaint.InpaintTask(config).constants()
