r"""CPU benchmark: jaxface's LaFIn training step beside a PyTorch re-statement.

  # The default: full-width LaFIn, 128x128, batch 4, float32, 5 timed steps.
  python -m jaxface.bench.vs_torch

  # Before and after in one run: each --jax_overrides group is one JAX row;
  # `env:NAME=VALUE` items run their row in a child process with that
  # environment (XLA reads its flags once per process). The speed-ups of
  # docs/PERFORMANCE.md, off and on:
  python -m jaxface.bench.vs_torch --steps=3 --jax_overrides=\
'env:JAXFACE_XLA_DEFAULTS=0;model.conv_transpose=dilated,baseline'

  # Seconds: the tiny networks at 32x32.
  python -m jaxface.bench.vs_torch --config=configs/inpaint.py:tiny \
      --image_size=32 --batch_size=2 --steps=1 --warmup=1

  Measured with --steps=3 on a shared 2-core CPU (Xeon with AVX-512, load
  average 5 to 9 during the run, so both sides slower than on an idle
  machine): JAX 17.5 s/step (min 13.7), PyTorch 2.13 29.1 s (min 27.5);
  XLA counts 694.5 GFLOP per step; G 11,734,981, D 2,768,929 and VGG-19
  (frozen, to relu5_2) 15,304,768 parameters on both sides; the first
  step's losses agree to 6 digits.

The JAX side is the real step: `loop.build(config)`, `setup.init`,
`pipeline.fixed_batch` and `setup.train_step` compiled once, as
`jaxface.bench.train` does. The PyTorch side is written in this file: the
same networks (`jaxface.models.inpaint`, `attention`, `vgg`), the same losses
(`jaxface.losses`) and the same iteration as `jaxface.tasks.inpaint`, NCHW
and float32 as the reference code runs:

  1. G forward, advancing the spectral norm of G's attention ResBlock;
  2. D forward on the concatenated batch [real, detached fake] (one
     power-iteration step per SN conv), LSGAN loss, backward;
  3. VGG-19 on [target, target * mask] without grad (frozen weights), VGG-19
     on [output, output * mask] with grad to the output only; D on the
     output with the pre-update weights and frozen SN vectors and no weight
     gradients; L1 / hole fraction + perceptual + style + TV + adversarial;
     backward into G;
  4. both Adam updates.

So both sides do the same work. The reference LaFIn code does more
(docs/INPAINTING.md): D forward three times, D weight gradients of the G
loss computed and discarded, and four VGG passes of B images (the perceptual
and the style loss each run output and target), likely through relu5_4 as
EdgeConnect's loss VGG, where relu5_2 is the last layer read.

The PyTorch networks start from the JAX row's initial weights (random, no
downloads): the copy matches every parameter by name and shape, which checks
the re-statement layer by layer, and the parameter counts of both sides are
printed and must be equal. The losses of the first steps of both sides are
printed side by side: with the same weights and batch the first step's
losses agree to float32 rounding, the next ones closely (Adam's first update
is the sign of each gradient, so near-zero gradients may step differently).

Each row: the median and the minimum of `--steps` individually synchronised
steps (`block_until_ready` for JAX; PyTorch on CPU returns when done) after
`--warmup` steps, images per second, the FLOPs of one step as counted by
XLA's cost analysis of the compiled JAX step (the baseline's count is used
for the PyTorch row too) and the achieved GFLOP/s. PyTorch uses
`--torch_threads` threads (default: the cores this process may run on); JAX
uses XLA's CPU thread pool (all cores). Both sides run one after the other
in one process. Run on an idle machine: the load averages before and after
are printed.

XLA flags cannot change once JAX has started, so variants are config
changes only: `--jax_overrides` is a comma-separated list of groups, each
`key=value;key=value` (dotted config keys, values converted to the type of
the current value; `baseline` = no change), and each group is one row.
"""

import ast
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence, TextIO

import flax
import jax
import ml_collections
import numpy as np

from jaxface import aot
from jaxface.data import pipeline
from jaxface.data import schema
from jaxface.models import vgg as vgg_lib
from jaxface.train import loop

try:
  import torch
  from torch import nn as tnn
  from torch.nn import functional as F
except ImportError:  # the PyTorch row is skipped
  torch = None

_Module = tnn.Module if torch is not None else object
LOSS_KEYS = ("g_loss", "d_loss", "l1", "perceptual", "style", "tv",
             "adversarial")


