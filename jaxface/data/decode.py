"""Image decoding: bytes or files to uint8 RGB, with clear errors.

Every image the data layer reads goes through `decode_image_scaled`: Pillow
decodes it, the EXIF orientation is applied, any mode (greys, 16-bit,
palette, alpha) becomes uint8 RGB, and whatever goes wrong becomes a
`CorruptImageError` that names the image. JPEGs can be decoded at 1/2, 1/4
or 1/8 scale in the decoder (`draft_size`): for a 1024-pixel photo bound for
a 256-pixel pipeline that takes about half the time of a full decode and
resize. PNGs always decode in full.

`warn_once` is how sources report a bad record without stopping: one
warning per record and process.
"""

import hashlib
import io
import os
import stat
import threading

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageOps


class CorruptImageError(ValueError):
  """An image that cannot be read or decoded; the message names it."""


_warned: set[str] = set()
_warned_lock = threading.Lock()
# Distinct warnings kept per process; past this, one last warning says that
# the rest are dropped (a source of a million bad files must not fill the
# log, or memory).
MAX_WARNINGS = 10_000


def warn_once(key: str, message: str) -> None:
  """Logs `message` as a warning the first time `key` is reported here."""
  with _warned_lock:
    if key in _warned or len(_warned) > MAX_WARNINGS:
      return
    _warned.add(key)
    if len(_warned) > MAX_WARNINGS:
      message = (f"{MAX_WARNINGS} distinct data warnings in this process; "
                 "further ones are not shown (counts still are)")
  logging.warning("%s", message)


