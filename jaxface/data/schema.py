"""The batch contract: the one place that names the keys of a batch.

Every pipeline produces, and every step consumes, a dict of arrays with these
keys (a task uses the subset it needs):

| key                | shape / dtype        | meaning                          |
|--------------------|----------------------|----------------------------------|
| `image`            | [B, H, W, 3] float32 | the clean face, in [0, 1]        |
| `masked_image`     | [B, H, W, 3] float32 | the face wearing a (synthetic)   |
|                    |                      | face mask                        |
| `mask`             | [B, H, W, 1] float32 | 1 in the hole / on the face mask |
| `landmarks`        | [B, 98, 2] float32   | WFLW points, pixel (x, y)        |
| `landmarks_approx` | [B, 98] bool         | True where a point is            |
|                    |                      | approximate or unknown           |
| `gender`           | [B] int32            | 0 female, 1 male (-1 unknown)    |
| `mask_style`       | [B] int32            | `MASK_STYLES` index (-1 unknown) |

Host pipelines keep images and masks as uint8 (4x less to move); `to_float`
converts on the device side. Which keys a task's batches have is declared by
the task (`jaxface.data.examples.ExampleSpec`).
"""

from typing import Mapping

import numpy as np

IMAGE = "image"
MASKED_IMAGE = "masked_image"
MASK = "mask"
LANDMARKS = "landmarks"
LANDMARKS_APPROX = "landmarks_approx"
GENDER = "gender"
MASK_STYLE = "mask_style"
KEYS = (IMAGE, MASKED_IMAGE, MASK, LANDMARKS, LANDMARKS_APPROX, GENDER,
        MASK_STYLE)

FEMALE, MALE = 0, 1
GENDERS = {"female": FEMALE, "male": MALE}
# What a `gender` filter of a source or config may say.
GENDER_FILTERS = ("all", "female", "male")

# What `mask_style` values name: style i is MASK_STYLES[i]. The six drawn
# procedurally, MaskTheFace templates, and the paper authors' two hole
# shapes (`jaxface.data.facemask` renders all of them).
MASK_STYLES = ("surgical", "surgical_pleated", "n95", "kn95", "cloth",
               "cloth_printed", "template", "box", "freeform")

# Keys whose uint8 host values are images to scale into [0, 1].
_IMAGE_KEYS = (IMAGE, MASKED_IMAGE)


def to_float(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Converts a host batch (uint8 images, [B, H, W] masks) to the contract.

  Works on numpy and jax arrays alike, so it can run on the host or inside a
  jitted function.
  """
  out = dict(batch)
  for key in _IMAGE_KEYS:
    if key in out and out[key].dtype == np.uint8:
      out[key] = out[key].astype(np.float32) / 255.0
  if MASK in out:
    mask = out[MASK]
    if mask.ndim == 3:
      mask = mask[..., None]
    out[MASK] = mask.astype(np.float32)
  return out
