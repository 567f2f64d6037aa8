"""Files of a workdir on a local disk or in a bucket (`gs://`), alike.

Paths are `etils.epath.Path`s: local ones go through `os`, URLs through
fsspec (`gs://` through gcsfs, the `gcs` extra). A bucket is not a file
system: it has no folders of its own (one exists while an object is in it,
and `mkdir` does nothing), an object appears whole when its upload ends, and
a rename is a copy and a delete. The functions here do what a workdir needs
in a way that holds on both.
"""

import os
import shutil
import tempfile
import uuid

from etils import epath
import fsspec

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
  """Whether `path` is on this machine's file system (not a URL)."""
  return "://" not in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`; a local one made absolute."""
  path = os.fspath(path)
  return epath.Path(os.path.abspath(path) if is_local(path) else path)


def check_workdir(workdir: PathLike) -> None:
  """Raises a clear error, before anything is written, for an unusable URL.

  Local paths are always usable. Of URLs, only `gs://` is: the checkpoints
  (orbax, through TensorStore) reach local disks and GCS only, and `epath`
  reads any other scheme it does not know as a local path (`memory://x`
  would become the folder `memory:/x`).

  Raises:
    ValueError: a URL of another scheme.
    ImportError: `gs://` without gcsfs (which also brings the
      google-cloud-storage that orbax uses to delete old checkpoints).
  """
  workdir = os.fspath(workdir)
  if is_local(workdir):
    return
  scheme = workdir.split("://", 1)[0]
  if scheme != "gs":
    raise ValueError(
        f"workdir {workdir}: a workdir is a local path or a gs:// URL; "
        f"{scheme}:// is not supported (checkpoints are written by orbax, "
        "which reaches only local disks and Google Cloud Storage).")
  try:
    fsspec.get_filesystem_class("gs")
  except ImportError as e:
    raise ImportError(
        f"workdir {workdir}: a gs:// workdir needs gcsfs, which is not "
        "installed; install the gcs extra: pip install -e '.[gcs]' "
        f"(or pip install gcsfs). ({e})") from None


def write_atomic(path: epath.Path, data: str | bytes) -> None:
  """Writes a file that readers see whole or not at all.

  Written under a temporary name in the same folder and renamed over
  `path`, so an interrupted write leaves any previous file in place. Missing
  folders are created. A local file gets mode 0644; in a bucket the rename
  is a copy and a delete (an object appears whole anyway).

  Args:
    path: destination (see `as_path`).
    data: the contents; text is written as UTF-8.
  """
  if isinstance(data, str):
    data = data.encode("utf-8")
  path = epath.Path(path)
  if is_local(path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.",
                               suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      # mkstemp creates the file private (0600); give it the usual mode.
      os.chmod(tmp, 0o644)
      os.replace(tmp, path)
    except BaseException:
      try:
        os.unlink(tmp)
      except OSError:
        pass
      raise
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
  try:
    with tmp.open("wb") as f:
      f.write(data)
    tmp.replace(path)
  except BaseException:
    try:
      tmp.unlink(missing_ok=True)
    except Exception:  # pylint: disable=broad-except
      pass
    raise


def move_tree(src: epath.Path, dst: epath.Path) -> None:
  """Moves the folder `src` to `dst` (which must not exist).

  Locally one rename (`shutil.move`). In a bucket, where a folder cannot be
  renamed and a rename needs the destination's folder to exist already,
  every object is copied and then `src` removed: an interrupted move leaves
  `src` whole.
  """
  src, dst = epath.Path(src), epath.Path(dst)
  if is_local(src) and is_local(dst):
    os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  _copy_tree(src, dst)
  src.rmtree()


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  # `iterdir` + `is_dir` rather than `walk`, which gives fsspec's paths
  # without their scheme.
  for child in src.iterdir():
    if child.is_dir():
      _copy_tree(child, dst / child.name)
    else:
      child.copy(dst / child.name)
