"""Metric writers that log to the console and to TensorBoard without TensorFlow.

`create_writer` returns a clu `MetricWriter`: on the primary process it logs
every value and writes TensorBoard event files through `tensorboardX`; on
the others it only logs. (`jaxface.visualize.write_png` saves PNG files.)
Event files in a bucket (`gs://`) are written through `etils.epath`, like
the rest of a workdir (see `_BucketEventFile`).

Import this module before anything else imports `clu.metric_writers`: see
`_install_summary_writer_stub`.
"""

import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import types
from typing import Any, Mapping, Optional, Union

from absl import logging
from etils import epath
import numpy as np

from jaxface import fileio
from jaxface import visualize

_STUB_NAME = "clu.metric_writers.summary_writer"


def _install_summary_writer_stub() -> None:
  """Lets `clu.metric_writers` be imported when TensorFlow is not installed.

  clu's `metric_writers/__init__.py` eagerly imports its TensorFlow summary
  writer (`clu.metric_writers.summary_writer`, which imports `tensorflow`),
  so even `from clu.metric_writers import interface` fails without TF. The
  import system returns modules already in `sys.modules` without loading
  them, so registering a placeholder under that name first lets the package
  import; everything else in it (interface, logging, multi and async
  writers) does not need TF. The placeholder's `SummaryWriter` raises on use.

  Nothing is done when TensorFlow is importable (clu then works as shipped)
  or when clu's writers were already imported.
  """
  if _STUB_NAME in sys.modules or "clu.metric_writers" in sys.modules:
    return
  try:
    has_tf = importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):
    has_tf = False
  if has_tf:
    return

  class SummaryWriter:  # pylint: disable=missing-class-docstring
    """Placeholder for clu's TensorFlow writer; TensorFlow is not installed."""

    def __init__(self, *args, **kwargs):
      del args, kwargs
      raise ImportError(
          "clu's SummaryWriter needs TensorFlow, which is not installed; use "
          "jaxface.train.writers.TensorBoardWriter or create_writer instead.")

  stub = types.ModuleType(_STUB_NAME, SummaryWriter.__doc__)
  stub.SummaryWriter = SummaryWriter
  sys.modules[_STUB_NAME] = stub


_install_summary_writer_stub()

# pylint: disable=g-import-not-at-top,wrong-import-position
from clu.metric_writers import async_writer
from clu.metric_writers import interface
from clu.metric_writers import logging_writer
from clu.metric_writers import multi_writer
import tensorboardX
from tensorboardX import record_writer
# pylint: enable=g-import-not-at-top,wrong-import-position

