"""grain input pipelines, one per task.

Every pipeline runs the same host-side steps on a random-access source and
yields per-process batches of the contract in `jaxface.data.schema`, with
uint8 images (the step converts on the device):

  record index --shuffle(seed), repeat--> (record, epoch)
    -> read + decode (corrupt files: warned once, skipped)
    -> crop to a square and resize to `data.image_size` (landmarks follow)
    -> horizontal flip with the 98-point left/right permutation
    -> a synthetic face mask rendered from the landmarks
    -> the task's example -> batch -> worker processes (optional)

Every random choice is drawn from `np.random.default_rng((seed, record,
epoch))`, so an example depends only on which record it is and in which
epoch, not on batch size, worker count or where a run was resumed; the grain
iterator state goes into every checkpoint, so a resumed run continues with
exactly the batches it would have seen.

Tasks and their examples:
  inpaint:   image (clean), mask (the hole), landmarks, gender
  landmarks: image (wearing the mask), mask, landmarks
  segment:   image (wearing the mask), mask (the segmentation target),
             mask_style
  gender:    image (wearing the mask), gender (records without a label are
             dropped)
"""

import itertools
from typing import Any, Callable

import grain
import ml_collections
import numpy as np

from jaxface.data import facemask
from jaxface.data import procedural
from jaxface.data import schema
from jaxface.data import sources
from jaxface.data import transforms

TRAIN, VAL, TEST = "train", "val", "test"
# What `ExampleMaker` yields for a record without an example (filtered out in
# the main process, after the workers).
SKIP: dict = {}
TASKS = ("inpaint", "landmarks", "segment", "gender")

# The procedural source has no splits: validation faces come from another
# seed stream, so they never repeat a training face.
_VAL_SEED_OFFSET = 1_000_003


def make_source(data: ml_collections.ConfigDict, split: str) -> Any:
  """The random-access source named by `config.data.source` for a split.

  `procedural` (the embedded default), or a spec understood by
  `jaxface.data.sources.open_source`: `folder:PATH`, `prepared:PATH`,
  `celeba:PATH`, `ffhq:PATH`.
  """
  if data.source == "procedural":
    num = data.num_train if split == TRAIN else data.num_val
    seed = data.seed + (0 if split == TRAIN else _VAL_SEED_OFFSET)
    return procedural.ProceduralFaces(size=data.image_size, num_records=num,
                                      seed=seed, gender=data.gender)
  try:
    return sources.open_source(data.source, split=split, gender=data.gender)
  except ValueError as e:
    raise ValueError(f"config.data.source={data.source!r}: {e}") from None


def make_renderer(data: ml_collections.ConfigDict) -> Any:
  """The face-mask renderer of `config.data.mask_styles`, or None.

  `mask_styles` empty: use the source's own mask when its records carry
  one (the procedural faces do), else the six procedural mask styles.
  `"source"` insists on the source's masks.
  """
  styles = tuple(s.strip() for s in data.mask_styles.split(",") if s.strip())
  if styles == ("source",):
    return None
  if not styles:
    if data.source == "procedural":
      return None
    styles = facemask.DEFAULT_STYLES
  try:
    return facemask.FaceMaskRenderer(
        styles, template_dir=data.mask_templates or None)
  except ValueError as e:
    raise ValueError(f"config.data.mask_styles / mask_templates: {e}") from None


class ExampleMaker:
  """record -> task example; a picklable callable for grain workers."""

  def __init__(self, task: str, data: ml_collections.ConfigDict, source: Any,
               renderer: Any, *, seed: int, augment: bool):
    if task not in TASKS:
      raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    self.task = task
    self.source = source
    self.renderer = renderer
    self.size = data.image_size
    self.flip = data.flip and augment
    self.seed = seed
    self.num_records = len(source)

  def _source_style(self, index: int) -> int:
    """A source's own style index as an index of `facemask.STYLES`."""
    names = getattr(self.source, "mask_style_names", None)
    if names is None or index < 0:
      return -1
    return facemask.STYLE_ID.get(names[index], -1)

  def __call__(self, index: int, record_index: int) -> dict:
    """The example of a record in the epoch of stream position `index`.

    Returns `SKIP` (an empty dict) for a record that yields no example: an
    unreadable file (already reported by the source), no landmarks to
    place a mask, no label for the gender task. Not None: grain would drop
    a None inside each worker process, which would make the interleaving of
    the workers, and so the batches, depend on the worker count.
    """
    epoch = index // self.num_records
    record = self.source[int(record_index)]
    if record is None:
      return SKIP
    rng = np.random.default_rng((self.seed, int(record_index), epoch))
    example = self.make(record, rng)
    return SKIP if example is None else example

  def make(self, record: dict, rng: np.random.Generator) -> dict | None:
    example = {k: record[k] for k in ("image", "masked_image", "mask",
                                      "landmarks", "landmarks_approx")
               if k in record}
    image = example["image"]
    h, w = image.shape[:2]
    if (h, w) != (self.size, self.size):
      example = transforms.crop_and_resize(
          example, transforms.center_square_box(h, w), self.size)
    if self.flip and rng.random() < 0.5:
      example = transforms.hflip(example)
    landmarks = example.get("landmarks")
    if self.renderer is not None:
      if landmarks is None or not np.all(np.isfinite(landmarks)):
        return None  # cannot place a mask without landmarks
      rendered = self.renderer(example["image"], landmarks, rng)
      example["masked_image"] = rendered.masked_image
      example["mask"] = rendered.mask
      style = np.int32(rendered.style)
    else:  # the source's own mask (the procedural faces draw one)
      style = np.int32(self._source_style(record.get("mask_style", -1)))
    gender = np.int32(record.get("gender", -1))
    mask = example["mask"]
    if mask.ndim == 2:
      mask = mask[..., None]
    mask = mask.astype(np.uint8)

    if self.task == "inpaint":
      return {schema.IMAGE: example["image"], schema.MASK: mask,
              schema.LANDMARKS: landmarks.astype(np.float32),
              schema.GENDER: gender}
    if self.task == "landmarks":
      return {schema.IMAGE: example["masked_image"], schema.MASK: mask,
              schema.LANDMARKS: landmarks.astype(np.float32)}
    if self.task == "segment":
      return {schema.IMAGE: example["masked_image"], schema.MASK: mask,
              schema.MASK_STYLE: style}
    if gender < 0:
      return None
    return {schema.IMAGE: example["masked_image"], schema.GENDER: gender}


