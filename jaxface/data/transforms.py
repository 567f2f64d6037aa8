"""Host-side geometric transforms of an example (image, masks, landmarks).

Boxes are `(x0, y0, x1, y1)` in pixel-edge coordinates: with integer-centred
pixels (docs/DEVELOPING.md) the whole image is `(-0.5, -0.5, W - 0.5,
H - 0.5)`. Cropping a box to `size` maps a landmark by
`x -> (x - x0) * size / (x1 - x0) - 0.5`, which for the whole image is the
resize rule `x -> (x + 0.5) * s - 0.5` of `wflw.resize_landmarks`.
"""

from typing import Mapping

import cv2
import numpy as np

from jaxface.data import wflw

Box = tuple[float, float, float, float]

# Keys that hold [H, W, ...] arrays moved together with the image.
_PIXEL_KEYS = ("image", "masked_image", "mask")


def full_box(height: int, width: int) -> Box:
  return (-0.5, -0.5, width - 0.5, height - 0.5)


def center_square_box(height: int, width: int) -> Box:
  """The largest centred square (what LaFIn's data loader crops)."""
  side = min(height, width)
  x0 = (width - side) / 2 - 0.5
  y0 = (height - side) / 2 - 0.5
  return (x0, y0, x0 + side, y0 + side)


def face_box(landmarks: np.ndarray, scale: float = 1.6,
             y_shift: float = 0.05) -> Box:
  """A square box around the finite landmarks, `scale` x their extent.

  Centred on the landmarks' bounding box, moved down by `y_shift` of the
  side (WFLW points stop at the brows, so this keeps the forehead and chin
  in view). Raises ValueError when no landmark is finite.
  """
  pts = landmarks[np.all(np.isfinite(landmarks), axis=-1)]
  if len(pts) == 0:
    raise ValueError("no finite landmarks to place a face box")
  lo, hi = pts.min(axis=0), pts.max(axis=0)
  side = float(np.max(hi - lo)) * scale
  cx, cy = (lo + hi) / 2
  cy += y_shift * side
  return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _crop_pixels(array: np.ndarray, box: Box, size: int,
                 interpolation: int) -> np.ndarray:
  """Crops `box` (padding by edge replication outside) and resizes."""
  h, w = array.shape[:2]
  # Integer pixel range covering the box, padded where it leaves the image.
  x0, y0 = int(np.floor(box[0] + 0.5)), int(np.floor(box[1] + 0.5))
  x1, y1 = int(np.ceil(box[2] + 0.5)), int(np.ceil(box[3] + 0.5))
  pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
  if any(pad):
    array = cv2.copyMakeBorder(array, *pad, cv2.BORDER_REPLICATE)
    x0, x1, y0, y1 = x0 + pad[2], x1 + pad[2], y0 + pad[0], y1 + pad[0]
  crop = array[y0:y1, x0:x1]
  if crop.shape[0] == size and crop.shape[1] == size:
    return np.ascontiguousarray(crop)
  out = cv2.resize(crop, (size, size), interpolation=interpolation)
  return out.reshape(size, size, *array.shape[2:])


def crop_and_resize(example: Mapping[str, np.ndarray], box: Box,
                    size: int) -> dict[str, np.ndarray]:
  """Crops every pixel array of `example` to `box` and resizes to `size`.

  The box is snapped to whole pixels (so no resampling happens when no
  resize is needed); landmarks follow the snapped box exactly. Shrinking uses
  area averaging (no aliasing), enlarging bilinear; binary masks use nearest.
  """
  x0 = np.floor(box[0] + 0.5) - 0.5
  y0 = np.floor(box[1] + 0.5) - 0.5
  side_x = np.ceil(box[2] + 0.5) - 0.5 - x0
  side_y = np.ceil(box[3] + 0.5) - 0.5 - y0
  snapped = (x0, y0, x0 + side_x, y0 + side_y)
  out = dict(example)
  for key in _PIXEL_KEYS:
    if key not in example:
      continue
    array = example[key]
    if key == "mask":
      interp = cv2.INTER_NEAREST
    elif side_x > size:
      interp = cv2.INTER_AREA
    else:
      interp = cv2.INTER_LINEAR
    out[key] = _crop_pixels(array, snapped, size, interp)
  if "landmarks" in example:
    lm = np.asarray(example["landmarks"], np.float32)
    scale = np.array([size / side_x, size / side_y], np.float32)
    out["landmarks"] = ((lm - np.array([x0, y0], np.float32)) * scale
                        - 0.5).astype(np.float32)
  return out


