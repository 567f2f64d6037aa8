"""Hand-labelled photos in labelme's JSON format (the paper's 500 web photos).

A labelme file describes one photo:

  {"imagePath": "photo.jpg",           # relative to the JSON file
   "imageData": "<base64>" | null,     # the photo itself, optionally
   "imageHeight": H, "imageWidth": W,
   "shapes": [{"label": "mask", "shape_type": "polygon",
               "points": [[x, y], ...]}, ...]}

Points are pixel coordinates (labelme draws with PIL: the centre of pixel
(row i, col j) at (j, i), as the landmarks of docs/DEVELOPING.md).
Polygons and rectangles are read; each shape is one instance. Labels
name the class: a face mask (`MASK_LABELS`, case and separators ignored)
or a face (`FACE_LABELS`); other labels are left out, and named once in a
warning.

`read` gives the photo, the union map of its face masks and one box per
instance (`jaxface.boxes` coordinates: the extent of the instance's
rasterised pixels). `LabelmeFolder` is the record source of
`open_source("labelme:DIR")`: the photos as records that already wear
their (real) masks, for training and evaluating segmentation.
"""

import base64
import dataclasses
import json
import os
from typing import Any, Sequence

from absl import logging
import cv2
import numpy as np

from jaxface.data import decode
from jaxface.data import schema
from jaxface.data import sources
from jaxface.data import wflw

MASK_LABELS = ("mask", "facemask", "face_mask", "face mask", "face-mask")
FACE_LABELS = ("face", "head")
# Classes of the boxes (as `jaxface.models.segment`).
FACE_MASK, FACE = 1, 2
_SUBPIXEL_BITS = 4


class LabelmeError(ValueError):
  """A labelme file that cannot be used; the message names the file."""


def _norm(label: str) -> str:
  return "".join(ch for ch in label.lower() if ch.isalnum())


_CLASSES = {**{_norm(l): FACE_MASK for l in MASK_LABELS},
            **{_norm(l): FACE for l in FACE_LABELS}}
