"""A `gs://` workdir: everything a run writes goes to the bucket.

No network: `gs://` is served by a stand-in fsspec filesystem over a local
folder (registered for the test in place of gcsfs) that behaves like a
bucket as gcsfs shows one: no folders of its own (`mkdir` does nothing, a
folder exists while a file is in it; so epath's rename, which wants the
destination's folder to exist, fails where it would on GCS). jaxface
reaches it through `etils.epath`, as it would reach gcsfs, and the test
runs in an empty current directory that must stay empty (no `gs:` folder).
Two calls inside orbax are redirected as well, since they would reach
Google Cloud itself: TensorStore's GCS driver for the saved arrays (the
test's driver is TensorStore's `file` driver, on the same folder) and the
bucket lookup for hierarchical namespaces when old checkpoints are deleted.
The rest of orbax (its step folders, metadata, commit files and deletions)
runs on the stand-in.
"""

import importlib
import json
import logging
import os
import pathlib
import struct

from etils import epath
from etils.epath import backend as epath_backend
import fsspec
from fsspec.implementations import dirfs
from fsspec.implementations import local
from orbax.checkpoint._src.path import gcs_utils
import pytest
from tensorboardX.proto import event_pb2

from jaxface import fileio
from jaxface.train import checkpoint
from jaxface.train import loop
from jaxface.train import writers
import toy_task as toy  # registers the toy task

BUCKET = "bucket"
WORKDIR = f"gs://{BUCKET}/runs/toy"


class _BucketFolder(local.LocalFileSystem):
  """A local folder seen as a bucket: objects only, no folders."""

  root = ""  # the folder holding the buckets; set by the fixture

  def mkdir(self, path, create_parents=True, **kwargs):
    del path, create_parents, kwargs  # gcsfs: a no-op below a bucket

  def makedirs(self, path, exist_ok=False):
    del path, exist_ok

  def _open(self, path, mode="rb", **kwargs):
    if "r" not in mode:
      os.makedirs(self._parent(path), exist_ok=True)
    return super()._open(path, mode, **kwargs)

  def cp_file(self, path1, path2, **kwargs):
    os.makedirs(self._parent(path2), exist_ok=True)
    super().cp_file(path1, path2, **kwargs)

  def mv(self, path1, path2, recursive=False, **kwargs):
    del recursive  # gcsfs: a copy of every object and a delete
    os.makedirs(self._parent(path2), exist_ok=True)
    super().mv(path1, path2, **kwargs)
    self._prune(path1)

  def rm_file(self, path):
    super().rm_file(path)
    self._prune(path)

  def rm(self, path, recursive=False, maxdepth=None):
    super().rm(path, recursive=recursive, maxdepth=maxdepth)
    for p in [path] if isinstance(path, str) else path:
      self._prune(p)

  def rmdir(self, path):
    super().rmdir(path)
    self._prune(path)

  def _prune(self, path):
    """Removes the folders left empty above `path`, up to the bucket."""
    folder = pathlib.Path(self._parent(self._strip_protocol(path)))
    while (len(folder.relative_to(self.root).parts) > 1
           and folder.is_dir() and not any(folder.iterdir())):
      folder.rmdir()
      folder = folder.parent


