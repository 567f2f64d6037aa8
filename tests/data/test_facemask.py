"""Tests of the synthetic face-mask renderer (jaxface.data.facemask)."""

import functools
import pathlib
import pickle

import cv2
import numpy as np
import pytest

import numerics
from jaxface.data import facemask
from jaxface.data import procedural
from jaxface.data import wflw

SIZE = 256
PROCEDURAL = facemask.PROCEDURAL_STYLES
NO_TEMPLATE = PROCEDURAL + facemask.HOLE_STYLES
MOUTH = np.arange(76, 96)
EYES = np.arange(60, 76)
COVERED = np.concatenate([[wflw.NOSE_TIP, wflw.CHIN], MOUTH])


@functools.lru_cache(maxsize=None)
def _face(index: int, size: int = SIZE) -> dict:
  return procedural.ProceduralFaces(size=size)[index]


def _renderer(**kwargs) -> facemask.FaceMaskRenderer:
  kwargs.setdefault("styles", NO_TEMPLATE)
  return facemask.FaceMaskRenderer(**kwargs)


def _check(image: np.ndarray, result: facemask.RenderedMask, style: str,
           soft: int = 2) -> None:
  """The binary map is where the renderer changed the image, up to `soft` px.

  Pixels off the map and more than `soft` pixels from it are byte-identical
  to the input; nearly every pixel on it changed.
  """
  assert result.masked_image.shape == image.shape
  assert result.masked_image.dtype == np.uint8
  assert result.mask.shape == image.shape[:2]
  assert result.mask.dtype == np.uint8
  assert set(np.unique(result.mask)) <= {0, 1}
  assert result.style == facemask.STYLE_ID[style]
  changed = np.any(result.masked_image != image, axis=-1)
  near = cv2.dilate(result.mask, np.ones((2 * soft + 1, 2 * soft + 1),
                                         np.uint8))
  stray = changed & (near == 0)
  assert not stray.any(), f"{style}: {stray.sum()} changed pixels off the map"
  on = result.mask == 1
  assert on.sum() > 0.01 * on.size, style
  assert changed[on].mean() > 0.9, style


def _at(mask: np.ndarray, landmarks: np.ndarray, idx) -> np.ndarray:
  p = np.round(np.asarray(landmarks)[idx]).astype(int)
  h, w = mask.shape
  return mask[np.clip(p[:, 1], 0, h - 1), np.clip(p[:, 0], 0, w - 1)]


def _check_coverage(result, landmarks, style):
  assert _at(result.mask, landmarks, COVERED).all(), style
  assert not _at(result.mask, landmarks, EYES).any(), style


# ---------------------------------------------------------------------------
# Landmarks for photos: canonical frontal landmarks fitted by a similarity
# to a few points located by eye.


@functools.lru_cache(maxsize=None)
def _canonical() -> np.ndarray:
  """Landmarks of the most frontal of the first procedural faces."""
  src = procedural.ProceduralFaces(size=SIZE)
  best = min(range(12), key=lambda i: abs(float(src[i]["yaw"]))
             + abs(float(src[i]["roll"])))
  return src[best]["landmarks"].astype(np.float64)


def _fit(points: dict[int, tuple[float, float]]) -> np.ndarray:
  """All 98 canonical points moved by the least-squares similarity that takes
  the canonical points `points.keys()` to `points.values()`."""
  idx = list(points)
  src = _canonical()[idx]
  dst = np.array([points[k] for k in idx], np.float64)
  n = len(idx)
  a = np.zeros((2 * n, 4))
  a[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)]
  a[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(n), np.ones(n)]
  c, s, tx, ty = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)[0]
  return (_canonical() @ np.array([[c, -s], [s, c]]).T + [tx, ty]).astype(
      np.float32)


# skimage.data.astronaut() (512 x 512, public domain): pupils, nose tip,
# mouth corners and chin, read off the image by eye.
ASTRONAUT_POINTS = {96: (201.0, 102.0), 97: (246.0, 103.5),
                    54: (225.5, 127.0), 76: (203.0, 140.0),
                    82: (247.0, 141.0), 16: (229.0, 183.0)}
# UTKFace aligned 200 x 200 crops have no landmarks yet: these are the
# pupils, nose tip and mouth corners of the mean of every tenth crop (the
# crops are aligned, so a single layout fits them roughly).
UTKFACE_POINTS = {96: (55.0, 57.0), 97: (138.0, 57.0), 54: (96.5, 100.0),
                  76: (64.0, 136.0), 82: (133.0, 136.0)}


