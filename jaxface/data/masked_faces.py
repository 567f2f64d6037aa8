"""The `masked_faces` TFDS dataset: prepared faces in ArrayRecord files.

`jaxface.data.prepare` turns photos (a folder, CelebA, FFHQ, ...) into this
dataset once: each example holds the encoded photo, its 98 WFLW landmarks
(from annotations or a landmark teacher), its gender (from labels or a gender
teacher) and where both came from. Training reads it back with
`jaxface.data.sources.Prepared`, a random-access grain source.

Nothing here needs TensorFlow, for writing or for reading:

  * `image` is a `tfds.features.Image` fed with already-encoded JPEG or PNG
    bytes. tfds only runs TensorFlow to encode numpy arrays; bytes are stored
    as they are. (A variable-length `uint8` `Tensor` of the bytes works too,
    but the `Image` feature keeps the dataset readable as images by every
    tfds tool, and by `tfds.load` where TensorFlow is installed.)
  * `key` and `landmark_teacher` are `Text` features (read back as bytes).
  * the other features are fixed-shape `Tensor`s.

Examples keep the order in which the caller yields them (shuffling is
disabled), so record `i` of a split is the `i`-th example written; grain
shuffles at training time. Next to the ArrayRecord shards the builder writes
`gender-{split}.npy` (the gender of every record of the split, int8) so that
a gender filter does not have to read every image.

Features of an example:

  image             encoded JPEG/PNG, RGB, any size
  landmarks         float32 [98, 2]  WFLW points, pixel (x, y); NaN: unknown
  landmarks_approx  bool [98]        True where a point is approximate
                                     (converted from fewer points, or from a
                                     teacher model) or unknown
  gender            int64 []         0 female, 1 male, -1 unknown
  key               text             the original file name or id
  landmark_teacher  text             where the landmarks came from

Layout on disk: `{out_dir}/masked_faces/1.0.0/` with `dataset_info.json`,
`features.json`, `metadata.json`, the `masked_faces-{split}.array_record-*`
shards and `gender-{split}.npy`. tfds writes everything into a temporary
`incomplete.*` folder beside it and renames it when all splits are done, so
an interrupted write never leaves a folder that looks complete.
"""

import io
import itertools
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxface.data import wflw

NAME = "masked_faces"
SPLITS = ("train", "val", "test")
IMAGE_FORMATS = ("jpeg", "png")

IMAGE = "image"
LANDMARKS = "landmarks"
LANDMARKS_APPROX = "landmarks_approx"
GENDER = "gender"
KEY = "key"
LANDMARK_TEACHER = "landmark_teacher"
FEATURE_KEYS = (IMAGE, LANDMARKS, LANDMARKS_APPROX, GENDER, KEY,
                LANDMARK_TEACHER)

# Keys of `metadata.json` besides the caller's own metadata.
_META_USER = "metadata"
_META_GENDERS = "gender_counts"
_META_FORMAT = "image_format"

_GENDER_FILE = "gender-{split}.npy"
_EMPTY = object()


class _NoCodePath:
  """Class attribute that reads as None (see `MaskedFaces.code_path`)."""

  def __get__(self, obj, objtype=None):
    return None


