"""The inpainting task (the GAN step) on the shared loop, tiny configs (CPU)."""

import functools
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
from jaxface.tasks import inpaint
from jaxface.train import loop
import numerics

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import inpaint as inpaint_config


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


def _sn_stats_bound(kernel, u, v):
  """Rounding bound of one power-iteration step from identical inputs.

  v = norm(W^T u), u = norm(W v) with W = kernel as [out, k]: each product
  sums m = out or k terms (gamma(m) * |W||x|), each norm k or out squares.
  """
  w = np.abs(kernel.reshape(-1, kernel.shape[-1]).T.astype(np.float64))
  m_out, k = w.shape
  dv = (numerics.gamma(m_out) * (w.T @ np.abs(u)) / np.linalg.norm(
      w.T @ np.abs(u)) + numerics.gamma(k + 2) * np.abs(v))
  du = ((numerics.gamma(k) * (w @ np.abs(v)) + w @ dv)
        / np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]).T @ v)
        + numerics.gamma(m_out + 2) * np.abs(u))
  return du, dv


def test_four_devices_match_one_device(tmp_path):
  """One GAN iteration on 1 and on 4 devices, compared within the bounds of
  float32 rounding, which depends on how the work is split.

  From the same initial state (checked bit-identical), the two runs differ
  only in the order of the sums over the batch and the image positions in
  the weight gradients: n = B*H*W terms, so each gradient element may differ
  by gamma(n) times the magnitude of its terms, bounded normwise by the
  largest gradient of the network. Adam (b1 = 0) then moves each parameter
  by lr * g / (|g| + eps) at the first step: at most 2 lr apart when a
  gradient is at the rounding level (the conv biases before an instance
  norm, whose gradient is zero up to rounding), and by
  lr * |dg| * 2 eps / (|g| + eps)^2 <= 3 lr |dg| / (|g| + eps) otherwise.
  """
  assert jax.device_count() == 4
  config = tiny_config(num_steps=1)
  assert config.optim.b1 == 0  # Adam's mu below is the step's gradient
  setup_one = loop.build(config, jax.devices()[:1])
  setup_four = loop.build(config)
  key = jax.random.key(config.seed)
  assert _leaves_equal(setup_one.init(key), setup_four.init(key))
  one = loop.train_and_evaluate(config, str(tmp_path / "one"),
                                devices=jax.devices()[:1])
  four = loop.train_and_evaluate(config, str(tmp_path / "four"))
  one, four = jax.device_get((one, four))
  assert int(one.step) == int(four.step) == 1
  n = config.train.batch_size * config.data.image_size**2
  b2 = config.optim.b2
  for net in ("g", "d"):
    lr = config.optim[f"{net}_lr"]
    adam_one, adam_four = getattr(one, f"{net}_opt")[0], getattr(
        four, f"{net}_opt")[0]
    assert int(adam_one.count) == int(adam_four.count) == 1
    grads = jax.tree.leaves(adam_one.mu)
    delta = numerics.gamma(n) * max(float(np.max(np.abs(g))) for g in grads)
    flat = jax.tree_util.tree_flatten_with_path(
        getattr(one, f"{net}_params"))[0]
    for (path, p_one), p_four, g_one, g_four, nu_one, nu_four in zip(
        flat, jax.tree.leaves(getattr(four, f"{net}_params")), grads,
        jax.tree.leaves(adam_four.mu), jax.tree.leaves(adam_one.nu),
        jax.tree.leaves(adam_four.nu)):
      name = f"{net}{jax.tree_util.keystr(path)}"
      numerics.assert_within(g_four, g_one, delta, f"gradient {name}")
      # nu = (1 - b2) g^2, so sqrt(nu) moves with |g|.
      numerics.assert_within(
          np.sqrt(nu_four), np.sqrt(nu_one),
          np.sqrt(1 - b2) * delta + 2 * numerics.U32 * np.sqrt(nu_one),
          f"Adam nu {name}")
      g = np.abs(g_one.astype(np.float64))
      step = np.minimum(2 * lr, 3 * lr * delta / (g + 1e-8))
      numerics.assert_within(p_four, p_one,
                             step + 2 * numerics.U32 * np.abs(p_one),
                             f"parameter {name}")
    # The spectral-norm vectors: one power iteration from the same state.
    stats_one = getattr(one, f"{net}_stats")
    stats_four = getattr(four, f"{net}_stats")
    params = getattr(one, f"{net}_params")
    layers_seen = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(stats_one)[0]:
      if jax.tree_util.keystr(path[-1:]) != "['u']":
        continue
      layer = path[:-1]
      get = lambda tree: functools.reduce(lambda t, k: t[k.key], layer, tree)
      du, dv = _sn_stats_bound(get(params)["kernel"], leaf,
                               get(stats_one)["v"])
      name = f"{net}_stats{jax.tree_util.keystr(layer)}"
      numerics.assert_within(get(stats_four)["u"], leaf, du, name + " u")
      numerics.assert_within(get(stats_four)["v"], get(stats_one)["v"], dv,
                             name + " v")
      layers_seen += 1
    assert layers_seen > 0


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
  assert proc.returncode == loop.EXIT_PREEMPTED, output  # not "finished"
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
    ("data.image_size", 16, "config.data.image_size=16.*>= 24"),
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
  # pylint: disable-next=g-import-not-at-top
  from jaxface.weights import vgg as vgg_weights
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
