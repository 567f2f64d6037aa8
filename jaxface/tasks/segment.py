"""The segmentation task: the binary map M of the face mask.

Two networks, chosen by `config.model.name`:

  "maskrcnn": Mask R-CNN, ResNet-50-FPN (`models/segment.MaskRCNN`), the
    paper's choice: detects face masks (and faces) as instances; M is the
    union of the face-mask instances above a score, optionally dilated;
  "unet": a light U-Net (`models/segment.UNet`) predicting M in one pass.

The synthetic masks of the data layer give exact maps, and boxes for free:

  host (`MakeExample`): the masked face (sometimes the clean one: no mask,
    an empty map), its mask, and the face box from the landmarks
    (`face_box`, this task's own key: float32 [4], `jaxface.boxes`
    coordinates) and the boxes of the face masks (`mask_boxes`, [K, 4],
    one per connected part of the map: a labelled photo may show several
    people); scale / rotation / translation jitter (zooming out gives
    small faces) and colour jitter; the data layer has flipped it;
  device (`scenes`): with probability `augment.mosaic` an example becomes a
    2x2 mosaic of four faces of the batch at half size, so the detector
    sees several people per photo; the boxes follow their tiles,
    `MAX_OBJECTS` slots in all.

Evaluation: IoU, Dice and boundary F-score of M, and the share of
face-mask pixels M leaves uncovered (the paper's failure mode: mask left
on the face), overall, per gender and per mask style; for Mask R-CNN also
box AP@0.5 and mask AP@[.5:.95] (COCO-style, `metrics.average_precision`).
"""

import dataclasses
from typing import Mapping

from absl import logging
import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxface import boxes as box_ops
from jaxface import config_utils
from jaxface import metrics
from jaxface import sharding
from jaxface import visualize
from jaxface.data import examples
from jaxface.data import schema
from jaxface.data import transforms
from jaxface.models import segment as seg
from jaxface.train import optim
from jaxface.train import task as task_lib

MODELS = ("maskrcnn", "unet")
NORMS = seg.NORMS
# This task's own batch keys: the face's box, float32 [B, 4], and the face
# masks' boxes, float32 [B, MASKS_PER_FACE, 4], one per connected part of
# the map (NaN: none, or unknown).
FACE_BOX = "face_box"
MASK_BOXES = "mask_boxes"
KEYS = (schema.MASKED_IMAGE, schema.MASK, schema.GENDER, schema.MASK_STYLE,
        FACE_BOX, MASK_BOXES)
# Face masks per example (a labelled photo may show several people).
MASKS_PER_FACE = 3
# Ground-truth slots per scene: the face masks and a face on each of 4
# mosaic tiles.
MAX_OBJECTS = 4 * (MASKS_PER_FACE + 1)
# Boxes smaller than this many pixels of area are no objects.
MIN_BOX_AREA = 4.0
# The forehead above the eyebrows, a share of the landmarks' height.
FOREHEAD = 0.25


def face_box(landmarks: np.ndarray) -> np.ndarray:
  """float32 [4] box of a face: the landmarks' extent and the forehead.

  Landmarks are integer-centred; boxes are continuous (`jaxface.boxes`):
  the extent of the points' pixels, raised by `FOREHEAD` of its height.
  NaN when a point is unknown.
  """
  if not np.all(np.isfinite(landmarks)):
    return np.full((4,), np.nan, np.float32)
  lo = np.min(landmarks, axis=0)
  hi = np.max(landmarks, axis=0) + 1.0
  top = lo[1] - FOREHEAD * (hi[1] - lo[1])
  return np.array([lo[0], top, hi[0], hi[1]], np.float32)


