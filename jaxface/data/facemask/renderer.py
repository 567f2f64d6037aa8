"""`FaceMaskRenderer`: checks its inputs and hands each style to its module.

Also the style table (`STYLES`, label = index) and `RenderedMask`, what a
render returns.
"""

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from jaxface.data import schema
from jaxface.data import wflw
from jaxface.data.facemask import geometry
from jaxface.data.facemask import holes
from jaxface.data.facemask import styles as procedural_styles
from jaxface.data.facemask import templates
from jaxface.data.facemask import textures

PROCEDURAL_STYLES = procedural_styles.PROCEDURAL_STYLES
HOLE_STYLES = holes.HOLE_STYLES
# The style table is the batch contract's (`schema.MASK_STYLES`): a style's
# label is its index there.
STYLES = schema.MASK_STYLES
if STYLES != PROCEDURAL_STYLES + ("template",) + HOLE_STYLES:
  raise ImportError(f"schema.MASK_STYLES {STYLES} does not list the "
                    "renderer's styles in order")
STYLE_ID = {name: i for i, name in enumerate(STYLES)}
DEFAULT_STYLES = PROCEDURAL_STYLES

MIN_IMAGE_SIZE = 16

# Landmarks each kind of placement reads (all must be finite).
_NEEDED = {
    "procedural": np.concatenate([wflw.JAW, np.arange(51, 60), geometry.EYES,
                                  [79]]),
    "template": np.concatenate([wflw.JAW, np.arange(51, 55), geometry.EYES,
                                [85]]),
    "box": np.array([0, 16, 31, 64]),
    "freeform": np.array([], np.int64),
}
_NO_TEMPLATE_DIR = ("style 'template' needs template_dir (a MaskTheFace "
                    "folder with masks.cfg)")


@dataclasses.dataclass(frozen=True)
class RenderedMask:
  """A face wearing a rendered mask.

  Attributes:
    masked_image: uint8 [H, W, 3], the input image with the mask drawn on it.
    mask: uint8 [H, W] in {0, 1}, 1 where the mask is (alpha > 1/2).
    style: int, index of the style in `STYLES`.
  """
  masked_image: np.ndarray
  mask: np.ndarray
  style: int


class FaceMaskRenderer:
  """Draws synthetic face masks onto face photos; see the package docstring.

  Host-side (NumPy + OpenCV), picklable (caches are rebuilt lazily after
  unpickling), deterministic given the generator passed to each call.
  """

  def __init__(self,
               styles: Sequence[str] | Mapping[str, float] = DEFAULT_STYLES,
               template_dir: str | os.PathLike | None = None,
               lower_prob: float = 0.1,
               jitter: float = 0.05):
    """Creates a renderer.

    Args:
      styles: the styles to draw from: names from `STYLES` (uniform), or a
        mapping name -> relative weight.
      template_dir: a MaskTheFace-format folder (`masks.cfg`, `templates/`,
        optional `textures/<group>/`), needed by the `template` style.
      lower_prob: probability that a procedural mask is worn under the nose.
      jitter: size of the random size / position changes of a procedural
        mask, as a fraction of the face size.
    """
    names, weights = _style_weights(styles)
    if not 0.0 <= float(lower_prob) <= 1.0:
      raise ValueError(f"lower_prob={lower_prob!r} must be in [0, 1]")
    if not 0.0 <= float(jitter) <= 0.3:
      raise ValueError(f"jitter={jitter!r} must be in [0, 0.3]")
    self.styles = names
    self.weights = weights
    self.lower_prob = float(lower_prob)
    self.jitter = float(jitter)
    self.template_dir = None if template_dir is None else os.fspath(
        template_dir)
    self._templates = {}
    self._textures = []
    if self.template_dir is not None:
      self._templates = templates.parse_templates(self.template_dir)
      self._textures = templates.list_textures(self.template_dir)
    elif "template" in self.styles:
      raise ValueError(_NO_TEMPLATE_DIR)
    self._cache = {}

  def __getstate__(self):
    """Plain settings only; images and noise are rebuilt lazily."""
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  @property
  def template_names(self) -> tuple[str, ...]:
    """Sections of masks.cfg that name a template (empty without a dir)."""
    return tuple(self._templates)

  box_bounds = staticmethod(holes.box_bounds)

  def pick_template(self, landmarks: np.ndarray,
                    rng: np.random.Generator) -> str:
    """The masks.cfg section the `template` style draws for a face.

    See `templates.pick_template` (a frontal template, or its `_left` /
    `_right` variant for a turned face).

    Args:
      landmarks: [98, 2] WFLW pixel (x, y).
      rng: randomness (one integer).

    Returns:
      A name from `template_names`.
    """
    return templates.pick_template(self._templates, landmarks, rng)

  def __call__(self, image: np.ndarray, landmarks: np.ndarray,
               rng: np.random.Generator, style: str | None = None,
               template: str | None = None) -> RenderedMask:
    """Renders a face mask onto a copy of `image`.

    Args:
      image: uint8 [H, W, 3] RGB; not modified.
      landmarks: [98, 2] WFLW pixel (x, y); rows may be NaN where unknown,
        but not the ones the style needs for placement; not modified.
      rng: the randomness of this render.
      style: a name from `STYLES`, or None to draw one from the
        constructor's styles.
      template: for the `template` style, a section of masks.cfg to use as
        it is (default: a random frontal template, swapped for its
        `_left` / `_right` variant when the head is turned).

    Returns:
      A `RenderedMask`.
    """
    if not isinstance(rng, np.random.Generator):
      raise TypeError(f"rng must be a np.random.Generator, got "
                      f"{type(rng).__name__}")
    image, lm = _checked_inputs(image, landmarks)
    if template is not None:
      if style not in (None, "template"):
        raise ValueError("template= is only for style='template'")
      style = "template"
    if style is None:
      style = self.styles[int(rng.choice(len(self.styles), p=self.weights))]
    if style not in STYLE_ID:
      raise ValueError(f"unknown face-mask style {style!r}; the styles are "
                       f"{STYLES}")
    if style == "template" and not self._templates:
      raise ValueError(_NO_TEMPLATE_DIR)
    _check_needed(lm, style)
    if style == "box":
      out, mask = holes.render_box(image, lm)
    elif style == "freeform":
      out, mask = holes.render_freeform(image, rng)
    elif style == "template":
      out, mask = templates.render_template(
          image, lm, rng, template, self._templates, self._textures,
          self._cache)
    else:
      out, mask = procedural_styles.render_procedural(
          image, lm, rng, style, self.lower_prob, self.jitter, self._bank())
    return RenderedMask(out, mask, STYLE_ID[style])

  def _bank(self) -> textures.NoiseBank:
    """The noise fields, made on first use (and after unpickling)."""
    if "bank" not in self._cache:
      self._cache["bank"] = textures.NoiseBank()
    return self._cache["bank"]


