r"""Runs a trained face-mask segmenter on photos; writes a sheet of overlays.

  python -m jaxface.mask_sheet --workdir=runs/segment_unet \
      --photos=path/to/photos --out=runs/mask_sheet.png --size=256

Every image under `--photos` (any size, several people per photo is
fine) is letterboxed, not cropped, into a `--size` square (grey bars), run
through the network of the workdir's newest checkpoint (or `--step`) in
batches, and shown with its predicted map M in red; for Mask R-CNN the
face-mask boxes are yellow and the face boxes cyan. Photos are tiled
`--columns` wide, each labelled by its index in the sorted file list (the
order of `--list`, which prints `index<TAB>file`), so that a reader can
refer to them. Unreadable files are named and skipped.

The networks are fully convolutional: `--size` may exceed the training
size, which helps photos of several small faces.
"""

import math
import os

from absl import app
from absl import flags
from absl import logging
import cv2
import jax
import numpy as np

from jaxface import logging_utils
from jaxface import visualize
from jaxface.data import decode
from jaxface.data import sources
from jaxface.train import loop

GREY = 128


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the whole image scaled to fit, centred."""
  h, w = image.shape[:2]
  s = size / max(h, w)
  nh, nw = max(1, round(h * s)), max(1, round(w * s))
  interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
  resized = cv2.resize(image, (nw, nh), interpolation=interp)
  out = np.full((size, size, 3), GREY, np.uint8)
  top, left = (size - nh) // 2, (size - nw) // 2
  out[top:top + nh, left:left + nw] = resized
  return out


def read_photos(folder: str, size: int, limit: int = 0
                ) -> tuple[list[str], np.ndarray]:
  """(relative names, uint8 [N, size, size, 3]) of the readable images."""
  names, images = [], []
  for rel in sources.list_images(folder):
    if limit and len(names) >= limit:
      break
    path = os.path.join(folder, rel)
    try:
      image, _ = decode.read_image(path, key=path)
    except decode.CorruptImageError as e:
      logging.warning("skipping %s: %s", path, e)
      continue
    names.append(rel)
    images.append(letterbox(image, size))
  return names, np.stack(images) if images else np.zeros((0, size, size, 3),
                                                         np.uint8)


def predict(workdir: str, images: np.ndarray, *, step: int | None = None,
            batch_size: int = 8) -> dict[str, np.ndarray]:
  """The segment task's `predict` of a run's checkpoint on uint8 images.

  Returns its outputs, plus `score_threshold` (the run's, for Mask R-CNN).
  """
  config = loop.read_config(workdir)
  config.data.image_size = images.shape[1]
  setup = loop.build(config, devices=jax.local_devices()[:1])
  state, step = loop.load_state(setup, workdir, step)
  logging.info("%s: step %d on %d photos at %d px", workdir, step,
               len(images), images.shape[1])
  fn = jax.jit(setup.task.predict)
  parts = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    x = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                        chunk.dtype)])
    out = jax.device_get(fn(state, x.astype(np.float32) / 255.0))
    parts.append(jax.tree.map(lambda a, n=len(chunk): a[:n], out))
  out = jax.tree.map(lambda *a: np.concatenate(a), *parts)
  out["score_threshold"] = config.model.get("score_threshold", 0.5)
  return out


def draw(images: np.ndarray, pred: dict[str, np.ndarray]) -> np.ndarray:
  """float [N, S, S, 3] overlays: M in red, boxes for Mask R-CNN (those
  scoring at least the run's threshold, like the map)."""
  out = visualize.overlay(images, pred["map"], (1.0, 0.0, 0.0), alpha=0.55)
  det = pred.get("detections")
  if det is not None:
    ok = np.asarray(det["valid"], bool) & (
        det["scores"] >= pred["score_threshold"])
    out = visualize.draw_boxes(out, det["boxes"], ok & (det["classes"] == 1),
                               (1.0, 1.0, 0.0))
    out = visualize.draw_boxes(out, det["boxes"], ok & (det["classes"] == 2),
                               (0.0, 1.0, 1.0))
  return out


def tile(images: np.ndarray, columns: int,
         labels: list[str] | None = None) -> np.ndarray:
  """uint8 sheet of [N, S, S, 3] images, `columns` wide, each labelled
  (default: its index)."""
  n, s = images.shape[:2]
  rows = math.ceil(n / columns)
  pad = 2
  sheet = np.full((rows * (s + pad) + pad, columns * (s + pad) + pad, 3), 255,
                  np.uint8)
  cells = visualize.to_uint8(images)
  for i, cell in enumerate(cells):
    cell = np.ascontiguousarray(cell)
    text = str(i) if labels is None else labels[i]
    cv2.putText(cell, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(cell, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    r, c = divmod(i, columns)
    y, x = pad + r * (s + pad), pad + c * (s + pad)
    sheet[y:y + s, x:x + s] = cell
  return sheet


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "a segment run's workdir")
  flags.DEFINE_integer("step", None, "checkpoint step (default: newest)")
  flags.DEFINE_string("photos", None, "folder of photos (searched "
                      "recursively)")
  flags.DEFINE_string("out", "mask_sheet.png", "the sheet to write")
  flags.DEFINE_integer("size", 256, "square side the photos are "
                       "letterboxed to (a multiple of 32)")
  flags.DEFINE_integer("columns", 10, "photos per row")
  flags.DEFINE_integer("limit", 0, "at most this many photos (0: all)")
  flags.DEFINE_integer("batch_size", 8, "photos per forward pass")
  flags.DEFINE_boolean("list", False, "print index<TAB>file of each photo")
  flags.mark_flags_as_required(["workdir", "photos"])


def main(argv):
  del argv
  f = flags.FLAGS
  logging_utils.quiet_libraries()
  names, images = read_photos(f.photos, f.size, f.limit)
  if not names:
    raise SystemExit(f"{f.photos}: no readable images")
  pred = predict(f.workdir, images, step=f.step, batch_size=f.batch_size)
  visualize.write_png(f.out, tile(draw(images, pred), f.columns))
  print(f"wrote {f.out}: {len(names)} photos")
  if f.list:
    for i, name in enumerate(names):
      print(f"{i}\t{name}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