def _local_batch(batch_size: int, process_count: int, key: str) -> int:
  if batch_size % process_count:
    raise ValueError(f"config.{key}={batch_size} must be divisible by the "
                     f"number of processes ({process_count})")
  return batch_size // process_count


def _records(num: int, process_index: int,
             process_count: int) -> grain.MapDataset:
  """This process's equal share of the record indices."""
  per_process = num // process_count
  ds = grain.MapDataset.range(per_process * process_count)
  return ds[process_index::process_count]


def train_dataset(task: str, config: ml_collections.ConfigDict, *,
                  process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """The endless, shuffled, augmented training stream of this process.

  Returns a checkpointable grain `IterDataset` of per-process batches.
  """
  local_batch = _local_batch(config.train.batch_size, process_count,
                             "train.batch_size")
  source = make_source(config.data, TRAIN)
  maker = ExampleMaker(task, config.data, source, make_renderer(config.data),
                       seed=config.seed, augment=True)
  ds = _records(len(source), process_index, process_count)
  if len(ds) < local_batch:
    raise ValueError(f"the training split of {config.data.source!r} has "
                     f"{len(ds)} records per process, fewer than one batch "
                     f"({local_batch})")
  maker.num_records = len(ds)
  ds = ds.shuffle(seed=config.seed).repeat().map_with_index(maker)
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=config.data.num_threads,
      prefetch_buffer_size=config.data.prefetch))
  if config.data.worker_count > 0:
    # Workers make examples (the expensive part) and take turns in a fixed
    # order; skipping and batching happen here, after them, so the batches
    # are the same for any worker count.
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.worker_count))
  return it.filter(bool).batch(local_batch, drop_remainder=True)


def eval_batches(task: str, config: ml_collections.ConfigDict, *,
                 split: str = VAL, process_index: int = 0,
                 process_count: int = 1,
                 agree: Callable[[int], int] | None = None) -> list[dict]:
  """The held-out batches, read once and kept in host memory.

  No shuffling and no flips; masks are rendered with epoch 0, so every
  evaluation sees the same examples. At most `config.eval.num_batches`
  (0 = the whole split). `agree(n)` returns the number of batches all
  processes have (multi-host: the minimum), so each runs the same steps.
  """
  local_batch = _local_batch(config.eval.batch_size, process_count,
                             "eval.batch_size")
  source = make_source(config.data, split)
  maker = ExampleMaker(task, config.data, source, make_renderer(config.data),
                       seed=config.seed + 1, augment=False)
  ds = _records(len(source), process_index, process_count)
  maker.num_records = max(len(ds), 1)
  it = ds.map_with_index(maker).to_iter_dataset().filter(bool)
  it = it.batch(local_batch, drop_remainder=True)
  limit = config.eval.num_batches if config.eval.num_batches > 0 else None
  batches = list(itertools.islice(iter(it), limit))
  count = agree(len(batches)) if agree else len(batches)
  if count == 0:
    raise ValueError(
        f"the {split} split of {config.data.source!r} yields fewer examples "
        f"than one eval batch (config.eval.batch_size="
        f"{config.eval.batch_size})")
  return batches[:count]


def fixed_batch(task: str, config: ml_collections.ConfigDict,
                batch_size: int, split: str = TRAIN) -> dict[str, np.ndarray]:
  """The first `batch_size` readable examples of a split, unaugmented.

  For benchmarks and tests that need one realistic batch.
  """
  source = make_source(config.data, split)
  maker = ExampleMaker(task, config.data, source, make_renderer(config.data),
                       seed=config.seed, augment=False)
  examples = []
  for i in range(len(source)):
    example = maker(0, i)
    if example:
      examples.append(example)
    if len(examples) == batch_size:
      return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  raise ValueError(f"{config.data.source!r} has fewer than {batch_size} "
                   "readable examples")