def hflip(example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Mirrors the pixel arrays; landmarks are mirrored and re-indexed."""
  out = dict(example)
  width = example["image"].shape[1]
  for key in _PIXEL_KEYS:
    if key in example:
      out[key] = np.ascontiguousarray(example[key][:, ::-1])
  if "landmarks" in example:
    out["landmarks"] = wflw.flip_landmarks(example["landmarks"], width)
  if "landmarks_approx" in example:
    out["landmarks_approx"] = example["landmarks_approx"][
        wflw.FLIP_PERMUTATION]
  return out


def random_affine(image: np.ndarray, mask: np.ndarray, landmarks: np.ndarray,
                  rng: np.random.Generator, *, rotation: float = 0.0,
                  scale: tuple[float, float] = (1.0, 1.0),
                  translation: float = 0.0,
                  fill: tuple[int, int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One random similarity about the centre, applied to all three.

  Args:
    image: uint8 [S, S, 3] (bilinear; what comes in from outside
      replicates the edge, or is `fill`).
    mask: uint8 [S, S, 1] (nearest; outside the image is 0).
    landmarks: float32 [K, 2] integer-centred pixel points; moved exactly.
    rng: the draw.
    rotation: max degrees either way.
    scale: the zoom range (below 1: smaller faces, more background).
    translation: max shift, fraction of the side.
    fill: the RGB colour of what comes in from outside the image; None:
      the edge pixels, replicated.

  Returns:
    (image, mask, landmarks), transformed.
  """
  if not rotation and scale == (1.0, 1.0) and not translation:
    return image, mask, landmarks
  size = image.shape[0]
  centre = ((size - 1) / 2, (size - 1) / 2)
  matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-rotation, rotation),
                                   rng.uniform(*scale))
  matrix[:, 2] += rng.uniform(-translation, translation, 2) * size
  # warpAffine maps pixel centres (integer coordinates) by `matrix`, the
  # same convention as the landmarks: the points move exactly.
  if fill is None:
    border = dict(borderMode=cv2.BORDER_REPLICATE)
  else:
    border = dict(borderMode=cv2.BORDER_CONSTANT,
                  borderValue=tuple(int(c) for c in fill))
  image = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                         **border)
  mask = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_NEAREST,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  landmarks = (landmarks @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
  return image, mask.reshape(size, size, 1), landmarks


def colour_jitter(image: np.ndarray, rng: np.random.Generator, *,
                  brightness: float = 0.0, contrast: float = 0.0,
                  saturation: float = 0.0) -> np.ndarray:
  """Random saturation, contrast and brightness of a uint8 image.

  Saturation scales about the grey value, contrast about the mean, each by
  a factor in [1 - s, 1 + s]; brightness adds up to +-b of full scale.
  """
  if not (brightness or contrast or saturation):
    return image
  x = image.astype(np.float32) / 255.0
  grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
  x = grey[..., None] + (x - grey[..., None]) * rng.uniform(
      1 - saturation, 1 + saturation)
  x = x.mean() + (x - x.mean()) * rng.uniform(1 - contrast, 1 + contrast)
  x = x + rng.uniform(-brightness, brightness)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def random_grey(image: np.ndarray, rng: np.random.Generator,
                probability: float) -> np.ndarray:
  """With `probability`, the image in grey (a black-and-white photo)."""
  if not probability or rng.random() >= probability:
    return image
  grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                             np.float32)
  return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, -1)


def occlude(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
  """Fingers and a palm drawn across the face mask, cut out of its map.

  In real photos hands adjust masks, hold phones or rest on chins; what
  covers the mask is not the mask. Two to four shaded finger capsules
  start at a random pixel of the mask and run off in a random direction
  into a palm; mostly skin tones, sometimes any colour (a glove, a cup).

  Args:
    image: uint8 [H, W, 3].
    mask: uint8 [H, W, 1], 1 on the face mask; an empty map is left as is.
    rng: the example's generator.

  Returns:
    (image, mask) with the occluder drawn and removed from the map.
  """
  ys, xs = np.nonzero(mask[..., 0])
  if not len(ys):
    return image, mask
  h, w = mask.shape[:2]
  side = min(h, w)
  i = rng.integers(len(ys))
  start = np.array([xs[i], ys[i]], np.float64)
  angle = rng.uniform(0, 2 * np.pi)
  along = np.array([np.cos(angle), np.sin(angle)])
  across = np.array([-along[1], along[0]])
  width = rng.uniform(0.05, 0.09) * side
  length = rng.uniform(0.25, 0.5) * side
  fingers = int(rng.integers(2, 5))
  shape = np.zeros((h, w), np.uint8)
  for k in range(fingers):
    a = start + across * width * (k - (fingers - 1) / 2)
    a = a + along * rng.uniform(-0.15, 0.15) * length   # uneven tips
    b = a + along * length
    cv2.line(shape, tuple(int(round(v)) for v in a),
             tuple(int(round(v)) for v in b), 1,
             thickness=max(1, int(round(width * 0.95))), lineType=cv2.LINE_8)
  palm = start + along * length * 1.25
  cv2.ellipse(shape, tuple(int(round(v)) for v in palm),
              (int(round(length * 0.45)), int(round(width * fingers * 0.6))),
              float(np.degrees(angle)), 0, 360, 1, thickness=-1)
  if rng.random() < 0.8:      # skin: hue 6-36 degrees (OpenCV's HSV)
    hsv = np.array([[[rng.uniform(3, 18), rng.uniform(50, 150),
                      rng.uniform(90, 245)]]], np.uint8)
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
  else:
    colour = rng.integers(0, 256, 3).astype(np.float32)
  # Rounded shading: darker towards each finger's edges.
  depth = cv2.distanceTransform(shape, cv2.DIST_L2, 3)
  shade = 0.7 + 0.3 * np.sqrt(np.clip(depth / (width / 2), 0.0, 1.0))
  drawn = np.clip(colour * shade[..., None], 0, 255)
  out = np.where(shape[..., None] > 0, np.round(drawn), image)
  return out.astype(np.uint8), mask * (shape[..., None] == 0)