@pytest.fixture(scope="module")
def astronaut():
  skdata = pytest.importorskip("skimage.data")
  return skdata.astronaut(), _fit(ASTRONAUT_POINTS)


# ---------------------------------------------------------------------------


def test_style_table():
  assert len(facemask.STYLES) >= 9
  assert facemask.STYLES[:6] == (
      "surgical", "surgical_pleated", "n95", "kn95", "cloth", "cloth_printed")
  assert {"template", "box", "freeform"} <= set(facemask.STYLES)
  assert facemask.STYLE_ID == {n: i for i, n in enumerate(facemask.STYLES)}
  assert facemask.DEFAULT_STYLES == facemask.PROCEDURAL_STYLES


@pytest.mark.parametrize("style", NO_TEMPLATE)
def test_every_style_on_procedural_faces(style):
  renderer = _renderer()
  for i in range(4):
    rec = _face(i)
    result = renderer(rec["image"], rec["landmarks"],
                      np.random.default_rng(i), style=style)
    _check(rec["image"], result, style)


def test_random_style_follows_weights():
  renderer = _renderer(styles={"kn95": 1.0, "box": 0.0})
  rec = _face(0)
  for seed in range(5):
    result = renderer(rec["image"], rec["landmarks"],
                      np.random.default_rng(seed))
    assert result.style == facemask.STYLE_ID["kn95"]


@pytest.mark.parametrize("style", PROCEDURAL)
def test_covers_nose_mouth_chin_not_eyes(style):
  renderer = _renderer(lower_prob=0.0)
  for i in range(10):
    rec = _face(i)
    for seed in range(2):
      result = renderer(rec["image"], rec["landmarks"],
                        np.random.default_rng(100 * i + seed), style=style)
      _check_coverage(result, rec["landmarks"], style)


def test_lower_placement_leaves_the_nose():
  renderer = _renderer(lower_prob=1.0)
  for i in range(6):
    rec = _face(i)
    result = renderer(rec["image"], rec["landmarks"],
                      np.random.default_rng(i), style=PROCEDURAL[i])
    lm = rec["landmarks"]
    assert not _at(result.mask, lm, [wflw.NOSE_TIP, 51, 52, 53]).any()
    assert _at(result.mask, lm, [85, 94, wflw.CHIN]).all()


@pytest.mark.parametrize("style", ["surgical", "kn95", "cloth_printed"])
def test_follows_roll(style):
  rec = _face(6)
  image, lm = rec["image"], rec["landmarks"]
  centre = (SIZE / 2 - 0.5, SIZE / 2 - 0.5)  # integer-centred pixels
  rot = cv2.getRotationMatrix2D(centre, 20.0, 1.0)
  image_r = cv2.warpAffine(image, rot, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
  lm_r = (lm @ rot[:, :2].T + rot[:, 2]).astype(np.float32)
  renderer = _renderer(lower_prob=0.0)

  def axis_angle(mask):
    m = cv2.moments(mask, binaryImage=True)
    return 0.5 * np.degrees(np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))

  def eye_angle(points):
    d = points[68:76].mean(0) - points[60:68].mean(0)
    return np.degrees(np.arctan2(d[1], d[0]))

  def eye_angle_bound(points, cast):
    """Degrees; float32 points (`cast`: rounded from exact ones)."""
    pts = points.astype(np.float64)
    d = pts[68:76].mean(0) - pts[60:68].mean(0)
    big = np.abs(pts[60:76]).max()
    # Two float32 means of 8 points (and the points' own rounding), their
    # difference: an error of d, turning it by at most |error| / |d|; then
    # arctan2 and degrees (a few ulps of the angle).
    d_err = np.sqrt(2) * (2 * (numerics.gamma(8) + cast * numerics.U32) * big
                          + numerics.U32 * np.abs(d).max())
    angle = abs(float(eye_angle(points)))
    return (np.degrees(d_err / np.linalg.norm(d))
            + (numerics.FN_U + numerics.U32) * angle)

  a = renderer(image, lm, np.random.default_rng(3), style=style)
  b = renderer(image_r, lm_r, np.random.default_rng(3), style=style)
  _check(image_r, b, style)
  _check_coverage(b, lm_r, style)
  turned = axis_angle(b.mask) - axis_angle(a.mask)
  expected = eye_angle(lm_r) - eye_angle(lm)
  # The landmarks turn by exactly 20 degrees, up to rounding.
  assert abs(abs(expected) - 20.0) <= (eye_angle_bound(lm, cast=0)
                                       + eye_angle_bound(lm_r, cast=1))
  # A semantic tolerance, not a rounding one: the principal axis of the
  # rasterised mask follows the face's roll to within a few degrees.
  assert turned == pytest.approx(expected, abs=4.0)


