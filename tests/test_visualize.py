"""Tests for jaxface.visualize: grids, landmark dots, PNG files."""

import os

import numpy as np
from PIL import Image
import pytest

from jaxface import visualize


def test_to_uint8():
  x = np.array([-0.5, 0.0, 0.5, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(visualize.to_uint8(x), [0, 0, 128, 255, 255])
  u = np.array([3, 200], np.uint8)
  assert visualize.to_uint8(u) is u
  np.testing.assert_array_equal(visualize.to_uint8(np.array([True, False])),
                                [255, 0])
  with pytest.raises(TypeError):
    visualize.to_uint8(np.array([1, 2], np.int32))


@pytest.mark.parametrize("rows,cols,pad", [(3, 2, 2), (1, 1, 0), (8, 5, 1)])
def test_grid_shape(rows, cols, pad):
  h, w = 6, 4
  columns = [np.zeros((rows, h, w, 3), np.float32) for _ in range(cols)]
  grid = visualize.make_grid(columns, pad=pad)
  assert grid.dtype == np.uint8
  assert grid.shape == (rows * (h + pad) + pad, cols * (w + pad) + pad, 3)


def test_grid_rows_limited_by_max_rows_and_smallest_batch():
  a = np.zeros((10, 5, 5, 3), np.float32)
  b = np.zeros((6, 5, 5, 1), np.uint8)
  assert visualize.make_grid([a], max_rows=4, pad=1).shape[0] == 4 * 6 + 1
  assert visualize.make_grid([a, b], max_rows=8, pad=1).shape[0] == 6 * 6 + 1


def test_grid_values_at_the_right_places():
  rng = np.random.default_rng(0)
  h, w, pad = 4, 5, 2
  col_float = rng.random((3, h, w, 3)).astype(np.float32)
  col_gray = rng.integers(0, 256, (3, h, w, 1), dtype=np.uint8)
  col_u8 = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
  grid = visualize.make_grid([col_float, col_gray, col_u8], pad=pad,
                          pad_value=0.0)
  for i in range(3):
    y0 = pad + i * (h + pad)
    cells = [grid[y0:y0 + h, pad + j * (w + pad):pad + j * (w + pad) + w]
             for j in range(3)]
    np.testing.assert_array_equal(
        cells[0], np.round(col_float[i] * 255).astype(np.uint8))
    np.testing.assert_array_equal(cells[1], np.repeat(col_gray[i], 3, -1))
    np.testing.assert_array_equal(cells[2], col_u8[i])
  # Padding: top rows, left columns and the gaps between cells.
  assert np.all(grid[:pad] == 0) and np.all(grid[:, :pad] == 0)
  assert np.all(grid[pad + h:2 * pad + h] == 0)
  assert np.all(grid[:, pad + w:2 * pad + w] == 0)


def test_grid_pad_value_and_errors():
  grid = visualize.make_grid([np.zeros((1, 2, 2, 3), np.float32)], pad=1)
  assert grid[0, 0].tolist() == [255, 255, 255]
  assert grid[1, 1].tolist() == [0, 0, 0]
  with pytest.raises(ValueError):
    visualize.make_grid([])
  with pytest.raises(ValueError):
    visualize.make_grid([np.zeros((1, 2, 2, 3)), np.zeros((1, 3, 2, 3))])
  with pytest.raises(ValueError):
    visualize.make_grid([np.zeros((2, 2, 3))])
  with pytest.raises(ValueError):
    visualize.make_grid([np.zeros((1, 2, 2, 2))])


def test_draw_points_single_image():
  img = np.zeros((7, 9, 1), np.float32)
  # (x, y) = (2, 3) -> row 3, col 2. A point off the image and a NaN point
  # draw nothing.
  pts = np.array([[2.2, 2.9], [100.0, -50.0], [np.nan, 1.0]])
  out = visualize.draw_points(img, pts, radius=1, color=(1.0, 0.5, 0.0))
  assert out.shape == (7, 9, 3) and out.dtype == np.float32
  drawn = np.argwhere(out[..., 0] > 0)
  want = {(3, 2), (2, 2), (4, 2), (3, 1), (3, 3)}  # disk of radius 1
  assert {tuple(p) for p in drawn} == want
  np.testing.assert_array_equal(out[3, 2], [1.0, 0.5, 0.0])  # exact
  assert np.all(img == 0)  # input untouched


def test_draw_points_batch_uint8_and_clipping():
  img = np.full((2, 5, 5, 3), 10, np.uint8)
  pts = np.array([[[0.0, 0.0]], [[4.0, 4.0]]])
  out = visualize.draw_points(img, pts, radius=0, color=(0.0, 1.0, 0.0))
  assert out.dtype == np.uint8
  assert out[0, 0, 0].tolist() == [0, 255, 0]
  assert out[1, 4, 4].tolist() == [0, 255, 0]
  assert np.count_nonzero(np.any(out != 10, axis=-1)) == 2
  # A radius-2 dot at a corner is clipped to the pixels inside the image.
  out = visualize.draw_points(img[:1], pts[:1], radius=2)
  assert np.count_nonzero(np.any(out[0] != 10, axis=-1)) == 6
  with pytest.raises(ValueError):
    visualize.draw_points(img, pts[:1])


def test_write_png_atomic(tmp_path):
  path = tmp_path / "samples" / "step_100.png"
  rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  visualize.write_png(path, rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
  # Overwrite with a float grayscale image.
  gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4, 1)
  visualize.write_png(str(path), gray)
  np.testing.assert_array_equal(
      np.asarray(Image.open(path)), np.round(gray[..., 0] * 255))
  assert sorted(os.listdir(path.parent)) == ["step_100.png"]  # no temp files
  with pytest.raises(ValueError):
    visualize.write_png(path, np.zeros((3, 4, 2), np.uint8))
  assert sorted(os.listdir(path.parent)) == ["step_100.png"]
