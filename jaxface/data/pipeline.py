"""grain input pipelines: records -> faces wearing masks -> a task's batches.

Every pipeline runs the same host-side steps on a random-access source and
yields per-process batches of the contract in `jaxface.data.schema`, with
uint8 images (the step converts on the device):

  record index --shuffle(seed), repeat--> (record, epoch)
    -> read + decode
    -> crop to a square and resize to `data.image_size` (landmarks follow)
    -> horizontal flip with the 98-point left/right permutation
    -> landmark checks (`checks.check_landmarks`), then a face mask:
       rendered from the landmarks (`data.mask_styles`), or the source's
       own (`provides_masks`); it must cover something  = an `examples.Face`
    -> the task's `ExampleSpec.make(face, rng)`
    -> worker processes (optional)
    -> batches of the examples, skipped records left out and counted

No record can stop a run: a record that yields no example (an unreadable
file, landmarks that are no face in the image, a face mask that covers
nothing, an error in rendering or in the task's `make`) becomes a skip
marker naming the file and the reason. The batcher leaves it out (the next
record of the stream takes its place, the same on every run and resume),
warns once per file, and counts it in `skipped`, which is part of the
iterator state, so the count survives restarts too.

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

from jaxface.data import checks
from jaxface.data import decode
from jaxface.data import examples as examples_lib
from jaxface.data import facemask
from jaxface.data import schema
from jaxface.data import sources
from jaxface.data import transforms
from jaxface.data import wflw

TRAIN, VAL, TEST = sources.TRAIN, sources.VAL, sources.TEST
# The key of the marker `ExampleMaker` yields for a record without an
# example: {SKIPPED: "<file>: <reason>"} (left out in the main process, after
# the workers).
SKIPPED = "skipped"
# The reason of a record the task's `make` declines (e.g. one without the
# label it learns): counted, not warned about.
DECLINED = "declined by the task's examples"
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

    Returns a skip marker `{SKIPPED: "<file>: <reason>"}` for a record that
    yields no example, whatever the cause (see the module docstring). Not
    None: grain would drop a None inside each worker process, which would
    make the interleaving of the workers, and so the batches, depend on the
    worker count.
    """
    record_index = int(record_index)
    epoch = index // self.num_records
    name = self._name(record_index)
    try:
      record = self.source[record_index]
      if record is None:
        return {SKIPPED: f"{name}: unreadable image"}
      name = str(record.get(sources.KEY, name))
      rng = np.random.default_rng((self.seed, record_index, epoch))
      face = self.face(record, rng)
      if isinstance(face, str):
        return {SKIPPED: f"{name}: {face}"}
      example = self.spec(face, rng, self.augment)
    except (examples_lib.ExampleContractError, MemoryError):
      raise  # the task's bug, or the host's trouble: no record's fault
    except Exception as e:  # pylint: disable=broad-except
      # One record must never stop a run; the marker names it and the error.
      reason = str(e).splitlines()[0][:300] if str(e) else ""
      return {SKIPPED: f"{name}: {type(e).__name__}: {reason}"}
    if example is None:
      return {SKIPPED: f"{name}: {DECLINED}"}
    return example

  def _name(self, record_index: int) -> str:
    """The file (key) of a record, for reports, without reading it."""
    key = getattr(self.source, "key", None)  # file sources
    if key is not None:
      return key(record_index)
    return f"record {record_index} of {self.source!r}"

  def face(self, record: dict, rng: np.random.Generator
           ) -> examples_lib.Face | str:
    """The shared host steps: square crop, resize, flip, face mask.

    Returns the face, or why the record has none (a one-line reason).
    """
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
      # A mask is placed from the landmarks: they must be a face.
      if not np.all(np.isfinite(landmarks)):
        return "no landmarks to place a face mask from"
      reason = checks.check_landmarks(landmarks, self.size, self.size)
      if reason is not None:
        return reason
      rendered = self.renderer(fields[schema.IMAGE], landmarks, rng)
      masked_image, mask = rendered.masked_image, rendered.mask
      style = rendered.style
    else:  # the source's own mask (`provides_masks`)
      masked_image, mask = fields[schema.MASKED_IMAGE], fields[schema.MASK]
      style = record.get(schema.MASK_STYLE, -1)
    if mask.ndim == 2:
      mask = mask[..., None]
    if not mask.any():
      return "the face mask covers nothing (is the face in the image?)"
    unknown = ~np.all(np.isfinite(landmarks), axis=-1)
    approx = fields.get(schema.LANDMARKS_APPROX, unknown) | unknown
    return examples_lib.Face(
        image=fields[schema.IMAGE], masked_image=masked_image,
        mask=mask.astype(np.uint8),
        landmarks=landmarks.astype(np.float32),
        landmarks_approx=np.asarray(approx, np.bool_),
        gender=np.int32(record.get(schema.GENDER, -1)),
        mask_style=np.int32(style), key=str(record.get(sources.KEY, "?")))


def _is_example(element: dict) -> bool:
  return SKIPPED not in element


def _keep_example(element: dict) -> bool:
  """`_is_example`, reporting a skipped record (held-out data)."""
  if _is_example(element):
    return True
  report_skipped(element)
  return False


def report_skipped(marker: dict) -> None:
  """Warns about a skipped record, once per file and reason."""
  text = marker[SKIPPED]
  if text.endswith(DECLINED):
    return
  decode.warn_once(f"skipped:{text}",
                   f"record skipped, the next one takes its place: {text}")


# This many skipped records in a row is no longer bad data but a broken
# source or task: stop, with the last reason.
MAX_SKIPPED_IN_A_ROW = 500


class _BatchIterator(grain.DatasetIterator):
  """Stacks examples into batches, leaving out and counting skip markers."""

  def __init__(self, parent: grain.DatasetIterator, batch_size: int):
    super().__init__(parent)
    self.batch_size = batch_size
    self.skipped = 0  # skip markers seen since the start of the run

  def __next__(self) -> dict[str, np.ndarray]:
    examples, in_a_row = [], 0
    while len(examples) < self.batch_size:
      element = next(self._parent)
      if _is_example(element):
        examples.append(element)
        in_a_row = 0
        continue
      self.skipped += 1
      in_a_row += 1
      report_skipped(element)
      if in_a_row >= MAX_SKIPPED_IN_A_ROW:
        raise RuntimeError(
            f"{in_a_row} records in a row yielded no example; the last: "
            f"{element[SKIPPED]}. Check config.data.source and the task.")
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "skipped": self.skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    if "parent" not in state:  # saved before skips were counted
      state = {"parent": state, "skipped": 0}
    self._parent.set_state(state["parent"])
    self.skipped = int(state["skipped"])


class _Batches(grain.IterDataset):
  """`_BatchIterator` as a dataset (what `train_dataset` returns)."""

  def __init__(self, parent: grain.IterDataset, batch_size: int):
    super().__init__(parent)
    self.batch_size = batch_size

  def __iter__(self) -> _BatchIterator:
    return _BatchIterator(self._parent.__iter__(), self.batch_size)


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
    A checkpointable grain `IterDataset` of per-process batches; its
    iterator counts the records it left out in `skipped`.
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
  return _Batches(it, batch_size)


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
  it = ds.map_with_index(maker).to_iter_dataset().filter(_keep_example)
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
    if _keep_example(example):
      found.append(example)
    if len(found) == batch_size:
      return {k: np.stack([e[k] for e in found]) for k in found[0]}
  raise ValueError(f"config.data.source={config.data.source!r}: the {split} "
                   f"split has fewer than {batch_size} readable examples")
