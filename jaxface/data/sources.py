"""Random-access face sources (grain-compatible): folders, CelebA, FFHQ, ...

Every source here is a sequence of records: `len(source)`, and `source[i]`
(an int, negative counts from the end) returns a dict, the record contract:

  image             uint8 [H, W, 3]   the photo, RGB, decoded
  landmarks         float32 [98, 2]   WFLW points, pixel (x, y) with the
                                      centre of pixel (row i, col j) at
                                      (j, i); rows of NaN where unknown
  landmarks_approx  bool [98]         True where a point is approximate
                                      (converted from 68 or 5 points, or
                                      from a teacher model) or unknown
  gender            int32 []          0 female, 1 male, -1 unknown
  key               str               the file (relative path) or id: what
                                      error messages name, what splits hash
  landmark_teacher  str               (`Prepared` only) where the landmarks
                                      came from
  landmarks_raw     float32 [N, 2]    (only when annotations have 68 or 5
                                      points and no converter was given) the
                                      points as annotated

or None when the file cannot be read or decoded: that is never fatal. The
source logs one warning naming the file (once per file and process) and the
pipeline drops the record. grain treats a None from a source as a filtered
element (`map` passes it through, `to_iter_dataset` drops it), but
`MapDataset.batch` does not: filter or go through `to_iter_dataset` before
batching.

All sources are picklable (grain worker processes), cheap to construct
relative to the size of the data (they list files and read label files; no
image is opened until it is read), split deterministically into "train",
"val" and "test", and can keep only one gender (`gender="female"` or
`"male"`; records of unknown gender are then left out). Asking a source
without gender labels for one gender is a ValueError.

Every source also says whether its records already wear face masks:
`provides_masks` (a class attribute). When True, each record carries

  masked_image      uint8 [H, W, 3]   the face wearing the mask
  mask              uint8 [H, W]      1 on the mask
  mask_style        int32 []          index of `schema.MASK_STYLES`

and the pipelines use those masks unless the config asks for rendered ones
(`config.data.mask_styles`); when False, the pipelines render masks from
the landmarks (`jaxface.data.facemask`).

Sources:
  ImageFolder  a folder of images, with an optional CSV of labels
  FFHQ         a copy of FFHQ (aligned PNGs)
  CelebA       a copy of CelebA (aligned JPEGs and the annotation files)
  Prepared     the `masked_faces` dataset of `jaxface.data.prepare`
  Procedural   the embedded default: faces drawn from a seed, with masks
`open_source` opens one from a short spec string ("folder:PATH", ...); it
is the only way the pipelines open a source.

Landmark annotations with 68 points (iBUG 300-W order) or 5 points (the
CelebA order: image-left eye, image-right eye, nose tip, image-left mouth
corner, image-right mouth corner) become 98 points through a converter the
caller passes, `landmark_converter(points [N, 2]) -> (landmarks [98, 2],
approx [98])` (or a `teachers.LandmarkResult`, or None when it cannot),
applied when a record is read. `SparseConverter()` is the one built on
`jaxface.data.teachers.from_68` / `from_5`.

Images are decoded by `jaxface.data.decode` (file sources take its
`draft_size` hint for fast JPEG downscaling; landmarks follow the scale).
PNGs always decode in full (a 1024-pixel FFHQ PNG takes ~20 ms): prepare
such data once (`jaxface.data.prepare`) at the training size.
"""

import csv
import hashlib
import heapq
import os
import re
import stat
from typing import Any, Callable, Iterable, Sequence

from absl import logging
import numpy as np

from jaxface.data import decode
from jaxface.data import procedural
from jaxface.data import schema
from jaxface.data import wflw

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)
# Folder sources also take split="all" (every image, e.g. to prepare them).
ALL = "all"
UNKNOWN_GENDER = -1
DEFAULT_SPLITS = (0.9, 0.05, 0.05)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Point counts of landmark annotations that a source understands.
LANDMARK_COUNTS = (wflw.NUM_LANDMARKS, 68, 5)

# Record keys besides those of `schema`.
KEY = "key"
LANDMARKS_APPROX = schema.LANDMARKS_APPROX
LANDMARKS_RAW = "landmarks_raw"
LANDMARK_TEACHER = "landmark_teacher"

LandmarkConverter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

_GENDER_WORDS = {
    "female": schema.FEMALE, "f": schema.FEMALE, "woman": schema.FEMALE,
    str(schema.FEMALE): schema.FEMALE,
    "male": schema.MALE, "m": schema.MALE, "man": schema.MALE,
    str(schema.MALE): schema.MALE,
    "": UNKNOWN_GENDER, "-1": UNKNOWN_GENDER, "unknown": UNKNOWN_GENDER,
    "nan": UNKNOWN_GENDER, "none": UNKNOWN_GENDER,
}
_PREPARE_HINT = ("label it with a gender teacher (python -m "
                 "jaxface.data.prepare ... with a gender model) and read the "
                 "result with 'prepared:PATH', or use gender='all'")


# ---------------------------------------------------------------------------
# Helpers shared by the sources.


def _check_gender(gender: str) -> str:
  if gender not in schema.GENDER_FILTERS:
    raise ValueError(f"gender={gender!r} is not one of "
                     f"{schema.GENDER_FILTERS}")
  return gender


def _check_split(split: str, allow_all: bool = True) -> str:
  allowed = SPLITS + ((ALL,) if allow_all else ())
  if split not in allowed:
    raise ValueError(f"split={split!r} is not one of {allowed}")
  return split


def _check_fractions(splits: Sequence[float]) -> tuple[float, float, float]:
  fractions = tuple(float(f) for f in splits)
  if (len(fractions) != 3 or min(fractions) < 0
      or abs(sum(fractions) - 1.0) > 1e-6):
    raise ValueError(f"splits={tuple(splits)!r} must be three non-negative "
                     "fractions (train, val, test) that sum to 1")
  return fractions  # type: ignore[return-value]


def split_counts(num: int, fractions: Sequence[float]) -> dict[str, int]:
  """How many of `num` items each split gets.

  Counts sum to `num`, a split with fraction 0 gets none, and the rounding
  goes to the largest remainders (ties to the earlier split).
  """
  exact = [num * f for f in fractions]
  counts = [int(np.floor(x)) for x in exact]
  order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
  for i in order[:num - sum(counts)]:
    counts[i] += 1
  return dict(zip(SPLITS, counts))


