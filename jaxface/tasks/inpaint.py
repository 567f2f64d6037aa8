"""The inpainting GAN task: state, the jitted GAN iteration, evaluation.

One training step is LaFIn's iteration as a single pure function:

  1. G forward (once; its VJP is kept for step 4);
  2. D update on (real, detached fake), one power-iteration step of the
     spectral norms;
  3. G loss: L1 / hole fraction + perceptual + style + TV + LSGAN, the
     adversarial term through the *pre-update* D parameters, differentiated
     with respect to G's output only (no D weight gradients are computed);
  4. G update by pulling that gradient back through the saved VJP.

The real half of the D batch and the VGG features of the target need no
gradient and are computed outside the differentiated functions.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxface import config_utils
from jaxface import losses
from jaxface import metrics
from jaxface import sharding
from jaxface import visualize
from jaxface.data import examples
from jaxface.data import schema
from jaxface.models import attention
from jaxface.models import inpaint
from jaxface.models import layers
from jaxface.models import vgg
from jaxface.train import task as task_lib
from jaxface.weights import vgg as vgg_weights

SN = layers.SPECTRAL_STATS


def make_example(face: examples.Face, rng: np.random.Generator,
                 augment: bool) -> dict[str, np.ndarray] | None:
  """The clean face, the hole to fill, the landmarks that guide it."""
  del rng, augment  # no task-specific augmentation
  if not np.all(np.isfinite(face.landmarks)):
    return None  # the generator is guided by all 98 points
  return {schema.IMAGE: face.image, schema.MASK: face.mask,
          schema.LANDMARKS: face.landmarks, schema.GENDER: face.gender}


EXAMPLES = examples.ExampleSpec(
    keys=(schema.IMAGE, schema.MASK, schema.LANDMARKS, schema.GENDER),
    make=make_example)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the config key, on values only this task has.

  The shared sections (train, eval, optim, data) are checked by
  `config_utils.validate_common`.
  """
  check = config_utils.check
  check(config.data.image_size % 4 == 0, "data.image_size",
        config.data.image_size,
        "a multiple of 4 (the generator downsamples twice)")
  # The discriminator's patch map is image_size / 8 - 2 wide.
  check(config.data.image_size >= 24, "data.image_size",
        config.data.image_size,
        ">= 24 (the discriminator needs 24 px for one 1x1 patch)")
  check(config.model.attention_impl in attention.IMPLEMENTATIONS,
        "model.attention_impl", config.model.attention_impl,
        " | ".join(attention.IMPLEMENTATIONS))
  check(config.model.remat in layers.REMAT_POLICIES, "model.remat",
        config.model.remat, " | ".join(layers.REMAT_POLICIES))
  check(config.model.conv_transpose in layers.CONV_TRANSPOSE_IMPLS,
        "model.conv_transpose", config.model.conv_transpose,
        " | ".join(layers.CONV_TRANSPOSE_IMPLS))
  for key in ("l1", "perceptual", "style", "tv", "adversarial"):
    check(config.losses[key] >= 0, f"losses.{key}", config.losses[key],
          ">= 0")
  for key in ("perceptual_layers", "style_layers"):
    unknown = [n for n in config.losses[key] if n not in vgg.LAYERS]
    check(not unknown, f"losses.{key}", tuple(config.losses[key]),
          f"VGG-19 layer names from {vgg.LAYERS}")


@flax.struct.dataclass
class GANState:
  """Everything that changes during training, as one pytree."""
  step: jax.Array
  g_params: Any
  g_stats: Any   # spectral-norm vectors of G (its attention ResBlock)
  d_params: Any
  d_stats: Any   # spectral-norm vectors of D
  g_opt: Any
  d_opt: Any