def mask_boxes(mask: np.ndarray, count: int = MASKS_PER_FACE,
               join: int = 3) -> np.ndarray:
  """float32 [count, 4]: the boxes of a map's face masks, largest first.

  One per connected part of the map (parts closer than `join` pixels are
  one mask: straps, or a mask split by the renderer's shading), each the
  extent of its pixels (`jaxface.boxes` coordinates); parts smaller than 2 %
  of the largest are noise. NaN rows where there are fewer masks.
  """
  m = np.asarray(mask).reshape(mask.shape[0], mask.shape[1]) > 0
  out = np.full((count, 4), np.nan, np.float32)
  if not m.any():
    return out
  kernel = np.ones((2 * join + 1, 2 * join + 1), np.uint8)
  joined = cv2.dilate(m.astype(np.uint8), kernel)
  n, labels = cv2.connectedComponents(joined, connectivity=8)
  parts = []
  for label in range(1, n):
    ys, xs = np.nonzero(m & (labels == label))
    if len(ys):
      parts.append((len(ys), [xs.min(), ys.min(), xs.max() + 1,
                              ys.max() + 1]))
  parts.sort(key=lambda p: -p[0])
  parts = [p for p in parts if p[0] >= max(MIN_BOX_AREA,
                                           0.02 * parts[0][0])]
  for i, (_, box) in enumerate(parts[:count]):
    out[i] = box
  return out


@dataclasses.dataclass(frozen=True)
class MakeExample:
  """The masked face, its map and face box, jittered for training.

  Picklable (runs in grain workers); strengths from `config.augment`.
  """
  rotation: float = 0.0
  scale_min: float = 1.0
  scale_max: float = 1.0
  translation: float = 0.0
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  unmasked: float = 0.0
  grey: float = 0.0
  occlusion: float = 0.0

  def __call__(self, face: examples.Face, rng: np.random.Generator,
               augment: bool) -> dict[str, np.ndarray] | None:
    # Without every landmark (photos with their own, labelled masks) the
    # face box is NaN: the scene then has no face object.
    landmarks = np.asarray(face.landmarks, np.float32)
    image, mask = face.masked_image, face.mask
    if augment:
      # A photo with its own, real mask has no clean face to show instead.
      has_clean = not np.array_equal(face.image, face.masked_image)
      if rng.random() < self.unmasked and has_clean:
        image, mask = face.image, np.zeros_like(face.mask)
      if self.occlusion and rng.random() < self.occlusion:
        image, mask = transforms.occlude(image, mask, rng)
      # Zoomed-out faces sit on a plain colour: nothing of the photo is
      # smeared or mirrored into view without its part of the map.
      fill = tuple(rng.integers(0, 256, 3))
      image, mask, landmarks = transforms.random_affine(
          image, mask, landmarks, rng, rotation=self.rotation,
          scale=(self.scale_min, self.scale_max),
          translation=self.translation, fill=fill)
      image = transforms.colour_jitter(
          image, rng, brightness=self.brightness, contrast=self.contrast,
          saturation=self.saturation)
      image = transforms.random_grey(image, rng, self.grey)
    return {schema.MASKED_IMAGE: image, schema.MASK: mask,
            schema.GENDER: face.gender, schema.MASK_STYLE: face.mask_style,
            FACE_BOX: face_box(landmarks), MASK_BOXES: mask_boxes(mask)}


# ------------------------------------------------------------------ scenes
def _objects(mask_boxes, face_boxes, scale=1.0, offset=(0.0, 0.0),
             window=None):
  """Boxes [B, K + 1, 4] (K face masks, then the face) and valid [B, K + 1].

  The boxes of single faces, scaled by `scale` and shifted by `offset`
  (a mosaic tile), clipped to `window` (x1, y1, x2, y2: the tile, or the
  image); NaN boxes (padding, unknown faces) and boxes smaller than
  `MIN_BOX_AREA` are invalid (and zero).
  """
  boxes = jnp.concatenate([mask_boxes, face_boxes[:, None]], 1)
  off = jnp.asarray([offset[0], offset[1], offset[0], offset[1]])
  boxes = boxes * scale + off
  lo = jnp.asarray(window[:2] * 2)
  hi = jnp.asarray(window[2:] * 2)
  boxes = jnp.clip(boxes, lo, hi)
  valid = jnp.all(jnp.isfinite(boxes), -1) & (
      box_ops.area(boxes) >= MIN_BOX_AREA)
  return jnp.where(valid[..., None], boxes, 0.0), valid