def hash_split(name: str, fractions: Sequence[float], seed: int = 0) -> str:
  """The split of an item from a hash of its name (stable, order-free).

  Adding or removing other items never moves this one.
  """
  # surrogateescape: file names that are not UTF-8 (bytes as listed).
  digest = hashlib.blake2b(f"{seed}:{name}".encode("utf-8", "surrogateescape"),
                           digest_size=8).digest()
  u = int.from_bytes(digest, "big") / 2.0 ** 64
  edge = 0.0
  for split, fraction in zip(SPLITS, fractions):
    edge += fraction
    if u < edge:
      return split
  # Rounding left u past the last edge: the last split that takes any.
  return [s for s, f in zip(SPLITS, fractions) if f > 0][-1]


def _gender_rows(genders: np.ndarray, gender: str, name: str) -> np.ndarray:
  """Indices of the rows of the filter's gender (all rows for "all")."""
  if gender == "all":
    return np.arange(len(genders))
  if not np.any(genders >= 0):
    raise ValueError(f"{name} has no gender labels, so gender={gender!r} "
                     f"cannot be applied: {_PREPARE_HINT}")
  return np.flatnonzero(genders == schema.GENDERS[gender])


def _index(index, length: int, source) -> int:
  if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
    raise TypeError(f"index must be an int, got {type(index).__name__}")
  i = int(index)
  if i < 0:
    i += length
  if not 0 <= i < length:
    raise IndexError(f"index {index} out of range for {source!r} "
                     f"(length {length})")
  return i


def _landmark_fields(points: np.ndarray | None, scale: float,
                     converter: LandmarkConverter | None,
                     raw_count: int) -> dict[str, np.ndarray]:
  """The landmark entries of a record from annotated points (or None).

  Args:
    points: [N, 2] annotated points of the stored image (NaN rows unknown),
      or None when the image has no annotation.
    scale: decoded size / stored size.
    converter: maps 68 or 5 points to 98 (see the module docstring).
    raw_count: N of the source's annotations (0 for none), so that every
      record of a source has the same keys.
  """
  n = wflw.NUM_LANDMARKS
  unknown = {schema.LANDMARKS: np.full((n, 2), np.nan, np.float32),
             LANDMARKS_APPROX: np.ones((n,), np.bool_)}
  if raw_count == 0:
    return unknown
  if points is None:
    points = np.full((raw_count, 2), np.nan, np.float32)
  points = np.array(points, np.float32)  # a copy: records are the caller's
  if scale != 1.0:
    points = wflw.resize_landmarks(points, scale).astype(np.float32)
  known = np.all(np.isfinite(points), axis=-1)
  if raw_count == n:
    return {schema.LANDMARKS: points, LANDMARKS_APPROX: ~known}
  if converter is None:
    return {**unknown, LANDMARKS_RAW: points}
  if not np.any(known):
    return unknown
  result = converter(points)
  if result is None:  # the converter could not place the points
    return unknown
  if hasattr(result, "landmarks"):  # a teachers.LandmarkResult
    lm, approx = result.landmarks, result.approximate
  else:
    lm, approx = result
  lm = np.asarray(lm, np.float32).reshape(n, 2)
  approx = np.asarray(approx, np.bool_).reshape(n)
  return {schema.LANDMARKS: lm,
          LANDMARKS_APPROX: approx | ~np.all(np.isfinite(lm), axis=-1)}


class SparseConverter:
  """68 or 5 annotated points -> 98 (`teachers.from_68` / `teachers.from_5`).

  A picklable `landmark_converter` for the sources.
  """

  def __init__(self, layout5: str = "celeba"):
    """`layout5`: the order of 5-point annotations (see `teachers.from_5`)."""
    self.layout5 = layout5

  def __call__(self, points: np.ndarray):
    from jaxface.data import teachers  # pylint: disable=g-import-not-at-top
    if len(points) == 68:
      return teachers.from_68(points)
    if len(points) == 5:
      return teachers.from_5(points, self.layout5)
    raise ValueError(f"no conversion of {len(points)} points to 98")

  def __repr__(self) -> str:
    return f"SparseConverter(layout5={self.layout5!r})"


# ---------------------------------------------------------------------------
# Files on disk.


