"""Random fabric colours: colour families in HSV and each style's palette."""

import colorsys

import numpy as np

# HSV ranges per colour family: hue (degrees), saturation, value.
_FAMILIES = {
    "white": ((0, 360), (0.0, 0.06), (0.86, 0.97)),
    "light_blue": ((188, 208), (0.22, 0.5), (0.78, 0.95)),
    "teal": ((160, 182), (0.2, 0.45), (0.62, 0.88)),
    "pastel": ((0, 360), (0.14, 0.38), (0.78, 0.95)),
    "black": ((0, 360), (0.0, 0.15), (0.07, 0.2)),
    "grey": ((0, 360), (0.0, 0.06), (0.35, 0.78)),
    "dark": ((0, 360), (0.3, 0.8), (0.16, 0.42)),
    "vivid": ((0, 360), (0.5, 0.95), (0.45, 0.92)),
    "navy": ((215, 235), (0.45, 0.8), (0.22, 0.45)),
    "beige": ((28, 48), (0.08, 0.3), (0.7, 0.9)),
}
# Relative weights of the families per procedural style (and "cloth" for
# recoloured templates).
_PALETTES = {
    "surgical": {"light_blue": 45, "white": 20, "teal": 10, "pastel": 10,
                 "black": 10, "grey": 5},
    "n95": {"white": 55, "beige": 15, "grey": 10, "pastel": 8, "black": 6,
            "vivid": 6},
    "kn95": {"white": 40, "black": 20, "grey": 10, "pastel": 15, "vivid": 7,
             "dark": 4, "light_blue": 4},
    "cloth": {"black": 18, "dark": 18, "vivid": 18, "pastel": 12, "grey": 10,
              "white": 8, "navy": 10, "beige": 6},
}
_PALETTES["surgical_pleated"] = _PALETTES["surgical"]
_PALETTES["cloth_printed"] = _PALETTES["cloth"]


def colour(rng: np.random.Generator, family: str) -> np.ndarray:
  """A random RGB colour in [0, 1] of one family (a key of `_FAMILIES`)."""
  (h0, h1), (s0, s1), (v0, v1) = _FAMILIES[family]
  rgb = colorsys.hsv_to_rgb((rng.uniform(h0, h1) / 360.0) % 1.0,
                            rng.uniform(s0, s1), rng.uniform(v0, v1))
  return np.array(rgb, np.float32)


def palette_colour(rng: np.random.Generator, style: str) -> np.ndarray:
  """A random colour from the style's mix of families (`_PALETTES`)."""
  table = _PALETTES[style]
  names = list(table)
  w = np.array([table[n] for n in names], np.float64)
  return colour(rng, names[rng.choice(len(names), p=w / w.sum())])


def contrasting(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
  """A colour that stands out of `base` (for prints and valves)."""
  for _ in range(8):
    c = colour(rng, str(rng.choice(["white", "black", "vivid", "pastel",
                                    "dark", "navy"])))
    if np.abs(c - base).sum() > 0.45:
      return c
  # Eight misses in a row: darken a light base or lighten a dark one.
  return np.where(base > 0.5, base * 0.35, 1.0 - (1.0 - base) * 0.35)