class _FakeGcs(dirfs.DirFileSystem):
  """`gs://bucket/...` -> `<root>/bucket/...` on a `_BucketFolder`."""

  protocol = ("gs", "gcs")
  cachable = False  # a new root per test session

  def __init__(self, *args, **kwargs):
    del args, kwargs  # gcsfs's options (epath passes finalize_on_close)
    super().__init__(path=_BucketFolder.root, fs=_BucketFolder())


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local folder behind `gs://bucket`; the test runs in an empty cwd."""
  root = tmp_path / "buckets"
  (root / BUCKET).mkdir(parents=True)
  monkeypatch.setattr(_BucketFolder, "root", str(root))
  monkeypatch.setenv("EPATH_USE_TF", "false")  # epath: fsspec, not gfile
  # pylint: disable=protected-access
  # fsspec.register_implementation, undone at the end.
  registry = importlib.import_module("fsspec.registry")._registry
  for name in _FakeGcs.protocol:
    monkeypatch.setitem(registry, name, _FakeGcs)
  # epath keeps the filesystems it made (gcsfs, were it installed).
  get_filesystem = type(epath_backend.fsspec_backend)._get_filesystem
  # pylint: enable=protected-access
  get_filesystem.cache_clear()

  def kvstore(ckpt_path):
    return {"driver": "file",
            "path": str(root / ckpt_path.removeprefix("gs://"))}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled",
                      lambda path: False)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root / BUCKET
  get_filesystem.cache_clear()
  # Nothing written beside the bucket: no local "gs:" folder.
  assert not list(cwd.iterdir())


def _run(num_steps, **overrides):
  config = toy.toy_config(num_steps=num_steps, checkpoint_every=2,
                          image_every=4, max_to_keep=2)
  config.update_from_flattened_dict(overrides)
  return loop.train_and_evaluate(config, WORKDIR)


def _events(folder):
  """{tag: [step, ...]} of the scalar summaries of the event files."""
  tags = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 16 + length
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


def _steps(run):
  return sorted(int(p.name) for p in (run / "checkpoints").iterdir()
                if p.name.isdigit())


def test_a_gs_workdir_trains_resumes_and_recovers_in_the_bucket(
    bucket, caplog):
  run = bucket / "runs" / "toy"
  with caplog.at_level(logging.INFO):
    assert int(_run(4).step) == 4
  assert "no workdir lock is taken" in caplog.text
  assert _steps(run) == [2, 4]
  assert json.loads((run / "config.json").read_text())["train"][
      "num_steps"] == 4
  assert (run / "samples" / "00000004.png").stat().st_size > 0

  # Resumed from the bucket; retention deletes step 2 there.
  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert int(_run(6).step) == 6
  assert "Resumed from the checkpoint of step 4" in caplog.text
  assert _steps(run) == [4, 6]
  starts = sorted(p.name for p in (run / "starts").iterdir())
  assert len(starts) == 2 and starts[1].endswith("-step4.json")
  assert sorted(p.name for p in (run / "samples").iterdir()) == [
      "00000004.png", "00000006.png"]
  scalars = _events(run)
  assert scalars["train/loss"] == [2, 4, 6]

  # A damaged step is moved aside within the bucket (where a folder cannot
  # be renamed into one that does not exist yet) and the previous one used.
  for p in sorted((run / "checkpoints" / "6" / "state").rglob("*"),
                  reverse=True):
    p.unlink() if p.is_file() else p.rmdir()
  (run / "checkpoints" / "6" / "state").rmdir()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    assert int(_run(6).step) == 6
  assert "checkpoint of step 6" in caplog.text and "damaged" in caplog.text
  assert "Resumed from the checkpoint of step 4" in caplog.text
  [moved] = list((run / "checkpoints.damaged").iterdir())
  assert moved.name.startswith("6-") and (moved / "checksums").is_dir()
  assert _steps(run) == [4, 6]

  # Another model is refused with the config.json read from the bucket.
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"model\.width: 4 saved, 8 now"):
    _run(6, **{"model.width": 8})

  # No temporary files left behind.
  assert not [p for p in bucket.rglob("*.tmp")]


def test_write_atomic_and_move_tree_in_the_bucket(bucket):
  target = fileio.as_path(f"{WORKDIR}/a/b.json")
  fileio.write_atomic(target, "{}")
  fileio.write_atomic(target, '{"x": 1}')  # over an existing object
  assert (bucket / "runs/toy/a/b.json").read_text() == '{"x": 1}'
  assert os.listdir(bucket / "runs/toy/a") == ["b.json"]
  fileio.move_tree(fileio.as_path(f"{WORKDIR}/a"),
                   fileio.as_path(f"{WORKDIR}/new/folder/a"))
  assert not (bucket / "runs/toy/a").exists()
  assert (bucket / "runs/toy/new/folder/a/b.json").read_text() == '{"x": 1}'


def test_event_files_in_the_bucket_survive_a_failed_upload(
    bucket, monkeypatch, caplog):
  writer = writers.TensorBoardWriter(f"{WORKDIR}/tb")
  writer.write_scalars(1, {"a": 1.0})
  writer.close()
  assert _events(bucket / "runs/toy/tb") == {"a": [1]}

  # The file object tensorboardX writes its records to.
  # pylint: disable-next=protected-access
  events = writers._BucketEventFile(f"{WORKDIR}/tb/x")
  assert (bucket / "runs/toy/tb/x").read_bytes() == b""
  events.write(b"abc")
  gpath = type(epath.Path(WORKDIR))
  real_open = gpath.open

  def failing_open(self, mode="r", **kwargs):
    if "w" in mode:
      raise OSError("bucket unreachable")
    return real_open(self, mode, **kwargs)

  monkeypatch.setattr(gpath, "open", failing_open)
  with caplog.at_level(logging.WARNING):
    events.flush()  # the run goes on
  assert "not uploaded" in caplog.text and "bucket unreachable" in caplog.text
  events.write(b"def")
  monkeypatch.setattr(gpath, "open", real_open)
  events.close()
  assert (bucket / "runs/toy/tb/x").read_bytes() == b"abcdef"


def test_unusable_workdir_urls_are_refused_before_anything_is_written(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = toy.toy_config(num_steps=2)
  with pytest.raises(ValueError, match=r"memory:// is not supported"):
    loop.train_and_evaluate(config, "memory://run")
  fileio.check_workdir("relative/path")
  fileio.check_workdir(tmp_path)
  try:
    fsspec.get_filesystem_class("gs")
  except ImportError:  # no gcsfs here: the error names the extra
    with pytest.raises(ImportError, match=r"needs gcsfs.*\[gcs\]"):
      loop.train_and_evaluate(config, "gs://bucket/run")
  assert not list(tmp_path.iterdir())