class _FileSource:
  """A list of image files with optional gender and landmark labels.

  Subclasses fill, for the records of the chosen split and gender:
    _dir        the folder the file names are relative to
    _files      np.str_ [N] relative paths ("/" separated), the record keys
    _genders    int8 [N]
    _lm_rows    int32 [N] row of `_lm_table` per record, -1 for none
    _lm_table   float32 [M, P, 2] annotated points (P = `_lm_count`)
  """

  _dir: str
  _files: np.ndarray
  _genders: np.ndarray
  _lm_rows: np.ndarray
  _lm_table: np.ndarray
  _lm_count: int = 0
  landmark_converter: LandmarkConverter | None = None
  draft_size: int | None = None
  provides_masks = False  # photos: the pipeline renders the face masks

  def _select(self, files: Sequence[str], genders: np.ndarray,
              lm_rows: np.ndarray, keep: np.ndarray) -> None:
    """Stores the records at `keep` (indices into the full lists)."""
    self._files = np.asarray([files[i] for i in keep], dtype=np.str_)
    self._genders = np.asarray(genders[keep], np.int8)
    rows = np.asarray(lm_rows[keep], np.int32)
    # Keep only the landmark rows still referenced (small pickles).
    used = np.unique(rows[rows >= 0])
    remap = np.full(len(self._lm_table) + 1, -1, np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    self._lm_rows = np.where(rows >= 0, remap[rows], -1).astype(np.int32)
    self._lm_table = self._lm_table[used]

  def __len__(self) -> int:
    return len(self._files)

  @property
  def keys(self) -> list[str]:
    """The keys (relative file names) of the records, in order."""
    return [str(f) for f in self._files]

  def key(self, index) -> str:
    """The key (relative file name) of one record, without reading it."""
    return str(self._files[_index(index, len(self), self)])

  @property
  def genders(self) -> np.ndarray:
    """int8 [N] gender of every record (-1 unknown), without reading images."""
    return self._genders.copy()

  def input_digest(self, index, cache: dict[str, str] | None = None) -> str:
    """A short hex digest of what record `index` is made of.

    Covers its key, its labels row (gender, annotated points) and the bytes
    of its file, so `jaxface.data.prepare` notices an edited labels file or
    a replaced photo. The file is read in bounded chunks, unless `cache`
    (which this updates) holds its content digest under the same size,
    times and inode: `prepare` keeps that table with its work, so a resume
    reads only files that changed. A file that cannot be read digests as
    missing (reading the record then reports it).
    """
    i = _index(index, len(self), self)
    key = str(self._files[i])
    path = os.path.join(self._dir, *key.split("/"))
    h = hashlib.blake2b(digest_size=16)
    h.update(key.encode("utf-8", "surrogateescape") + b"\0")
    h.update(np.int64(self._genders[i]).tobytes())
    row = int(self._lm_rows[i])
    if row >= 0:
      points = np.ascontiguousarray(self._lm_table[row], "<f4")
      h.update(repr(points.shape).encode() + points.tobytes())
    else:
      h.update(b"no landmarks")
    try:
      st = os.stat(path)
      stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
      content = (cache or {}).get(key, "").partition("=")
      if content[0] != stamp or not content[2]:
        content = decode.file_digest(path, key)
        if cache is not None:
          cache[key] = f"{stamp}={content}"
      else:
        content = content[2]
      h.update(b"file" + content.encode())
    except (OSError, decode.CorruptImageError):
      h.update(b"missing")
    return h.hexdigest()

  def __getitem__(self, index) -> dict[str, Any] | None:
    i = _index(index, len(self), self)
    key = str(self._files[i])
    path = os.path.join(self._dir, *key.split("/"))
    try:
      image, scale = decode.read_image(path, key=path,
                                       draft_size=self.draft_size)
    except decode.CorruptImageError as e:
      decode.warn_once(path, f"skipping unreadable image: {e}")
      return None
    row = int(self._lm_rows[i])
    points = self._lm_table[row] if row >= 0 else None
    record = {schema.IMAGE: image}
    record.update(_landmark_fields(points, scale, self.landmark_converter,
                                   self._lm_count))
    record[schema.GENDER] = np.int32(self._genders[i])
    record[KEY] = key
    return record


def list_images(root: str | os.PathLike,
                unique_content: bool = True) -> list[str]:
  """Image files under `root`, recursively, as sorted "/"-separated paths.

  Hidden folders and files (names starting with ".") are left out.
  Symlinks are followed, to files and to folders, but every real folder is
  walked once, so symlink loops neither hang nor repeat files, and a file
  reachable under several paths (symlinks, hard links) is listed once.
  Which path names it is deterministic: a path through no symlink if there
  is one (so adding a symlink never renames, or moves between splits, what
  was there), else the one that sorts first.
  Entries named like images that are not regular files (FIFOs, sockets,
  devices, dangling symlinks, folders such as `photo.jpg/`) are left out
  with one warning each; they are never opened.

  Args:
    root: the folder.
    unique_content: also leave out byte-identical copies of a listed file
      (one warning sums them up). Only files whose sizes collide are read
      (their content hashed), so this is cheap.

  Returns:
    The relative paths.
  """
  return _list_images(os.fspath(root), unique_content)[0]


def _list_images(root: str, unique_content: bool
                 ) -> tuple[list[str], dict[str, str]]:
  """`list_images`, and {a path left out as a copy: the path listed}."""
  found = _walk_images(root)
  found.sort(key=lambda item: item[:2])  # paths without symlinks first
  by_inode: dict[tuple[int, int], tuple[str, int]] = {}
  copies = {}
  for _, rel, st in found:
    kept, _ = by_inode.setdefault((st.st_dev, st.st_ino), (rel, st.st_size))
    if kept != rel:  # the same file again, under another name
      copies[rel] = kept
  files_sizes = sorted(by_inode.values())
  files = [rel for rel, _ in files_sizes]
  sizes = [size for _, size in files_sizes]
  _warn_copies(root, copies, "second names of a listed file (symbolic or "
               "hard links)")
  if unique_content:
    identical = _identical_copies(root, files, sizes)
    _warn_copies(root, identical, "byte-identical copies of a listed file")
    if identical:
      files = [f for f in files if f not in identical]
      copies.update(identical)
  return files, copies


def _warn_copies(root: str, copies: dict[str, str], what: str) -> None:
  if copies:
    example = min(copies)
    decode.warn_once(
        f"{root}:{what}:{len(copies)}:{example}",
        f"{root}: left out {len(copies)} file(s) as {what}, e.g. "
        f"{example!r} (the same as {copies[example]!r}, which is listed); "
        "each photo is listed, and split, once")


def _is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(root: str) -> list[tuple[bool, str, os.stat_result]]:
  """(through a symlink, relative path, stat) of the regular image files.

  Folders are walked from a heap in the order (through a symlink, relative
  path): a folder reachable under several paths is walked once, under the
  first of them in that order, whatever order the file system lists entries
  in, and a loop ends where it reaches a folder walked already. Only
  `os.stat` is called on entries (never open): nothing here can block on a
  FIFO.
  """
  st = os.stat(root)
  walked: dict[tuple[int, int], str] = {}
  heap = [(False, "", (st.st_dev, st.st_ino))]
  found = []

  def skip(rel: str, why: str) -> None:
    decode.warn_once(f"{root}:list:{rel}", f"{root}: skipping {rel!r}: {why}")

  while heap:
    linked_dir, rel_dir, ident = heapq.heappop(heap)
    if ident in walked:
      skip(rel_dir, f"leads to the folder already listed as "
           f"{walked[ident] or '.'!r} (a symlink loop or a second name)")
      continue
    walked[ident] = rel_dir
    folder = os.path.join(root, *rel_dir.split("/")) if rel_dir else root
    try:
      with os.scandir(folder) as it:
        entries = list(it)
    except OSError as e:
      logging.warning("%s: cannot list folder %r (%s); skipped", root,
                      rel_dir or ".", e)
      continue
    prefix = rel_dir + "/" if rel_dir else ""
    for entry in entries:
      if entry.name.startswith("."):
        continue
      rel = prefix + entry.name
      image_name = _is_image_name(entry.name)
      linked = linked_dir or entry.is_symlink()
      try:
        st = entry.stat()  # follows symlinks
      except OSError as e:
        if image_name:
          what = "a dangling symlink" if entry.is_symlink() else "cannot stat"
          skip(rel, f"{what} ({e.strerror or e})")
        continue
      if stat.S_ISDIR(st.st_mode):
        if image_name:
          skip(rel, "a folder, not an image file (the images in it are "
               "listed)")
        heapq.heappush(heap, (linked, rel, (st.st_dev, st.st_ino)))
      elif image_name:
        if stat.S_ISREG(st.st_mode):
          found.append((linked, rel, st))
        else:
          skip(rel, f"{decode.file_kind(st.st_mode)}, not a regular file "
               "(never opened)")
  return found


# Bytes hashed at each end of a file to sort out most files of equal size
# before hashing them whole.
_SAMPLE_BYTES = 4096


def _identical_copies(root: str, files: Sequence[str],
                      sizes: Sequence[int]) -> dict[str, str]:
  """{a file: the first file (in `files` order) of identical content}.

  Only files of a size some other file has are read: first their ends
  (`_SAMPLE_BYTES` at each), then, where those agree too, the whole file.
  A file that cannot be read, or is over `decode.MAX_IMAGE_BYTES`, is
  taken as unique (reading it as an image reports it).
  """
  by_size: dict[int, list[int]] = {}
  for i, size in enumerate(sizes):
    if size <= decode.MAX_IMAGE_BYTES:
      by_size.setdefault(size, []).append(i)
  copies = {}
  for size, group in by_size.items():
    if len(group) < 2:
      continue
    whole = size <= 2 * _SAMPLE_BYTES  # the ends are the whole file
    by_sample: dict[bytes, list[int]] = {}
    for i in group:
      digest = _content_digest(root, files[i], sample=not whole)
      if digest is not None:
        by_sample.setdefault(digest, []).append(i)
    for same in by_sample.values():
      if len(same) < 2:
        continue
      by_content: dict[bytes, list[int]] = {}
      for i in same:
        digest = (b"" if whole
                  else _content_digest(root, files[i], sample=False))
        if digest is not None:
          by_content.setdefault(digest, []).append(i)
      for equal in by_content.values():
        for i in equal[1:]:
          copies[files[i]] = files[equal[0]]
  return copies


def _content_digest(root: str, rel: str, sample: bool) -> bytes | None:
  """blake2b of a file's bytes (of its two ends when `sample`), or None.

  Reads at most `decode.MAX_IMAGE_BYTES`, through `decode.open_regular_file`
  (never blocks, refuses anything but a regular file).
  """
  path = os.path.join(root, *rel.split("/"))
  try:
    if not sample:
      return decode.file_digest(path).encode()
    digest = hashlib.blake2b(digest_size=20)
    f, st = decode.open_regular_file(path)
    with f:
      digest.update(f.read(_SAMPLE_BYTES))
      f.seek(max(_SAMPLE_BYTES, st.st_size - _SAMPLE_BYTES))
      digest.update(f.read(_SAMPLE_BYTES))
  except (decode.CorruptImageError, OSError):
    return None
  return digest.digest()


def _parse_float(text: str, where: str) -> float:
  text = text.strip()
  if not text or text.lower() in ("nan", "na", "none"):
    return float("nan")
  try:
    return float(text)
  except ValueError:
    raise ValueError(f"{where}: {text!r} is not a number") from None


def _landmark_columns(fields: Sequence[str], where: str
                      ) -> list[tuple[str, str]]:
  """The (x, y) column names of landmark annotations, in point order."""
  styles = ((r"x(\d+)", r"y(\d+)", "x{}", "y{}"),
            (r"lm(\d+)_x", r"lm(\d+)_y", "lm{}_x", "lm{}_y"))
  found = []
  for x_re, y_re, x_name, y_name in styles:
    xs = {int(m.group(1)) for f in fields if (m := re.fullmatch(x_re, f))}
    ys = {int(m.group(1)) for f in fields if (m := re.fullmatch(y_re, f))}
    if not xs and not ys:
      continue
    n = len(xs)
    if xs != set(range(n)) or ys != xs or n not in LANDMARK_COUNTS:
      raise ValueError(
          f"{where}: landmark columns {x_name.format('K')}, "
          f"{y_name.format('K')} must run K = 0..N-1 for both x and y with "
          f"N in {LANDMARK_COUNTS} (found x for {len(xs)}, y for {len(ys)} "
          "points)")
    found.append([(x_name.format(k), y_name.format(k)) for k in range(n)])
  if len(found) > 1:
    raise ValueError(f"{where}: both xK/yK and lmK_x/lmK_y landmark columns")
  return found[0] if found else []


def parse_gender(text: str, where: str) -> int:
  """"male"/"m"/"1" -> 1, "female"/"f"/"0" -> 0, ""/"-1"/"unknown" -> -1."""
  value = _GENDER_WORDS.get(str(text).strip().lower())
  if value is None:
    raise ValueError(f"{where}: gender {text!r} is not one of male/female/"
                     "m/f/1/0 (or empty/-1/unknown)")
  return value


# The labels-file problems already reported by this process.
_WARNED_LABELS: set[tuple[str, str, int]] = set()


class ImageFolder(_FileSource):
  """Images in a folder tree, with an optional CSV of labels.

  Files: every .jpg/.jpeg/.png/.bmp/.webp (any case) under `root`, sorted by
  relative path (`list_images`). The split of a file is decided by a hash of
  its relative path, so adding files never moves the others between splits.
  Each photo is in exactly one split: symlinks are followed but a folder is
  walked once (symlink loops are cut), a file reachable under several paths
  (links) is listed once, and of byte-identical copies under different
  names only the one whose path sorts first is kept (the others are left
  out with one warning), so the split is decided on that one path. Entries
  named like images that are not regular files (FIFOs, devices, dangling
  symlinks, folders) are left out with a warning, never opened.

  Labels (a CSV with a header row; column names are case-insensitive):
    file       the image, a path relative to `root` or a bare file name
               (when that name is unique in the tree); required
    gender     male/female/m/f/1/0 (1 = male, as everywhere in jaxface);
               empty or -1 for unknown; optional
    x0,y0,...  landmarks, as x0..x{N-1}, y0..y{N-1} or lm0_x, lm0_y, ...
               for N = 98 (WFLW order), 68 (iBUG 300-W) or 5 (CelebA order)
               in pixels of the image as shown (EXIF orientation applied),
               integer-centred; empty cells for unknown; optional
  Other columns are ignored. A row whose file is not in the tree, or is a
  copy left out (see Files), is skipped with a warning; files without a row
  have unknown gender and landmarks.
  """

  def __init__(self, root: str | os.PathLike,
               labels: str | os.PathLike | bool | None = None,
               split: str = TRAIN,
               splits: Sequence[float] = DEFAULT_SPLITS,
               gender: str = "all", seed: int = 0,
               landmark_converter: LandmarkConverter | None = None,
               draft_size: int | None = None):
    """Lists the images and reads the labels.

    Args:
      root: the folder.
      labels: the CSV; None to use `root/labels.csv` when it exists, False
        for none.
      split: "train", "val", "test" or "all".
      splits: fractions of train, val and test.
      gender: "all", "female" or "male".
      seed: changes which files fall in which split.
      landmark_converter: maps 68- or 5-point annotations to 98 points;
        None keeps them under `landmarks_raw` (and NaN `landmarks`).
      draft_size: fast JPEG downscaling hint (see `decode.decode_image_scaled`).
    """
    self.root = os.fspath(root)
    if not os.path.isdir(self.root):
      raise FileNotFoundError(f"image folder {self.root} does not exist")
    self.split = _check_split(split)
    self.splits = _check_fractions(splits)
    self.gender = _check_gender(gender)
    self.seed = int(seed)
    self.landmark_converter = landmark_converter
    self.draft_size = draft_size
    self._dir = self.root
    files, copies = _list_images(self.root, unique_content=True)
    if labels is None:
      auto = os.path.join(self.root, "labels.csv")
      labels = auto if os.path.isfile(auto) else False
    self.labels = None if labels is False else os.fspath(labels)
    genders = np.full(len(files), UNKNOWN_GENDER, np.int8)
    lm_rows = np.full(len(files), -1, np.int32)
    self._lm_table = np.zeros((0, 0, 2), np.float32)
    if self.labels is not None:
      self._read_labels(files, genders, lm_rows, copies)
    if self.split == ALL:
      keep = np.arange(len(files))
    else:
      keep = np.asarray([i for i, f in enumerate(files)
                         if self._split_of(f) == self.split], np.int64)
    keep = keep[_gender_rows(genders[keep], self.gender, repr(self))]
    self._select(files, genders, lm_rows, keep)

  def _split_of(self, rel: str) -> str:
    return hash_split(rel, self.splits, self.seed)

  def _read_labels(self, files: list[str], genders: np.ndarray,
                   lm_rows: np.ndarray, copies: dict[str, str]) -> None:
    """Fills `genders`, `lm_rows` and `_lm_table` from the CSV.

    `copies`: {a path left out as a copy: the path listed}, so that a row
    naming a left-out copy says so rather than "no such file".
    """
    path = self.labels
    if not os.path.isfile(path):
      raise FileNotFoundError(f"labels file {path} does not exist")
    by_path = {f: i for i, f in enumerate(files)}
    by_name: dict[str, int] = {}
    for i, f in enumerate(files):
      name = f.rsplit("/", 1)[-1]
      by_name[name] = -1 if name in by_name else i  # -1: ambiguous
    copy_names = set(copies) | {c.rsplit("/", 1)[-1] for c in copies}
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      header = next(reader, None)
      if header is None:
        raise ValueError(f"{path} is empty (expected a header row)")
      fields = [h.strip().lower() for h in header]
      if "file" not in fields:
        raise ValueError(f"{path} has no 'file' column (columns: {header})")
      col = {name: k for k, name in enumerate(fields)}
      lm_cols = [(col[x], col[y])
                 for x, y in _landmark_columns(fields, path)]
      self._lm_count = len(lm_cols)
      table = []
      missing, ambiguous, copied = [], [], []
      for line, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
          continue
        where = f"{path}:{line}"
        row = row + [""] * (len(fields) - len(row))
        name = row[col["file"]].strip().replace("\\", "/")
        if os.path.isabs(name):
          name = os.path.relpath(name, self.root).replace(os.sep, "/")
        name = name.removeprefix("./")
        i = by_path.get(name)
        if i is None and "/" not in name:
          i = by_name.get(name)
          if i == -1:
            ambiguous.append(name)
            continue
        if i is None:
          (copied if name in copy_names else missing).append(name)
          continue
        if "gender" in col:
          genders[i] = parse_gender(row[col["gender"]], where)
        if lm_cols:
          points = np.asarray(
              [[_parse_float(row[cx], where), _parse_float(row[cy], where)]
               for cx, cy in lm_cols], np.float32)
          if np.any(np.isfinite(points)):
            lm_rows[i] = len(table)
            table.append(points)
    if table:
      self._lm_table = np.stack(table)
    elif lm_cols:
      self._lm_table = np.zeros((0, len(lm_cols), 2), np.float32)
    for kind, names in (("no such file under " + self.root, missing),
                        ("file name matches several files; give the "
                         "relative path", ambiguous),
                        ("a copy of a file listed under another name; "
                         "label that name", copied)):
      # Once per process: a source is opened again for every split and
      # every shard of `prepare`.
      if names and (path, kind, len(names)) not in _WARNED_LABELS:
        _WARNED_LABELS.add((path, kind, len(names)))
        shown = ", ".join(names[:10])
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        logging.warning("%s: skipping %d row(s) (%s): %s%s", path,
                        len(names), kind, shown, more)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.root!r}, split={self.split!r}, "
            f"gender={self.gender!r})")