def _to_rgb(im: Image.Image) -> np.ndarray:
  """Any Pillow image -> uint8 [H, W, 3]; alpha is dropped."""
  if im.mode in ("I", "F") or im.mode.startswith("I;16"):
    # 16-bit greys: Pillow's own conversion to 8 bits clips, so shift.
    grey = np.asarray(im)
    if im.mode == "F":
      grey = np.clip(grey, 0, 255)
    elif im.mode.startswith("I;16") or grey.max() > 255:
      grey = np.clip(np.asarray(grey, np.int64) >> 8, 0, 255)
    grey = np.asarray(grey, np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.array(im, np.uint8)  # a writable copy (asarray is read-only)


def decode_image_scaled(data: bytes, key: str = "<bytes>",
                        draft_size: int | None = None
                        ) -> tuple[np.ndarray, float]:
  """Decodes an image; returns it and its scale relative to the stored size.

  Args:
    data: the encoded file (JPEG, PNG, BMP, WebP, or anything Pillow reads).
    key: names the image in the error.
    draft_size: when set, a JPEG is decoded at the smallest of 1/2, 1/4, 1/8
      scale that keeps both sides at least `draft_size` (Pillow's
      `Image.draft`: the JPEG decoder skips the high frequencies, cheaper
      than decoding in full and resizing); other formats decode in full.

  Returns:
    ([H, W, 3] uint8 RGB with the EXIF orientation applied, scale) where
    scale is 1, 1/2, 1/4 or 1/8: landmarks of the stored image map to the
    decoded one by `wflw.resize_landmarks(points, scale)`.

  Raises:
    CorruptImageError: the data is not an image Pillow can decode in full
      (truncated files included).
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      scale = 1.0
      if draft_size and im.format == "JPEG":
        width, height = im.size
        im.draft("RGB", (int(draft_size), int(draft_size)))
        if im.size != (width, height):
          # The decoder shrinks by 2, 4 or 8, rounding sizes up.
          for factor in (2, 4, 8):
            if im.size == (-(-width // factor), -(-height // factor)):
              scale = 1.0 / factor
              break
          else:
            raise CorruptImageError(
                f"{key}: unexpected draft size {im.size} of {width}x{height}")
      orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
      if orientation not in (None, 1):
        im = ImageOps.exif_transpose(im)
      image = _to_rgb(im)
  except CorruptImageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises many types (UnidentifiedImageError, OSError for
    # truncated data, SyntaxError, ValueError, DecompressionBombError...).
    raise CorruptImageError(
        f"{key}: cannot decode image ({type(e).__name__}: {e})") from e
  return image, scale


def decode_image(data: bytes, key: str = "<bytes>",
                 draft_size: int | None = None) -> np.ndarray:
  """Decodes an image to uint8 [H, W, 3] RGB (see `decode_image_scaled`)."""
  return decode_image_scaled(data, key, draft_size)[0]


# The most bytes `read_image` reads from one file. Photos are far smaller
# (a 1024-pixel FFHQ PNG is ~1.5 MB); a bigger file is taken for a broken
# or wrong one rather than read whole into memory.
MAX_IMAGE_BYTES = 64 * 1024 * 1024

# Open flags that never block: a FIFO opens at once (and is then refused)
# instead of waiting for a writer.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))


def file_kind(mode: int) -> str:
  """What a file is, from its `st_mode`: "a FIFO", "a directory", ..."""
  for test, kind in ((stat.S_ISREG, "a regular file"),
                     (stat.S_ISDIR, "a directory"),
                     (stat.S_ISFIFO, "a FIFO"),
                     (stat.S_ISSOCK, "a socket"),
                     (stat.S_ISCHR, "a character device"),
                     (stat.S_ISBLK, "a block device")):
    if test(mode):
      return kind
  return f"a special file (mode {mode:o})"


def open_regular_file(path: str | os.PathLike, key: str | None = None):
  """Opens a regular file for binary reading, never blocking on the open.

  Anything else (a FIFO, a device, a socket, a directory, also when reached
  through a symlink) is refused before it is opened, and again after (by
  `os.fstat` of what was opened: it may have been swapped since).

  Args:
    path: the file.
    key: names the file in the error (default: `path`).

  Returns:
    The open file (unbuffered binary, the caller closes it) and its
    `os.stat_result`.

  Raises:
    CorruptImageError: not a regular file, or it cannot be opened.
  """
  key = key or os.fspath(path)
  try:
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
      raise CorruptImageError(f"{key}: {file_kind(mode)}, not a regular "
                              "file; not read")
    f = open(os.open(path, _OPEN_FLAGS), "rb", buffering=0)
  except OSError as e:
    raise CorruptImageError(f"{key}: cannot read ({e})") from e
  try:
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
      raise CorruptImageError(f"{key}: {file_kind(st.st_mode)}, not a "
                              "regular file; not read")
  except BaseException:
    f.close()
    raise
  return f, st


def read_image(path: str | os.PathLike, key: str | None = None,
               draft_size: int | None = None,
               max_bytes: int | None = None) -> tuple[np.ndarray, float]:
  """Reads and decodes an image file; CorruptImageError if it cannot.

  Args:
    path: the file.
    key: names the file in errors (default: `path`).
    draft_size: fast JPEG downscaling hint (see `decode_image_scaled`).
    max_bytes: the most bytes to read (default `MAX_IMAGE_BYTES`); a
      bigger file is a CorruptImageError, and only `max_bytes + 1` bytes of
      it are read.

  Returns:
    The image and its scale, as `decode_image_scaled` returns them.

  Raises:
    CorruptImageError: not a regular file (a FIFO, a device, a directory,
      a dangling symlink), unreadable, larger than `max_bytes`, or not an
      image Pillow can decode.
  """
  key = key or os.fspath(path)
  limit = MAX_IMAGE_BYTES if max_bytes is None else int(max_bytes)
  f, st = open_regular_file(path, key)
  too_big = CorruptImageError(
      f"{key}: larger than the limit of {limit} bytes (max_bytes, by "
      "default decode.MAX_IMAGE_BYTES); not read")
  with f:
    if st.st_size > limit:
      raise too_big
    try:
      # One byte past the stat size notices a file that grew since.
      chunks = [f.read(st.st_size + 1)]
      total = len(chunks[0])
      while chunks[-1] and total <= limit:
        chunks.append(f.read(min(1 << 20, limit + 1 - total)))
        total += len(chunks[-1])
    except OSError as e:
      raise CorruptImageError(f"{key}: cannot read ({e})") from e
  if total > limit:
    raise too_big
  return decode_image_scaled(b"".join(chunks), key, draft_size)


def file_digest(path: str | os.PathLike, key: str | None = None,
                max_bytes: int | None = None) -> str:
  """Hex blake2b of a file's first `max_bytes` (default `MAX_IMAGE_BYTES`).

  Read in chunks through `open_regular_file` (never blocks; refuses
  anything but a regular file with a CorruptImageError).
  """
  left = MAX_IMAGE_BYTES if max_bytes is None else int(max_bytes)
  digest = hashlib.blake2b(digest_size=20)
  f, _ = open_regular_file(path, key)
  with f:
    while left > 0 and (chunk := f.read(min(left, 1 << 20))):
      digest.update(chunk)
      left -= len(chunk)
  return digest.hexdigest()
