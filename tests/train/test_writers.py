"""Tests for jaxface.train.writers: event files read back, PNGs, no TF."""

import importlib.util
import io
import pathlib
import struct
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from jaxface.train import writers
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(logdir):
  """Parses every TFRecord-framed event in `logdir`, checking the CRCs."""
  files = sorted(pathlib.Path(logdir).glob("events.out.tfevents.*"))
  assert files, f"no event file in {logdir}"
  events = []
  for path in files:
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
      assert header_crc == _masked_crc(header)
      body = data[pos + 12:pos + 12 + length]
      (body_crc,) = struct.unpack(
          "<I", data[pos + 12 + length:pos + 16 + length])
      assert body_crc == _masked_crc(body)
      events.append(event_pb2.Event.FromString(body))
      pos += 16 + length
  return events


def _values(events):
  """{tag: [(step, Summary.Value)]} over all summary events."""
  out = {}
  for ev in events:
    if ev.HasField("summary"):
      for v in ev.summary.value:
        out.setdefault(v.tag, []).append((ev.step, v))
  return out


def _decode_png(value):
  return np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))


def test_scalars_images_texts_histograms_round_trip(tmp_path):
  w = writers.TensorBoardWriter(tmp_path)
  assert isinstance(w, writers.interface.MetricWriter)
  w.write_scalars(3, {"loss/g": np.float32(1.25), "lr": 1e-4})
  w.write_scalars(7, {"loss/g": np.asarray([0.5])})
  rng = np.random.default_rng(0)
  single = rng.random((6, 5, 3)).astype(np.float32)
  batch = rng.integers(0, 256, (2, 4, 3, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (1, 4, 4, 1), dtype=np.uint8)
  w.write_images(7, {"grid": single, "samples": batch, "gray": gray})
  w.write_texts(7, {"note": "hello | world"})
  w.write_histograms(7, {"weights": np.arange(100.0)}, {"weights": 10})
  w.write_hparams({"lr": 1e-4, "model": {"width": 64, "blocks": [1, 2]},
                   "empty": {}})
  w.write_summaries(8, {"raw": np.asarray(2.0)})
  w.close()

  values = _values(_read_events(tmp_path))
  assert [(s, v.simple_value) for s, v in values["loss/g"]] == [(3, 1.25),
                                                                 (7, 0.5)]
  assert values["lr"][0][1].simple_value == pytest.approx(1e-4)
  assert values["raw"][0][0] == 8

  (step, v), = values["grid"]
  assert step == 7
  assert (v.image.height, v.image.width) == (6, 5)
  np.testing.assert_array_equal(
      _decode_png(v), np.round(single * 255).astype(np.uint8))
  for i in range(2):
    (_, v), = values[f"samples/{i}"]
    np.testing.assert_array_equal(_decode_png(v), batch[i])
  (_, v), = values["gray"]
  np.testing.assert_array_equal(_decode_png(v), np.repeat(gray[0], 3, -1))

  (_, v), = values["note/text_summary"]
  assert v.tensor.string_val[0].decode() == "hello | world"
  (_, v), = values["weights"]
  assert v.histo.num == 100 and v.histo.max == 99.0
  (_, v), = values["hparams/text_summary"]
  table = v.tensor.string_val[0].decode()
  assert "| model.width | 64 |" in table
  assert "| model.blocks | [1, 2] |" in table
  assert "| empty | {} |" in table


def test_bad_images_and_scalars_raise(tmp_path):
  w = writers.TensorBoardWriter(tmp_path)
  with pytest.raises(ValueError):
    w.write_images(0, {"x": np.zeros((2, 3, 4, 2), np.float32)})
  with pytest.raises(ValueError):
    w.write_scalars(0, {"x": np.zeros(3)})
  w.close()


@pytest.mark.parametrize("asynchronous", [True, False])
def test_create_writer_primary(tmp_path, asynchronous):
  w = writers.create_writer(tmp_path, is_primary=True,
                            asynchronous=asynchronous, collection="train")
  w.write_scalars(1, {"psnr": 30.0})
  w.write_images(1, {"grid": np.zeros((8, 8, 3), np.uint8)})
  w.flush()
  w.close()
  values = _values(_read_events(tmp_path))
  assert values["psnr"][0][1].simple_value == 30.0
  assert "grid" in values


def test_create_writer_non_primary_writes_no_files(tmp_path):
  logdir = tmp_path / "logs"
  w = writers.create_writer(logdir, is_primary=False)
  w.write_scalars(1, {"psnr": 30.0})
  w.close()
  assert not logdir.exists() or not any(logdir.iterdir())


def test_no_tensorflow_imported(tmp_path):
  # A fresh interpreter: other tests in this process cannot mask the result.
  code = "\n".join([
      "import sys",
      "import numpy as np",
      "from jaxface.train import writers",
      "from clu import metric_writers",
      f"w = writers.create_writer({str(tmp_path)!r}, is_primary=True)",
      "w.write_scalars(0, {'a': 1.0})",
      "w.write_images(0, {'b': np.zeros((4, 4, 3), np.float32)})",
      "w.close()",
      "try:",
      "  metric_writers.SummaryWriter('x')",
      "  raise SystemExit('the placeholder SummaryWriter did not raise')",
      "except ImportError:",
      "  pass",
      "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'NO_TF')",
  ])
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed here")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().endswith("NO_TF")
  assert "tensorflow" not in sys.modules
  assert _values(_read_events(tmp_path))["a"][0][1].simple_value == 1.0