class FFHQ(ImageFolder):
  """A copy of FFHQ: aligned face PNGs, no labels.

  Accepts the official layout (`images1024x1024/00000/00000.png`, ...,
  or the 128x128 thumbnails) or a flat folder. Given the folder of the
  whole download, reads `images1024x1024/` (else `thumbnails128x128/`).
  Splits: FFHQ's own convention when the file names are image numbers that
  reach into both ranges (images 0-59,999 train, 60,000-69,999 val, no
  test); for other copies (a subset of the first images, renamed files) or
  when `splits` is given, the hash split of `ImageFolder`. Gender is unknown
  unless a `labels.csv` is present (see `ImageFolder`).
  """

  TRAIN_END = 60_000

  def __init__(self, root: str | os.PathLike, split: str = TRAIN,
               gender: str = "all", splits: Sequence[float] | None = None,
               labels: str | os.PathLike | bool | None = None, seed: int = 0,
               landmark_converter: LandmarkConverter | None = None,
               draft_size: int | None = None):
    self._by_number = False
    # Pointed at the whole download: take the full-size images.
    for sub in ("images1024x1024", "thumbnails128x128"):
      if os.path.isdir(os.path.join(os.fspath(root), sub)):
        root = os.path.join(os.fspath(root), sub)
        break
    if splits is None:
      numbers = []
      for rel in list_images(root, unique_content=False):  # names only
        stem = os.path.splitext(rel.rsplit("/", 1)[-1])[0]
        if not stem.isdigit():
          numbers = []
          break
        numbers.append(int(stem))
      if (numbers and min(numbers) < self.TRAIN_END
          and max(numbers) >= self.TRAIN_END):
        self._by_number = True
    super().__init__(root, labels=labels, split=split,
                     splits=splits or DEFAULT_SPLITS, gender=gender,
                     seed=seed, landmark_converter=landmark_converter,
                     draft_size=draft_size)

  def _split_of(self, rel: str) -> str:
    if self._by_number:
      number = int(os.path.splitext(rel.rsplit("/", 1)[-1])[0])
      return TRAIN if number < self.TRAIN_END else VAL
    return super()._split_of(rel)

  @property
  def split_rule(self) -> str:
    """"ffhq" (by image number) or "hash"."""
    return "ffhq" if self._by_number else "hash"


