"""MaskTheFace templates: reading a template folder, picking and warping one.

The folder follows MaskTheFace (aqeelanwar/MaskTheFace): `masks.cfg` names
for each template six anchor points a-f; the face gets six matching points
and a least-squares homography of the six pairs warps the RGBA template onto
it. Images are decoded on first use and kept in the renderer's cache (not
pickled), at the pyramid level the face needs.
"""

import configparser
import math
import pathlib

import cv2
import numpy as np

from jaxface.data import wflw
from jaxface.data.facemask import colours
from jaxface.data.facemask import compositing
from jaxface.data.facemask import geometry

# Head yaw (degrees) past which a template's `_left` / `_right` variant is
# used when `masks.cfg` has one.
TEMPLATE_YAW_DEG = 13.0

_ANCHOR_KEYS = ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f")
_TEXTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_templates(template_dir: str) -> dict:
  """Reads MaskTheFace's masks.cfg: {section: (file path, [6, 2] a-f)}.

  Args:
    template_dir: the folder holding masks.cfg and templates/.

  Returns:
    The sections that name a template, in file order.
  """
  root = pathlib.Path(template_dir)
  cfg_path = root / "masks.cfg"
  if not cfg_path.is_file():
    raise ValueError(f"template_dir {str(root)!r} has no masks.cfg "
                     f"({str(cfg_path)!r} not found)")
  # Values are plain paths and coordinates (no interpolation), and a
  # hand-edited file with a repeated section or key is read (the last value
  # wins) rather than refused.
  parser = configparser.ConfigParser(interpolation=None, strict=False)
  try:
    parser.read(cfg_path)
  except configparser.Error as e:
    raise ValueError(f"cannot parse {str(cfg_path)!r}: {e}") from e
  templates = {}
  for section in parser.sections():
    items = parser[section]
    if "template" not in items:
      continue  # MaskTheFace's `empty` / `inpaint` entries have no image
    # The paths in masks.cfg are relative to MaskTheFace's checkout (and may
    # use backslashes): only the file name is kept.
    name = pathlib.PurePath(items["template"].replace("\\", "/")).name
    path = root / "templates" / name
    if not path.is_file():
      path = root / name
    if not path.is_file():
      raise ValueError(f"{str(cfg_path)!r} [{section}]: template {name!r} "
                       f"not found under {str(root / 'templates')!r}")
    pts = []
    for key in _ANCHOR_KEYS:
      try:
        x, y = (float(v) for v in items[key].split(","))
      except (KeyError, ValueError) as e:
        raise ValueError(f"{str(cfg_path)!r} [{section}]: {key} must be "
                         f"'x, y' ({e})") from e
      pts.append((x, y))
    templates[section] = (str(path), np.array(pts, np.float64))
  if not templates:
    raise ValueError(f"{str(cfg_path)!r} names no template")
  return templates


def list_textures(template_dir: str) -> list[str]:
  """The print images under `textures/<group>/` of a template folder, sorted.

  Empty when the folder has no textures/.
  """
  tex_root = pathlib.Path(template_dir) / "textures"
  if not tex_root.is_dir():
    return []
  return sorted(str(p) for p in tex_root.glob("*/*")
                if p.suffix.lower() in _TEXTURE_SUFFIXES)


def load_rgba(path: str) -> np.ndarray:
  """An image file as premultiplied RGBA uint8 [h, w, 4]."""
  raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if raw is None:
    raise ValueError(f"cannot read image {path!r}")
  if raw.dtype != np.uint8:
    raw = (raw.astype(np.float32) * (255.0 / np.iinfo(raw.dtype).max)
           ).astype(np.uint8)
  if raw.ndim == 2:
    raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGRA)
  elif raw.shape[2] == 3:
    raw = cv2.cvtColor(raw, cv2.COLOR_BGR2BGRA)
  rgba = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA)
  # Premultiplied, so that resizing and warping do not bleed the colour of
  # transparent pixels into the edges.
  a = rgba[..., 3:].astype(np.uint16)
  rgba[..., :3] = ((rgba[..., :3].astype(np.uint16) * a + 127) // 255
                   ).astype(np.uint8)
  return rgba


def pick_template(templates: dict, landmarks: np.ndarray,
                  rng: np.random.Generator) -> str:
  """The masks.cfg section the `template` style draws for a face.

  A random frontal template (a section whose name has no `_left` /
  `_right` suffix), swapped for its `_left` (nose towards image-left) or
  `_right` variant when `estimate_yaw` is beyond +-`TEMPLATE_YAW_DEG` and
  masks.cfg has that variant.

  Args:
    templates: `parse_templates`' result.
    landmarks: [98, 2] WFLW pixel (x, y).
    rng: randomness (one integer).

  Returns:
    A key of `templates`.
  """
  if not templates:
    raise ValueError("no templates: the renderer has no template_dir")
  bases = [n for n in templates
           if not n.endswith(("_left", "_right"))] or list(templates)
  name = bases[int(rng.integers(len(bases)))]
  yaw = geometry.estimate_yaw(landmarks)
  if abs(yaw) > TEMPLATE_YAW_DEG:
    turned = name + ("_left" if yaw < 0 else "_right")
    if turned in templates:
      name = turned
  return name


