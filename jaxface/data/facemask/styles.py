"""The procedural mask styles: placement, fabric, lighting and loops together.

A procedural mask is placed from the landmarks (`outline`), its fabric is
drawn in its own frame and warped onto the image (`fabric`), lit like the
face under it (`compositing.light`), given sensor grain and maybe a slight
blur, and composited with its ear loops or straps under it. Coverage is
anti-aliased (OpenCV LINE_AA polygons at sub-pixel precision); everything is
computed in the bounding box of the mask, in float32.
"""

import cv2
import numpy as np

from jaxface.data.facemask import colours
from jaxface.data.facemask import compositing
from jaxface.data.facemask import fabric
from jaxface.data.facemask import geometry
from jaxface.data.facemask import outline
from jaxface.data.facemask import textures

PROCEDURAL_STYLES = ("surgical", "surgical_pleated", "n95", "kn95", "cloth",
                     "cloth_printed")


def render_procedural(image: np.ndarray, lm: np.ndarray,
                      rng: np.random.Generator, style: str,
                      lower_prob: float, jitter: float,
                      bank: textures.NoiseBank
                      ) -> tuple[np.ndarray, np.ndarray]:
  """A procedural style: (masked uint8 image, uint8 {0, 1} map).

  Args:
    image: uint8 [H, W, 3].
    lm: [98, 2] float64 landmarks (the points the style needs finite).
    rng: randomness.
    style: one of `PROCEDURAL_STYLES`.
    lower_prob: probability that the mask is worn under the nose.
    jitter: size of the random size / position changes, in face sizes.
    bank: noise fields.

  Returns:
    The map is the combined coverage of mask and loops above 1/2.
  """
  frame = geometry.face_frame(lm)
  lower = rng.random() < lower_prob
  shape = outline.mask_shape(lm, frame, rng, style, lower, jitter)
  loops, thick = outline.loops(lm, frame, shape, style)
  box = geometry.bounds(np.concatenate([shape.outline] + loops), thick + 3,
                        image.shape)
  if box is None:  # the mask lies outside the image
    return image.copy(), np.zeros(image.shape[:2], np.uint8)
  x0, y0, x1, y1 = box
  bh, bw = y1 - y0, x1 - x0
  origin = np.array([x0, y0], np.float64)
  body_alpha = np.zeros((bh, bw), np.uint8)
  cv2.fillPoly(body_alpha, [geometry.fixed(shape.outline, origin)], 255,
               cv2.LINE_AA, 4)
  loop_alpha = None
  if loops:
    loop_alpha = np.zeros((bh, bw), np.uint8)
    cv2.polylines(loop_alpha, [geometry.fixed(c, origin) for c in loops],
                  False, 255, int(round(thick)), cv2.LINE_AA, 4)

  u = rng.uniform
  colour = colours.palette_colour(rng, style)
  rgb = fabric.fabric(rng, style, colour, shape.outline, origin, (bh, bw),
                      shape.anchors, bank)
  gain, factor = compositing.light(image, box, body_alpha, rng, u(0.5, 0.9))
  grain = textures.crop(bank.white, (bh, bw), rng) * u(0.004, 0.015)
  # Some photos are softer than the fabric drawn at one texel per pixel.
  blur = (u(0.3, 0.7) * max(1.0, frame.scale / 150.0) if rng.random() < 0.5
          else 0.0)
  body = compositing.to_uint8(cv2.split(rgb), gain, factor, grain, blur)
  layers = []
  if loop_alpha is not None:
    loop_col = _loop_colour(rng, style, colour)
    loop_rgb = compositing.to_uint8([np.float32(c) for c in loop_col], gain,
                                    factor * 0.95)
    layers.append((loop_rgb, loop_alpha))
  layers.append((body, body_alpha))
  return compositing.composite(image, box, layers)


def _loop_colour(rng: np.random.Generator, style: str,
                 colour: np.ndarray) -> np.ndarray:
  """RGB [3] of the loops or straps of a mask of colour `colour`."""
  u = rng.uniform
  if style == "n95":  # straps
    return (colours.colour(rng, str(rng.choice(["white", "vivid", "beige"])))
            if rng.random() < 0.7 else colour)
  if style in ("surgical", "surgical_pleated"):
    return (colours.colour(rng, "white") if rng.random() < 0.7
            else colour * 1.05)
  return colour * u(0.85, 1.0)
