"""A synthetic face mask on a photo, placed by MediaPipe's face mesh."""

import numpy as np
from PIL import Image
import pytest

from jaxface import faces
from jaxface import mask_photo

skimage_data = pytest.importorskip("skimage.data")


def test_mask_on_the_astronaut(tmp_path, capsys):
  pytest.importorskip("ai_edge_litert")
  if faces.find_detector_source() is None:
    pytest.skip(f"no face mesh installed: {faces.INSTALL_HINT}")
  photo = skimage_data.astronaut()
  Image.fromarray(photo).save(tmp_path / "astro.png")
  out = tmp_path / "masked.png"
  assert mask_photo.main([str(tmp_path / "astro.png"), "--out", str(out),
                          "--style", "surgical"]) == 0
  masked = np.asarray(Image.open(out))
  mask = np.asarray(Image.open(tmp_path / "masked_map.png")) > 0
  landmarks = np.loadtxt(tmp_path / "masked_landmarks.txt")
  assert masked.shape == photo.shape and landmarks.shape == (98, 2)
  # The mask covers the lower face and nothing far from it.
  assert 2000 < mask.sum() < 40000
  ys, xs = np.nonzero(mask)
  assert 120 < ys.mean() < 200 and 180 < xs.mean() < 270
  changed = np.any(masked != photo, axis=-1)
  assert changed[mask].mean() > 0.9 and not changed[300:].any()
  # A blank image has no face: named, status 1.
  Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(
      tmp_path / "blank.png")
  assert mask_photo.main([str(tmp_path / "blank.png"), "--out",
                          str(tmp_path / "x.png")]) == 1
  assert "blank.png: no face found" in capsys.readouterr().err