def _pair(a: jax.Array, b: jax.Array) -> jax.Array:
  """[B, ...] and [B, ...] -> [2B, ...] with a[i], b[i] at rows 2i, 2i + 1.

  Interleaved rather than concatenated: with the batch split over devices,
  each device's rows of the pair stay on that device (a concatenation
  would move half the rows of every activation between devices).
  """
  return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def _unpair(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The inverse of `_pair`."""
  x = x.reshape((x.shape[0] // 2, 2) + x.shape[1:])
  return x[:, 0], x[:, 1]


class InpaintTask(task_lib.Task):
  """Builds the networks from a config and provides the pure step functions.

  The loop in `jaxface.train.loop` jits `init_state`, `train_step`,
  `eval_step` and `sample` with shardings; nothing here touches devices.
  """

  examples = EXAMPLES
  console_metrics = {"g": "g_loss", "d": "d_loss", "l1": "loss/l1"}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    validate_config(config)
    dtype = self.dtype
    g, d = config.model.generator, config.model.discriminator
    self.generator = inpaint.Generator(
        width=g.width, num_res_blocks=g.num_res_blocks, dilation=g.dilation,
        attention_impl=config.model.attention_impl,
        remat=config.model.remat, conv_transpose=config.model.conv_transpose,
        dtype=dtype)
    self.discriminator = inpaint.Discriminator(
        width=d.width, attention_impl=config.model.attention_impl,
        remat=config.model.remat, dtype=dtype)
    self.perceptual_layers = tuple(config.losses.perceptual_layers)
    self.style_layers = tuple(config.losses.style_layers)
    vgg_outputs = tuple(dict.fromkeys(self.perceptual_layers
                                      + self.style_layers))
    self.vgg = vgg.VGG19(
        outputs=vgg_outputs,
        last_layer=max(vgg_outputs, key=vgg.LAYERS.index),
        imagenet_normalize=config.losses.vgg_imagenet_normalize,
        width=config.losses.vgg_width, dtype=dtype)
    o = config.optim
    self.g_tx = optax.adam(o.g_lr, b1=o.b1, b2=o.b2)
    self.d_tx = optax.adam(o.d_lr, b1=o.b1, b2=o.b2)
    self.image_size = config.data.image_size

  # ---------------------------------------------------------------- state
  def init_state(self, rng: jax.Array) -> GANState:
    s = self.image_size
    image = jnp.zeros((1, s, s, 3), jnp.float32)
    one = jnp.zeros((1, s, s, 1), jnp.float32)
    g_rng, d_rng = jax.random.split(rng)
    g_vars = self.generator.init(g_rng, image, one, one)
    d_vars = self.discriminator.init(d_rng, image, one)
    return GANState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_vars["params"], g_stats=g_vars[SN],
        d_params=d_vars["params"], d_stats=d_vars[SN],
        g_opt=self.g_tx.init(g_vars["params"]),
        d_opt=self.d_tx.init(d_vars["params"]))

  def constants(self) -> dict[str, Any]:
    """Frozen inputs of the step: the VGG-19 loss network (if used)."""
    path = self.config.vgg_weights
    if self.config.losses.perceptual == 0 and self.config.losses.style == 0:
      if path:
        logging.warning("config.vgg_weights=%s is not used: "
                        "losses.perceptual and losses.style are 0", path)
      return {}
    if path:
      if self.vgg.width != 64:
        raise ValueError(f"config.losses.vgg_width={self.vgg.width}: "
                         "pretrained VGG-19 weights need width 64")
      params = vgg_weights.load_vgg19(path, last_layer=self.vgg.last_layer)
      logging.info("VGG-19 loss network loaded from %s", path)
    else:
      logging.warning(
          "config.vgg_weights is empty: the perceptual and style losses use a "
          "RANDOMLY initialised VGG-19. Fine for smoke tests; for real "
          "training pass --config.vgg_weights=/path/to/vgg19-dcbb9e9d.pth "
          "(torchvision) or a .npz written by jaxface.weights.")
      params = self.vgg.init(jax.random.key(self.config.seed + 7),
                             jnp.zeros((1, 32, 32, 3)))["params"]
    return {"vgg": params}

  # ------------------------------------------------------------- helpers
  def _inputs(self, batch):
    batch = schema.to_float(batch)
    image, mask = batch[schema.IMAGE], batch[schema.MASK]
    _, h, w, _ = image.shape
    lmap = layers.landmark_map(batch[schema.LANDMARKS], h, w)
    masked = image * (1 - mask) + mask  # holes painted white
    return image, mask, lmap, masked

  def _vgg(self, consts, x):
    apply = lambda params, x: self.vgg.apply({"params": params}, x)
    if self.config.model.remat != "none":
      # The loss network's activations are the largest the backward pass
      # keeps: keep only each block's output, recompute the rest.
      apply = jax.checkpoint(apply, policy=jax.checkpoint_policies
                             .save_only_these_names(vgg.BLOCK_OUTPUT))
    return apply(consts["vgg"], x)

  # --------------------------------------------------------------- train
  def train_step(self, state: GANState, batch: dict[str, jax.Array],
                 consts: dict[str, Any],
                 rng: jax.Array) -> tuple[GANState, dict[str, Any]]:
    """One GAN iteration; see the module docstring."""
    del rng  # deterministic: no dropout, no on-device augmentation
    cfg = self.config.losses
    image, mask, lmap, masked = self._inputs(batch)

    # With FSDP, both networks' parameters are gathered where used and
    # their gradients summed whole; the optimisers update the shards
    # (`sharding.gathered` says why). No-ops without FSDP.
    g_params, d_params = sharding.gathered((state.g_params, state.d_params))

    # 1. Generator forward, keeping the VJP for the update in step 4.
    def generate(g_params):
      out, updates = self.generator.apply(
          {"params": g_params, SN: state.g_stats}, masked, lmap, mask,
          update_stats=True, mutable=[SN])
      return out, updates[SN]

    fake, g_vjp, g_stats = jax.vjp(generate, g_params, has_aux=True)

    # 2. Discriminator update on real and the detached fake, in one batch.
    d_images = _pair(image, jax.lax.stop_gradient(fake))
    d_lmaps = _pair(lmap, lmap)

    def d_loss_fn(d_params):
      probs, updates = self.discriminator.apply(
          {"params": d_params, SN: state.d_stats}, d_images, d_lmaps,
          update_stats=True, mutable=[SN])
      real_prob, fake_prob = _unpair(probs)
      loss = losses.lsgan_discriminator(real_prob, fake_prob)
      return loss, (updates[SN], jnp.mean(real_prob), jnp.mean(fake_prob))

    (d_loss, (d_stats, d_real, d_fake)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(d_params)

    # 3. Generator loss as a function of G's output only. D's parameters are
    # the pre-update ones and enter as constants: no weight gradients.
    # The loss network runs only when a VGG term weighs anything.
    use_vgg = cfg.perceptual > 0 or cfg.style > 0
    if use_vgg:
      target_feats = self._vgg(consts, _pair(image, image * mask))

    def g_loss_fn(out):
      terms = {"l1": losses.hole_l1(out, image, mask)}
      if use_vgg:
        out_feats = self._vgg(consts, _pair(out, out * mask))
        out_full, out_hole = {}, {}
        tgt_full, tgt_hole = {}, {}
        for k in out_feats:
          out_full[k], out_hole[k] = _unpair(out_feats[k])
          tgt_full[k], tgt_hole[k] = _unpair(target_feats[k])
        terms["perceptual"] = losses.perceptual(out_full, tgt_full,
                                                self.perceptual_layers)
        terms["style"] = losses.style(out_hole, tgt_hole, self.style_layers)
      composite = out * mask + image * (1 - mask)
      fake_prob = self.discriminator.apply(
          {"params": d_params, SN: d_stats}, out, lmap,
          update_stats=False)
      terms["tv"] = losses.total_variation(composite)
      terms["adversarial"] = losses.lsgan_generator(fake_prob)
      total = sum(cfg[k] * v for k, v in terms.items())
      return total, terms

    (g_loss, terms), out_grad = jax.value_and_grad(
        g_loss_fn, has_aux=True)(fake)

    # 4. Pull the output gradient back into G's parameters.
    (g_grads,) = g_vjp(out_grad)
    g_grads, d_grads = sharding.gathered((g_grads, d_grads))

    g_updates, g_opt = self.g_tx.update(g_grads, state.g_opt, state.g_params)
    d_updates, d_opt = self.d_tx.update(d_grads, state.d_opt, state.d_params)
    new_state = GANState(
        step=state.step + 1,
        g_params=optax.apply_updates(state.g_params, g_updates),
        g_stats=g_stats,
        d_params=optax.apply_updates(state.d_params, d_updates),
        d_stats=d_stats, g_opt=g_opt, d_opt=d_opt)

    g_norm, d_norm = optax.tree.norm(g_grads), optax.tree.norm(d_grads)
    out = {"g_loss": g_loss, "d_loss": d_loss, "d_real": d_real,
           "d_fake": d_fake, "g_grad_norm": g_norm, "d_grad_norm": d_norm}
    out.update({f"loss/{k}": v for k, v in terms.items()})
    out["finite"] = task_lib.all_finite(g_loss, d_loss, g_norm, d_norm,
                                        new_state.g_params,
                                        new_state.d_params)
    return new_state, out

  # ----------------------------------------------------------- inference
  def inference_variables(self, state: GANState) -> dict[str, Any]:
    """The generator's variables: parameters and spectral-norm vectors."""
    return {"params": state.g_params, SN: state.g_stats}

  def inference_state(self, variables):
    raise NotImplementedError(
        "the inpainting generator is applied to its variables directly: "
        "task.generator.apply(variables, masked, lmap, mask)")

  # ---------------------------------------------------------------- eval
  def _inpaint(self, state: GANState, batch):
    image, mask, lmap, masked = self._inputs(batch)
    out = self.generator.apply({"params": state.g_params, SN: state.g_stats},
                               masked, lmap, mask)
    composite = out * mask + image * (1 - mask)
    return image, mask, lmap, masked, out, composite

  def eval_step(self, state: GANState, batch: dict[str, jax.Array],
                consts: dict[str, Any]) -> dict[str, jax.Array]:
    """Per-image quality of the composite against the ground truth."""
    del consts
    image, mask, _, _, out, composite = self._inpaint(state, batch)
    return {
        "psnr": metrics.psnr(composite, image),
        "ssim": metrics.ssim(composite, image),
        "l1_hole": metrics.masked_l1(out, image, mask),
        "gender": batch[schema.GENDER],
    }

  def sample(self, state: GANState, batch: dict[str, jax.Array],
             consts: dict[str, Any]) -> dict[str, jax.Array]:
    """The columns of the sample grid."""
    del consts
    image, _, _, masked, out, composite = self._inpaint(state, batch)
    return {"masked": masked, "output": out, "composite": composite,
            "target": image}

  def sample_grid(self, columns: dict[str, np.ndarray],
                  batch: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 grid: masked input | landmarks | output | composite | target."""
    lm_column = visualize.draw_points(0.5 * columns["target"],
                                      batch[schema.LANDMARKS],
                                      color=(0.0, 1.0, 0.0))
    return visualize.make_grid([columns["masked"], lm_column,
                                columns["output"], columns["composite"],
                                columns["target"]])

  def uncounted_flops(self, batch_size: int) -> float:
    """The attention's FLOPs when cuDNN runs it (XLA cannot count it).

    Per layer and image: scores N*N*d*2 and the value product N*N*Cv*2 with
    N positions; a step runs G's layer forward + backward (x3) and D's layer
    on 2B images forward + backward (x3) and on B images forward +
    input-backward (x2).
    """
    impl = attention.resolve_impl(self.config.model.attention_impl,
                                  self.dtype)
    if impl != "cudnn":
      return 0.0
    n = (self.image_size // 4) ** 2
    g = self.config.model.generator.width
    d = self.config.model.discriminator.width
    g_layer = 2 * n * n * (g + 8 * g)           # d = 4g/4 = g, Cv = 8g
    d_layer = 2 * n * n * (2 * d / 4 + 2 * d)   # d = 2d/4, Cv = 2d
    return batch_size * (3 * g_layer + 3 * 2 * d_layer + 2 * d_layer)
