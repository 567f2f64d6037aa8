"""The contact-sheet command renders masked faces into one PNG."""

import numpy as np

from jaxface.data import contact_sheet


def test_sheet_of_procedural_faces_with_rendered_masks():
  grid = contact_sheet.sheet("procedural", 9, 64, styles="surgical,kn95",
                             landmarks=True)
  # 3 x 3 tiles of 64 px with 2 px padding.
  assert grid.shape == (3 * 66 + 2, 3 * 66 + 2, 3)
  assert grid.dtype == np.uint8
  # Rendered masks differ from the source's own drawn masks.
  own = contact_sheet.sheet("procedural", 9, 64)
  assert not np.array_equal(grid, own)


def test_sheet_with_holes_pairs_each_face_with_its_mask():
  grid = contact_sheet.sheet("procedural", 4, 64, holes=True)
  # 8 tiles -> 4 columns (even, so face and mask stay side by side) x 2.
  assert grid.shape == (2 * 66 + 2, 4 * 66 + 2, 3)