@pytest.mark.parametrize("style", NO_TEMPLATE)
def test_deterministic_and_inputs_untouched(style):
  renderer = _renderer()
  rec = _face(1)
  image = rec["image"].copy()
  lm = rec["landmarks"].copy()
  image_before, lm_before = image.copy(), lm.copy()
  a = renderer(image, lm, np.random.default_rng(7), style=style)
  b = renderer(image, lm, np.random.default_rng(7), style=style)
  np.testing.assert_array_equal(a.masked_image, b.masked_image)
  np.testing.assert_array_equal(a.mask, b.mask)
  np.testing.assert_array_equal(image, image_before)
  np.testing.assert_array_equal(lm, lm_before)
  if style != "box":  # the box is a function of the landmarks alone
    c = renderer(image, lm, np.random.default_rng(8), style=style)
    assert not np.array_equal(a.masked_image, c.masked_image)


def test_pickle_round_trip():
  renderer = _renderer()
  rec = _face(2)
  first = renderer(rec["image"], rec["landmarks"], np.random.default_rng(1),
                   style="cloth_printed")  # fills the caches
  clone = pickle.loads(pickle.dumps(renderer))
  again = clone(rec["image"], rec["landmarks"], np.random.default_rng(1),
                style="cloth_printed")
  np.testing.assert_array_equal(first.masked_image, again.masked_image)
  assert len(pickle.dumps(renderer)) < 10_000  # no images or noise inside


@pytest.mark.parametrize("size", [64, 1024])
def test_sizes(size):
  renderer = _renderer()
  rec = _face(3, size=min(size, 512))
  image, lm = rec["image"], rec["landmarks"]
  if size > 512:
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    lm = wflw.resize_landmarks(lm, size / 512)
  for style in PROCEDURAL:
    result = renderer(image, lm, np.random.default_rng(0), style=style)
    _check(image, result, style)


def test_non_square_image():
  rec = _face(4)
  image = np.ascontiguousarray(rec["image"][20:236])  # 216 x 256
  lm = rec["landmarks"] - np.array([0.0, 20.0], np.float32)
  renderer = _renderer(lower_prob=0.0)
  for style in NO_TEMPLATE:
    result = renderer(image, lm, np.random.default_rng(5), style=style)
    _check(image, result, style)


# ---------------------------------------------------------------------------
# Real photographs.


@pytest.mark.parametrize("style", NO_TEMPLATE)
def test_astronaut(astronaut, style):
  image, lm = astronaut
  renderer = _renderer(lower_prob=0.0)
  for seed in range(2):
    result = renderer(image, lm, np.random.default_rng(seed), style=style)
    _check(image, result, style)
    if style in PROCEDURAL:
      _check_coverage(result, lm, style)


def test_utkface(shared_data):
  folder = shared_data / "utkface" / "images"
  files = sorted(folder.glob("*.jpg"))[:: 997][:4] if folder.is_dir() else []
  if not files:
    pytest.skip(f"{folder} is absent")
  lm = _fit(UTKFACE_POINTS)
  renderer = _renderer(lower_prob=0.0)
  for k, path in enumerate(files):
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    for style in PROCEDURAL:
      result = renderer(image, lm, np.random.default_rng(k), style=style)
      _check(image, result, style)
      _check_coverage(result, lm, style)


# ---------------------------------------------------------------------------
# Holes.


def test_box_matches_formula():
  lm = np.full((98, 2), np.nan, np.float32)
  lm[0] = (50.3, 100.0)
  lm[31] = (200.7, 100.0)
  lm[64] = (100.0, 90.2)
  lm[16] = (128.0, 210.6)
  image = np.full((256, 256, 3), 40, np.uint8)
  result = _renderer()(image, lm, np.random.default_rng(0), style="box")
  expected = np.zeros((256, 256), np.uint8)
  # x: int(50.3 - 10) .. int(200.7 + 10); y: int(90.2 + 4) .. int(210.6 + 15)
  expected[94:225, 40:210] = 1
  np.testing.assert_array_equal(result.mask, expected)
  np.testing.assert_array_equal(result.masked_image[expected == 1],
                                np.broadcast_to(facemask.HOLE_FILL,
                                                (expected.sum(), 3)))
  np.testing.assert_array_equal(result.masked_image[expected == 0],
                                image[expected == 0])
  # Clamped to the image; margins scale with the size (here 2x).
  lm2 = lm * 2
  lm2[0] = (5.0, 200.0)
  lm2[16] = (256.0, 500.0)
  big = np.zeros((512, 512, 3), np.uint8)
  result = _renderer()(big, lm2, np.random.default_rng(0), style="box")
  expected = np.zeros((512, 512), np.uint8)
  expected[int(180.4 + 8):512, 0:int(401.4 + 20)] = 1
  np.testing.assert_array_equal(result.mask, expected)
  assert facemask.FaceMaskRenderer.box_bounds(lm, 256, 256) == (94, 225, 40,
                                                                210)