def encode_image(image: np.ndarray,
                 format: str = "jpeg",  # pylint: disable=redefined-builtin
                 quality: int = 95) -> bytes:
  """Encodes an RGB uint8 image [H, W, 3] as JPEG or PNG bytes.

  JPEGs keep full-resolution colour (4:4:4, no chroma subsampling): the
  images are the ground truth reconstructions are scored against, and
  halving the colour resolution blurs exactly the edges that are scored.

  Args:
    image: [H, W, 3] uint8 RGB ([H, W] / [H, W, 1] grey is stored as RGB).
    format: "jpeg" or "png" (lossless).
    quality: JPEG quality, 1 to 100.

  Returns:
    The encoded bytes.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim == 3 and image.shape[-1] == 1:
    # Always three channels, as the `image` feature says.
    image = np.repeat(image, 3, axis=-1)
  if not (image.ndim == 3 and image.shape[-1] == 3):
    raise ValueError(f"expected an [H, W, 3] image, got {image.shape}")
  fmt = format.lower()
  if fmt == "jpg":
    fmt = "jpeg"
  if fmt not in IMAGE_FORMATS:
    raise ValueError(f"format={format!r} is not one of {IMAGE_FORMATS}")
  buf = io.BytesIO()
  pil = Image.fromarray(image)
  if fmt == "jpeg":
    pil.save(buf, format="JPEG", quality=int(quality), subsampling=0)
  else:
    pil.save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def _features(image_format: str) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      IMAGE: tfds.features.Image(shape=(None, None, 3),
                                 encoding_format=image_format),
      LANDMARKS: tfds.features.Tensor(shape=(wflw.NUM_LANDMARKS, 2),
                                      dtype=np.float32),
      LANDMARKS_APPROX: tfds.features.Tensor(shape=(wflw.NUM_LANDMARKS,),
                                             dtype=np.bool_),
      GENDER: tfds.features.Tensor(shape=(), dtype=np.int64),
      KEY: tfds.features.Text(),
      LANDMARK_TEACHER: tfds.features.Text(),
  })


class MaskedFaces(tfds.core.GeneratorBasedBuilder):
  """Prepared faces: photo, 98 landmarks, gender. Written by `write_dataset`.

  The examples come from the caller (the constructor's `examples_by_split`),
  not from a download: a builder made without them can only read.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # tfds looks for a `checksums.tsv` of download URLs beside the builder's
  # code; this builder downloads nothing. Finding that code path also fails
  # for builders inside an installed package unless the optional
  # `importlib_resources` backport is installed.
  code_path = _NoCodePath()

  def __init__(self, *,
               examples_by_split: Mapping[str, Iterable[dict]] | None = None,
               description: str = "",
               metadata: Mapping[str, Any] | None = None,
               image_format: str = "jpeg", quality: int = 95, **kwargs):
    """Creates the builder.

    Args:
      examples_by_split: split name -> iterable of example dicts (see
        `write_dataset`); None for a builder that only reads.
      description: free text stored in `dataset_info.json`.
      metadata: JSON-serialisable facts about the preparation (sources,
        teachers, options), stored in `metadata.json`.
      image_format: how numpy images are encoded: "jpeg" or "png".
      quality: JPEG quality.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (`data_dir`,
        `file_format`, ...).
    """
    self._examples_by_split = examples_by_split
    self._description = description
    self._user_metadata = dict(metadata or {})
    self._image_format = image_format
    self._quality = quality
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self._description or (
            "Faces prepared for jaxface: photo, 98 WFLW landmarks, gender."),
        features=_features(self._image_format),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    if self._examples_by_split is None:
      raise ValueError(f"{NAME} is written by jaxface.data.masked_faces."
                       "write_dataset (from jaxface.data.prepare), not "
                       "downloaded")
    self.info.metadata[_META_USER] = self._user_metadata
    self.info.metadata[_META_FORMAT] = self._image_format
    self.info.metadata[_META_GENDERS] = {}
    return {split: self._generate_examples(split, examples)
            for split, examples in self._examples_by_split.items()}

  def _generate_examples(self, split: str, examples: Iterable[dict]):
    genders = []
    for i, example in enumerate(examples):
      encoded = self._encode(example, split, i)
      genders.append(encoded[GENDER])
      yield i, encoded
    genders = np.asarray(genders, np.int8)
    # `data_path` is the temporary folder while tfds writes, so this file
    # appears together with the shards.
    with (self.data_path / _GENDER_FILE.format(split=split)).open("wb") as f:
      np.save(f, genders)
    self.info.metadata[_META_GENDERS][split] = {
        "female": int(np.sum(genders == 0)),
        "male": int(np.sum(genders == 1)),
        "unknown": int(np.sum(genders < 0)),
    }

  def _encode(self, example: Mapping[str, Any], split: str,
              index: int) -> dict[str, Any]:
    """Checks an example from the caller and fills in the defaults."""
    where = f"example {index} of split {split!r}"
    if KEY not in example or IMAGE not in example:
      raise ValueError(f"{where} lacks {KEY!r} or {IMAGE!r} "
                       f"(has {sorted(example)})")
    key = str(example[KEY])
    where = f"{where} ({key})"
    image = example[IMAGE]
    if isinstance(image, np.ndarray):
      image = encode_image(image, self._image_format, self._quality)
    elif isinstance(image, (bytes, bytearray, memoryview)):
      image = bytes(image)
    else:
      raise ValueError(f"{where}: image must be a uint8 array or encoded "
                       f"bytes, got {type(image).__name__}")
    lm = example.get(LANDMARKS)
    if lm is None:
      lm = np.full((wflw.NUM_LANDMARKS, 2), np.nan, np.float32)
    lm = np.asarray(lm, np.float32)
    if lm.shape != (wflw.NUM_LANDMARKS, 2):
      raise ValueError(f"{where}: landmarks must be [98, 2], got {lm.shape}")
    known = np.all(np.isfinite(lm), axis=-1)
    approx = example.get(LANDMARKS_APPROX)
    approx = (~known if approx is None
              else np.asarray(approx, np.bool_) | ~known)
    if approx.shape != (wflw.NUM_LANDMARKS,):
      raise ValueError(f"{where}: landmarks_approx must be [98], got "
                       f"{approx.shape}")
    gender = int(example.get(GENDER, -1))
    if gender not in (-1, 0, 1):
      raise ValueError(f"{where}: gender must be 0, 1 or -1, got {gender}")
    return {
        IMAGE: image,
        LANDMARKS: lm,
        LANDMARKS_APPROX: approx,
        GENDER: np.int64(gender),
        KEY: key,
        LANDMARK_TEACHER: str(example.get(LANDMARK_TEACHER) or ""),
    }


def write_dataset(out_dir: str | os.PathLike,
                  examples_by_split: Mapping[str, Iterable[dict]], *,
                  description: str, metadata: Mapping[str, Any],
                  image_format: str = "jpeg", quality: int = 95,
                  overwrite: bool = False) -> epath.Path:
  """Writes the `masked_faces` dataset as ArrayRecord files, without TF.

  Each example is a dict with `image` (uint8 [H, W, 3] RGB, encoded here as
  `image_format`, or already-encoded JPEG/PNG bytes, stored as they are) and
  `key` (str), and optionally `landmarks` (float32 [98, 2], default NaN),
  `landmarks_approx` (bool [98]; unknown points are always marked),
  `gender` (0, 1 or -1, default -1) and `landmark_teacher` (str).

  Args:
    out_dir: the tfds data dir; the dataset goes to
      `out_dir/masked_faces/1.0.0`.
    examples_by_split: split name ("train", "val", "test") -> examples, each
      iterated once in the order they will be stored. Splits left out, or
      without examples, are not written (tfds cannot write an empty split).
    description: what was prepared, for `dataset_info.json`.
    metadata: JSON-serialisable facts about the preparation.
    image_format: "jpeg" or "png", for images given as arrays.
    quality: JPEG quality.
    overwrite: replace an existing dataset (once the new one is complete).

  Returns:
    The folder of the dataset (what `jaxface.data.sources.Prepared` and
    `tfds.builder_from_directory` take).
  """
  unknown = sorted(set(examples_by_split) - set(SPLITS))
  if unknown or not examples_by_split:
    raise ValueError(f"splits {unknown or '(none)'} are not among {SPLITS}")
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format={image_format!r} is not one of "
                     f"{IMAGE_FORMATS}")
  try:
    json.dumps(dict(metadata))
  except TypeError as e:
    raise ValueError(f"metadata must be JSON-serialisable: {e}") from None
  path = epath.Path(out_dir) / NAME / str(MaskedFaces.VERSION)
  replace = path.exists()
  if replace and not overwrite:
    raise FileExistsError(f"{path} already holds a {NAME} dataset (pass "
                          "overwrite=True to replace it)")
  # tfds cannot write a split without examples: leave empty ones out.
  nonempty = {}
  for split, examples in examples_by_split.items():
    it = iter(examples)
    first = next(it, _EMPTY)
    if first is _EMPTY:
      logging.warning("%s: split %r has no examples and is not written",
                      NAME, split)
    else:
      nonempty[split] = itertools.chain([first], it)
  if not nonempty:
    raise ValueError("every split is empty: nothing to write")
  os.makedirs(out_dir, exist_ok=True)
  # A replacement is written beside the old dataset and swapped in at the
  # end, so a failed write leaves the old one as it was.
  staging = (tempfile.mkdtemp(prefix=f".{NAME}-staging-", dir=out_dir)
             if replace else None)
  try:
    builder = MaskedFaces(examples_by_split=nonempty,
                          description=description, metadata=metadata,
                          image_format=image_format, quality=quality,
                          data_dir=staging or os.fspath(out_dir),
                          file_format="array_record")
    # The download folder is never used; keep it out of `out_dir`.
    with tempfile.TemporaryDirectory() as downloads:
      builder.download_and_prepare(download_dir=downloads)
    if replace:
      old = path.parent / f".replaced-{os.getpid()}-{id(builder)}"
      path.rename(old)
      epath.Path(builder.data_path).rename(path)
      old.rmtree()
  finally:
    if staging:
      shutil.rmtree(staging, ignore_errors=True)
  return path