class CelebA(_FileSource):
  """A manually downloaded copy of CelebA (the aligned and cropped images).

  Expected under `root` (the annotation files may also sit in `Anno/` and
  `Eval/` as in the official download):
    img_align_celeba/              000001.jpg ... (178x218)
    list_eval_partition.txt        "name 0|1|2" (train/val/test)
    list_attr_celeba.txt           a count line, the 40 attribute names,
                                   then "name v1 ... v40" with values 1/-1;
                                   gender from `Male` (1 male, -1 female)
    list_landmarks_align_celeba.txt  a count line, the header "lefteye_x
                                   lefteye_y ... rightmouth_y", then "name
                                   x y ..." (5 points in the aligned image)
  The 5 points become 98 through `landmark_converter` (else they are kept
  under `landmarks_raw`). Images are not checked at construction: a missing
  or broken one is skipped with a warning when read.
  """

  IMAGES = "img_align_celeba"
  PARTITION = "list_eval_partition.txt"
  ATTRIBUTES = "list_attr_celeba.txt"
  LANDMARKS = "list_landmarks_align_celeba.txt"
  LANDMARK_HEADER = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y",
                     "nose_x", "nose_y", "leftmouth_x", "leftmouth_y",
                     "rightmouth_x", "rightmouth_y")

  def __init__(self, root: str | os.PathLike, split: str = TRAIN,
               gender: str = "all",
               landmark_converter: LandmarkConverter | None = None,
               draft_size: int | None = None):
    self.root = os.fspath(root)
    self.split = _check_split(split)
    self.gender = _check_gender(gender)
    self.landmark_converter = landmark_converter
    self.draft_size = draft_size
    images = os.path.join(self.root, self.IMAGES)
    # The Kaggle copy nests the folder in itself.
    nested = os.path.join(images, self.IMAGES)
    if os.path.isdir(nested):
      images = nested
    if not os.path.isdir(images):
      raise FileNotFoundError(f"CelebA: {images} is missing (expected the "
                              f"aligned images in {self.IMAGES}/ under "
                              f"{self.root})")
    self._dir = images
    names, parts = self._read_partition(self._find(self.PARTITION))
    male = self._read_male(self._find(self.ATTRIBUTES))
    lm_by_name = self._read_landmarks(self._find(self.LANDMARKS))
    genders = np.asarray(
        [UNKNOWN_GENDER if (v := male.get(n)) is None else v for n in names],
        np.int8)
    lm_rows = np.asarray([lm_by_name.get(n, -1) for n in names], np.int32)
    wanted = {TRAIN: 0, VAL: 1, TEST: 2}.get(self.split)
    keep = np.flatnonzero((parts == wanted) if wanted is not None
                          else np.ones(len(names), bool))
    keep = keep[_gender_rows(genders[keep], self.gender, repr(self))]
    self._select(names, genders, lm_rows, keep)

  def _find(self, name: str) -> str:
    for sub in ("", "Anno", "Eval"):
      path = os.path.join(self.root, sub, name)
      if os.path.isfile(path):
        return path
    raise FileNotFoundError(f"CelebA: {name} is missing (looked in "
                            f"{self.root} and its Anno/ and Eval/ folders)")

  @staticmethod
  def _lines(path: str) -> Iterable[tuple[int, list[str]]]:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        parts = line.split()
        if parts:
          yield number, parts

  def _read_partition(self, path: str) -> tuple[list[str], np.ndarray]:
    names, parts = [], []
    for number, fields in self._lines(path):
      if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
        raise ValueError(f"{path}:{number}: expected 'name 0|1|2', got "
                         f"{' '.join(fields)!r}")
      names.append(fields[0])
      parts.append(int(fields[1]))
    return names, np.asarray(parts, np.int8)

  def _read_male(self, path: str) -> dict[str, int]:
    lines = self._lines(path)
    next(lines, None)  # the count
    _, header = next(lines, (0, []))
    if "Male" not in header:
      raise ValueError(f"{path}: line 2 lacks the attribute 'Male'")
    column = header.index("Male") + 1
    male = {}
    for number, fields in lines:
      if len(fields) != len(header) + 1:
        raise ValueError(f"{path}:{number}: expected a name and "
                         f"{len(header)} values")
      value = fields[column]
      if value not in ("1", "-1"):
        raise ValueError(f"{path}:{number}: Male={value!r} is not 1 or -1")
      male[fields[0]] = schema.MALE if value == "1" else schema.FEMALE
    return male

  def _read_landmarks(self, path: str) -> dict[str, int]:
    """Name -> row of `_lm_table` (which it fills)."""
    lines = self._lines(path)
    next(lines, None)  # the count
    _, header = next(lines, (0, []))
    if tuple(header) != self.LANDMARK_HEADER:
      raise ValueError(f"{path}: line 2 should be "
                       f"{' '.join(self.LANDMARK_HEADER)!r}")
    rows, table = {}, []
    for number, fields in lines:
      if len(fields) != 11:
        raise ValueError(f"{path}:{number}: expected a name and 10 numbers")
      try:
        values = [float(v) for v in fields[1:]]
      except ValueError:
        raise ValueError(f"{path}:{number}: not a number in "
                         f"{' '.join(fields)!r}") from None
      rows[fields[0]] = len(table)
      table.append(values)
    self._lm_count = 5
    self._lm_table = np.asarray(table, np.float32).reshape(-1, 5, 2)
    return rows

  def __repr__(self) -> str:
    return (f"CelebA({self.root!r}, split={self.split!r}, "
            f"gender={self.gender!r})")