@pytest.mark.parametrize("shape", [(256, 256), (120, 300)])
def test_freeform_coverage(shape):
  lo, hi = facemask.FREEFORM_COVERAGE
  image = np.full(shape + (3,), 90, np.uint8)
  nan_landmarks = np.full((98, 2), np.nan, np.float32)  # not needed
  renderer = _renderer()
  masks = []
  for seed in range(12):
    result = renderer(image, nan_landmarks, np.random.default_rng(seed),
                      style="freeform")
    cover = result.mask.mean()
    assert lo <= cover <= hi, cover
    on = result.mask == 1
    assert np.all(result.masked_image[on] == facemask.HOLE_FILL)
    np.testing.assert_array_equal(result.masked_image[~on], image[~on])
    masks.append(result.mask)
  assert len({m.tobytes() for m in masks}) == len(masks)


# ---------------------------------------------------------------------------
# Templates.


def _write_template_dir(root: pathlib.Path) -> pathlib.Path:
  """A MaskTheFace-format folder with a synthetic RGBA template."""
  (root / "templates").mkdir(parents=True)
  h, w = 300, 400
  rgba = np.zeros((h, w, 4), np.uint8)
  cv2.ellipse(rgba, (200, 150), (190, 140), 0, 0, 360, (90, 160, 230, 255),
              -1, cv2.LINE_AA)
  rgba[:, :, 0] = np.linspace(60, 200, w, dtype=np.uint8)[None, :]
  for name in ("shield", "shield_left", "shield_right"):
    cv2.imwrite(str(root / "templates" / f"{name}.png"), rgba)
  anchors = ("mask_a: 30, 80\nmask_b: 200, 12\nmask_c: 370, 80\n"
             "mask_d: 40, 200\nmask_e: 200, 288\nmask_f: 360, 200\n")
  (root / "masks.cfg").write_text(
      "[shield]\ntemplate:   masks/templates/shield.png\n" + anchors
      + "\n;[old]\n;template: masks/old.png\n\n"
      "[shield_left]\ntemplate: masks/templates/shield_left.png\n" + anchors
      + "\n[shield_right]\ntemplate: masks/templates/shield_right.png\n"
      + anchors + "\n[empty]\n[inpaint]\n")
  return root


def test_template_dir_format(tmp_path):
  root = _write_template_dir(tmp_path / "masks")
  renderer = facemask.FaceMaskRenderer(styles=["template"],
                                       template_dir=str(root))
  assert renderer.template_names == ("shield", "shield_left", "shield_right")
  rec = _face(6)
  lm = rec["landmarks"]
  for name in renderer.template_names:
    result = renderer(rec["image"], lm, np.random.default_rng(0),
                      style="template", template=name)
    _check(rec["image"], result, "template")
  result = renderer(rec["image"], lm, np.random.default_rng(0))
  _check(rec["image"], result, "template")
  # The six anchors go to the sides of the face, the nose bridge and the
  # chin: the template covers the nose and the mouth.
  assert _at(result.mask, lm, [54, 57, 85]).all()
  # Picklable and reproducible with templates too.
  clone = pickle.loads(pickle.dumps(renderer))
  again = clone(rec["image"], lm, np.random.default_rng(0))
  np.testing.assert_array_equal(result.masked_image, again.masked_image)


def test_pick_template_by_yaw(tmp_path):
  root = _write_template_dir(tmp_path / "masks")
  renderer = facemask.FaceMaskRenderer(styles=["template"],
                                       template_dir=root)
  src = procedural.ProceduralFaces(size=SIZE)
  seen = set()
  for i in range(40):
    rec = src[i]
    yaw = float(rec["yaw"])
    name = renderer.pick_template(rec["landmarks"], np.random.default_rng(i))
    if abs(yaw) < 8:
      assert name == "shield", (yaw, name)
    elif yaw > 20:
      assert name == "shield_right", (yaw, name)
    elif yaw < -20:
      assert name == "shield_left", (yaw, name)
    seen.add(name)
    assert np.sign(facemask.estimate_yaw(rec["landmarks"])) == np.sign(yaw) \
        or abs(yaw) < 4
  assert seen == {"shield", "shield_left", "shield_right"}


