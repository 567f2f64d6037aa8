"""Pictures for people: uint8 conversion, grids, landmark dots, PNG files.

Used by the training loop's sample grids, the tasks' `sample_grid`, the
TensorBoard writer and the data layer's contact sheet. Everything here is
NumPy on the host; pass device arrays through `jax.device_get` (or
`np.asarray`) first.
"""

import io
import os
from typing import Sequence

import numpy as np

from jaxface import fileio


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Converts images to uint8.

  Args:
    images: uint8 images (returned as they are) or float images in [0, 1]
      (clipped, scaled by 255 and rounded). Bool arrays count as {0, 1}.

  Returns:
    A uint8 array of the same shape.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  if images.dtype == np.bool_ or np.issubdtype(images.dtype, np.floating):
    x = np.clip(images.astype(np.float32), 0.0, 1.0)
    return np.round(x * 255.0).astype(np.uint8)
  raise TypeError(
      f"expected uint8, bool or float images in [0, 1], got {images.dtype}")


def to_rgb(images: np.ndarray) -> np.ndarray:
  """Broadcasts single-channel `[..., 1]` images to `[..., 3]`."""
  images = np.asarray(images)
  if images.shape[-1] == 3:
    return images
  if images.shape[-1] == 1:
    return np.repeat(images, 3, axis=-1)
  raise ValueError(f"expected 1 or 3 channels, got shape {images.shape}")


def make_grid(columns: Sequence[np.ndarray],
              *,
              max_rows: int = 8,
              pad: int = 2,
              pad_value: float = 1.0) -> np.ndarray:
  """Tiles several batches side by side: one row per example.

  Column `j` shows `columns[j]` (e.g. masked input | landmarks | output |
  composite | target); row `i` shows example `i` of every column. Cells are
  separated, and the grid surrounded, by `pad` pixels of `pad_value`, so

    H' = rows * (H + pad) + pad,   W' = len(columns) * (W + pad) + pad.

  Args:
    columns: Batches `[B, H, W, C]` with the same `H` and `W`; `C` is 1
      (broadcast to RGB) or 3; uint8, or float in [0, 1]. Batches may differ
      in size: the grid has as many rows as the smallest, at most `max_rows`.
    max_rows: Largest number of examples shown.
    pad: Padding in pixels.
    pad_value: Padding brightness in [0, 1] (1 = white).

  Returns:
    A uint8 `[H', W', 3]` image.
  """
  if not columns:
    raise ValueError("make_grid needs at least one column")
  if max_rows < 1 or pad < 0:
    raise ValueError(f"bad max_rows={max_rows} or pad={pad}")
  cols = [np.asarray(c) for c in columns]
  for j, c in enumerate(cols):
    if c.ndim != 4:
      raise ValueError(f"column {j}: expected [B, H, W, C], got {c.shape}")
  height, width = cols[0].shape[1:3]
  for j, c in enumerate(cols):
    if c.shape[1:3] != (height, width):
      raise ValueError(
          f"column {j} has images of {c.shape[1:3]}, column 0 of "
          f"{(height, width)}")
  rows = min(max_rows, min(c.shape[0] for c in cols))
  if rows < 1:
    raise ValueError("make_grid got an empty batch")

  fill = int(round(float(np.clip(pad_value, 0.0, 1.0)) * 255.0))
  grid = np.full((rows * (height + pad) + pad,
                  len(cols) * (width + pad) + pad, 3), fill, np.uint8)
  for j, c in enumerate(cols):
    cells = to_rgb(to_uint8(c[:rows]))  # [rows, H, W, 3]
    x0 = pad + j * (width + pad)
    for i in range(rows):
      y0 = pad + i * (height + pad)
      grid[y0:y0 + height, x0:x0 + width] = cells[i]
  return grid


