"""The landmark task: 98 WFLW points on faces wearing face masks.

The network (`models/landmarks.FAN`, AdaptiveWing's stacked hourglass) sees
the *masked* face and is trained to put every point where it is on the face
underneath: the synthetic masks of the data layer hide a known face, so the
points under the mask have ground truth.

  host (`MakeExample`): the masked face, its mask and its landmarks, with
    scale / rotation / translation jitter (the points moved by the same
    affine map as the pixels) and colour jitter; the data layer has already
    flipped it (the points re-ordered by `wflw.FLIP_PERMUTATION`);
  device (`train_step`): the heatmap targets of `models.landmarks.targets`,
    the Adaptive Wing loss weighted W * M + 1 by the dilated-target map on
    every stack, one Adam or RMSProp step, the BatchNorm statistics.

Evaluation reports NME (normalised by the outer eye corners, points 60 and
72), the failure rate and the AUC at 0.1, for all points, for the points
under the face mask and for the visible ones, overall and per gender.
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxface import config_utils
from jaxface import losses
from jaxface import metrics
from jaxface import sharding
from jaxface import visualize
from jaxface.data import examples
from jaxface.data import schema
from jaxface.data import transforms
from jaxface.data import wflw
from jaxface.models import landmarks as fan
from jaxface.models import layers
from jaxface.train import optim
from jaxface.train import task as task_lib

OPTIMIZERS = ("adam", "rmsprop")
# The NME groups reported: every point, those under the face mask, the rest.
GROUPS = ("all", "masked", "visible")
# WFLW's failure threshold and AUC range.
FAILURE_THRESHOLD = 0.1


@dataclasses.dataclass(frozen=True)
class MakeExample:
  """The masked face, its mask and landmarks, jittered for training.

  Picklable (runs in grain workers); strengths from `config.augment`.
  """
  rotation: float = 0.0      # max degrees either way
  scale: float = 0.0         # zoom in [1 - scale, 1 + scale]
  translation: float = 0.0   # max shift, fraction of the side
  brightness: float = 0.0    # added, fraction of full scale
  contrast: float = 0.0      # factor in [1 - c, 1 + c] about the mean
  saturation: float = 0.0    # factor in [1 - s, 1 + s] about the grey
  unmasked: float = 0.0      # probability of the clean face, no mask

  def __call__(self, face: examples.Face, rng: np.random.Generator,
               augment: bool) -> dict[str, np.ndarray] | None:
    landmarks = np.asarray(face.landmarks, np.float32)
    if not np.all(np.isfinite(landmarks)):
      return None  # every point is supervised
    image, mask = face.masked_image, face.mask
    if augment:
      if rng.random() < self.unmasked:
        image, mask = face.image, np.zeros_like(face.mask)
      image, mask, landmarks = transforms.random_affine(
          image, mask, landmarks, rng, rotation=self.rotation,
          scale=(1 - self.scale, 1 + self.scale),
          translation=self.translation)
      image = transforms.colour_jitter(
          image, rng, brightness=self.brightness, contrast=self.contrast,
          saturation=self.saturation)
    return {schema.MASKED_IMAGE: image, schema.MASK: mask,
            schema.LANDMARKS: landmarks, schema.GENDER: face.gender}


KEYS = (schema.MASKED_IMAGE, schema.MASK, schema.LANDMARKS, schema.GENDER)


def _input_size(config: ml_collections.ConfigDict) -> int:
  # Absent from the config.json of runs started before the key existed.
  return config.model.get("input_size", 0)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the config key, on values only this task has."""
  check = config_utils.check
  m = config.model
  check(m.num_stacks >= 1, "model.num_stacks", m.num_stacks, ">= 1")
  check(m.depth >= 1, "model.depth", m.depth, ">= 1")
  check(m.width >= 8 and m.width % 8 == 0, "model.width", m.width,
        "a positive multiple of 8 (the stem's ConvBlocks have width / 2 "
        "channels, split 2:1:1)")
  check(m.stem_width >= 1, "model.stem_width", m.stem_width, ">= 1")
  input_size = _input_size(config)
  check(input_size >= 0, "model.input_size", input_size,
        ">= 0 (0: data.image_size)")
  multiple = 4 * 2 ** m.depth
  key = "model.input_size" if input_size else "data.image_size"
  size = input_size or config.data.image_size
  check(size % multiple == 0, key, size,
        f"a multiple of {multiple} (stride 4, then {m.depth} hourglass "
        "halvings)")
  a = config.augment
  for key in ("rotation", "scale", "translation", "brightness", "contrast",
              "saturation"):
    check(a[key] >= 0, f"augment.{key}", a[key], ">= 0")
  check(a.scale < 1, "augment.scale", a.scale, "< 1")
  check(0 <= a.unmasked <= 1, "augment.unmasked", a.unmasked, "in [0, 1]")
  lc = config.losses
  check(lc.weight >= 0, "losses.weight", lc.weight, ">= 0 (the paper's W)")
  for key in ("theta", "epsilon", "omega"):
    check(lc[key] > 0, f"losses.{key}", lc[key], "> 0")
  check(lc.alpha >= 2, "losses.alpha", lc.alpha,
        ">= 2 (the exponent alpha - target stays >= 1, so the gradient at "
        "zero error is finite)")
  check(0 <= lc.weight_threshold < 1, "losses.weight_threshold",
        lc.weight_threshold, "in [0, 1)")
  check(lc.boundary >= 0, "losses.boundary", lc.boundary, ">= 0")
  optim.validate(config.optim, OPTIMIZERS)