def _style_weights(styles) -> tuple[tuple[str, ...], np.ndarray]:
  """The constructor's `styles` as (names, probabilities summing to 1)."""
  if isinstance(styles, str):
    styles = (styles,)
  if isinstance(styles, Mapping):
    names, weights = list(styles.keys()), [float(v) for v in styles.values()]
  else:
    names = list(styles)
    weights = [1.0] * len(names)
  if not names:
    raise ValueError("styles is empty")
  for name in names:
    if name not in STYLE_ID:
      raise ValueError(f"unknown face-mask style {name!r}; the styles are "
                       f"{STYLES}")
  if len(set(names)) != len(names):
    raise ValueError(f"styles has repeated names: {names}")
  w = np.array(weights, np.float64)
  if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
    raise ValueError(f"style weights must be >= 0 and not all 0: {weights}")
  return tuple(names), w / w.sum()


def _checked_inputs(image, landmarks) -> tuple[np.ndarray, np.ndarray]:
  """(contiguous image, float64 copy of the landmarks), or ValueError."""
  image = np.ascontiguousarray(image)
  if (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3
      or min(image.shape[:2]) < MIN_IMAGE_SIZE):
    raise ValueError(
        "image must be uint8 [H, W, 3] RGB with H, W >= "
        f"{MIN_IMAGE_SIZE}; got {image.dtype} {image.shape}")
  lm = np.array(landmarks, np.float64)  # a copy
  if lm.shape != (wflw.NUM_LANDMARKS, 2):
    raise ValueError(f"landmarks must be [{wflw.NUM_LANDMARKS}, 2], got "
                     f"{lm.shape}")
  return image, lm


def _check_needed(lm: np.ndarray, style: str) -> None:
  """ValueError naming the landmarks `style` needs that are not finite."""
  kind = style if style in ("template", "box", "freeform") else "procedural"
  needed = _NEEDED[kind]
  bad = needed[~np.all(np.isfinite(lm[needed]), axis=-1)]
  if len(bad):
    raise ValueError(f"landmarks {bad.tolist()} are missing (NaN / inf); "
                     f"the {style!r} style needs points {needed.tolist()}")


def render(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
           style: str | None = None, **kwargs) -> RenderedMask:
  """One-off `FaceMaskRenderer(**kwargs)(image, landmarks, rng, style)`.

  Builds a renderer per call (its noise bank and templates are not kept):
  make a `FaceMaskRenderer` once for a pipeline.
  """
  return FaceMaskRenderer(**kwargs)(image, landmarks, rng, style)
