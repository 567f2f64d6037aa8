"""MediaPipe's BlazeFace detector and 468-point face mesh, run with LiteRT.

MediaPipe (Apache-2.0) ships its models inside its wheel:
`face_detection_short_range.tflite` (BlazeFace, 128x128 input) and
`face_landmark.tflite` (the face mesh, 192x192 input). The `mediapipe`
package itself need not be installed (it pins old numpy and protobuf): the
two files are read out of the wheel, a directory or direct paths, and run
with the LiteRT interpreter (`ai-edge-litert`). The pre- and post-processing
follows MediaPipe's published graph options for these models:

  * detection: the image is letterboxed (aspect kept, zero padding) to
    128x128 in [-1, 1]; 896 SSD anchors; 16 numbers per anchor (box centre,
    size and six keypoints, in 128-pixel units relative to the anchor);
    sigmoid scores above `min_detection_score`; weighted non-maximum
    suppression at IoU 0.3.
  * region of interest: the detection box's centre, a square of 1.5x its
    longer side, rotated so that the line between the two eye keypoints is
    horizontal.
  * mesh: the region warped to 192x192 in [0, 1] (inputs in [-1, 1] also
    give faces, but less consistent ones under a horizontal flip); 468
    (x, y, z) points in continuous input pixels and a face-presence logit.

The mesh then runs a second time on the region computed from its own first
answer (the bounding box of the 468 points, again 1.5x and rotated by the
eye corners), which is how MediaPipe tracks a face between video frames; the
points depend less on the detector's rough box (on UTKFace the mean NME
between teacher(flip(image)) and flip(teacher(image)) drops from 1.5% to
1.4% of the outer-eye-corner distance).

Tightly cropped, aligned faces (a face filling the frame, as in UTKFace's
200x200 crops) are sometimes missed by the detector, which was trained on
faces with context. Then the image is padded by 25% on each side and the
detector retried; if that fails too, the mesh runs on the padded image as a
whole and the answer is kept when its face-presence score is high.
"""

import math
import os
import re
from typing import Sequence

import cv2
import numpy as np

from jaxface.data.teachers import base
from jaxface.data.teachers import mesh as mesh_lib

DETECTOR_FILE = "face_detection_short_range.tflite"
MESH_FILE = "face_landmark.tflite"

DETECTOR_SIZE = 128
MESH_SIZE = 192

# SSD anchor options of the short-range BlazeFace model.
ANCHOR_OPTIONS = dict(
    num_layers=4,
    min_scale=0.1484375,
    max_scale=0.75,
    input_size=DETECTOR_SIZE,
    anchor_offset=0.5,
    strides=(8, 16, 16, 16),
    aspect_ratios=(1.0,),
    interpolated_scale_aspect_ratio=1.0,
    fixed_anchor_size=True,
)
# BlazeFace keypoints, in output order ("right" and "left" are the subject's).
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear",
             "left_ear")
_SCORE_CLIP = 100.0
_NMS_IOU = 0.3
# Region of interest: a square of this many times the box (or landmark
# extent), as in MediaPipe's face-mesh graphs.
ROI_SCALE = 1.5
# Fallback for tight crops: padding on each side, as a fraction of the side.
PAD_FRACTION = 0.25