def points_in_mask(mask: jax.Array, points: jax.Array) -> jax.Array:
  """[B, K] bool: the point's (rounded) pixel lies on the face mask.

  Args:
    mask: [B, H, W, 1] (1 on the face mask).
    points: [B, K, 2] pixel (x, y); points outside the image count as
      visible.
  """
  _, h, w, _ = mask.shape
  x = jnp.round(points[..., 0]).astype(jnp.int32)
  y = jnp.round(points[..., 1]).astype(jnp.int32)
  inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
  flat = mask[..., 0].reshape(mask.shape[0], -1)
  index = jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)
  return inside & (jnp.take_along_axis(flat, index, axis=1) > 0.5)


def nme_groups(pred: np.ndarray, target: np.ndarray,
               masked: np.ndarray) -> dict[str, np.ndarray]:
  """Per-face NME of all, masked and visible points (NaN: no such point)."""
  norm = wflw.inter_ocular(target)
  return {
      "nme": metrics.landmark_nme(pred, target, norm),
      "nme_masked": metrics.landmark_nme(pred, target, norm, masked),
      "nme_visible": metrics.landmark_nme(pred, target, norm, ~masked),
  }


def summarize_nme(per_example: Mapping[str, np.ndarray],
                  genders: np.ndarray | None = None) -> dict[str, float]:
  """NME (mean), failure rate and AUC at 0.1 of each `nme*` entry.

  Overall and per gender; faces whose value is NaN (no point in the group)
  are left out of that group's figures; `count` says how many faces each
  figure saw.
  """
  out = {}
  subsets = {"": slice(None)}
  if genders is not None:
    genders = np.asarray(genders)
    subsets.update({f"/{name}": genders == code
                    for name, code in schema.GENDERS.items()
                    if np.any(genders == code)})
  for key, values in per_example.items():
    if not key.startswith("nme"):
      continue
    group = key[len("nme"):]  # "", "_masked", "_visible"
    for suffix, sel in subsets.items():
      v = np.asarray(values, np.float64)[sel]
      finite = v[np.isfinite(v)]
      out[f"nme{group}{suffix}"] = (float(np.mean(finite)) if finite.size
                                    else float("nan"))
      out[f"fr{group}{suffix}"] = metrics.failure_rate(v, FAILURE_THRESHOLD)
      out[f"auc{group}{suffix}"] = metrics.ced_auc(v, FAILURE_THRESHOLD)
      out[f"count{group}{suffix}"] = float(finite.size)
  return out


