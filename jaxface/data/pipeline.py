"""grain input pipelines: records -> faces wearing masks -> a task's batches.

Every pipeline runs the same host-side steps on a random-access source and
yields per-process batches of the contract in `jaxface.data.schema`, with
uint8 images (the step converts on the device):

  record index --shuffle(seed), repeat--> (record, epoch)
    -> read + decode (corrupt files: warned once, skipped)
    -> crop to a square and resize to `data.image_size` (landmarks follow)
    -> horizontal flip with the 98-point left/right permutation
    -> a face mask: rendered from the landmarks (`data.mask_styles`), or the
       source's own (`provides_masks`)            = an `examples.Face`
    -> the task's `ExampleSpec.make(face, rng)` -> batch
    -> worker processes (optional)

The task is not named here: callers pass its `ExampleSpec` (the task
registry, `jaxface.tasks`, holds them). Every random choice is drawn from
`np.random.default_rng((seed, record, epoch))`, so an example depends only on
which record it is and in which epoch, not on batch size, worker count or
where a run was resumed; the grain iterator state goes into every
checkpoint, so a resumed run continues with exactly the batches it would
have seen.

Batch sizes passed here are this process's share of the global batch;
`jaxface.sharding.per_process_batch` computes it and checks the global size.
"""

import itertools
from typing import Any, Callable

import grain
import ml_collections
import numpy as np

from jaxface.data import examples as examples_lib
from jaxface.data import facemask
from jaxface.data import schema
from jaxface.data import sources
from jaxface.data import transforms
from jaxface.data import wflw

TRAIN, VAL, TEST = sources.TRAIN, sources.VAL, sources.TEST
# What `ExampleMaker` yields for a record without an example (filtered out in
# the main process, after the workers).
SKIP: dict = {}
# `config.data.mask_styles` value that insists on the source's own masks.
SOURCE_MASKS = "source"


def open_split(data: ml_collections.ConfigDict, split: str) -> Any:
  """The source of `config.data.source` for a split.

  The one path from a config to a source: `sources.open_source`.
  """
  try:
    return sources.open_source(data.source, split=split, gender=data.gender,
                               size_hint=data.image_size)
  except ValueError as e:
    raise ValueError(f"config.data.source={data.source!r}: {e}") from None


def make_renderer(data: ml_collections.ConfigDict,
                  source: Any) -> facemask.FaceMaskRenderer | None:
  """The face-mask renderer of `config.data.mask_styles`, or None.

  `mask_styles` empty: the source's own masks when it has them
  (`source.provides_masks`), else the six procedural mask styles;
  `"source"` insists on the source's masks.
  """
  styles = tuple(s.strip() for s in data.mask_styles.split(",") if s.strip())
  if styles == (SOURCE_MASKS,):
    if not source.provides_masks:
      raise ValueError(f"config.data.mask_styles={SOURCE_MASKS!r}: "
                       f"{source!r} has no face masks of its own")
    return None
  if not styles:
    if source.provides_masks:
      return None
    styles = facemask.DEFAULT_STYLES
  try:
    return facemask.FaceMaskRenderer(
        styles, template_dir=data.mask_templates or None)
  except ValueError as e:
    raise ValueError(f"config.data.mask_styles / mask_templates: {e}") from None


class ExampleMaker:
  """record index -> the task's example; a picklable callable for grain."""

  def __init__(self, spec: examples_lib.ExampleSpec,
               data: ml_collections.ConfigDict, source: Any, *, seed: int,
               augment: bool):
    self.spec = spec
    self.source = source
    self.renderer = make_renderer(data, source)
    self.size = data.image_size
    self.augment = augment
    self.flip = data.flip and augment
    self.seed = seed
    self.num_records = len(source)

  def __call__(self, index: int, record_index: int) -> dict:
    """The example of a record in the epoch of stream position `index`.

    Returns `SKIP` (an empty dict) for a record that yields no example: an
    unreadable file (already reported by the source), no landmarks to
    render a mask from, or one the task's `make` declines. Not None: grain
    would drop a None inside each worker process, which would make the
    interleaving of the workers, and so the batches, depend on the worker
    count.
    """
    epoch = index // self.num_records
    record = self.source[int(record_index)]
    if record is None:
      return SKIP
    rng = np.random.default_rng((self.seed, int(record_index), epoch))
    face = self.face(record, rng)
    if face is None:
      return SKIP
    example = self.spec(face, rng, self.augment)
    return SKIP if example is None else example

  def face(self, record: dict, rng: np.random.Generator
           ) -> examples_lib.Face | None:
    """The shared host steps: square crop, resize, flip, face mask."""
    fields = {k: record[k] for k in (schema.IMAGE, schema.MASKED_IMAGE,
                                     schema.MASK, schema.LANDMARKS,
                                     schema.LANDMARKS_APPROX)
              if k in record}
    h, w = fields[schema.IMAGE].shape[:2]
    if (h, w) != (self.size, self.size):
      fields = transforms.crop_and_resize(
          fields, transforms.center_square_box(h, w), self.size)
    if self.flip and rng.random() < 0.5:
      fields = transforms.hflip(fields)
    landmarks = fields.get(schema.LANDMARKS)
    if landmarks is None:
      landmarks = np.full((wflw.NUM_LANDMARKS, 2), np.nan, np.float32)
    if self.renderer is not None:
      if not np.all(np.isfinite(landmarks)):
        return None  # a mask is placed from the landmarks
      rendered = self.renderer(fields[schema.IMAGE], landmarks, rng)
      masked_image, mask = rendered.masked_image, rendered.mask
      style = rendered.style
    else:  # the source's own mask (`provides_masks`)
      masked_image, mask = fields[schema.MASKED_IMAGE], fields[schema.MASK]
      style = record.get(schema.MASK_STYLE, -1)
    if mask.ndim == 2:
      mask = mask[..., None]
    unknown = ~np.all(np.isfinite(landmarks), axis=-1)
    approx = fields.get(schema.LANDMARKS_APPROX, unknown) | unknown
    return examples_lib.Face(
        image=fields[schema.IMAGE], masked_image=masked_image,
        mask=mask.astype(np.uint8),
        landmarks=landmarks.astype(np.float32),
        landmarks_approx=np.asarray(approx, np.bool_),
        gender=np.int32(record.get(schema.GENDER, -1)),
        mask_style=np.int32(style), key=str(record.get(sources.KEY, "?")))