def scenes(image: jax.Array, mask: jax.Array, mask_boxes: jax.Array,
           face_boxes: jax.Array, mosaic: jax.Array) -> dict[str, jax.Array]:
  """Training scenes of a batch: single faces or 2x2 mosaics of four.

  Args:
    image: [B, S, S, 3] in [0, 1]; S even.
    mask: [B, S, S, 1].
    mask_boxes: [B, K, 4] the face masks' boxes (NaN: none).
    face_boxes: [B, 4] (NaN: unknown).
    mosaic: [B] bool, which examples become mosaics (of examples i, i + 1,
      i + 2, i + 3 of the batch, cyclically, each at half size).

  Returns:
    {image [B, S, S, 3], map [B, S, S], boxes [B, MAX_OBJECTS, 4],
    classes [B, MAX_OBJECTS] int32, valid [B, MAX_OBJECTS]}.
  """
  b, s = image.shape[:2]
  h = s // 2
  k = mask_boxes.shape[1] + 1
  maps = mask[..., 0]
  classes = jnp.tile(jnp.asarray([seg.FACE_MASK] * (k - 1) + [seg.FACE],
                                 jnp.int32), 4)
  single_boxes, single_valid = _objects(mask_boxes, face_boxes,
                                        window=(0, 0, s, s))
  single_boxes = jnp.pad(single_boxes, ((0, 0), (0, 3 * k), (0, 0)))
  single_valid = jnp.pad(single_valid, ((0, 0), (0, 3 * k)))
  small_img = image.reshape(b, h, 2, h, 2, 3).mean((2, 4))
  small_map = (maps.reshape(b, h, 2, h, 2).mean((2, 4)) >= 0.5).astype(
      maps.dtype)
  tiles_img, tiles_map, tile_boxes, tile_valid = [], [], [], []
  for t in range(4):
    oy, ox = (t // 2) * h, (t % 2) * h
    tiles_img.append(jnp.roll(small_img, -t, axis=0))
    tiles_map.append(jnp.roll(small_map, -t, axis=0))
    bx, v = _objects(jnp.roll(mask_boxes, -t, axis=0),
                     jnp.roll(face_boxes, -t, axis=0), 0.5, (ox, oy),
                     (ox, oy, ox + h, oy + h))
    tile_boxes.append(bx)
    tile_valid.append(v)
  mosaic_img = jnp.concatenate([jnp.concatenate(tiles_img[:2], 2),
                                jnp.concatenate(tiles_img[2:], 2)], 1)
  mosaic_map = jnp.concatenate([jnp.concatenate(tiles_map[:2], 2),
                                jnp.concatenate(tiles_map[2:], 2)], 1)
  pick = lambda a, c: jnp.where(
      mosaic.reshape((b,) + (1,) * (a.ndim - 1)), a, c)
  return {"image": pick(mosaic_img, image), "map": pick(mosaic_map, maps),
          "boxes": pick(jnp.concatenate(tile_boxes, 1), single_boxes),
          "classes": jnp.broadcast_to(classes, (b, 4 * k)),
          "valid": pick(jnp.concatenate(tile_valid, 1), single_valid)}


def instances(maps: jax.Array, boxes: jax.Array) -> jax.Array:
  """[B, G, H, W] instance masks: each box's part of the map [B, H, W]."""
  h, w = maps.shape[1:]
  ys = jnp.arange(h, dtype=jnp.float32) + 0.5
  xs = jnp.arange(w, dtype=jnp.float32) + 0.5
  in_y = (ys >= boxes[..., 1:2]) & (ys < boxes[..., 3:4])      # [B, G, H]
  in_x = (xs >= boxes[..., 0:1]) & (xs < boxes[..., 2:3])      # [B, G, W]
  return (in_y[..., :, None] & in_x[..., None, :]) & (maps[:, None] > 0.5)


# ----------------------------------------------------------------- config
def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the config key, on values only this task has."""
  check = config_utils.check
  m = config.model
  check(m.name in MODELS, "model.name", m.name, " | ".join(MODELS))
  size = config.data.image_size
  check(size % 32 == 0, "data.image_size", size,
        "a multiple of 32 (the backbone's stride; the mosaic halves it)")
  if m.name == "maskrcnn":
    check(m.norm in NORMS, "model.norm", m.norm, " | ".join(NORMS))
    check(len(m.stage_sizes) == 4 and all(n >= 1 for n in m.stage_sizes),
          "model.stage_sizes", m.stage_sizes, "four stages of >= 1 blocks")
    for key in ("width", "fpn_channels", "representation", "mask_channels",
                "pre_nms_train", "post_nms_train", "pre_nms_test",
                "post_nms_test", "max_detections", "rpn_samples",
                "roi_samples"):
      check(m[key] >= 1, f"model.{key}", m[key], ">= 1")
    check(m.fpn_channels % 32 == 0 or m.norm != "group", "model.fpn_channels",
          m.fpn_channels, "a multiple of 32")
    check(0 <= m.freeze_at <= 5, "model.freeze_at", m.freeze_at, "in [0, 5]")
    check(not m.get("init_from") or m.norm == "frozen", "model.norm",
          m.norm, "frozen when model.init_from is set (the COCO "
          "backbone's BatchNorms are fixed statistics)")
    for key in ("rpn_positive", "roi_positive", "rpn_nms", "box_nms",
                "box_score", "score_threshold"):
      check(0 <= m[key] <= 1, f"model.{key}", m[key], "in [0, 1]")
  else:
    check(not m.get("init_from"), "model.init_from", m.get("init_from"),
          "empty for the U-Net (the importer is Mask R-CNN's)")
    check(len(m.unet_widths) >= 2 and all(w >= 8 for w in m.unet_widths),
          "model.unet_widths", m.unet_widths, "two or more levels, >= 8 each")
    check(size % 2 ** (len(m.unet_widths) - 1) == 0, "data.image_size", size,
          f"divisible by 2 ** {len(m.unet_widths) - 1} (the U-Net's levels)")
  check(m.dilation >= 0, "model.dilation", m.dilation, ">= 0 pixels")
  a = config.augment
  for key in ("rotation", "translation", "brightness", "contrast",
              "saturation"):
    check(a[key] >= 0, f"augment.{key}", a[key], ">= 0")
  check(0 < a.scale_min <= a.scale_max, "augment.scale_min", a.scale_min,
        f"in (0, augment.scale_max={a.scale_max}]")
  for key in ("unmasked", "mosaic", "grey", "occlusion"):
    check(0 <= a.get(key, 0.0) <= 1, f"augment.{key}", a.get(key),
          "in [0, 1]")
  check(config.losses.dice >= 0, "losses.dice", config.losses.dice, ">= 0")
  optim.validate(config.optim)


def make_model(config: ml_collections.ConfigDict,
               dtype) -> "seg.MaskRCNN | seg.UNet":
  """The network of `config.model` (`MaskRCNN` or `UNet`)."""
  m = config.model
  if m.name == "unet":
    return seg.UNet(widths=tuple(m.unet_widths), dtype=dtype)
  return seg.MaskRCNN(
      stage_sizes=tuple(m.stage_sizes), width=m.width,
      fpn_channels=m.fpn_channels, norm=m.norm, epsilon=m.epsilon,
      freeze_at=m.freeze_at, representation=m.representation,
      mask_channels=m.mask_channels, pre_nms_train=m.pre_nms_train,
      post_nms_train=m.post_nms_train, pre_nms_test=m.pre_nms_test,
      post_nms_test=m.post_nms_test, rpn_nms=m.rpn_nms,
      box_score=m.box_score, box_nms=m.box_nms,
      max_detections=m.max_detections, rpn_samples=m.rpn_samples,
      rpn_positive=m.rpn_positive, roi_samples=m.roi_samples,
      roi_positive=m.roi_positive, roi_aligned=m.get("roi_aligned", False),
      dtype=dtype)


# ------------------------------------------------------------------- task
class SegmentTask(task_lib.Task):
  """Trains Mask R-CNN or the U-Net on face-mask maps; see the docstring."""

  console_metrics = {"loss": "loss", "iou": "iou"}

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    validate_config(config)
    self.model = make_model(config, self.dtype)
    self.is_rcnn = config.model.name == "maskrcnn"
    self.console_metrics = ({"loss": "loss", "mask": "loss/mask"}
                            if self.is_rcnn else {"loss": "loss", "iou": "iou"})
    self.tx = optim.make(config.optim, config.train.num_steps)
    a = config.augment
    self.examples = examples.ExampleSpec(keys=KEYS, make=MakeExample(
        rotation=a.rotation, scale_min=a.scale_min, scale_max=a.scale_max,
        translation=a.translation, brightness=a.brightness,
        contrast=a.contrast, saturation=a.saturation, unmasked=a.unmasked,
        # Configs saved before these two existed lack them.
        grey=a.get("grey", 0.0), occlusion=a.get("occlusion", 0.0)))

  # ---------------------------------------------------------------- state
  def init_state(self, rng: jax.Array) -> task_lib.TrainState:
    s = self.config.data.image_size
    dummy = jnp.zeros((1, s, s, 3), jnp.float32)
    if self.is_rcnn:
      # Initialise through the backbone and heads only: inference's NMS
      # loops would be traced for nothing.
      variables = self.model.init(rng, dummy, method=seg.MaskRCNN.init_all)
    else:
      variables = self.model.init(rng, dummy)
    variables = dict(variables)
    params = variables.pop("params")
    return task_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=self.tx.init(params),
                               model_state=variables)

  def pretrained(self, state: task_lib.TrainState) -> task_lib.TrainState:
    """The weights of `model.init_from` (torchvision COCO `.pth`, or the
    `.npz` of `jaxface.weights.segment`), class-specific layers aside."""
    path = self.config.model.get("init_from", "")
    if not path:
      return state
    from jaxface.weights import segment as seg_weights  # pylint: disable=g-import-not-at-top
    template = jax.device_get({"params": state.params, **state.model_state})
    variables = seg_weights.load(path, template)
    logging.info("Mask R-CNN weights loaded from %s", path)
    return state.replace(
        params=variables["params"],
        model_state={**state.model_state,
                     "batch_stats": variables["batch_stats"]})

  def _variables(self, state, params=None):
    return {"params": state.params if params is None else params,
            **state.model_state}

  # --------------------------------------------------------------- losses
  def losses(self, params, model_state, batch, rng: jax.Array):
    """The loss terms of a float batch's scenes.

    Returns:
      ({"loss/<term>": scalar}, updated model state collections, the
      U-Net's logits (None for Mask R-CNN) and the scenes).
    """
    rng_mosaic, rng_model = jax.random.split(rng)
    b = batch[schema.MASKED_IMAGE].shape[0]
    mosaic = jax.random.uniform(rng_mosaic, (b,)) < self.config.augment.mosaic
    sc = scenes(batch[schema.MASKED_IMAGE], batch[schema.MASK],
                batch[MASK_BOXES], batch[FACE_BOX], mosaic)
    variables = {"params": params, **model_state}
    if self.is_rcnn:
      mutable = (["batch_stats"] if self.config.model.norm == "batch"
                 else [])
      terms, updates = self.model.apply(
          variables, sc["image"], sc["boxes"], sc["classes"], sc["valid"],
          sc["map"], rng_model, method=seg.MaskRCNN.losses, mutable=mutable)
      return ({f"loss/{k}": v for k, v in terms.items()}, updates, None, sc)
    logits = self.model.apply(variables, sc["image"])
    target = sc["map"][..., None]
    terms = {"loss/bce": jnp.mean(seg.bce_with_logits(logits, target)),
             "loss/dice": self.config.losses.dice * jnp.mean(
                 seg.dice_loss(logits, target))}
    return terms, {}, logits, sc

  # ---------------------------------------------------------------- train
  def train_step(self, state: task_lib.TrainState, batch, consts,
                 rng: jax.Array):
    del consts
    batch = schema.to_float(batch)
    params = sharding.gathered(state.params)

    def loss_fn(params):
      terms, updates, logits, sc = self.losses(params, state.model_state,
                                               batch, rng)
      return sum(terms.values()), (terms, updates, logits, sc)

    (loss, (terms, updates, logits, sc)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    grads = sharding.gathered(grads)
    opt_updates, opt_state = self.tx.update(grads, state.opt_state,
                                            state.params)
    new_params = optax.apply_updates(state.params, opt_updates)
    grad_norm = optax.tree.norm(grads)
    out = {"loss": loss, "grad_norm": grad_norm, **terms}
    if logits is not None:  # (Mask R-CNN runs no detection in training)
      out["iou"] = jnp.mean(metrics.mask_iou(
          (logits > 0).astype(jnp.float32), sc["map"]))
    out["finite"] = task_lib.all_finite(loss, grad_norm, new_params)
    model_state = {**state.model_state, **updates}
    new_state = state.replace(step=state.step + 1, params=new_params,
                              opt_state=opt_state, model_state=model_state)
    return new_state, out

  # ----------------------------------------------------------------- eval
  def predict(self, state: task_lib.TrainState, image: jax.Array
              ) -> dict[str, jax.Array]:
    """The map M of images [B, S, S, 3] in [0, 1]: {"map", "prob"} [B, S,
    S, 1] (and the detections, for Mask R-CNN)."""
    m = self.config.model
    s = image.shape[1]
    if self.is_rcnn:
      det = self.model.apply(self._variables(state), image)
      prob = jnp.max(
          seg.paste_masks_batch(det, s, s, seg.FACE_MASK,
                                m.score_threshold), axis=1)[..., None]
      binary = seg.binary_map(det, s, s, score_threshold=m.score_threshold,
                              dilation=m.dilation)
      return {"map": binary, "prob": prob, "detections": det}
    prob = jax.nn.sigmoid(self.model.apply(self._variables(state), image))
    binary = seg.dilate((prob >= 0.5).astype(jnp.float32), m.dilation)
    return {"map": binary, "prob": prob}

  def eval_step(self, state: task_lib.TrainState, batch, consts):
    """Per-face map metrics; for Mask R-CNN the IoUs that AP needs."""
    del consts
    batch = schema.to_float(batch)
    image, target = batch[schema.MASKED_IMAGE], batch[schema.MASK]
    pred = self.predict(state, image)
    out = {"iou": metrics.mask_iou(pred["map"], target),
           "dice": metrics.dice(pred["map"], target),
           "boundary_f": metrics.boundary_f(pred["map"], target),
           "mask_pixels": jnp.sum(target > 0.5, axis=(1, 2, 3)),
           "missed_pixels": jnp.sum((target > 0.5) & (pred["map"] < 0.5),
                                    axis=(1, 2, 3)),
           "gender": batch[schema.GENDER],
           "mask_style": batch[schema.MASK_STYLE]}
    if self.is_rcnn:
      out.update(detection_overlaps(pred["detections"], target[..., 0],
                                    batch[MASK_BOXES], batch[FACE_BOX]))
    return out

  def summarize_eval(self, per_example: Mapping[str, np.ndarray]
                     ) -> dict[str, float]:
    """Map metrics overall, per gender and per style; AP for Mask R-CNN."""
    return summarize(per_example)

  # -------------------------------------------------------------- samples
  def sample(self, state: task_lib.TrainState, batch, consts):
    del consts
    batch = schema.to_float(batch)
    image = batch[schema.MASKED_IMAGE]
    pred = self.predict(state, image)
    out = {"image": image, "target": batch[schema.MASK],
           "map": pred["map"], "prob": pred["prob"]}
    if self.is_rcnn:
      det = pred["detections"]
      out.update(boxes=det["boxes"], box_valid=det["valid"] & (
          det["scores"] >= self.config.model.score_threshold),
                 box_classes=det["classes"])
    return out

  def sample_grid(self, columns, batch):
    """masked face | true map (green) | predicted map (red; face-mask
    boxes yellow, face boxes cyan) | predicted probability."""
    del batch
    image = np.asarray(columns["image"])
    truth = visualize.overlay(image, columns["target"], (0.0, 1.0, 0.0))
    pred = visualize.overlay(image, columns["map"], (1.0, 0.0, 0.0))
    if "boxes" in columns:
      valid = np.asarray(columns["box_valid"], bool)
      classes = np.asarray(columns["box_classes"])
      pred = visualize.draw_boxes(pred, columns["boxes"],
                                  valid & (classes == seg.FACE_MASK),
                                  (1.0, 1.0, 0.0))
      pred = visualize.draw_boxes(pred, columns["boxes"],
                                  valid & (classes == seg.FACE),
                                  (0.0, 1.0, 1.0))
    return visualize.make_grid([image, truth, pred, columns["prob"]])


def detection_overlaps(det: Mapping[str, jax.Array], maps: jax.Array,
                       mask_boxes: jax.Array, face_boxes: jax.Array
                       ) -> dict[str, jax.Array]:
  """What `average_precision` needs of a batch of (unmosaicked) examples.

  Ground truth per image: the face masks (their boxes, and the map inside
  each) and the face (its box; no mask). Returns [B, D] scores, classes
  and valid, [B, G] ground-truth classes and valid, and [B, D, G] box and
  mask IoUs.
  """
  s = maps.shape[1]
  gt_boxes, gt_valid = _objects(mask_boxes, face_boxes, window=(0, 0, s, s))
  k = mask_boxes.shape[1]
  gt_classes = jnp.broadcast_to(
      jnp.asarray([seg.FACE_MASK] * k + [seg.FACE]), gt_valid.shape)
  box_iou = jax.vmap(box_ops.iou)(det["boxes"], gt_boxes)
  pasted = jax.vmap(lambda d: seg.paste_masks(d["masks"], d["boxes"], s, s))(
      det) >= 0.5                                           # [B, D, S, S]
  inst = instances(maps, gt_boxes)                          # [B, G, S, S]
  inter = jnp.einsum("bdhw,bghw->bdg", pasted.astype(jnp.float32),
                     inst.astype(jnp.float32))
  union = (pasted.sum((2, 3))[:, :, None] + inst.sum((2, 3))[:, None, :]
           - inter)
  mask_iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0)
  return {"det_scores": det["scores"], "det_classes": det["classes"],
          "det_valid": det["valid"], "gt_classes": gt_classes,
          "gt_valid": gt_valid, "box_iou": box_iou, "mask_iou": mask_iou}


def _ap(per_example, cls, key, thresholds):
  scores, overlaps = [], []
  for i in range(len(per_example["det_scores"])):
    d = np.asarray(per_example["det_valid"][i], bool) & (
        np.asarray(per_example["det_classes"][i]) == cls)
    g = np.asarray(per_example["gt_valid"][i], bool) & (
        np.asarray(per_example["gt_classes"][i]) == cls)
    scores.append(np.asarray(per_example["det_scores"][i])[d])
    overlaps.append(np.asarray(per_example[key][i])[d][:, g])
  return float(np.mean([metrics.average_precision(scores, overlaps, t)
                        for t in thresholds]))


def summarize(per_example: Mapping[str, np.ndarray]) -> dict[str, float]:
  """The evaluation's scalars (see the module docstring).

  `iou`, `dice`, `boundary_f`: means over faces; `uncovered`: the share of
  all face-mask pixels outside M (pixel-weighted); each also `/female`,
  `/male` and `/style/<mask style>`; for Mask R-CNN `box_ap50/face_mask`,
  `box_ap50/face`, `mask_ap/face_mask` (AP@[.5:.95]) and `mask_ap50`.
  """
  per = {k: np.asarray(v) for k, v in per_example.items()}
  subsets = {"": np.ones(len(per["iou"]), bool)}
  if "gender" in per:
    subsets.update({f"/{name}": per["gender"] == code
                    for name, code in schema.GENDERS.items()})
  if "mask_style" in per:
    subsets.update({f"/style/{name}": per["mask_style"] == i
                    for i, name in enumerate(schema.MASK_STYLES)})
  out = {}
  for suffix, sel in subsets.items():
    if not np.any(sel):
      continue
    for key in ("iou", "dice", "boundary_f"):
      out[key + suffix] = float(np.mean(per[key][sel]))
    pixels = float(np.sum(per["mask_pixels"][sel]))
    out["uncovered" + suffix] = (float(np.sum(per["missed_pixels"][sel]))
                                 / pixels if pixels else float("nan"))
    out["count" + suffix] = float(np.sum(sel))
  if "det_scores" in per:
    out["box_ap50/face_mask"] = _ap(per, seg.FACE_MASK, "box_iou", (0.5,))
    out["box_ap50/face"] = _ap(per, seg.FACE, "box_iou", (0.5,))
    out["mask_ap/face_mask"] = _ap(per, seg.FACE_MASK, "mask_iou",
                                   metrics.COCO_THRESHOLDS)
    out["mask_ap50/face_mask"] = _ap(per, seg.FACE_MASK, "mask_iou", (0.5,))
  return out