# ---------------------------------------------------------------------------
# Reading.


def find_dataset_dir(path: str | os.PathLike) -> epath.Path:
  """The version folder of a `masked_faces` dataset at or under `path`.

  Accepts the version folder itself (`.../masked_faces/1.0.0`), the
  dataset folder (`.../masked_faces`, newest version wins) or the data dir
  that holds it.
  """
  path = epath.Path(path)
  if (path / "dataset_info.json").exists():
    return path
  for base in (path, path / NAME):
    if not base.is_dir():
      continue
    versions = []
    for child in base.iterdir():
      if (child / "dataset_info.json").exists():
        try:
          versions.append((tfds.core.Version(child.name), child))
        except ValueError:
          continue  # not a version folder (e.g. an incomplete.* one)
    if versions:
      return max(versions, key=lambda v: v[0])[1]
  raise FileNotFoundError(f"no {NAME} dataset at {path} (expected a folder "
                          f"with dataset_info.json, or {NAME}/VERSION/ under "
                          "it; write one with jaxface.data.prepare)")


def split_names(path: str | os.PathLike) -> tuple[str, ...]:
  """The splits stored in the dataset at `path`."""
  builder = tfds.builder_from_directory(os.fspath(find_dataset_dir(path)))
  return tuple(builder.info.splits.keys())


