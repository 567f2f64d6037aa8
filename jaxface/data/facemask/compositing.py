"""Lighting a rendered mask like the photo and compositing it onto the photo.

Colour is multiplied by the low-frequency luminance of the face under the
mask (normalised) and by the exposure and colour cast of its surroundings,
converted to uint8, and blended with anti-aliased coverage:
`image * (1 - alpha) + colour * alpha`, with the binary map `alpha > 1/2`.
"""

import cv2
import numpy as np

# Rec. 601 luma weights of R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def light(image: np.ndarray, box, alpha: np.ndarray, rng: np.random.Generator,
          strength: float) -> tuple[np.ndarray, np.ndarray]:
  """Gain from the image's low-frequency lighting, for the region `box`.

  The luminance of the image under the mask (weighted by `alpha`, at a
  resolution of a few cells) divided by its mean gives the shading of the
  face; the mean luminance and colour of a wider region give exposure and
  colour cast.

  Args:
    image: uint8 [H, W, 3] input.
    box: (x0, y0, x1, y1) of the region being rendered.
    alpha: uint8 [h, w] coverage of the mask in that region.
    rng: randomness.
    strength: exponent of the local shading (0 = none).

  Returns:
    (gain [h, w] float32, per-channel factor [3] float32): the colour of a
    pixel is multiplied by gain * factor.
  """
  x0, y0, x1, y1 = box
  h, w = y1 - y0, x1 - x0
  crop = image[y0:y1, x0:x1]
  gh = int(np.clip(round(h / 18.0), 3, 6))
  gw = int(np.clip(round(w / 18.0), 3, 6))
  small = cv2.resize(crop, (gw, gh), interpolation=cv2.INTER_AREA)
  luma = small.astype(np.float32) @ LUMA + 4.0  # [gh, gw]
  a = cv2.resize(alpha, (gw, gh), interpolation=cv2.INTER_AREA).astype(
      np.float32) / 255.0 + 1e-3
  num = cv2.GaussianBlur(luma * a, (3, 3), 0.8)
  den = cv2.GaussianBlur(a, (3, 3), 0.8)
  local = num / den
  mean = float((luma * a).sum() / a.sum())
  gain = np.clip((local / mean) ** strength, 0.55, 1.45).astype(np.float32)
  gain = cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)
  # Exposure and colour cast of the surroundings (every few pixels).
  H, W = image.shape[:2]
  step = max(1, min(h, w) // 24)
  wide = image[max(0, y0 - h // 2):min(H, y1 + h // 2):step,
               max(0, x0 - w // 2):min(W, x1 + w // 2):step]
  env = wide.reshape(-1, 3).mean(0).astype(np.float32) + 4.0
  env_luma = float(env @ LUMA)
  exposure = float(np.clip((env_luma / 120.0) ** 0.35, 0.72, 1.12))
  cast = np.clip((env / env_luma) ** rng.uniform(0.1, 0.3), 0.85, 1.15)
  return gain, (exposure * cast).astype(np.float32)


def to_uint8(planes, gain: np.ndarray, factor: np.ndarray,
             grain: np.ndarray | None = None,
             blur: float = 0.0) -> np.ndarray:
  """Planar float colour (0..1) x gain x factor (+ grain) -> uint8 [h, w, 3].

  Args:
    planes: three [h, w] arrays (or scalars) of colour in [0, 1].
    gain: [h, w] lighting gain (see `light`).
    factor: [3] per-channel exposure and colour cast.
    grain: optional [h, w] noise added to every channel.
    blur: Gaussian blur sigma in pixels (0 = none), for a softer fabric.

  Returns:
    uint8 [h, w, 3].
  """
  out = []
  for k in range(3):
    plane = planes[k] * (gain * float(factor[k]))
    if grain is not None:
      plane += grain
    out.append(plane)
  rgb = cv2.merge(out)
  if blur > 0:
    rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
  return cv2.convertScaleAbs(rgb, alpha=255.0)  # rounds and saturates


def composite(image: np.ndarray, box,
              layers) -> tuple[np.ndarray, np.ndarray]:
  """Composites layers of (colour uint8 [h, w, 3], alpha uint8 [h, w]).

  Each layer gives `region * (1 - alpha) + colour * alpha`; pixels where
  every alpha is 0 are left as they are.

  Args:
    image: uint8 [H, W, 3]; not modified.
    box: (x0, y0, x1, y1), the region the layers cover.
    layers: (colour, alpha) pairs, bottom first.

  Returns:
    The new uint8 image and the uint8 {0, 1} full-size map where the
    combined coverage is above 1/2 (one layer: alpha > 127).
  """
  x0, y0, x1, y1 = box
  out = image.copy()
  region = image[y0:y1, x0:x1]
  total = None
  for colour, alpha in layers:
    a = alpha.astype(np.float32)
    region = cv2.blendLinear(colour, region, a, 255.0 - a)
    total = a if total is None else total + (255.0 - total) * (a / 255.0)
  out[y0:y1, x0:x1] = region
  mask = np.zeros(image.shape[:2], np.uint8)
  mask[y0:y1, x0:x1] = total > 127.5
  return out, mask