# ---------------------------------------------------------------------------
# The prepared dataset.


class Prepared:
  """The `masked_faces` dataset written by `jaxface.data.prepare`.

  Read through tfds's ArrayRecord data source (no TensorFlow); the stored
  image bytes are decoded here. Splits are those the preparation wrote.
  """

  provides_masks = False  # the pipeline renders the face masks

  def __init__(self, data_dir: str | os.PathLike, split: str = TRAIN,
               gender: str = "all", draft_size: int | None = None):
    """Opens a split.

    Args:
      data_dir: the dataset's version folder, the `masked_faces` folder or
        the data dir holding it.
      split: "train", "val" or "test".
      gender: "all", "female" or "male" (from the gender index written with
        the dataset; no image is read).
      draft_size: fast JPEG downscaling hint (see `decode.decode_image_scaled`).
    """
    masked_faces = _masked_faces()
    self.path = os.fspath(masked_faces.find_dataset_dir(data_dir))
    self.split = _check_split(split, allow_all=False)
    self.gender = _check_gender(gender)
    self.draft_size = draft_size
    self._source = masked_faces.open_split(self.path, self.split)
    if self.gender == "all":
      self._rows = None
      self._length = len(self._source)
    else:
      genders = masked_faces.read_genders(self.path, self.split)
      self._rows = _gender_rows(genders, self.gender, repr(self))
      self._length = len(self._rows)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None  # reopened on first use in the new process
    return state

  def _data_source(self):
    if self._source is None:
      self._source = _masked_faces().open_split(self.path, self.split)
    return self._source

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index) -> dict[str, Any] | None:
    i = _index(index, len(self), self)
    row = int(self._rows[i]) if self._rows is not None else i
    stored = self._data_source()[row]
    key = _text(stored[KEY])
    try:
      image, scale = decode.decode_image_scaled(
          _bytes(stored[schema.IMAGE]), f"{self.path}[{self.split}] {key}",
          self.draft_size)
    except decode.CorruptImageError as e:
      decode.warn_once(f"{self.path}:{self.split}:{row}",
                       f"skipping undecodable record {row}: {e}")
      return None
    lm = np.array(stored[schema.LANDMARKS], np.float32)
    if scale != 1.0:
      lm = wflw.resize_landmarks(lm, scale).astype(np.float32)
    approx = np.array(stored[LANDMARKS_APPROX], np.bool_)
    return {
        schema.IMAGE: image,
        schema.LANDMARKS: lm,
        LANDMARKS_APPROX: approx | ~np.all(np.isfinite(lm), axis=-1),
        schema.GENDER: np.int32(stored[schema.GENDER]),
        KEY: key,
        LANDMARK_TEACHER: _text(stored[LANDMARK_TEACHER]),
    }

  def __repr__(self) -> str:
    return (f"Prepared({self.path!r}, split={self.split!r}, "
            f"gender={self.gender!r})")