def ssd_anchors(num_layers: int = 4, min_scale: float = 0.1484375,
                max_scale: float = 0.75, input_size: int = 128,
                anchor_offset: float = 0.5,
                strides: Sequence[int] = (8, 16, 16, 16),
                aspect_ratios: Sequence[float] = (1.0,),
                interpolated_scale_aspect_ratio: float = 1.0,
                fixed_anchor_size: bool = True) -> np.ndarray:
  """SSD anchors as MediaPipe's anchor calculator makes them.

  Consecutive layers with the same stride share one feature map; each layer
  adds one anchor per aspect ratio plus, with an interpolated scale, one
  more. The defaults are the short-range BlazeFace options (896 anchors).

  Returns:
    [N, 4] float32 (x_centre, y_centre, width, height), normalised to the
    input size.
  """

  def scale_of(i):
    if num_layers == 1:
      return 0.5 * (min_scale + max_scale)
    return min_scale + (max_scale - min_scale) * i / (num_layers - 1)

  anchors = []
  layer = 0
  while layer < num_layers:
    sizes = []  # (width, height) per anchor of a cell
    last = layer
    while last < num_layers and strides[last] == strides[layer]:
      scale = scale_of(last)
      for ratio in aspect_ratios:
        sizes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
      if interpolated_scale_aspect_ratio > 0:
        next_scale = 1.0 if last == num_layers - 1 else scale_of(last + 1)
        s = math.sqrt(scale * next_scale)
        r = interpolated_scale_aspect_ratio
        sizes.append((s * math.sqrt(r), s / math.sqrt(r)))
      last += 1
    cells = int(math.ceil(input_size / strides[layer]))
    for y in range(cells):
      for x in range(cells):
        for w, h in sizes:
          if fixed_anchor_size:
            w = h = 1.0
          anchors.append(((x + anchor_offset) / cells,
                          (y + anchor_offset) / cells, w, h))
    layer = last
  return np.asarray(anchors, np.float32)


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray,
                      anchors: np.ndarray, min_score: float = 0.5,
                      input_size: int = DETECTOR_SIZE
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Decodes BlazeFace outputs into boxes, keypoints and scores.

  Args:
    raw_boxes: [N, 4 + 2K]: box centre offset, box size, K keypoint offsets,
      in input pixels relative to the anchor.
    raw_scores: [N] or [N, 1] logits.
    anchors: [N, 4] from `ssd_anchors`.
    min_score: keep anchors whose sigmoid score is at least this.
    input_size: side of the detector input in pixels.

  Returns:
    boxes [M, 4] (xmin, ymin, xmax, ymax), keypoints [M, K, 2] (x, y), both
    normalised to the input (0..1 across it), and scores [M].
  """
  raw_scores = np.clip(np.reshape(raw_scores, -1).astype(np.float64),
                       -_SCORE_CLIP, _SCORE_CLIP)
  scores = 1.0 / (1.0 + np.exp(-raw_scores))
  keep = scores >= min_score
  raw = raw_boxes[keep].astype(np.float64) / input_size
  anc = anchors[keep].astype(np.float64)
  cx = raw[:, 0] * anc[:, 2] + anc[:, 0]
  cy = raw[:, 1] * anc[:, 3] + anc[:, 1]
  w = raw[:, 2] * anc[:, 2]
  h = raw[:, 3] * anc[:, 3]
  boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  kp = raw[:, 4:].reshape(len(raw), (raw_boxes.shape[-1] - 4) // 2, 2)
  kp = kp * anc[:, None, 2:4] + anc[:, None, 0:2]
  return boxes, kp, scores[keep]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[2], boxes[:, 2])
  y1 = np.minimum(box[3], boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  union = area(box) + area(boxes) - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray,
                 scores: np.ndarray, iou_threshold: float = _NMS_IOU
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Score-weighted non-maximum suppression (MediaPipe's "WEIGHTED").

  Takes the best remaining detection and every other one overlapping it by
  more than `iou_threshold`, and replaces them with their score-weighted
  mean box and keypoints (keeping the best one's score).

  Returns:
    boxes [M, 4], keypoints [M, K, 2], scores [M], best first.
  """
  order = np.argsort(-scores, kind="stable")
  remaining = list(order)
  out_boxes, out_kp, out_scores = [], [], []
  while remaining:
    best = remaining[0]
    ious = _iou(boxes[best], boxes[remaining])
    group = [r for r, v in zip(remaining, ious) if v > iou_threshold]
    group = group or [best]
    w = scores[group][:, None]
    out_boxes.append((boxes[group] * w).sum(0) / w.sum())
    out_kp.append((keypoints[group] * w[:, :, None]).sum(0) / w.sum())
    out_scores.append(scores[best])
    remaining = [r for r in remaining if r not in group and r != best]
  if not out_boxes:
    return (np.zeros((0, 4)), np.zeros((0, keypoints.shape[1], 2)),
            np.zeros((0,)))
  return np.stack(out_boxes), np.stack(out_kp), np.asarray(out_scores)