@dataclasses.dataclass
class TeacherBaseline:
  """Scores a landmark teacher on the masked faces, like `eval_step`.

  The teacher (e.g. MediaPipe's face mesh) sees the masked image; the
  targets are the batch's landmarks (for a prepared dataset, the same
  teacher's on the unmasked photo). `found` is False where it saw no face.
  """
  teacher: Any

  def __call__(self, batch: Mapping[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    images = np.asarray(batch[schema.MASKED_IMAGE])
    pred = np.full(np.shape(batch[schema.LANDMARKS]), np.nan, np.float32)
    for i, image in enumerate(images):
      result = self.teacher(image)
      if result is not None:
        pred[i] = result.landmarks
    mask = schema.to_float({schema.MASK: np.asarray(batch[schema.MASK])})
    landmarks = np.asarray(batch[schema.LANDMARKS], np.float32)
    return {"pred": pred, "target": landmarks,
            "masked": np.asarray(points_in_mask(mask[schema.MASK],
                                                landmarks)),
            "gender": np.asarray(batch[schema.GENDER]),
            "found": np.all(np.isfinite(pred), axis=(1, 2))}


class LandmarksTask(task_lib.Task):
  """Trains `FAN` on masked faces; see the module docstring."""

  console_metrics = {"loss": "loss", "nme": "nme"}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    validate_config(config)
    m = config.model
    self.model = fan.FAN(num_stacks=m.num_stacks, num_landmarks=
                         wflw.NUM_LANDMARKS, width=m.width, depth=m.depth,
                         stem_width=m.stem_width, dtype=self.dtype)
    self.tx = optim.make(config.optim, config.train.num_steps)
    # The network's input side; batches of another size (data.image_size)
    # are resized on the device and the points mapped back.
    self.image_size = _input_size(config) or config.data.image_size
    self.heatmap_size = fan.heatmap_size(self.image_size)
    a = config.augment
    self.examples = examples.ExampleSpec(keys=KEYS, make=MakeExample(
        rotation=a.rotation, scale=a.scale, translation=a.translation,
        brightness=a.brightness, contrast=a.contrast,
        saturation=a.saturation, unmasked=a.unmasked))

  def to_network(self, image: jax.Array) -> jax.Array:
    """Images [B, S, S, 3] at the network's input size (antialiased)."""
    return layers.resize_square(image, self.image_size)

  def _scale(self, points: jax.Array, src: int, dst: int) -> jax.Array:
    """Pixel points of a `src`-sized image in a `dst`-sized one."""
    return points if src == dst else (points + 0.5) * (dst / src) - 0.5

  # ---------------------------------------------------------------- state
  def init_state(self, rng: jax.Array) -> task_lib.TrainState:
    s = self.image_size
    variables = self.model.init(rng, jnp.zeros((1, s, s, 3), jnp.float32))
    params = variables.pop("params")
    return task_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=self.tx.init(params),
                               model_state=variables)

  # --------------------------------------------------------------- losses
  def loss(self, outputs: list[jax.Array], target: jax.Array
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted Adaptive Wing loss summed over the stacks.

    Args:
      outputs: per stack [B, h, w, K + 1] heatmaps.
      target: [B, h, w, K + 1] (`fan.targets`).

    Returns:
      (loss, {"loss/stack{i}": value}).
    """
    lc = self.config.losses
    weight = lc.weight * losses.heatmap_weight_map(
        target, lc.weight_threshold) + 1.0
    # The boundary channel's share of the loss (1: as a landmark channel).
    channel = jnp.ones((target.shape[-1],)).at[-1].set(lc.boundary)
    terms = {}
    for i, out in enumerate(outputs):
      per_pixel = losses.adaptive_wing(
          out, target, alpha=lc.alpha, omega=lc.omega, epsilon=lc.epsilon,
          theta=lc.theta)
      terms[f"loss/stack{i}"] = jnp.mean(per_pixel * weight * channel)
    return sum(terms.values()), terms

  # ---------------------------------------------------------------- train
  def train_step(self, state: task_lib.TrainState, batch, consts,
                 rng: jax.Array):
    del consts, rng  # augmentation happens on the host
    batch = schema.to_float(batch)
    image = self.to_network(batch[schema.MASKED_IMAGE])
    landmarks = self._scale(batch[schema.LANDMARKS],
                            batch[schema.MASKED_IMAGE].shape[1],
                            self.image_size)
    target = fan.targets(landmarks, self.image_size, self.heatmap_size)
    params = sharding.gathered(state.params)

    def loss_fn(params):
      outputs, updates = self.model.apply(
          {"params": params, **state.model_state}, image, train=True,
          mutable=["batch_stats"])
      loss, terms = self.loss(outputs, target)
      return loss, (terms, updates, outputs[-1])

    (loss, (terms, model_state, last)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    grads = sharding.gathered(grads)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    pred = fan.decode_argmax(last[..., :-1], self.image_size)
    err = jnp.linalg.norm(pred - landmarks, axis=-1).mean(-1)
    io = jnp.linalg.norm(landmarks[:, wflw.LEFT_EYE_OUTER]
                         - landmarks[:, wflw.RIGHT_EYE_OUTER], axis=-1)
    out = {"loss": loss, "grad_norm": grad_norm,
           "nme": jnp.mean(err / jnp.maximum(io, 1e-6)), **terms}
    out["finite"] = task_lib.all_finite(loss, grad_norm, new_params)
    new_state = state.replace(step=state.step + 1, params=new_params,
                              opt_state=opt_state, model_state=model_state)
    return new_state, out

  # ----------------------------------------------------------------- eval
  def heatmaps(self, state: task_lib.TrainState,
               image: jax.Array) -> jax.Array:
    """The last stack's heatmaps [B, h, w, K + 1] of images [B, S, S, 3]."""
    return self.model.apply({"params": state.params, **state.model_state},
                            image, train=False)[-1]

  def predict(self, state: task_lib.TrainState,
              image: jax.Array) -> jax.Array:
    """[B, K, 2] pixel points of masked faces [B, S, S, 3], any size S."""
    points = fan.decode_argmax(
        self.heatmaps(state, self.to_network(image))[..., :-1],
        self.image_size)
    return self._scale(points, self.image_size, image.shape[1])

  def eval_step(self, state: task_lib.TrainState, batch, consts):
    """Predicted and true points, which are masked, and the gender."""
    del consts
    batch = schema.to_float(batch)
    landmarks = batch[schema.LANDMARKS]
    return {"pred": self.predict(state, batch[schema.MASKED_IMAGE]),
            "target": landmarks,
            "masked": points_in_mask(batch[schema.MASK], landmarks),
            "gender": batch[schema.GENDER]}

  def summarize_eval(self, per_example: Mapping[str, np.ndarray]
                     ) -> dict[str, float]:
    """NME / FR / AUC at 0.1 of all, masked and visible points per gender."""
    groups = nme_groups(per_example["pred"], per_example["target"],
                        np.asarray(per_example["masked"], bool))
    return summarize_nme(groups, per_example.get("gender"))

  def baseline(self, spec: str) -> TeacherBaseline:
    """A landmark teacher ('mediapipe:/path/to/wheel') on the masked faces."""
    from jaxface.data import teachers  # pylint: disable=import-outside-toplevel
    return TeacherBaseline(teachers.make_landmark_teacher(spec))

  # -------------------------------------------------------------- samples
  def sample(self, state: task_lib.TrainState, batch, consts):
    del consts
    batch = schema.to_float(batch)
    image = batch[schema.MASKED_IMAGE]
    hm = self.heatmaps(state, self.to_network(image))
    landmarks = batch[schema.LANDMARKS]
    pred = fan.decode_argmax(hm[..., :-1], self.image_size)
    return {"image": image,
            "pred": self._scale(pred, self.image_size, image.shape[1]),
            "target": landmarks,
            "masked": points_in_mask(batch[schema.MASK], landmarks),
            "heatmap": jnp.max(jnp.clip(hm[..., :-1], 0, 1), -1,
                               keepdims=True),
            "boundary": jnp.clip(hm[..., -1:], 0, 1)}

  def sample_grid(self, columns, batch):
    """masked face | true (green; blue under the mask) and predicted (red)
    points | the predicted heatmaps | the predicted boundary.

    Small images are enlarged (to at least 192 px) so that 98 dots stay
    apart.
    """
    del batch
    image = np.asarray(columns["image"])
    zoom = max(1, -(-192 // image.shape[1]))
    size = image.shape[1] * zoom

    def up(maps):  # nearest-neighbour to the grid's size
      rows = np.arange(size) * maps.shape[1] // size
      cols = np.arange(size) * maps.shape[2] // size
      return maps[:, rows][:, :, cols]

    def place(points):  # pixel points of the enlarged image
      return (np.asarray(points, np.float64) + 0.5) * zoom - 0.5

    image = up(image)
    target, pred = place(columns["target"]), place(columns["pred"])
    masked = np.asarray(columns["masked"], bool)[..., None]
    drawn = visualize.draw_points(image, np.where(masked, np.nan, target),
                                  color=(0.0, 1.0, 0.0))
    drawn = visualize.draw_points(drawn, np.where(masked, target, np.nan),
                                  color=(0.2, 0.4, 1.0))
    drawn = visualize.draw_points(drawn, pred, radius=0,
                                  color=(1.0, 0.0, 0.0))
    return visualize.make_grid([image, drawn, up(columns["heatmap"]),
                                up(columns["boundary"])])