_WARNED: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One labelled photo.

  Attributes:
    image: uint8 [H, W, 3].
    mask: uint8 [H, W], 1 on any face mask.
    instances: uint8 [N, H, W], one map per shape (face masks and faces).
    boxes: float32 [N, 4], each instance's pixel extent.
    classes: int32 [N], `FACE_MASK` or `FACE`.
    key: the JSON file, as named in messages.
  """
  image: np.ndarray
  mask: np.ndarray
  instances: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  key: str


def rasterise(shape: dict[str, Any], height: int, width: int,
              where: str) -> np.ndarray:
  """uint8 [H, W] pixels of one labelme polygon or rectangle."""
  kind = shape.get("shape_type") or "polygon"
  try:
    points = np.asarray(shape["points"], np.float64).reshape(-1, 2)
  except (KeyError, TypeError, ValueError):
    raise LabelmeError(f"{where}: a shape without [[x, y], ...] points"
                       ) from None
  if not np.all(np.isfinite(points)):
    raise LabelmeError(f"{where}: non-finite points")
  out = np.zeros((height, width), np.uint8)
  if kind == "rectangle":
    if len(points) != 2:
      raise LabelmeError(f"{where}: a rectangle needs 2 points, got "
                         f"{len(points)}")
    (x1, y1), (x2, y2) = np.sort(points, axis=0)
    # Pixels whose centres lie inside (inclusive).
    r1, r2 = int(np.ceil(y1)), int(np.floor(y2))
    c1, c2 = int(np.ceil(x1)), int(np.floor(x2))
    out[max(r1, 0):max(r2 + 1, 0), max(c1, 0):max(c2 + 1, 0)] = 1
    return out
  if kind != "polygon":
    raise LabelmeError(f"{where}: shape_type {kind!r} is not read (polygon "
                       "or rectangle)")
  if len(points) < 3:
    raise LabelmeError(f"{where}: a polygon needs 3 points, got "
                       f"{len(points)}")
  fixed = np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32)
  cv2.fillPoly(out, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
  return out


def _extent(instance: np.ndarray) -> np.ndarray:
  rows, cols = np.nonzero(instance)
  return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                  np.float32)


def _load_image(meta: dict[str, Any], json_path: str) -> np.ndarray:
  data = meta.get("imageData")
  if data:
    try:
      raw = base64.b64decode(data)
    except ValueError:
      raise LabelmeError(f"{json_path}: imageData is not base64") from None
    return decode.decode_image(raw, key=json_path)
  rel = meta.get("imagePath")
  if not rel:
    raise LabelmeError(f"{json_path}: neither imageData nor imagePath")
  path = os.path.join(os.path.dirname(json_path), rel.replace("\\", "/"))
  image, _ = decode.read_image(path, key=path)
  return image


def read(json_path: str | os.PathLike) -> Annotation:
  """The photo, face-mask map and instance boxes of one labelme file.

  Raises:
    LabelmeError / decode.CorruptImageError: naming the file, when it is
      not labelme JSON, its photo cannot be read, or a shape is malformed.
  """
  json_path = os.fspath(json_path)
  try:
    with open(json_path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise LabelmeError(f"{json_path}: not a readable JSON file ({e})"
                       ) from None
  if not isinstance(meta, dict) or not isinstance(meta.get("shapes"), list):
    raise LabelmeError(f"{json_path}: no 'shapes' list (not a labelme file)")
  image = _load_image(meta, json_path)
  h, w = image.shape[:2]
  declared = (meta.get("imageHeight"), meta.get("imageWidth"))
  if None not in declared and tuple(declared) != (h, w):
    raise LabelmeError(f"{json_path}: the photo is {w}x{h}, the labels are "
                       f"for {declared[1]}x{declared[0]}")
  instances, classes = [], []
  for k, shape in enumerate(meta["shapes"]):
    label = str(shape.get("label", ""))
    cls = _CLASSES.get(_norm(label))
    if cls is None:
      if label not in _WARNED:
        _WARNED.add(label)
        logging.warning("%s: label %r is neither a face mask (%s) nor a "
                        "face (%s); its shapes are left out", json_path,
                        label, ", ".join(MASK_LABELS), ", ".join(FACE_LABELS))
      continue
    pixels = rasterise(shape, h, w, f"{json_path}, shape {k} ({label!r})")
    if pixels.any():
      instances.append(pixels)
      classes.append(cls)
  n = len(instances)
  stack = (np.stack(instances) if n else np.zeros((0, h, w), np.uint8))
  classes = np.asarray(classes, np.int32)
  mask = (stack[classes == FACE_MASK].max(axis=0) if np.any(
      classes == FACE_MASK) else np.zeros((h, w), np.uint8))
  boxes = (np.stack([_extent(i) for i in stack]) if n
           else np.zeros((0, 4), np.float32))
  return Annotation(image=image, mask=mask, instances=stack, boxes=boxes,
                    classes=classes, key=json_path)


class LabelmeFolder:
  """A folder of labelme files as records wearing their own (real) masks.

  Records (the contract of `jaxface.data.sources`): `image` and
  `masked_image` are the photo (there is no face behind the mask to
  recover), `mask` the face-mask map, `mask_style` -1 (unknown), no
  landmarks, gender unknown. Splits are by a hash of the file name, like
  a folder's. A file that cannot be read is named in a warning and its
  record is None (the pipeline skips it).
  """

  provides_masks = True

  def __init__(self, root: str, split: str = sources.TRAIN,
               gender: str = "all", seed: int = 0,
               splits: Sequence[float] = sources.DEFAULT_SPLITS):
    if gender != "all":
      raise ValueError(f"labelme:{root} has no gender labels; gender="
                       f"{gender!r} needs gender='all'")
    if not os.path.isdir(root):
      raise ValueError(f"labelme:{root}: no such folder")
    split = sources._check_split(split)  # pylint: disable=protected-access
    fractions = sources._check_fractions(splits)  # pylint: disable=protected-access
    files = sorted(
        os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
        for d, _, names in os.walk(root) for f in names
        if f.lower().endswith(".json"))
    if split != sources.ALL:
      files = [f for f in files
               if sources.hash_split(f, fractions, seed) == split]
    self.root, self.split = root, split
    self._files = files

  def __len__(self) -> int:
    return len(self._files)

  def key(self, index) -> str:
    return self._files[sources._index(index, len(self), self)]  # pylint: disable=protected-access

  def __getitem__(self, index) -> dict[str, Any] | None:
    key = self.key(index)
    path = os.path.join(self.root, *key.split("/"))
    try:
      a = read(path)
    except (LabelmeError, decode.CorruptImageError, OSError) as e:
      decode.warn_once(path, f"skipping labelme file: {e}")
      return None
    return {schema.IMAGE: a.image, schema.MASKED_IMAGE: a.image,
            schema.MASK: a.mask, schema.MASK_STYLE: np.int32(-1),
            schema.LANDMARKS: np.full((wflw.NUM_LANDMARKS, 2), np.nan,
                                      np.float32),
            schema.LANDMARKS_APPROX: np.ones(wflw.NUM_LANDMARKS, bool),
            schema.GENDER: np.int32(sources.UNKNOWN_GENDER),
            sources.KEY: key}

  def __repr__(self) -> str:
    return f"LabelmeFolder({self.root!r}, split={self.split!r}, {len(self)})"