def _records(num: int, process_index: int,
             process_count: int) -> grain.MapDataset:
  """This process's equal share of the record indices."""
  per_process = num // process_count
  ds = grain.MapDataset.range(per_process * process_count)
  return ds[process_index::process_count]


def train_dataset(spec: examples_lib.ExampleSpec,
                  config: ml_collections.ConfigDict, *, batch_size: int,
                  process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """The endless, shuffled, augmented training stream of this process.

  Args:
    spec: the task's examples.
    config: the experiment config (`seed`, `data`).
    batch_size: this process's batch (`sharding.per_process_batch`).
    process_index: this process.
    process_count: all processes; each reads an equal share of the records.

  Returns:
    A checkpointable grain `IterDataset` of per-process batches.
  """
  source = open_split(config.data, TRAIN)
  maker = ExampleMaker(spec, config.data, source, seed=config.seed,
                       augment=True)
  ds = _records(len(source), process_index, process_count)
  if len(ds) < batch_size:
    raise ValueError(f"config.data.source={config.data.source!r}: the "
                     f"training split has {len(ds)} records per process, "
                     f"fewer than one batch of config.train.batch_size "
                     f"({batch_size} per process)")
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
  return it.filter(bool).batch(batch_size, drop_remainder=True)


def eval_batches(spec: examples_lib.ExampleSpec,
                 config: ml_collections.ConfigDict, *, batch_size: int,
                 split: str = VAL, process_index: int = 0,
                 process_count: int = 1,
                 agree: Callable[[int], int] | None = None) -> list[dict]:
  """The held-out batches, read once and kept in host memory.

  No shuffling and no flips; masks are rendered with epoch 0, so every
  evaluation sees the same examples. At most `config.eval.num_batches`
  (0 = the whole split) of `batch_size` (this process's share). `agree(n)`
  returns the number of batches all processes have (multi-host: the
  minimum), so each runs the same steps.
  """
  source = open_split(config.data, split)
  maker = ExampleMaker(spec, config.data, source, seed=config.seed + 1,
                       augment=False)
  ds = _records(len(source), process_index, process_count)
  maker.num_records = max(len(ds), 1)
  it = ds.map_with_index(maker).to_iter_dataset().filter(bool)
  it = it.batch(batch_size, drop_remainder=True)
  limit = config.eval.num_batches if config.eval.num_batches > 0 else None
  batches = list(itertools.islice(iter(it), limit))
  count = agree(len(batches)) if agree else len(batches)
  if count == 0:
    raise ValueError(
        f"config.data.source={config.data.source!r}: the {split} split "
        f"yields fewer examples than one batch of config.eval.batch_size "
        f"({batch_size} per process)")
  return batches[:count]


def fixed_batch(spec: examples_lib.ExampleSpec,
                config: ml_collections.ConfigDict, batch_size: int,
                split: str = TRAIN) -> dict[str, np.ndarray]:
  """The first `batch_size` readable examples of a split, unaugmented.

  For benchmarks and tests that need one realistic batch.
  """
  source = open_split(config.data, split)
  maker = ExampleMaker(spec, config.data, source, seed=config.seed,
                       augment=False)
  found = []
  for i in range(len(source)):
    example = maker(0, i)
    if example:
      found.append(example)
    if len(found) == batch_size:
      return {k: np.stack([e[k] for e in found]) for k in found[0]}
  raise ValueError(f"config.data.source={config.data.source!r}: the {split} "
                   f"split has fewer than {batch_size} readable examples")