def _masked_faces():
  """The dataset module, imported on first use (tfds takes ~0.4 s)."""
  from jaxface.data import masked_faces  # pylint: disable=g-import-not-at-top
  return masked_faces


def _bytes(value) -> bytes:
  if isinstance(value, np.ndarray):
    return value.tobytes()
  return bytes(value)


def _text(value) -> str:
  if isinstance(value, (bytes, bytearray, np.bytes_)):
    return bytes(value).decode("utf-8")
  if isinstance(value, np.ndarray):
    return _text(value.item())
  return str(value)


# ---------------------------------------------------------------------------
# The procedural source under the record contract.


class Procedural:
  """The embedded default: `ProceduralFaces` under the record contract.

  `num_records` faces in all, split like a folder (`splits`, 0.9/0.05/0.05
  by default). Each split draws from its own seed stream (`seed` plus a
  per-split offset), so no face of one split appears in another, and
  changing `num_records` never moves a face from one split to another.
  Faces are drawn at `size` (the pipeline passes its image size), clamped
  to what the drawing supports.

  Records also carry the face masks of the drawing (`provides_masks`):
  `masked_image`, `mask` and `mask_style` (an index of
  `schema.MASK_STYLES`), besides the procedural extras (`yaw`, `roll`).
  """

  SEED_OFFSETS = {TRAIN: 0, VAL: 1_000_003, TEST: 2_000_006}
  provides_masks = True

  def __init__(self, split: str = TRAIN, gender: str = "all",
               size: int = 256, num_records: int = 100_000, seed: int = 0,
               splits: Sequence[float] = DEFAULT_SPLITS):
    self.split = _check_split(split, allow_all=False)
    fractions = _check_fractions(splits)
    if (isinstance(num_records, bool)
        or not isinstance(num_records, (int, np.integer)) or num_records < 1):
      raise ValueError(f"num_records={num_records!r} must be a positive int")
    self._length = split_counts(int(num_records), fractions)[self.split]
    size = int(np.clip(size, procedural.MIN_SIZE, procedural.MAX_SIZE))
    # ProceduralFaces needs one record at least; an empty split has none.
    self.faces = procedural.ProceduralFaces(
        size=size, num_records=max(self._length, 1),
        seed=seed + self.SEED_OFFSETS[self.split], gender=gender)
    self._styles = np.array([schema.MASK_STYLES.index(name)
                             for name in procedural.MASK_STYLES], np.int32)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index) -> dict[str, Any]:
    i = _index(index, len(self), self)
    record = dict(self.faces[i])
    record[schema.MASK_STYLE] = self._styles[record[schema.MASK_STYLE]]
    record[LANDMARKS_APPROX] = np.zeros((wflw.NUM_LANDMARKS,), np.bool_)
    record[KEY] = f"procedural/{self.faces.seed}/{self.faces.face_index(i)}"
    return record

  def __repr__(self) -> str:
    return (f"Procedural(split={self.split!r}, {len(self)} records, "
            f"{self.faces!r})")

  def input_digest(self, index, cache: dict[str, str] | None = None) -> str:
    """A short hex digest of what record `index` is made of.

    The drawing is deterministic: the generator's settings and the index
    are all (not the record count, which moves no face).
    """
    del cache
    i = _index(index, len(self), self)
    face = f"{self.faces.seed}:{self.faces.size}:{self.faces.face_index(i)}"
    return hashlib.blake2b(face.encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------
# Specs.

KINDS = ("folder", "celeba", "ffhq", "prepared", "procedural", "labelme")
# Options a spec may carry after its path, and how to read them.
_OPTIONS = {
    "folder": {"labels": str, "seed": int, "splits": "fractions",
               "draft_size": int},
    "ffhq": {"labels": str, "seed": int, "splits": "fractions",
             "draft_size": int},
    "celeba": {"draft_size": int},
    "prepared": {"draft_size": int},
    "procedural": {"size": int, "num_records": int, "seed": int,
                   "splits": "fractions"},
    "labelme": {"seed": int, "splits": "fractions"},
}


def _parse_options(kind: str, parts: list[str], spec: str) -> dict[str, Any]:
  known = _OPTIONS[kind]
  options = {}
  for part in parts:
    name, _, value = part.partition("=")
    name = name.strip()
    if name not in known:
      raise ValueError(f"source spec {spec!r}: unknown option {name!r} for "
                       f"{kind!r} (known: {sorted(known)})")
    kind_of = known[name]
    try:
      if kind_of == "fractions":
        options[name] = tuple(float(v) for v in value.split("/"))
      else:
        options[name] = kind_of(value)
    except ValueError:
      raise ValueError(f"source spec {spec!r}: bad value {value!r} for "
                       f"{name!r}") from None
  return options


def open_source(spec: str, split: str = TRAIN, gender: str = "all", *,
                size_hint: int | None = None, **kwargs) -> Any:
  """Opens the source a spec names.

  Specs:
    folder:PATH[,labels=CSV][,seed=N][,splits=0.8/0.1/0.1]   `ImageFolder`
    ffhq:PATH[,labels=CSV][,splits=...]                        `FFHQ`
    celeba:PATH                                                `CelebA`
    prepared:PATH                                              `Prepared`
    procedural[:num_records=N,seed=K,size=S,splits=...]       `Procedural`
    labelme:PATH[,seed=N][,splits=...]   `jaxface.data.labelme.LabelmeFolder`
  The folder kinds and prepared also take `draft_size=N`. A path that
  contains commas is fine as long as the text after a comma is not
  `name=value`.

  Args:
    spec: the spec string.
    split: "train", "val" or "test" ("all" for folder kinds).
    gender: "all", "female" or "male".
    size_hint: the side the caller will resize images to. Sources that draw
      their images (procedural) draw them at this size unless the spec sets
      `size`; sources that read files ignore it.
    **kwargs: more constructor arguments (e.g. `landmark_converter`).

  Returns:
    The source.
  """
  kind, _, rest = spec.partition(":")
  kind = kind.strip().lower()
  if kind not in KINDS:
    raise ValueError(f"source spec {spec!r}: unknown kind {kind!r} (known "
                     f"kinds: {', '.join(KINDS)}; e.g. 'folder:/data/faces', "
                     "'prepared:/data/masked_faces')")
  # Split "PATH,opt=v,opt=v"; pieces without "=" belong to the path.
  pieces = rest.split(",") if rest else []
  path_parts, option_parts = [], []
  for piece in pieces:
    if re.fullmatch(r"\s*[A-Za-z_]+\s*=.*", piece) and (
        kind == "procedural" or path_parts):
      option_parts.append(piece)
    elif option_parts:
      raise ValueError(f"source spec {spec!r}: {piece!r} after the options")
    else:
      path_parts.append(piece)
  path = ",".join(path_parts).strip()
  options = _parse_options(kind, option_parts, spec)
  clash = sorted(set(options) & set(kwargs))
  if clash:
    raise ValueError(f"source spec {spec!r}: {clash} given twice")
  options.update(kwargs)
  if kind == "procedural":
    if path:
      raise ValueError(f"source spec {spec!r}: procedural takes no path "
                       "(options only, e.g. 'procedural:size=128')")
    if size_hint and "size" not in options:
      options["size"] = int(size_hint)
    return Procedural(split=split, gender=gender, **options)
  if not path:
    raise ValueError(f"source spec {spec!r}: {kind} needs a path "
                     f"('{kind}:PATH')")
  if kind == "folder":
    return ImageFolder(path, split=split, gender=gender, **options)
  if kind == "ffhq":
    return FFHQ(path, split=split, gender=gender, **options)
  if kind == "celeba":
    return CelebA(path, split=split, gender=gender, **options)
  if kind == "labelme":
    from jaxface.data import labelme  # pylint: disable=g-import-not-at-top
    return labelme.LabelmeFolder(path, split=split, gender=gender, **options)
  return Prepared(path, split=split, gender=gender, **options)
