"""The pipeline's evaluation report: metrics, grouping, the whole command."""

import json

import numpy as np
import pytest

from jaxface import report
from jaxface.data import schema
import pipeline_helpers


def test_image_metrics_equal_scikit_image():
  skm = pytest.importorskip("skimage.metrics")
  rng = np.random.default_rng(0)
  target = rng.uniform(size=(3, 64, 64, 3)).astype(np.float32)
  pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(
      np.float32)
  mask = np.zeros((3, 64, 64, 1), np.float32)
  mask[:, 20:50, 10:40] = 1
  got = report.image_metrics(pred, target, mask)
  for i in range(3):
    np.testing.assert_allclose(
        got["psnr"][i], skm.peak_signal_noise_ratio(target[i], pred[i],
                                                    data_range=1), rtol=1e-4)
    want = skm.structural_similarity(
        target[i], pred[i], channel_axis=-1, gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, data_range=1)
    np.testing.assert_allclose(got["ssim"][i], want, atol=2e-4)
    hole = mask[i, ..., 0] > 0
    mse = np.mean(np.square(pred[i][hole] - target[i][hole]))
    np.testing.assert_allclose(got["psnr_hole"][i], -10 * np.log10(mse),
                               rtol=1e-4)
    np.testing.assert_allclose(got["l1_hole"][i], np.mean(
        np.abs(pred[i][hole] - target[i][hole])), rtol=1e-4)


def test_by_group_means_and_missing_counts():
  gender = np.array([0, 1, 1, 0])
  per = {"x": np.array([1.0, 2.0, 4.0, np.nan])}
  out = report.by_group(per, gender)
  assert out["all"]["x"] == pytest.approx(7 / 3)
  assert out["all"]["x_missing"] == 1
  assert out["female"]["x"] == 1.0 and out["male"]["x"] == 3.0
  assert out["male"]["count"] == 2


def test_report_command_on_procedural_faces(tmp_path):
  folder = tmp_path / "bundle"
  pipeline_helpers.make_bundle(folder, agnostic=True)
  out = tmp_path / "report"
  status = report.main([f"--weights={folder}",
                        "--data=procedural:num_records=400", "--split=test",
                        f"--out={out}", "--limit=8", "--batch_size=4",
                        "--landmark_teacher=", ])
  assert status == 0
  summary = json.loads((out / "report.json").read_text())
  variants = summary["variants"]
  for name in ("pipeline", "true mask", "true landmarks",
               "true mask + landmarks", "true gender", "gender-agnostic",
               "OpenCV Telea", "OpenCV Navier-Stokes", "masked input"):
    assert name in variants
    for group in ("all", "female", "male"):
      assert np.isfinite(variants[name][group]["psnr_paper"])
  assert summary["setup"]["faces"] == 8
  # Classical inpainting beats the mask itself inside the mask (the
  # untrained generators need not).
  assert (variants["OpenCV Telea"]["all"]["psnr_hole"]
          > variants["masked input"]["all"]["psnr_hole"])
  assert 0 <= summary["stages"]["all"]["segmentation_iou"] <= 1
  text = (out / "report.md").read_text()
  assert "## Quality, male faces" in text and "n/a" in text
  assert (out / "examples_female.png").exists()
  assert (out / "examples_male.png").exists()