Array = interface.Array
Scalar = interface.Scalar
PathLike = Union[str, os.PathLike]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Flattens nested mappings (and ConfigDicts) to `a.b.c` keys."""
  if hasattr(tree, "to_dict") and callable(tree.to_dict):
    tree = tree.to_dict()
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  if not tree and prefix:
    return {prefix: "{}"}
  out = {}
  for key, value in tree.items():
    name = f"{prefix}.{key}" if prefix else str(key)
    out.update(flatten(value, name))
  return out


def _markdown_cell(value: Any) -> str:
  text = str(value).replace("\n", " ")
  return text.replace("|", "\\|")


def _as_hwc_batch(image: Array) -> np.ndarray:
  """`[H, W]`, `[H, W, C]` or `[N, H, W, C]` -> uint8 `[N, H, W, C]`."""
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim == 3:
    arr = arr[None]
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
    raise ValueError(
        f"expected images [N, H, W, C] or [H, W, C] with C in (1, 3, 4), "
        f"got shape {arr.shape}")
  return visualize.to_uint8(arr)


class _BucketEventFile:
  """An event file in a bucket, written through `etils.epath`.

  tensorboardX appends to an open file and flushes it now and then; an
  object in a bucket cannot be appended to. The records are kept in a local
  temporary file and the whole object is uploaded again at each flush that
  has something new (as TensorFlow's gfile does for GCS), so TensorBoard
  sees everything up to the last flush.
  """

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._local = tempfile.TemporaryFile()
    self._uploaded = -1  # bytes in the object; -1: none yet
    self._lock = threading.Lock()
    # The file exists from the start, as a local one does, and a bucket that
    # cannot be written to stops the run now.
    self._upload()

  def write(self, data: bytes) -> None:
    with self._lock:
      self._local.write(data)

  def flush(self) -> None:
    try:
      self._upload()
    except Exception as e:  # pylint: disable=broad-except
      # Often in tensorboardX's flushing thread; a passing failure of the
      # bucket stops neither the run nor later uploads.
      logging.warning("TensorBoard events not uploaded to %s (tried again "
                      "at the next flush): %s: %s", self._path,
                      type(e).__name__, e)

  def _upload(self) -> None:
    with self._lock:
      if self._local.closed:
        return
      size = self._local.tell()
      if size == self._uploaded:
        return
      self._local.seek(0)
      try:
        with self._path.open("wb") as f:
          shutil.copyfileobj(self._local, f)
      finally:
        self._local.seek(size)  # writes go on at the end, whatever happened
      self._uploaded = size

  def close(self) -> None:
    self.flush()
    with self._lock:
      self._local.close()


class _BucketEventFiles:
  """tensorboardX's writer factory for logdirs `_BUCKET_PREFIX:<url>`."""

  def open(self, path: str) -> _BucketEventFile:
    return _BucketEventFile(_bucket_url(path))

  def directory_check(self, path: str) -> None:
    epath.Path(_bucket_url(path)).mkdir(parents=True, exist_ok=True)


# tensorboardX picks a writer factory by what comes before the first ":" of
# an event file's path: its own for "gs" needs google-cloud-storage directly
# and holds the whole file in memory. A prefix of jaxface's own routes the
# URLs that `TensorBoardWriter` is given through epath, and leaves
# tensorboardX as it was for everyone else.
_BUCKET_PREFIX = "jaxface-epath"
record_writer.register_writer_factory(_BUCKET_PREFIX, _BucketEventFiles())


def _bucket_url(path: str) -> str:
  assert path.startswith(_BUCKET_PREFIX + ":"), path
  return path[len(_BUCKET_PREFIX) + 1:]


class TensorBoardWriter(interface.MetricWriter):
  """Writes TensorBoard event files with `tensorboardX` (no TensorFlow).

  Images: a batch `[N, H, W, C]` is written as N images under `key/0` ...
  `key/{N-1}` (a single image, `[H, W, C]` or N = 1, under `key`). Images are
  uint8 or float in [0, 1]; single-channel images are stored as RGB.
  Texts are stored under `key/text_summary` (tensorboardX's naming).
  Videos and audio are not supported and are skipped with a warning.
  """

  def __init__(self,
               logdir: PathLike,
               *,
               flush_secs: int = 30,
               purge_step: Optional[int] = None):
    """Opens a new event file in `logdir`.

    Args:
      logdir: Directory for the event files (created if missing): a local
        path or a URL that `etils.epath` reaches (`gs://`).
      flush_secs: Seconds between automatic flushes.
      purge_step: When resuming at this step, TensorBoard hides events that
        an earlier run wrote for steps >= `purge_step`.
    """
    self._logdir = os.fspath(logdir)
    self._writer = tensorboardX.SummaryWriter(
        logdir=(self._logdir if fileio.is_local(self._logdir)
                else f"{_BUCKET_PREFIX}:{self._logdir}"),
        flush_secs=flush_secs, purge_step=purge_step)
    self._warned: set[str] = set()

  @property
  def logdir(self) -> str:
    return self._logdir

  def _warn_once(self, what: str) -> None:
    if what not in self._warned:
      self._warned.add(what)
      logging.warning("TensorBoardWriter: %s are not supported; skipped.",
                      what)

  def write_summaries(self,
                      step: int,
                      values: Mapping[str, Array],
                      metadata: Optional[Mapping[str, Any]] = None):
    """Writes one-element tensors as scalars; skips the others."""
    del metadata
    for key, value in values.items():
      arr = np.asarray(value)
      if arr.size == 1 and np.issubdtype(arr.dtype, np.number):
        self._writer.add_scalar(key, float(arr.reshape(())), int(step))
      else:
        self._warn_once("non-scalar raw tensor summaries")

  def write_scalars(self, step: int, scalars: Mapping[str, Scalar]):
    for key, value in scalars.items():
      arr = np.asarray(value)
      if arr.size != 1:
        raise ValueError(f"scalar {key!r} has shape {arr.shape}")
      self._writer.add_scalar(key, float(arr.reshape(())), int(step))

  def write_images(self, step: int, images: Mapping[str, Array]):
    for key, value in images.items():
      batch = _as_hwc_batch(value)
      for i, image in enumerate(batch):
        tag = key if len(batch) == 1 else f"{key}/{i}"
        self._writer.add_image(tag, image, int(step), dataformats="HWC")

  def write_videos(self, step: int, videos: Mapping[str, Array]):
    del step, videos
    self._warn_once("videos")

  def write_audios(self, step: int, audios: Mapping[str, Array], *,
                   sample_rate: int):
    del step, audios, sample_rate
    self._warn_once("audios")

  def write_texts(self, step: int, texts: Mapping[str, str]):
    for key, text in texts.items():
      self._writer.add_text(key, str(text), int(step))

  def write_histograms(self,
                       step: int,
                       arrays: Mapping[str, Array],
                       num_buckets: Optional[Mapping[str, int]] = None):
    num_buckets = num_buckets or {}
    for key, value in arrays.items():
      arr = np.asarray(value, np.float64).reshape(-1)
      arr = arr[np.isfinite(arr)]
      if arr.size == 0:
        continue
      bins = num_buckets.get(key)
      self._writer.add_histogram(
          key, arr, int(step), bins="tensorflow" if bins is None else bins)

  def write_hparams(self, hparams: Mapping[str, Any]):
    """Writes hyperparameters as a Markdown table under the `hparams` tag.

    Nested mappings (and `ConfigDict`s) are flattened to dotted names; values
    of any type are shown with `str`.
    """
    flat = flatten(hparams)
    lines = ["| name | value |", "| --- | --- |"]
    lines += [f"| {_markdown_cell(k)} | {_markdown_cell(v)} |"
              for k, v in sorted(flat.items())]
    self._writer.add_text("hparams", "\n".join(lines), 0)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def create_writer(logdir: PathLike,
                  *,
                  is_primary: bool,
                  asynchronous: bool = True,
                  console: bool = True,
                  collection: Optional[str] = None,
                  purge_step: Optional[int] = None) -> interface.MetricWriter:
  """The metric writer a training or evaluation loop should use.

  Args:
    logdir: TensorBoard directory (used on the primary process only).
    is_primary: Whether this is the process that writes files (normally
      `jax.process_index() == 0`); the others only log.
    asynchronous: Wrap in clu's `AsyncWriter`, so writing (PNG encoding,
      file I/O) happens on a background thread. Call `flush()` before reading
      the files and `close()` at the end.
    console: Also log every value (clu's `LoggingWriter`). Training loops
      that print their own progress lines turn this off.
    collection: Optional name prefixed to logged lines (e.g. "train").
    purge_step: See `TensorBoardWriter`.

  Returns:
    A `MetricWriter`.
  """
  writers: list[interface.MetricWriter] = []
  if console:
    writers.append(logging_writer.LoggingWriter(collection=collection))
  if is_primary:
    writers.append(TensorBoardWriter(logdir, purge_step=purge_step))
  writer: interface.MetricWriter = multi_writer.MultiWriter(writers)
  if asynchronous:
    writer = async_writer.AsyncWriter(writer)
  return writer
