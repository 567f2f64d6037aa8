"""grain input pipelines.

A pipeline turns a random-access source (records of numpy arrays) into
batches of the contract in `jaxface.data.schema`, on the host, as uint8
images (the step converts to float on the device). Every random choice is
seeded by (config seed, record, epoch), so a run resumed from a checkpoint
(which stores the iterator state) sees exactly the batches it would have seen.
"""

from typing import Any

import grain
import ml_collections
import numpy as np

from jaxface.data import procedural
from jaxface.data import schema
from jaxface.data import wflw

TRAIN, VAL = "train", "val"

# The validation split of the procedural source is drawn from another seed
# stream, so it never repeats a training face.
_VAL_SEED_OFFSET = 1_000_003


def make_source(data: ml_collections.ConfigDict, split: str) -> Any:
  """The random-access source named by `config.data.source` for a split."""
  if data.source == "procedural":
    num = data.num_train if split == TRAIN else data.num_val
    seed = data.seed + (0 if split == TRAIN else _VAL_SEED_OFFSET)
    return procedural.ProceduralFaces(size=data.image_size, num_records=num,
                                      seed=seed, gender=data.gender)
  raise ValueError(f"config.data.source={data.source!r} is not a known source "
                   "(known: 'procedural')")


def inpaint_record(record: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Source record -> inpainting example (uint8 image, [H, W, 1] hole mask)."""
  mask = record[schema.MASK]
  if mask.ndim == 2:
    mask = mask[..., None]
  return {
      schema.IMAGE: record[schema.IMAGE],
      schema.MASK: mask.astype(np.uint8),
      schema.LANDMARKS: record[schema.LANDMARKS].astype(np.float32),
      schema.GENDER: np.int32(record[schema.GENDER]),
  }


def random_flip(example: dict[str, np.ndarray],
                rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Horizontal flip with probability 1/2, landmarks mirrored and permuted."""
  if rng.random() >= 0.5:
    return example
  out = dict(example)
  width = example[schema.IMAGE].shape[1]
  out[schema.IMAGE] = np.ascontiguousarray(example[schema.IMAGE][:, ::-1])
  out[schema.MASK] = np.ascontiguousarray(example[schema.MASK][:, ::-1])
  out[schema.LANDMARKS] = wflw.flip_landmarks(example[schema.LANDMARKS], width)
  return out


def _check_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f"config.train.batch_size={batch_size} must be divisible "
                     f"by the number of processes ({process_count})")
  return batch_size // process_count


def inpaint_train(config: ml_collections.ConfigDict, *, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """The endless, shuffled, augmented training stream of this process.

  Args:
    config: the experiment config (uses `data`, `train.batch_size`, `seed`).
    process_index, process_count: this process's shard of the data.

  Returns:
    A checkpointable grain `IterDataset` of per-process batches.
  """
  local_batch = _check_batch_size(config.train.batch_size, process_count)
  source = make_source(config.data, TRAIN)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) < local_batch:
    raise ValueError(f"the training split has {len(ds)} records per process, "
                     f"fewer than one batch ({local_batch})")
  ds = ds.shuffle(seed=config.seed).repeat().map(inpaint_record)
  if config.data.flip:
    ds = ds.random_map(random_flip, seed=config.seed + 1)
  ds = ds.batch(local_batch, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=config.data.num_threads,
      prefetch_buffer_size=config.data.prefetch))
  if config.data.worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.worker_count))
  return it


def inpaint_eval(config: ml_collections.ConfigDict, *, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """The fixed held-out batches (no shuffle, no augmentation).

  The number of batches is `config.eval.num_batches` (or as many as the split
  holds); every process gets the same number of batches.
  """
  local_batch = _check_batch_size(config.eval.batch_size, process_count)
  source = make_source(config.data, VAL)
  # Equal shards, so that every process runs the same number of eval steps.
  per_process = len(source) // process_count
  ds = grain.MapDataset.source(source)[:per_process * process_count]
  ds = ds[process_index::process_count]
  ds = ds.map(inpaint_record).batch(local_batch, drop_remainder=True)
  if len(ds) == 0:
    raise ValueError(f"the validation split has fewer records than one eval "
                     f"batch (config.eval.batch_size={config.eval.batch_size})")
  num = config.eval.num_batches
  return ds[:num] if num > 0 else ds