def _roi_matrix(centre, side: float, angle: float, out_size: int
                ) -> np.ndarray:
  """[2, 3] affine from ROI-crop pixels to image pixels.

  Both in the integer-centred convention. The crop's continuous coordinate
  u in [0, out_size] spans the square `side` wide around `centre`
  (continuous image coordinates, i.e. pixel-centred + 0.5), its x axis
  turned by `angle` (radians, y down).
  """
  c, s = math.cos(angle), math.sin(angle)
  k = side / out_size
  rot = np.array([[c, -s], [s, c]]) * k
  # image_px + 0.5 = centre + rot @ (crop_px + 0.5 - out_size / 2)
  offset = np.asarray(centre, np.float64) - 0.5 + rot @ (
      np.full(2, 0.5 - out_size / 2))
  return np.concatenate([rot, offset[:, None]], 1)


def _warp(image: np.ndarray, matrix: np.ndarray, out_size: int,
          border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
  """Samples `image` at `matrix` @ (crop pixel) for an out_size^2 crop."""
  return cv2.warpAffine(image, matrix, (out_size, out_size),
                        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=border, borderValue=(0, 0, 0))


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  return points @ matrix[:, :2].T + matrix[:, 2]


class MediaPipeTeacher:
  """98 WFLW landmarks from MediaPipe's face detector and face mesh.

  Usage:
    teacher = MediaPipeTeacher("/path/to/mediapipe-0.10.21-...whl")
    result = teacher(image)  # LandmarkResult or None

  The interpreters are created on first use, one per instance, with one
  thread each (run one teacher per worker process for throughput). The
  instance pickles with the model bytes and without the interpreters, so it
  can be sent to worker processes.
  """

  def __init__(self, source: str | os.PathLike[str] | Sequence[str],
               name: str | None = None, min_detection_score: float = 0.5,
               min_presence_score: float = 0.5,
               min_fallback_presence_score: float = 0.9,
               refine: bool = True, num_threads: int = 1):
    """Reads the two model files.

    Args:
      source: a mediapipe wheel, a directory holding the two .tflite files
        (searched recursively: an installed `mediapipe` package or an
        unpacked wheel), or direct paths to them (a sequence, or joined by
        commas).
      name: stored with the landmarks; by default
        'mediapipe-face-mesh-<version>' with the wheel's version when the
        source names one, else 'mediapipe-face-mesh'.
      min_detection_score: BlazeFace score threshold.
      min_presence_score: the mesh's face-presence score needed after a
        detection.
      min_fallback_presence_score: the score needed when the mesh runs on
        the whole (padded) image because nothing was detected.
      refine: run the mesh a second time on the region its first answer
        gives.
      num_threads: LiteRT threads per interpreter.
    """
    files = base.read_model_files(source, (DETECTOR_FILE, MESH_FILE),
                                  "MediaPipeTeacher")
    self._detector_bytes = files[DETECTOR_FILE]
    self._mesh_bytes = files[MESH_FILE]
    self.name = name or _default_name(source)
    self.min_detection_score = float(min_detection_score)
    self.min_presence_score = float(min_presence_score)
    self.min_fallback_presence_score = float(min_fallback_presence_score)
    self.refine = bool(refine)
    self.num_threads = int(num_threads)
    self._anchors = ssd_anchors(**ANCHOR_OPTIONS)
    self._detector = None
    self._mesh = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_detector"] = state["_mesh"] = None
    return state

  def __repr__(self) -> str:
    return f"MediaPipeTeacher(name={self.name!r})"

  # Interpreters. ----------------------------------------------------------

  def _interpreter(self, model: bytes):
    litert = base.import_runtime("ai_edge_litert.interpreter",
                                 "MediaPipeTeacher")
    interpreter = litert.Interpreter(model_content=model,
                                     num_threads=self.num_threads)
    interpreter.allocate_tensors()
    return interpreter

  def _run(self, which: str, x: np.ndarray) -> list[np.ndarray]:
    """Runs the detector or the mesh on one [1, S, S, 3] float32 input."""
    if which == "detector":
      if self._detector is None:
        self._detector = self._interpreter(self._detector_bytes)
      interpreter = self._detector
    else:
      if self._mesh is None:
        self._mesh = self._interpreter(self._mesh_bytes)
      interpreter = self._mesh
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"])
            for d in interpreter.get_output_details()]

  # Stages. ----------------------------------------------------------------

  def detect(self, image: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BlazeFace on a uint8 [H, W, 3] RGB image.

    Returns:
      boxes [M, 4] (xmin, ymin, xmax, ymax) and keypoints [M, 6, 2] in
      continuous image coordinates (pixel-centred + 0.5), and scores [M],
      best first. Keypoints: subject's right eye (image-left), left eye,
      nose tip, mouth centre, right ear, left ear.
    """
    image = base.check_image(image)
    h, w = image.shape[:2]
    # Letterbox: scale the longer side to 128, centre, pad with zeros.
    new_w = max(1, round(w * DETECTOR_SIZE / max(h, w)))
    new_h = max(1, round(h * DETECTOR_SIZE / max(h, w)))
    interp = cv2.INTER_AREA if max(h, w) > DETECTOR_SIZE else cv2.INTER_LINEAR
    small = cv2.resize(image, (new_w, new_h), interpolation=interp)
    pad_x, pad_y = (DETECTOR_SIZE - new_w) // 2, (DETECTOR_SIZE - new_h) // 2
    crop = np.zeros((DETECTOR_SIZE, DETECTOR_SIZE, 3), np.uint8)
    crop[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = small
    x = crop.astype(np.float32)[None] / 127.5 - 1.0
    outputs = {o.shape[-1]: o for o in self._run("detector", x)}
    raw_boxes, raw_scores = outputs[16][0], outputs[1][0]
    boxes, kp, scores = decode_detections(raw_boxes, raw_scores,
                                          self._anchors,
                                          self.min_detection_score)
    boxes, kp, scores = weighted_nms(boxes, kp, scores)
    # Normalised letterbox coordinates -> continuous image coordinates.
    pad = np.array([pad_x, pad_y])
    scale = np.array([new_w / w, new_h / h])
    to_image = lambda p: (p * DETECTOR_SIZE - pad) / scale
    boxes = np.concatenate([to_image(boxes[:, :2]), to_image(boxes[:, 2:])],
                           -1)
    return boxes, to_image(kp), scores

  def mesh(self, image: np.ndarray, centre, side: float, angle: float
           ) -> tuple[np.ndarray, float]:
    """The face mesh on one region of interest.

    Args:
      image: uint8 [H, W, 3] RGB.
      centre: (x, y) centre of the region, continuous image coordinates.
      side: side of the square region in pixels.
      angle: rotation of the region (radians, y down).

    Returns:
      [468, 3] mesh points (x, y in integer-centred image pixels, z in the
      same scale) and the face-presence score in [0, 1].
    """
    matrix = _roi_matrix(centre, side, angle, MESH_SIZE)
    crop = _warp(image, matrix, MESH_SIZE)
    x = crop.astype(np.float32)[None] / 255.0
    outputs = self._run("mesh", x)
    points = next(o for o in outputs if o.size == 3 * mesh_lib.NUM_MESH)
    logit = next(o for o in outputs if o.size == 1)
    points = points.reshape(mesh_lib.NUM_MESH, 3).astype(np.float64)
    # The model answers in continuous crop coordinates.
    xy = _apply(matrix, points[:, :2] - 0.5)
    z = points[:, 2:] * side / MESH_SIZE
    score = float(1.0 / (1.0 + np.exp(-np.clip(logit.item(), -100, 100))))
    return np.concatenate([xy, z], 1), score

  # The teacher. -----------------------------------------------------------

  def face_mesh(self, image: np.ndarray
                ) -> tuple[np.ndarray, float] | None:
    """[468, 3] mesh of the main face and its presence score, or None."""
    image = base.check_image(image)
    h, w = image.shape[:2]
    found = self._from_detection(image)
    if found is None:
      # Tight crops: add context around the face and try again.
      p = int(round(PAD_FRACTION * max(h, w)))
      padded = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_CONSTANT,
                                  value=(0, 0, 0))
      found = self._from_detection(padded)
      if found is None:
        found = self._from_whole(padded)
      if found is not None:
        mesh, score = found
        mesh = mesh.copy()
        mesh[:, :2] -= p
        found = mesh, score
    return found

  def __call__(self, image: np.ndarray) -> base.LandmarkResult | None:
    """98 WFLW landmarks of the main face of `image`, or None."""
    found = self.face_mesh(image)
    if found is None:
      return None
    mesh, score = found
    return base.LandmarkResult(landmarks=mesh_lib.mesh_to_wflw(mesh),
                               approximate=mesh_lib.APPROXIMATE.copy(),
                               score=score)

  def _from_detection(self, image):
    boxes, kp, scores = self.detect(image)
    if len(scores) == 0:
      return None
    # The largest face, as a photo's subject usually is.
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = int(np.argmax(area))
    box, eyes = boxes[k], kp[k, :2]
    centre = 0.5 * (box[:2] + box[2:])
    side = ROI_SCALE * max(box[2] - box[0], box[3] - box[1])
    angle = math.atan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0])
    return self._mesh_and_refine(image, centre, side, angle,
                                 self.min_presence_score)

  def _from_whole(self, image):
    h, w = image.shape[:2]
    return self._mesh_and_refine(image, (w / 2, h / 2), max(h, w), 0.0,
                                 self.min_fallback_presence_score)

  def _mesh_and_refine(self, image, centre, side, angle, min_score):
    mesh, score = self.mesh(image, centre, side, angle)
    if score < min_score:
      return None
    if self.refine:
      centre, side, angle = roi_from_mesh(mesh)
      mesh2, score2 = self.mesh(image, centre, side, angle)
      if score2 >= min_score:
        return mesh2, score2
    return mesh, score


def roi_from_mesh(mesh: np.ndarray) -> tuple[np.ndarray, float, float]:
  """Region of interest around a face mesh (as MediaPipe tracks faces).

  Rotated so that the outer eye corners (33, 263) are level; the square is
  ROI_SCALE times the longer side of the points' extent in that frame.

  Returns:
    centre (continuous image coordinates), side, angle.
  """
  xy = mesh[:, :2] + 0.5
  d = xy[263] - xy[33]
  angle = math.atan2(d[1], d[0])
  c, s = math.cos(angle), math.sin(angle)
  rot = np.array([[c, s], [-s, c]])  # image -> face frame
  local = xy @ rot.T
  lo, hi = local.min(0), local.max(0)
  centre = rot.T @ (0.5 * (lo + hi))
  side = ROI_SCALE * float(np.max(hi - lo))
  return centre, side, angle


def _default_name(source) -> str:
  """'mediapipe-face-mesh-<version>' when the source tells the version."""
  paths = base.split_sources(source)
  texts = [os.fspath(p) for p in paths]
  for p in paths:
    # An installed package: site-packages/mediapipe-X.dist-info beside it.
    if p.is_dir():
      texts += [d.name for d in p.parent.glob("mediapipe-*.dist-info")]
  for text in texts:
    m = re.search(r"mediapipe-(\d+(?:\.\d+)+)", text)
    if m:
      return f"mediapipe-face-mesh-{m.group(1)}"
  return "mediapipe-face-mesh"