def open_split(path: str | os.PathLike, split: str):
  """Random-access source of one split, images left as encoded bytes.

  Returns a tfds `ArrayRecordDataSource`: `len()`, and `[i]` gives a dict of
  the features with `image` as JPEG/PNG bytes, `key` and `landmark_teacher`
  as utf-8 bytes.
  """
  path = find_dataset_dir(path)
  builder = tfds.builder_from_directory(os.fspath(path))
  if split not in builder.info.splits:
    raise ValueError(f"{path} has no split {split!r} (has "
                     f"{sorted(builder.info.splits.keys())})")
  return builder.as_data_source(
      split, decoders={IMAGE: tfds.decode.SkipDecoding()})


def read_genders(path: str | os.PathLike, split: str) -> np.ndarray:
  """The gender of every record of a split, int8 [N] (-1 unknown).

  Read from the side file written with the dataset; datasets without one
  (written by other means) are read record by record.
  """
  path = find_dataset_dir(path)
  side = path / _GENDER_FILE.format(split=split)
  if side.exists():
    with side.open("rb") as f:
      return np.load(f).astype(np.int8)
  source = open_split(path, split)
  return np.asarray([source[i][GENDER] for i in range(len(source))], np.int8)


def read_info(path: str | os.PathLike) -> dict[str, Any]:
  """Description, caller metadata, image format and counts of a dataset."""
  path = find_dataset_dir(path)
  builder = tfds.builder_from_directory(os.fspath(path))
  meta = {}
  meta_file = path / "metadata.json"
  if meta_file.exists():
    meta = json.loads(meta_file.read_text())
  return {
      "path": path,
      "version": str(builder.info.version),
      "description": builder.info.description,
      "metadata": meta.get(_META_USER, {}),
      "image_format": meta.get(_META_FORMAT),
      "gender_counts": meta.get(_META_GENDERS, {}),
      "num_examples": {name: info.num_examples
                       for name, info in builder.info.splits.items()},
  }
