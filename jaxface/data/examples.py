"""What a task takes from the data layer: a `Face` in, the task's example out.

Every pipeline turns a source record into a `Face` the same way: decode,
crop to a square and resize, flip (landmarks follow), and put a face mask on
it (rendered from the landmarks, or the source's own). What a task's network
sees is then the task's choice, stated once in an `ExampleSpec`:

    def make_example(face: Face, rng: np.random.Generator,
                     augment: bool) -> dict | None:
      return {schema.IMAGE: face.masked_image,
              schema.LANDMARKS: face.landmarks}

    EXAMPLES = ExampleSpec(keys=(schema.IMAGE, schema.LANDMARKS),
                           make=make_example)

`make` runs on the host, in grain worker processes when there are any, so it
must be picklable: a module-level function, or a picklable callable object
(e.g. a dataclass holding augmentation strengths from the config). It may
augment with `rng` when `augment` is true (training; false for evaluation,
samples and benchmarks); `rng` is seeded by seed, record and epoch, so
examples are reproducible and resume-exact. It returns None to drop a record
(e.g. no gender label for a gender classifier). Keep it cheap; simple
per-pixel work belongs on the device, in the task's step.

Keys: what `jaxface.data.schema` names keeps the meaning it gives there; a
task may add keys of its own (e.g. detection boxes), documented in its task
file. Every example of a spec has exactly its keys, with the same shapes.
"""

import dataclasses
import pickle
from typing import Any, Callable, Mapping

import numpy as np

from jaxface.data import schema


@dataclasses.dataclass(frozen=True)
class Face:
  """One face after the shared host steps, at the pipeline's image size S.

  Attributes:
    image: uint8 [S, S, 3], the clean face (the ground truth behind a mask).
    masked_image: uint8 [S, S, 3], the same face wearing a face mask.
    mask: uint8 [S, S, 1], 1 on the face mask.
    landmarks: float32 [98, 2], WFLW points, pixel (x, y); NaN rows where
      unknown (only for sources with their own masks: a mask is rendered
      from the landmarks, so records without them are dropped otherwise).
    landmarks_approx: bool [98], True where a point is approximate or
      unknown.
    gender: 0 female, 1 male, -1 unknown.
    mask_style: index of `schema.MASK_STYLES`, -1 unknown.
    key: names the record (a file, an id) in messages.
  """
  image: np.ndarray
  masked_image: np.ndarray
  mask: np.ndarray
  landmarks: np.ndarray
  landmarks_approx: np.ndarray
  gender: np.int32
  mask_style: np.int32
  key: str


class ExampleContractError(ValueError):
  """A task's `make` broke its `ExampleSpec`: a bug, never a bad record."""


MakeExample = Callable[[Face, np.random.Generator, bool],
                       "Mapping[str, Any] | None"]


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
  """A task's examples: which batch keys, and how one is made from a Face.

  Attributes:
    keys: the keys of every example (and so of every batch): `schema` keys,
      and any of the task's own.
    make: `make(face, rng, augment) -> {key: array} | None` (see the module
      docstring); picklable.
  """
  keys: tuple[str, ...]
  make: MakeExample

  def __post_init__(self):
    keys = tuple(self.keys)
    if not keys or len(set(keys)) != len(keys) or not all(
        isinstance(k, str) and k.isidentifier() for k in keys):
      raise ValueError(f"ExampleSpec keys {self.keys!r}: expected distinct "
                       "identifiers (the batch contract's are "
                       f"{schema.KEYS})")
    object.__setattr__(self, "keys", keys)
    try:
      pickle.dumps(self.make)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"ExampleSpec make={self.make!r} cannot be pickled, so grain "
          "worker processes could not run it; use a module-level function "
          f"or a picklable callable object ({type(e).__name__}: {e})"
      ) from None

  def __call__(self, face: Face, rng: np.random.Generator,
               augment: bool) -> dict[str, Any] | None:
    """`make`, checked against `keys` (a task bug, named, not a bad batch)."""
    example = self.make(face, rng, augment)
    if example is None:
      return None
    if set(example) != set(self.keys):
      raise ExampleContractError(
          f"{getattr(self.make, '__qualname__', self.make)} made an example "
          f"with keys {sorted(example)} for {face.key}; its ExampleSpec "
          f"declares {sorted(self.keys)}")
    return dict(example)