def draw_points(image: np.ndarray,
                landmarks: np.ndarray,
                radius: int = 1,
                color: Sequence[float] = (1.0, 0.0, 0.0)) -> np.ndarray:
  """Draws landmarks as filled dots onto a copy of the image(s).

  Landmarks are `(x, y)` pixel coordinates with pixel `(row i, col j)`
  centred at `(j, i)`; each dot covers the pixels within `radius` of the
  rounded position (radius 0: one pixel). Points partly or wholly outside
  the image are clipped; non-finite points are skipped.

  Args:
    image: `[H, W, C]` or a batch `[B, H, W, C]`, C in {1, 3}; uint8 or float
      in [0, 1]. Single-channel images come back as RGB.
    landmarks: `[K, 2]` (or `[B, K, 2]` for a batch) points.
    radius: Dot radius in pixels.
    color: RGB in [0, 1] (scaled to 255 for uint8 images).

  Returns:
    A new array with the image's dtype and 3 channels.
  """
  image = np.asarray(image)
  landmarks = np.asarray(landmarks, np.float64)
  single = image.ndim == 3
  if single:
    image, landmarks = image[None], landmarks[None]
  if image.ndim != 4 or landmarks.ndim != 3 or landmarks.shape[-1] != 2:
    raise ValueError(
        f"expected image [B, H, W, C] and landmarks [B, K, 2], got "
        f"{image.shape} and {landmarks.shape}")
  if landmarks.shape[0] != image.shape[0]:
    raise ValueError(
        f"batch sizes differ: {image.shape[0]} images, "
        f"{landmarks.shape[0]} landmark sets")
  out = to_rgb(image).copy()
  batch, height, width, _ = out.shape
  rgb = np.clip(np.asarray(color, np.float64).reshape(3), 0.0, 1.0)
  if out.dtype == np.uint8:
    value = np.round(rgb * 255.0).astype(np.uint8)
  else:
    value = rgb.astype(out.dtype)

  # Disk-shaped stamp of pixel offsets around each rounded point.
  r = int(radius)
  dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
  inside = dx * dx + dy * dy <= r * r
  dx, dy = dx[inside], dy[inside]  # [M]

  finite = np.all(np.isfinite(landmarks), axis=-1)  # [B, K]
  centres = np.where(finite[..., None], landmarks, 0.0)
  # Clipping far-away points to just outside the image (where no stamp pixel
  # lands inside) avoids integer overflow without changing the result.
  px = np.clip(centres[..., 0], -r - 1, width + r)
  py = np.clip(centres[..., 1], -r - 1, height + r)
  cx = np.round(px).astype(np.int64)[..., None] + dx  # [B, K, M]
  cy = np.round(py).astype(np.int64)[..., None] + dy
  bi = np.broadcast_to(np.arange(batch)[:, None, None], cx.shape)
  keep = (finite[..., None] & (cx >= 0) & (cx < width) & (cy >= 0)
          & (cy < height))
  out[bi[keep], cy[keep], cx[keep]] = value
  return out[0] if single else out


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes an image as PNG atomically (`fileio.write_atomic`).

  Readers never see a partial file, and an interrupted write leaves any
  previous file in place.

  Args:
    path: Destination, a local path or a URL (`gs://`); missing parent
      directories are created.
    image: `[H, W]` or `[H, W, C]` with C in (1, 3, 4); uint8, or float in
      [0, 1].
  """
  # Imported here: only this function needs Pillow.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  arr = to_uint8(np.asarray(image))
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
    raise ValueError(f"expected [H, W] or [H, W, C] image, got {arr.shape}")
  png = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(arr)).save(png, format="PNG")
  fileio.write_atomic(fileio.as_path(path), png.getvalue())


def overlay(images: np.ndarray, maps: np.ndarray,
            color: Sequence[float] = (1.0, 0.0, 0.0),
            alpha: float = 0.5) -> np.ndarray:
  """Float [B, H, W, 3] images with `maps` ([B, H, W(, 1)] in [0, 1]) tinted.

  Each pixel moves towards `color` by `alpha * map`.
  """
  x = to_uint8(to_rgb(np.asarray(images))).astype(np.float32) / 255.0
  m = np.asarray(maps, np.float32)
  if m.ndim == 3:
    m = m[..., None]
  a = alpha * np.clip(m, 0.0, 1.0)
  return x * (1 - a) + np.asarray(color, np.float32) * a


def draw_boxes(images: np.ndarray, boxes: np.ndarray, valid: np.ndarray,
               color: Sequence[float] = (1.0, 1.0, 0.0)) -> np.ndarray:
  """Float copies of [B, H, W, 3] images with box outlines drawn.

  Args:
    images: uint8 or float in [0, 1].
    boxes: [B, N, 4] `(x1, y1, x2, y2)` in continuous pixel coordinates
      (`jaxface.boxes`); clipped to the image.
    valid: [B, N] bool; only these are drawn.
    color: RGB in [0, 1].
  """
  out = to_uint8(to_rgb(np.asarray(images))).astype(np.float32) / 255.0
  h, w = out.shape[1:3]
  c = np.asarray(color, np.float32)
  for i, (bs, vs) in enumerate(zip(np.asarray(boxes), np.asarray(valid))):
    for (x1, y1, x2, y2), v in zip(bs, vs):
      if not v or not np.all(np.isfinite((x1, y1, x2, y2))):
        continue
      c1, c2 = (int(np.clip(np.floor(x1), 0, w - 1)),
                int(np.clip(np.ceil(x2) - 1, 0, w - 1)))
      r1, r2 = (int(np.clip(np.floor(y1), 0, h - 1)),
                int(np.clip(np.ceil(y2) - 1, 0, h - 1)))
      out[i, r1:r2 + 1, [c1, c2]] = c
      out[i, [r1, r2], c1:c2 + 1] = c
  return out
