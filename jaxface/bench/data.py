r"""Input-pipeline benchmark: records/s of a task's training pipeline.

  python -m jaxface.bench.data                       # JPEGs made on the fly
  python -m jaxface.bench.data --source=prepared:data/utkface --workers=0,2,4
  python -m jaxface.bench.data --config=configs/<task>.py   # another task

Runs `jaxface.data.pipeline.train_dataset` with the examples of the task of
`--config` (default: the inpainting task) at `--size` (default 256): read +
JPEG decode + crop/resize + flip + a face mask rendered in one of the six
procedural styles + the task's example + batching, and prints records/s:

* `1 core`: the pipeline in this process, pinned to one CPU, one reader
  thread, OpenCV single-threaded: the per-core figure;
* `N workers`: grain worker processes (`data.worker_count=N`) on all CPUs.

Without `--source`, `--num_images` procedural faces are written as JPEG
files (quality 95, at `--jpeg_size`) with a labels.csv of their 98
landmarks into a temporary folder, and read through the `folder:` source.
"""

import csv
import os
import tempfile
import time

from absl import app
from absl import flags
import cv2
from ml_collections import config_flags

from jaxface import tasks
from jaxface.data import facemask
from jaxface.data import masked_faces
from jaxface.data import pipeline
from jaxface.data import procedural

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/inpaint.py", "Experiment config: its task's examples "
    "and data settings (source, size and mask styles come from the flags "
    "below).", lock_config=False)

_SOURCE = flags.DEFINE_string("source", "", "A source spec; default: JPEGs "
                              "of procedural faces written to a temp dir.")
_SIZE = flags.DEFINE_integer("size", 256, "Pipeline image size.")
_JPEG_SIZE = flags.DEFINE_integer("jpeg_size", 256,
                                  "Size of the generated JPEGs.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 512,
                                   "Generated JPEGs (without --source).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_RECORDS = flags.DEFINE_integer("records", 2048, "Records timed per row.")
_WORKERS = flags.DEFINE_list("workers", ["2"],
                             "Worker counts to measure besides one core.")
_STYLES = flags.DEFINE_string("mask_styles", "",
                              "Mask styles (default: the six procedural).")


def write_jpeg_folder(root: str, n: int, size: int) -> str:
  """n procedural faces as JPEGs + labels.csv (gender, 98 landmarks)."""
  faces = procedural.ProceduralFaces(size=size, num_records=n, seed=123)
  header = ["file", "gender"] + [f"{a}{i}" for i in range(98)
                                 for a in ("x", "y")]
  with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for i in range(n):
      r = faces[i]
      name = f"{i:06d}.jpg"
      with open(os.path.join(root, name), "wb") as g:
        g.write(masked_faces.encode_image(r["image"], "jpeg", 95))
      w.writerow([name, "male" if r["gender"] else "female"]
                 + [f"{v:.3f}" for v in r["landmarks"].reshape(-1)])
  return f"folder:{root},splits=1/0/0"


def _config(source: str, workers: int, threads: int):
  c = _CONFIG.value.copy_and_resolve_references()
  c.data.source = source
  c.data.image_size = _SIZE.value
  c.data.mask_styles = _STYLES.value or ",".join(
      facemask.DEFAULT_STYLES)
  c.data.worker_count = workers
  c.data.num_threads = threads
  c.data.prefetch = 4
  c.train.batch_size = _BATCH.value
  return c


def measure(source: str, workers: int, threads: int) -> float:
  """records/s after one warm-up batch."""
  config = _config(source, workers, threads)
  it = iter(pipeline.train_dataset(tasks.examples(config), config,
                                   batch_size=_BATCH.value))
  next(it)  # start-up: workers spawn, sources open, textures build
  n = max(_RECORDS.value // _BATCH.value, 1)
  t0 = time.perf_counter()
  for _ in range(n):
    batch = next(it)
  elapsed = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()  # stops the workers and frees their shared memory
  size = _SIZE.value
  assert next(iter(batch.values())).shape[:1] == (_BATCH.value,)
  assert any(v.shape[1:3] == (size, size) for v in batch.values())
  return n * _BATCH.value / elapsed


def main(argv):
  del argv
  source = _SOURCE.value
  tmp = None
  if not source:
    tmp = tempfile.TemporaryDirectory()
    source = write_jpeg_folder(tmp.name, _NUM_IMAGES.value, _JPEG_SIZE.value)
    what = (f"{_NUM_IMAGES.value} procedural JPEGs {_JPEG_SIZE.value}px "
            "(folder source)")
  else:
    what = source
  cpus = sorted(os.sched_getaffinity(0))
  print(f"{_CONFIG.value.task} pipeline at {_SIZE.value}x{_SIZE.value}, "
        f"batch {_BATCH.value}, {what}; {len(cpus)} CPUs")
  print(f"{'mode':>12} {'records/s':>10} {'per core':>9}")

  # One core: pin the process (and the threads it starts) to one CPU.
  os.sched_setaffinity(0, {cpus[0]})
  threads = cv2.getNumThreads()
  cv2.setNumThreads(1)
  rate = measure(source, workers=0, threads=1)
  print(f"{'1 core':>12} {rate:>10.1f} {rate:>9.1f}", flush=True)
  os.sched_setaffinity(0, set(cpus))
  cv2.setNumThreads(threads)

  for w in map(int, _WORKERS.value):
    rate = measure(source, workers=w, threads=1)
    print(f"{f'{w} workers':>12} {rate:>10.1f} {rate / w:>9.1f}", flush=True)
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  app.run(main)