# ------------------------------------------------------- config overrides
def _parse_value(text: str, current: Any) -> Any:
  """`text` as the type of the config field's current value."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ValueError(f"expected a boolean, got {text!r}")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  return ast.literal_eval(text)


def apply_overrides(config: ml_collections.ConfigDict,
                    group: str) -> ml_collections.ConfigDict:
  """A copy of `config` with a group `key=value;key=value` applied.

  `baseline` (or an empty group) changes nothing. Unknown keys are an error
  that names them.
  """
  config = config.copy_and_resolve_references()
  for item in (s.strip() for s in group.split(";")):
    if not item or item == "baseline":
      continue
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
      raise ValueError(f"--jax_overrides: {item!r} is not key=value")
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      if name not in node or not isinstance(node[name],
                                            ml_collections.ConfigDict):
        raise ValueError(f"--jax_overrides: no config section {name!r} in "
                         f"{key!r}")
      node = node[name]
    if leaf not in node:
      raise ValueError(f"--jax_overrides: unknown config key {key!r}")
    try:
      node[leaf] = _parse_value(text.strip(), node[leaf])
    except (ValueError, TypeError, SyntaxError) as e:
      raise ValueError(f"--jax_overrides: bad value for {key!r}: {e}") from e
  return config


def split_env(group: str) -> tuple[dict[str, str], str]:
  """Splits `env:NAME=VALUE` items off an override group.

  Returns:
    ({NAME: VALUE}, the group's config items).
  """
  env, rest = {}, []
  for item in (s.strip() for s in group.split(";")):
    if item.startswith("env:"):
      name, sep, value = item[len("env:"):].partition("=")
      if not sep or not name:
        raise ValueError(f"--jax_overrides: {item!r} is not env:NAME=VALUE")
      env[name] = value
    elif item:
      rest.append(item)
  return env, ";".join(rest)


def run_child_row(base_config: ml_collections.ConfigDict, group: str,
                  steps: int, warmup: int) -> "Row":
  """Times one JAX row in a child process with the group's environment.

  For settings read when JAX starts (`XLA_FLAGS`, `JAXFACE_XLA_DEFAULTS`):
  the child runs this command for the group's config items alone, without
  the PyTorch row, and hands its row back as JSON.
  """
  env, items = split_env(group)
  with tempfile.TemporaryDirectory() as tmp:
    config_path = os.path.join(tmp, "config.json")
    row_path = os.path.join(tmp, "row.json")
    with open(config_path, "w") as f:
      f.write(base_config.to_json())
    command = [sys.executable, "-m", "jaxface.bench.vs_torch", "--notorch",
               f"--config_json={config_path}", f"--row_json={row_path}",
               f"--jax_overrides={items or 'baseline'}", f"--steps={steps}",
               f"--warmup={warmup}"]
    done = subprocess.run(command, env={**os.environ, **env}, check=False,
                          capture_output=True, text=True)
    if done.returncode or not os.path.exists(row_path):
      raise RuntimeError(f"the row {group!r} failed in its child process:\n"
                         + (done.stdout + done.stderr)[-3000:])
    with open(row_path) as f:
      fields = json.load(f)
  fields["side"] = group
  return Row(**fields)


# -------------------------------------------------------------- timing
@dataclasses.dataclass
class Row:
  """One line of the table: a side's step times and what it computed."""
  side: str
  batch: int
  times: list[float]
  flops: float          # per step (XLA's count)
  params: int           # trainable (G + D)
  losses: list[dict[str, float]]  # of the first steps, pre-update
  finite: bool
  compile_s: float = float("nan")

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def min(self) -> float:
    return min(self.times)


def _time_steps(step: Callable[[], dict[str, float] | None], steps: int,
                warmup: int, keep: int = 2):
  """Runs `warmup` then `steps` synchronised steps.

  Returns (the timed steps' seconds, what the first `keep` calls returned,
  what the last call returned).
  """
  first, times, last = [], [], None
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    last = step()
    dt = time.perf_counter() - t0
    if i >= warmup:
      times.append(dt)
    if len(first) < keep:
      first.append(last)
  return times, first, last


def _flops(compiled) -> float:
  return aot.cost_analysis(compiled).get("flops", 0.0)


def _size(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------ JAX side
@dataclasses.dataclass
class JaxPrepared:
  """A compiled JAX step with its first state and batch."""
  config: ml_collections.ConfigDict
  setup: loop.Setup
  state: Any
  consts: Any
  batch: Any
  host_batch: dict[str, np.ndarray]
  compiled: Any
  flops: float
  compile_s: float
  counts: dict[str, int]


def prepare_jax(config: ml_collections.ConfigDict,
                devices: Sequence[jax.Device] | None = None,
                compiler_options: dict[str, Any] | None = None
                ) -> JaxPrepared:
  """Builds, initialises and compiles the real step (bench/train.py's way).

  `compiler_options` (XLA debug options for `setup.init` and
  `setup.train_step`) are for tests that need a quick compile, e.g.
  `{"xla_backend_optimization_level": 0}`; timings made with them are not
  the step's.
  """
  setup = loop.build(config, devices)
  rng = jax.random.key(config.seed)
  state = setup.init.lower(rng).compile(compiler_options)(rng)
  consts = setup.constants()
  host_batch = pipeline.fixed_batch(setup.task.examples, config,
                                    setup.train_batch_size)
  batch = setup.put(host_batch)
  t0 = time.perf_counter()
  compiled = setup.train_step.lower(state, batch, consts).compile(
      compiler_options)
  compile_s = time.perf_counter() - t0
  n_dev = setup.mesh.devices.size
  flops = (_flops(compiled) * n_dev
           + setup.task.uncounted_flops(config.train.batch_size))
  if config.task == "inpaint":
    counts = {"G": _size(state.g_params), "D": _size(state.d_params),
              "VGG (frozen)": _size(consts["vgg"])}
  else:
    counts = {"params": _size(getattr(state, "params", state))}
  return JaxPrepared(config, setup, state, consts, batch, host_batch,
                     compiled, flops, compile_s, counts)


def _jax_losses(metrics) -> dict[str, float]:
  m = jax.device_get(metrics)
  out = {k: float(m[k]) for k in ("g_loss", "d_loss") if k in m}
  out.update({k[len("loss/"):]: float(v) for k, v in m.items()
              if k.startswith("loss/")})
  return out


def time_jax(prep: JaxPrepared, label: str, steps: int, warmup: int) -> Row:
  """Times the compiled step; consumes (donates) `prep.state`."""
  holder = {"state": prep.state}
  prep.state = None

  def step():
    state, metrics = prep.compiled(holder["state"], prep.batch, prep.consts)
    jax.block_until_ready((state, metrics))
    holder["state"] = state
    return metrics

  times, first, last = _time_steps(step, steps, warmup)
  trainable = sum(v for k, v in prep.counts.items() if "frozen" not in k)
  return Row(side=f"jax {label}", batch=prep.config.train.batch_size,
             times=times, flops=prep.flops, params=trainable,
             losses=[_jax_losses(m) for m in first],
             finite=bool(jax.device_get(last["finite"])),
             compile_s=prep.compile_s)


# ------------------------------------------------- PyTorch re-statement
# NCHW, float32. Module attribute names are the flax module names, so that
# `load_flax` can match every parameter by name.

def _conv(cin, cout, k, stride=1, padding=0, dilation=1, bias=True):
  conv = tnn.Conv2d(cin, cout, k, stride=stride, padding=padding,
                    dilation=dilation, bias=bias)
  tnn.init.normal_(conv.weight, 0.0, 0.02)  # LaFIn's init_weights
  if bias:
    tnn.init.zeros_(conv.bias)
  return conv


def _instance_norm(x):
  return F.instance_norm(x, eps=1e-5)  # no affine, no running stats


def _reflect(x, pad):
  return F.pad(x, (pad, pad, pad, pad), mode="reflect")


class TorchSpectralConv(_Module):
  """Conv2d with W / sigma(W); u, v power iteration, one step per training
  forward (`torch.nn.utils.spectral_norm`'s maths, matrix view (out, -1))."""

  def __init__(self, cin, cout, k, stride=1, padding=0, bias=False,
               eps=1e-12):
    super().__init__()
    self.stride, self.padding, self.eps = stride, padding, eps
    self.weight = tnn.Parameter(torch.randn(cout, cin, k, k) * 0.02)
    self.bias = tnn.Parameter(torch.zeros(cout)) if bias else None
    self.register_buffer("u", F.normalize(torch.randn(cout), dim=0, eps=eps))
    self.register_buffer("v", F.normalize(torch.randn(cin * k * k), dim=0,
                                          eps=eps))

  def forward(self, x, update_stats: bool):
    w_mat = self.weight.reshape(self.weight.shape[0], -1)
    if update_stats:
      with torch.no_grad():
        v = F.normalize(w_mat.t() @ self.u, dim=0, eps=self.eps)
        self.u = F.normalize(w_mat @ v, dim=0, eps=self.eps)
        self.v = v
    sigma = torch.dot(self.u, w_mat @ self.v)  # grad through W only
    return F.conv2d(x, self.weight / sigma, self.bias, self.stride,
                    self.padding)


class TorchResnetBlock(_Module):
  """Dilated residual block: pad-conv(d)-IN-ReLU-pad-conv-IN, plus x."""

  def __init__(self, c, dilation):
    super().__init__()
    self.dilation = dilation
    self.conv1 = _conv(c, c, 3, dilation=dilation)
    self.conv2 = _conv(c, c, 3)

  def forward(self, x):
    h = self.conv1(_reflect(x, self.dilation))
    h = F.relu(_instance_norm(h))
    h = self.conv2(_reflect(h, 1))
    return x + _instance_norm(h)


class TorchAttentionResBlock(_Module):
  """Pre-activation ResBlock after the attention, SN on all three convs."""

  def __init__(self, cin, c):
    super().__init__()
    self.conv1 = TorchSpectralConv(cin, c, 3, padding=1, bias=True)
    self.conv2 = TorchSpectralConv(c, c, 3, padding=1, bias=True)
    self.bypass = TorchSpectralConv(cin, c, 1, bias=True)

  def forward(self, x, update_stats):
    h = self.conv1(F.leaky_relu(x, 0.01), update_stats)
    h = self.conv2(F.leaky_relu(h, 0.01), update_stats)
    return h + self.bypass(x, update_stats)


class TorchAttention(_Module):
  """Short(+long)-term attention: key = query, value = x (and pre)."""

  def __init__(self, c, long_term):
    super().__init__()
    self.long_term = long_term
    self.query_conv = _conv(c, c // 4, 1)
    self.gamma = tnn.Parameter(torch.zeros(()))
    if long_term:
      self.alpha = tnn.Parameter(torch.zeros(()))
      self.model = TorchAttentionResBlock(2 * c, c)

  def forward(self, x, pre=None, mask=None, update_stats=False):
    b, c, h, w = x.shape
    n = h * w
    q = self.query_conv(x).reshape(b, c // 4, n)             # [B, d, N]
    weights = torch.softmax(torch.bmm(q.transpose(1, 2), q), dim=-1)
    x_flat = x.reshape(b, c, n)
    values = x_flat
    if self.long_term:
      pre_flat = pre.reshape(b, c, n)
      values = torch.cat([x_flat, pre_flat], dim=1)          # [B, 2C, N]
    attended = torch.bmm(values, weights.transpose(1, 2))    # [B, Cv, N]
    out = self.gamma * attended[:, :c] + x_flat
    if not self.long_term:
      return out.reshape(b, c, h, w)
    m = mask.reshape(b, 1, n)
    context = self.alpha * m * attended[:, c:] + (1 - m) * pre_flat
    return self.model(torch.cat([out, context], dim=1).reshape(b, 2 * c, h, w),
                      update_stats)


class TorchGenerator(_Module):
  """LaFIn's InpaintGenerator (docs/INPAINTING.md, REFERENCE.md section 2)."""

  def __init__(self, width=64, num_res_blocks=7, dilation=2):
    super().__init__()
    c1, c2, c3 = width, 2 * width, 4 * width
    self.num_res_blocks = num_res_blocks
    self.encoder1 = _conv(4, c1, 7)
    self.encoder2 = _conv(c1, c2, 4, stride=2, padding=1)
    self.encoder3 = _conv(c2, c3, 4, stride=2, padding=1)
    for i in range(num_res_blocks):
      setattr(self, f"middle_{i}", TorchResnetBlock(c3, dilation))
    self.auto_attn = TorchAttention(c3, long_term=True)
    self.decoder1 = tnn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1)
    self.fushion1 = _conv(2 * c2, 2 * c2, 1)
    self.decoder2 = tnn.ConvTranspose2d(2 * c2, c1, 4, stride=2, padding=1)
    self.fushion2 = _conv(2 * c1, 2 * c1, 1)
    self.decoder3 = _conv(2 * c1, 3, 7)
    for layer in (self.decoder1, self.decoder2):
      tnn.init.normal_(layer.weight, 0.0, 0.02)
      tnn.init.zeros_(layer.bias)

  def forward(self, masked_image, landmark_map, mask, update_stats=False):
    _, _, h, w = masked_image.shape
    norm_relu = lambda t: F.relu(_instance_norm(t))
    mask_half = F.interpolate(mask, size=(h // 2, w // 2), mode="bilinear",
                              align_corners=True)
    mask_quarter = F.interpolate(mask, size=(h // 4, w // 4),
                                 mode="bilinear", align_corners=True)
    x = torch.cat([masked_image, landmark_map], dim=1)
    f_e1 = norm_relu(self.encoder1(_reflect(x, 3)))
    f_e2 = norm_relu(self.encoder2(f_e1))
    f_e3 = norm_relu(self.encoder3(f_e2))
    x = f_e3
    for i in range(self.num_res_blocks):
      x = getattr(self, f"middle_{i}")(x)
    x = self.auto_attn(x, f_e3, mask_quarter, update_stats)
    x = norm_relu(self.decoder1(x))
    x = norm_relu(self.fushion1(torch.cat([f_e2 * (1 - mask_half), x], 1)))
    x = norm_relu(self.decoder2(x))
    x = norm_relu(self.fushion2(torch.cat([f_e1 * (1 - mask), x], 1)))
    x = self.decoder3(_reflect(x, 3))
    return (torch.tanh(x) + 1) / 2


class TorchDiscriminator(_Module):
  """LaFIn's Discriminator: SN PatchGAN with self-attention, sigmoid out."""

  def __init__(self, width=64):
    super().__init__()
    c = width
    self.conv1 = TorchSpectralConv(4, c, 4, stride=2, padding=1)
    self.conv2 = TorchSpectralConv(c, 2 * c, 4, stride=2, padding=1)
    self.auto_attn = TorchAttention(2 * c, long_term=False)
    self.conv3 = TorchSpectralConv(2 * c, 4 * c, 4, stride=2, padding=1)
    self.conv4 = TorchSpectralConv(4 * c, 8 * c, 4, stride=1, padding=1)
    self.conv5 = TorchSpectralConv(8 * c, 1, 4, stride=1, padding=1)

  def forward(self, image, landmark_map, update_stats=False):
    x = torch.cat([image, landmark_map], dim=1)
    x = F.leaky_relu(self.conv1(x, update_stats), 0.2)
    x = F.leaky_relu(self.conv2(x, update_stats), 0.2)
    x = self.auto_attn(x)
    x = F.leaky_relu(self.conv3(x, update_stats), 0.2)
    x = F.leaky_relu(self.conv4(x, update_stats), 0.2)
    return torch.sigmoid(self.conv5(x, update_stats))


class TorchVGG19(_Module):
  """torchvision's vgg19().features up to `last_layer`, named convs."""

  def __init__(self, outputs, last_layer, width=64, imagenet_normalize=False):
    super().__init__()
    self.outputs = tuple(outputs)
    self.layers = vgg_lib.layers_up_to(last_layer)
    self.imagenet_normalize = imagenet_normalize
    cin = 3
    for layer in self.layers:
      cout = vgg_lib.CHANNELS[layer] * width // 64
      setattr(self, vgg_lib.conv_name(layer), tnn.Conv2d(cin, cout, 3,
                                                         padding=1))
      cin = cout
    self.register_buffer(
        "mean", torch.tensor(vgg_lib.IMAGENET_MEAN).reshape(1, 3, 1, 1))
    self.register_buffer(
        "std", torch.tensor(vgg_lib.IMAGENET_STD).reshape(1, 3, 1, 1))

  def forward(self, x):
    if self.imagenet_normalize:
      x = (x - self.mean) / self.std
    out, block = {}, 1
    for layer in self.layers:
      layer_block = int(layer[len("relu")])
      if layer_block != block:
        x = F.max_pool2d(x, 2, 2)
        block = layer_block
      x = F.relu(getattr(self, vgg_lib.conv_name(layer))(x))
      if layer in self.outputs:
        out[layer] = x
    return out


def _landmark_map(landmarks, h, w):
  """One lit pixel per landmark, [B, 1, H, W] (layers.landmark_map)."""
  b, p, _ = landmarks.shape
  xy = torch.floor(landmarks + 0.5).long()
  x = xy[..., 0].clamp(0, w - 1)
  y = xy[..., 1].clamp(0, h - 1)
  out = torch.zeros(b, h, w)
  out[torch.arange(b)[:, None].expand(b, p), y, x] = 1.0
  return out[:, None]


def _gram(f):
  b, c, h, w = f.shape
  f = f.reshape(b, c, h * w)
  return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class TorchLaFIn:
  """The networks, the frozen VGG and the two Adam optimisers; `step()`."""

  def __init__(self, config: ml_collections.ConfigDict):
    g, d, lc = (config.model.generator, config.model.discriminator,
                config.losses)
    self.generator = TorchGenerator(g.width, g.num_res_blocks, g.dilation)
    self.discriminator = TorchDiscriminator(d.width)
    self.perceptual_layers = tuple(lc.perceptual_layers)
    self.style_layers = tuple(lc.style_layers)
    outputs = tuple(dict.fromkeys(self.perceptual_layers + self.style_layers))
    self.vgg = TorchVGG19(outputs, max(outputs, key=vgg_lib.LAYERS.index),
                          lc.vgg_width, lc.vgg_imagenet_normalize)
    self.vgg.requires_grad_(False)  # frozen
    self.weights = {k: float(lc[k]) for k in LOSS_KEYS[2:]}
    o = config.optim
    self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=o.g_lr,
                                  betas=(o.b1, o.b2), eps=1e-8)
    self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=o.d_lr,
                                  betas=(o.b1, o.b2), eps=1e-8)

  def counts(self) -> dict[str, int]:
    n = lambda m: sum(p.numel() for p in m.parameters())
    return {"G": n(self.generator), "D": n(self.discriminator),
            "VGG (frozen)": n(self.vgg)}

  def load_flax(self, g_params, g_stats, d_params, d_stats, vgg_params):
    """Copies JAX's weights and SN vectors; every name and shape must match."""
    _copy_flax(self.generator, g_params, g_stats)
    _copy_flax(self.discriminator, d_params, d_stats)
    _copy_flax(self.vgg, vgg_params, {})

  def step(self, batch) -> dict[str, float]:
    """One training iteration (module docstring); returns its losses."""
    g_net, d_net, w = self.generator, self.discriminator, self.weights
    image = batch[schema.IMAGE].float() / 255.0               # [B, 3, H, W]
    mask = batch[schema.MASK].float()                         # [B, 1, H, W]
    b, _, h, wd = image.shape
    lmap = _landmark_map(batch[schema.LANDMARKS], h, wd)
    masked = image * (1 - mask) + mask

    # 1. G forward.
    fake = g_net(masked, lmap, mask, update_stats=True)
    # 2. D loss on [real, detached fake] in one batch; D backward.
    probs = d_net(torch.cat([image, fake.detach()]), torch.cat([lmap, lmap]),
                  update_stats=True)
    real_prob, fake_prob = probs[:b], probs[b:]
    d_loss = 0.5 * ((real_prob - 1).square().mean()
                    + fake_prob.square().mean())
    self.d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    # 3. G loss. D with the pre-update weights (steps come after both
    # backward passes), frozen SN vectors, no weight gradients.
    with torch.no_grad():
      target = self.vgg(torch.cat([image, image * mask]))
    out = self.vgg(torch.cat([fake, fake * mask]))
    d_net.requires_grad_(False)
    adv_prob = d_net(fake, lmap, update_stats=False)
    d_net.requires_grad_(True)
    perceptual = sum((out[k][:b] - target[k][:b]).abs().mean()
                     for k in self.perceptual_layers)
    style = sum((_gram(out[k][b:]) - _gram(target[k][b:])).abs().mean()
                for k in self.style_layers)
    composite = fake * mask + image * (1 - mask)
    tv = ((composite[:, :, 1:] - composite[:, :, :-1]).abs().mean()
          + (composite[:, :, :, 1:] - composite[:, :, :, :-1]).abs().mean())
    terms = {
        "l1": (fake - image).abs().mean() / mask.mean().clamp_min(1e-8),
        "perceptual": perceptual, "style": style, "tv": tv,
        "adversarial": (adv_prob - 1).square().mean(),
    }
    g_loss = sum(w[k] * v for k, v in terms.items())
    self.g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    # 4. Both updates.
    self.d_opt.step()
    self.g_opt.step()
    losses = {"g_loss": g_loss, "d_loss": d_loss, **terms}
    return {k: float(v.detach()) for k, v in losses.items()}

  def params_finite(self) -> bool:
    return all(bool(torch.isfinite(p).all())
               for m in (self.generator, self.discriminator)
               for p in m.parameters())


def _copy_flax(module, params, stats):
  """Copies a flax param tree (and SN stats) into the same-named module."""
  flat = {".".join(k): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(params).items()}
  flat_stats = {".".join(k): np.asarray(v)
                for k, v in flax.traverse_util.flatten_dict(stats).items()}
  tparams = dict(module.named_parameters())
  tbuffers = dict(module.named_buffers())
  missing = set(tparams)
  with torch.no_grad():
    for name, value in flat.items():
      tname = name[:-len("kernel")] + "weight" if name.endswith(
          ".kernel") else name
      if tname not in tparams:
        raise ValueError(f"torch side has no parameter for flax {name!r}")
      if name.endswith(".kernel"):
        # Conv HWIO -> OIHW; ConvTranspose (kh, kw, out, in) -> (in, out,
        # kh, kw): the same axis permutation.
        value = value.transpose(3, 2, 0, 1)
      target = tparams[tname]
      if tuple(target.shape) != value.shape:
        raise ValueError(f"{tname}: torch {tuple(target.shape)} vs flax "
                         f"{value.shape}")
      target.copy_(torch.tensor(value))
      missing.discard(tname)
    for name, value in flat_stats.items():
      prefix, leaf = name.rsplit(".", 1)
      if leaf == "v":
        # flax flattens the kernel (kh, kw, in); torch (in, kh, kw).
        _, cin, kh, kw = tparams[prefix + ".weight"].shape
        value = value.reshape(kh, kw, cin).transpose(2, 0, 1).reshape(-1)
      if tuple(tbuffers[name].shape) != value.shape:
        raise ValueError(f"{name}: torch {tuple(tbuffers[name].shape)} vs "
                         f"flax {value.shape}")
      parent = module.get_submodule(prefix)
      setattr(parent, leaf, torch.tensor(value))
  if missing:
    raise ValueError(
        f"torch parameters without a flax value: {sorted(missing)}")


def _torch_batch(host_batch):
  """The host batch as NCHW torch tensors (images stay uint8)."""
  b = schema.to_float({k: v for k, v in host_batch.items()
                       if k != schema.IMAGE})
  return {
      schema.IMAGE: torch.from_numpy(
          np.ascontiguousarray(host_batch[schema.IMAGE].transpose(0, 3, 1, 2))),
      schema.MASK: torch.from_numpy(
          np.ascontiguousarray(b[schema.MASK].transpose(0, 3, 1, 2))),
      schema.LANDMARKS: torch.from_numpy(np.asarray(b[schema.LANDMARKS])),
  }


def time_torch(config, host_state, host_consts, host_batch, flops, steps,
               warmup, counts_jax) -> tuple[Row, dict[str, int]]:
  """Builds the PyTorch side from the JAX initial state and times it."""
  torch.manual_seed(config.seed)
  model = TorchLaFIn(config)
  counts = model.counts()
  if counts != counts_jax:
    raise AssertionError(f"parameter counts differ: torch {counts}, jax "
                         f"{counts_jax}")
  model.load_flax(host_state.g_params, host_state.g_stats,
                  host_state.d_params, host_state.d_stats, host_consts["vgg"])
  batch = _torch_batch(host_batch)
  times, first, last = _time_steps(lambda: model.step(batch), steps, warmup)
  finite = (all(math.isfinite(v) for v in last.values())
            and model.params_finite())
  row = Row(side="torch", batch=config.train.batch_size, times=times,
            flops=flops, params=counts["G"] + counts["D"], losses=first,
            finite=finite)
  return row, counts


# ------------------------------------------------------------- the run
def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _loadavg() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def print_table(rows: Sequence[Row], out: TextIO) -> None:
  """The timing table, one line per row."""
  w = max([32] + [len(r.side) for r in rows])
  header = (f"{'side':<{w}} {'step s':>8} {'min s':>8} {'img/s':>7} "
            f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'params':>11} "
            f"{'compile s':>9} {'finite':>6}")
  print(header, file=out)
  print("-" * len(header), file=out)
  for r in rows:
    compile_s = "-" if math.isnan(r.compile_s) else f"{r.compile_s:.1f}"
    print(f"{r.side:<{w}} {r.median:>8.3f} {r.min:>8.3f} "
          f"{r.batch / r.median:>7.2f} {r.flops / 1e9:>10.1f} "
          f"{r.flops / 1e9 / r.median:>8.1f} {r.params:>11,} "
          f"{compile_s:>9} {str(r.finite):>6}", file=out)


def print_losses(rows: Sequence[Row], out: TextIO) -> None:
  """The losses of each row's first steps, to compare the sides."""
  keys = [k for k in LOSS_KEYS if all(k in l for r in rows for l in r.losses)]
  if not keys:
    return
  print("losses of the first steps (before each step's update):", file=out)
  w = max([32] + [len(r.side) for r in rows])
  print(f"{'side':<{w}} {'step':>4} " + " ".join(f"{k:>12}" for k in keys),
        file=out)
  for r in rows:
    for i, l in enumerate(r.losses):
      print(f"{r.side:<{w}} {i + 1:>4} "
            + " ".join(f"{l[k]:>12.6g}" for k in keys), file=out)


def run(base_config: ml_collections.ConfigDict,
        groups: Sequence[str] = ("baseline",), *, steps: int = 5,
        warmup: int = 2, run_torch: bool = True, torch_threads: int = 0,
        devices: Sequence[jax.Device] | None = None,
        compiler_options: dict[str, Any] | None = None,
        out: TextIO = sys.stdout) -> dict[str, Any]:
  """Times the JAX step per override group and the PyTorch re-statement.

  Args:
    base_config: the config of the PyTorch row and of `baseline`.
    groups: `--jax_overrides` groups, one JAX row each.
    steps, warmup: timed and untimed steps per row.
    run_torch: add the PyTorch row when torch imports and the task is
      inpaint.
    torch_threads: 0 = the number of cores.
    devices: JAX devices (default all).
    compiler_options: see `prepare_jax` (tests only).
    out: where the tables go.

  Returns:
    {"jax": [Row], "torch": Row | None, "counts": {"jax": ..., "torch": ...}}.
  """
  if steps < 1:
    raise ValueError(f"--steps={steps}: need at least one timed step")
  configs = [(g.strip() or "baseline",
              apply_overrides(base_config, split_env(g)[1])) for g in groups]
  threads = torch_threads or _cores()
  dev = (devices or jax.devices())[0]
  print(f"device: {dev.device_kind} x{len(devices or jax.devices())} "
        f"({dev.platform}), {_cores()} cores, jax {jax.__version__}, torch "
        f"{torch.__version__ if torch is not None else 'absent'}; task "
        f"{base_config.task}, {base_config.data.image_size}px, batch "
        f"{base_config.train.batch_size}, compute {base_config.compute_dtype};"
        f" median/min of {steps} steps after {warmup} warm-up; load average "
        f"{_loadavg()}", file=out, flush=True)

  want_torch = run_torch
  why_not = ""
  if torch is None:
    want_torch, why_not = False, "torch is not installed"
  elif base_config.task != "inpaint":
    want_torch, why_not = False, f"no re-statement of task {base_config.task}"
  elif not run_torch:
    why_not = "--notorch"

  rows, torch_input = [], None
  for label, config in configs:
    env, _ = split_env(label)
    if env:  # XLA reads its flags once per process: a child runs the row
      rows.append(run_child_row(base_config, label, steps, warmup))
      print(f"  {rows[-1].side}: {rows[-1].median:.3f} s/step", file=out,
            flush=True)
      continue
    prep = prepare_jax(config, devices, compiler_options)
    if (want_torch and torch_input is None
        and config.to_json() == base_config.to_json()):
      # The PyTorch side starts from this row's initial weights.
      torch_input = (jax.device_get(prep.state),
                     jax.device_get(prep.consts), prep.host_batch,
                     prep.flops, prep.counts)
    rows.append(time_jax(prep, label, steps, warmup))
    del prep
    print(f"  {rows[-1].side}: {rows[-1].median:.3f} s/step", file=out,
          flush=True)

  torch_row, counts = None, {"jax": None, "torch": None}
  if want_torch:
    if torch_input is None:  # no baseline row: its state and FLOPs alone
      prep = prepare_jax(base_config, devices, compiler_options)
      torch_input = (jax.device_get(prep.state), jax.device_get(prep.consts),
                     prep.host_batch, prep.flops, prep.counts)
      del prep
    host_state, host_consts, host_batch, flops, counts_jax = torch_input
    torch.set_num_threads(threads)
    if base_config.compute_dtype != "float32":
      print(f"note: the torch row runs float32 (base config: "
            f"{base_config.compute_dtype})", file=out)
    torch_row, counts_torch = time_torch(base_config, host_state, host_consts,
                                         host_batch, flops, steps, warmup,
                                         counts_jax)
    counts = {"jax": counts_jax, "torch": counts_torch}
    torch_row.side = f"torch {torch.__version__} ({threads} threads)"
    rows.append(torch_row)

  print(file=out)
  print_table(rows, out)
  if torch_row is None:
    print(f"torch row skipped: {why_not}", file=out)
  else:
    print("parameters (jax / torch): " + ", ".join(
        f"{k} {counts['jax'][k]:,} / {counts['torch'][k]:,}"
        for k in counts["jax"]), file=out)
  print_losses(rows, out)
  print(f"load average after: {_loadavg()}", file=out, flush=True)
  return {"jax": rows[:len(configs)], "torch": torch_row, "counts": counts}


def main(argv):
  """The command: the config with the size flags applied, then `run`."""
  del argv
  if _CONFIG_JSON.value:  # a child of `run_child_row`: sizes already set
    with open(_CONFIG_JSON.value) as f:
      config = ml_collections.ConfigDict(json.load(f))
    result = run(config, _OVERRIDES.value, steps=_STEPS.value,
                 warmup=_WARMUP.value, run_torch=False)
    with open(_ROW_JSON.value, "w") as f:
      json.dump(dataclasses.asdict(result["jax"][0]), f, default=float)
    return
  config = _CONFIG.value
  if _IMAGE_SIZE.value:
    config.data.image_size = _IMAGE_SIZE.value
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  if _DTYPE.value:
    config.compute_dtype = _DTYPE.value
  run(config, _OVERRIDES.value or ["baseline"], steps=_STEPS.value,
      warmup=_WARMUP.value, run_torch=_TORCH.value,
      torch_threads=_THREADS.value)


if __name__ == "__main__":
  # Flags only for the command: `jaxface.bench.train` and `jaxface.aot`
  # define flags of the same names, and tests import all of them.
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file(
      "config", "configs/inpaint.py", "Experiment config.", lock_config=False)
  _IMAGE_SIZE = flags.DEFINE_integer(
      "image_size", 128, "config.data.image_size (0 = the config's); wins "
      "over --config.data.image_size.")
  _BATCH = flags.DEFINE_integer(
      "batch_size", 4, "config.train.batch_size (0 = the config's); wins "
      "over --config.train.batch_size.")
  _DTYPE = flags.DEFINE_string(
      "dtype", "float32", "config.compute_dtype ('' = the config's); wins "
      "over --config.compute_dtype.")
  _OVERRIDES = flags.DEFINE_list(
      "jax_overrides", ["baseline"], "JAX rows: comma-separated groups of "
      "key=value;key=value config changes ('baseline' = none).")
  _STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per row.")
  _WARMUP = flags.DEFINE_integer("warmup", 2,
                                 "Untimed steps after compiling.")
  _TORCH = flags.DEFINE_bool("torch", True, "Add the PyTorch row.")
  _THREADS = flags.DEFINE_integer(
      "torch_threads", 0, "torch.set_num_threads (0 = the number of cores).")
  _CONFIG_JSON = flags.DEFINE_string(
      "config_json", "", "Internal (child rows): the base config as JSON.")
  _ROW_JSON = flags.DEFINE_string(
      "row_json", "", "Internal (child rows): where the row goes.")
  app.run(main)
