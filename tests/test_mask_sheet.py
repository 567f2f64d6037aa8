"""The photo sheet of a segmenter: letterboxing and tiling."""

import numpy as np

from jaxface import mask_sheet


def test_letterbox_keeps_the_whole_photo_centred():
  photo = np.zeros((50, 100, 3), np.uint8)
  photo[:, :50] = 255
  out = mask_sheet.letterbox(photo, 64)
  assert out.shape == (64, 64, 3)
  # 100 -> 64 wide, 50 -> 32 high, centred: grey bars of 16 rows.
  assert (out[:16] == mask_sheet.GREY).all()
  assert (out[48:] == mask_sheet.GREY).all()
  assert out[20:44, :30].min() > 200 and out[20:44, 34:].max() < 50


def test_tile_places_photos_row_major_with_their_index():
  images = np.stack([np.full((20, 20, 3), i / 10, np.float32)
                     for i in range(5)])
  sheet = mask_sheet.tile(images, columns=3)
  assert sheet.shape == (2 * 22 + 2, 3 * 22 + 2, 3)
  # Photo 4 is row 1, column 1 (its lower right, away from the label).
  assert sheet[2 + 22 + 18, 2 + 22 + 18, 0] == round(0.4 * 255)
  assert (sheet[2 + 22 + 18, 2 + 44 + 18] == 255).all()  # no sixth photo