def render_template(image: np.ndarray, lm: np.ndarray,
                    rng: np.random.Generator, name: str | None,
                    templates: dict, textures: list[str],
                    cache: dict) -> tuple[np.ndarray, np.ndarray]:
  """The `template` style: (masked uint8 image, uint8 {0, 1} map).

  Args:
    image: uint8 [H, W, 3].
    lm: [98, 2] float64 landmarks (the template points finite).
    rng: randomness.
    name: a key of `templates`, or None for `pick_template`'s choice.
    templates: `parse_templates`' result.
    textures: `list_textures`' result.
    cache: where decoded images are kept between calls.

  Returns:
    The map is the warped template's alpha > 127, as in MaskTheFace.
  """
  frame = geometry.face_frame(lm)
  if name is None:
    name = pick_template(templates, lm, rng)
  elif name not in templates:
    raise ValueError(f"template {name!r} is not in masks.cfg; there are "
                     f"{tuple(templates)}")
  face = _face_anchors(lm, frame)
  pts = templates[name][1][[0, 1, 2, 5, 4, 3]]  # a b c f e d, as `face`
  level = _pyramid_level(pts, face, name)
  rgba, ref = _template_level(cache, templates, name, level)
  s = 0.5 ** level
  pts_l = (pts + 0.5) * s - 0.5  # the anchors in the level's pixels
  hom = _homography(pts_l, face, name)
  box = _box(rgba.shape[:2], hom, face, frame.scale, image.shape)
  if box is None:
    return image.copy(), np.zeros(image.shape[:2], np.uint8)
  x0, y0, x1, y1 = box
  shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
  m = shift @ hom
  warped = cv2.warpPerspective(rgba, m, (x1 - x0, y1 - y0),
                               flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  alpha = np.ascontiguousarray(warped[..., 3])
  # The map is alpha > 127 (as in MaskTheFace). Faint coverage more than
  # two pixels from it (thin ear loops that the warp shrinks below half
  # coverage) is dropped, so that the map is what the renderer changes.
  near = cv2.dilate((alpha > 127).astype(np.uint8), np.ones((5, 5),
                                                            np.uint8))
  alpha *= near
  a = alpha.astype(np.float32) * (1.0 / 255.0)
  planes = [warped[..., k].astype(np.float32) * (1.0 / 255.0)
            for k in range(3)]  # premultiplied
  h, w = rgba.shape[:2]
  planes = _recolour(rng, planes, a, ref, (w, h), m, textures, cache)
  gain, factor = compositing.light(image, box, alpha, rng,
                                   rng.uniform(0.3, 0.6))
  # Straight (not premultiplied) colour for `composite`.
  gain = gain / np.maximum(a, 1.0 / 255.0)
  colour = compositing.to_uint8(planes, gain, factor)
  return compositing.composite(image, box, [(colour, alpha)])


def _face_anchors(lm: np.ndarray, frame: geometry.Frame) -> np.ndarray:
  """The face's points for the template anchors, [6, 2] in order a b c f e d.

  b on the nose bridge, a and c on the jaw contour at the height of the eye
  line moved down by the length of the nose, d and f on the jaw contour at
  the height of the lower lip, e the chin.
  """
  jaw = lm[:33]
  down = frame.down
  nose = float((lm[54] - lm[51]) @ down)
  h_ac = float((lm[51] - frame.eyes) @ down) + max(nose, 0.0)
  h_df = float((lm[85] - frame.eyes) @ down)
  return np.array([
      geometry.jaw_crossing(jaw, frame, h_ac, 0),  # a
      0.5 * (lm[51] + lm[53]),  # b
      geometry.jaw_crossing(jaw, frame, h_ac, 1),  # c
      geometry.jaw_crossing(jaw, frame, h_df, 1),  # f
      lm[wflw.CHIN],  # e
      geometry.jaw_crossing(jaw, frame, h_df, 0),  # d
  ])


def _box(size, hom: np.ndarray, face: np.ndarray, scale: float,
         shape) -> tuple[int, int, int, int] | None:
  """The image box (x0, y0, x1, y1) the warped template can cover, or None.

  Args:
    size: (h, w) of the template image.
    hom: [3, 3] template -> image homography.
    face: [6, 2] the face anchors.
    scale: the face scale in pixels.
    shape: the image's shape.
  """
  h, w = size
  corners = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
  warped_c = cv2.perspectiveTransform(corners[None], hom)[0]
  # A wild homography can throw corners far away: the box is kept to a few
  # face sizes around the anchors.
  centre = face.mean(0)
  warped_c = np.clip(warped_c, centre - 3 * scale, centre + 3 * scale)
  return geometry.bounds(warped_c, 2, shape)


def _homography(pts: np.ndarray, face: np.ndarray, name: str) -> np.ndarray:
  """Least-squares homography taking template points to face points."""
  hom, _ = cv2.findHomography(pts.astype(np.float32),
                              face.astype(np.float32), 0)
  if hom is None or not np.all(np.isfinite(hom)):
    raise ValueError(f"cannot place template {name!r} on these landmarks")
  return hom


def _pyramid_level(pts: np.ndarray, face: np.ndarray, name: str) -> int:
  """How many times to halve the template before warping it.

  The level just finer than the output where the least-squares homography
  magnifies most (at the six anchors), so that the warp neither aliases nor
  decodes more pixels than it uses.
  """
  hom0 = _homography(pts, face, name)
  probe = np.concatenate([pts, pts + [1.0, 0.0], pts + [0.0, 1.0]])
  mapped = cv2.perspectiveTransform(probe[None].astype(np.float64), hom0)[0]
  mapped = mapped.reshape(3, 6, 2)
  gain = max(float(np.linalg.norm(mapped[1] - mapped[0], axis=-1).max()),
             float(np.linalg.norm(mapped[2] - mapped[0], axis=-1).max()),
             1e-3)
  return int(np.clip(math.floor(math.log2(max(1.0 / gain, 1.0))), 0, 8))


def _template_level(cache: dict, templates: dict, name: str, level: int):
  """Template `name` halved `level` times: (premultiplied RGBA, ref).

  `ref` is the brightness of the template's bright fabric (for tinting).
  Only the levels in use are kept (a 256-pixel face uses a level a few
  times smaller than the file), so a worker holds a few MB of templates.
  """
  key = ("template", name, level)
  if key not in cache:
    rgba = load_rgba(templates[name][0])
    luma = rgba[..., :3].astype(np.float32) @ compositing.LUMA
    alpha = rgba[..., 3].astype(np.float32)
    covered = alpha > 127
    ref = float(np.percentile(luma[covered] / (alpha[covered] / 255.0),
                              90)) if covered.any() else 255.0
    for _ in range(level):
      h, w = rgba.shape[:2]
      rgba = cv2.resize(rgba, ((w + 1) // 2, (h + 1) // 2),
                        interpolation=cv2.INTER_AREA)
    cache[key] = (rgba, max(ref, 16.0))
  return cache[key]


def _texture(cache: dict, textures: list[str], index: int) -> np.ndarray:
  """Texture image `index` of textures/, uint8 RGB on white, <= 256 px."""
  key = ("texture", index)
  if key not in cache:
    rgba = load_rgba(textures[index])
    h, w = rgba.shape[:2]
    s = 256.0 / max(h, w)
    if s < 1:
      rgba = cv2.resize(rgba, (max(1, int(w * s)), max(1, int(h * s))),
                        interpolation=cv2.INTER_AREA)
    # Composited on white (transparent parts of a print are the cloth).
    rgba[..., :3] += 255 - rgba[..., 3:]
    cache[key] = np.ascontiguousarray(rgba[..., :3])
  return cache[key]


def _recolour(rng: np.random.Generator, planes: list[np.ndarray],
              a: np.ndarray, ref: float, size, m: np.ndarray,
              textures: list[str], cache: dict) -> list[np.ndarray]:
  """Maybe recolours a warped template, keeping its shading.

  With probability 0.3 a cloth colour, with 0.2 more (when the folder has
  textures) a print from textures/, otherwise the template as it is. The
  new colour is the template's brightness (relative to its bright fabric)
  times the colour or print.

  Args:
    rng: randomness.
    planes: three [h, w] premultiplied colour planes in [0, 1].
    a: [h, w] float32 coverage in [0, 1].
    ref: the template's bright-fabric brightness (`_template_level`).
    size: (w, h) of the template image at its pyramid level.
    m: [3, 3] template level -> box homography.
    textures: `list_textures`' result.
    cache: where decoded textures are kept.

  Returns:
    Three premultiplied colour planes.
  """
  pick = rng.random()
  if not (pick < 0.3 or (pick < 0.5 and textures)):
    return planes
  shading = (planes[0] * float(compositing.LUMA[0])
             + planes[1] * float(compositing.LUMA[1])
             + planes[2] * float(compositing.LUMA[2])) * (255.0 / ref)
  if pick < 0.3:
    tint = colours.palette_colour(rng, "cloth")
    return [np.minimum(shading * float(c), a) for c in tint]
  # A printed fabric from textures/, tiled over the template's own frame so
  # that it follows the warp.
  w, h = size
  bh, bw = a.shape
  tex = _texture(cache, textures, int(rng.integers(len(textures))))
  th_, tw_ = tex.shape[:2]
  zoom = max(w / tw_, h / th_) * rng.uniform(0.35, 1.0)
  tm = np.array([[zoom, 0, 0], [0, zoom, 0], [0, 0, 1]], np.float64)
  tex_w = cv2.warpPerspective(tex, m @ tm, (bw, bh),
                              flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_WRAP)
  shading = np.minimum(shading, 1.2) * (1.0 / 255.0)
  return [np.minimum(shading * tex_w[..., k], a) for k in range(3)]