def test_maskthefaces(shared_data):
  folder = shared_data / "maskthefaces"
  if not (folder / "masks.cfg").is_file():
    pytest.skip(f"{folder} is absent")
  renderer = facemask.FaceMaskRenderer(styles=["template"],
                                       template_dir=folder)
  names = renderer.template_names
  assert {"surgical", "surgical_left", "surgical_right", "N95", "KN95",
          "cloth", "gas"} <= set(names)
  assert not {"empty", "inpaint", "empty_left"} & set(names)
  frontal = _face(6)
  for k, name in enumerate(names):
    result = renderer(frontal["image"], frontal["landmarks"],
                      np.random.default_rng(k), style="template",
                      template=name)
    _check(frontal["image"], result, "template")
    if not name.endswith(("_left", "_right")):
      assert _at(result.mask, frontal["landmarks"], [54, 85]).all(), name
  for i in range(4):  # random picks, textures and tints included
    rec = _face(i)
    result = renderer(rec["image"], rec["landmarks"],
                      np.random.default_rng(i))
    _check(rec["image"], result, "template")


# ---------------------------------------------------------------------------
# Errors.


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="'plastic'"):
    facemask.FaceMaskRenderer(styles=["surgical", "plastic"])
  with pytest.raises(ValueError, match="template_dir"):
    facemask.FaceMaskRenderer(styles=["template"])
  with pytest.raises(ValueError, match="masks.cfg"):
    facemask.FaceMaskRenderer(template_dir=str(tmp_path))
  with pytest.raises(ValueError, match="lower_prob"):
    facemask.FaceMaskRenderer(lower_prob=1.5)
  with pytest.raises(ValueError, match="weights"):
    facemask.FaceMaskRenderer(styles={"n95": -1.0})
  (tmp_path / "masks.cfg").write_text(
      "[x]\ntemplate: masks/templates/missing.png\n")
  with pytest.raises(ValueError, match="missing.png"):
    facemask.FaceMaskRenderer(template_dir=str(tmp_path))


def test_bad_inputs():
  renderer = _renderer()
  rec = _face(0)
  image, lm = rec["image"], rec["landmarks"]
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="uint8"):
    renderer(image.astype(np.float32), lm, rng)
  with pytest.raises(ValueError, match="uint8"):
    renderer(image[..., 0], lm, rng)
  with pytest.raises(ValueError, match=r"\[98, 2\]"):
    renderer(image, lm[:68], rng)
  with pytest.raises(TypeError, match="Generator"):
    renderer(image, lm, 0)
  with pytest.raises(ValueError, match="'latex'"):
    renderer(image, lm, rng, style="latex")
  with pytest.raises(ValueError, match="template_dir"):
    renderer(image, lm, rng, style="template")
  missing = lm.copy()
  missing[54] = np.nan
  with pytest.raises(ValueError, match="54"):
    renderer(image, missing, rng, style="surgical")
  # Points the style does not need may be missing.
  partial = np.full_like(lm, np.nan)
  partial[[0, 16, 31, 64]] = lm[[0, 16, 31, 64]]
  renderer(image, partial, rng, style="box")
  with pytest.raises(ValueError, match="16"):
    renderer(image, np.full_like(lm, np.nan), rng, style="box")
  flipped = lm.copy()
  flipped[:33] = flipped[32::-1]  # jaw running the wrong way
  with pytest.raises(ValueError, match="jaw"):
    renderer(image, flipped, rng, style="n95")


def test_face_partly_or_wholly_outside_the_image():
  rec = _face(3)
  renderer = _renderer()
  half_out = rec["landmarks"] + np.array([-150.0, 0.0], np.float32)
  for style in PROCEDURAL:
    result = renderer(rec["image"], half_out, np.random.default_rng(0),
                      style=style)
    _check(rec["image"], result, style)
  gone = rec["landmarks"] + np.array([900.0, 900.0], np.float32)
  for style in NO_TEMPLATE:
    result = renderer(rec["image"], gone, np.random.default_rng(0),
                      style=style)
    if style != "freeform":  # the only style that ignores the landmarks
      assert not result.mask.any(), style
      np.testing.assert_array_equal(result.masked_image, rec["image"])
