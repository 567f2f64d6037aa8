"""The JAX-vs-PyTorch step benchmark at the smallest setting (CPU)."""

import io
import math
import pathlib
import sys

import jax
import pytest

from jaxface.bench import vs_torch

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# pylint: disable-next=g-import-not-at-top
from configs import inpaint as inpaint_config


# Half the compile time; this test checks what the step computes, not its
# speed.
QUICK_COMPILE = {"xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}


def smallest_config():
  """configs/inpaint.py:tiny, narrower and shallower: every piece, little
  to compile (VGG up to relu2_2, one residual block)."""
  c = inpaint_config.get_config("tiny")
  c.data.image_size = 32
  c.data.source = "procedural:num_records=16"
  c.train.batch_size = 2
  c.model.generator.width = 8
  c.model.generator.num_res_blocks = 1
  c.model.discriminator.width = 8
  c.losses.vgg_width = 8
  c.losses.perceptual_layers = ("relu1_1", "relu2_1")
  c.losses.style_layers = ("relu1_2", "relu2_2")
  return c


def test_both_rows_print_with_equal_parameter_counts_and_finite_losses():
  out = io.StringIO()
  result = vs_torch.run(smallest_config(), ["baseline"], steps=1, warmup=1,
                        devices=jax.devices()[:1], out=out,
                        compiler_options=QUICK_COMPILE)
  text = out.getvalue()
  (jax_row,) = result["jax"]
  assert jax_row.finite and jax_row.flops > 0 and jax_row.median > 0
  assert "jax baseline" in text
  if vs_torch.torch is None:
    assert result["torch"] is None
    assert "torch row skipped: torch is not installed" in text
    return
  torch_row = result["torch"]
  assert torch_row is not None and torch_row.finite
  assert any(line.startswith("torch ") for line in text.splitlines())
  counts = result["counts"]
  assert counts["jax"] == counts["torch"]
  assert set(counts["jax"]) == {"G", "D", "VGG (frozen)"}
  assert torch_row.params == jax_row.params == (counts["jax"]["G"]
                                                + counts["jax"]["D"])
  assert torch_row.flops == jax_row.flops  # the XLA count serves both rows
  for losses in jax_row.losses + torch_row.losses:
    assert all(math.isfinite(v) for v in losses.values()), losses
  # Same weights and batch: the first step's losses are the same function
  # of the same numbers. The tolerance is a coarse check that the
  # re-statement computes the same step (a missing layer, a wrong padding
  # or loss moves these by far more than 1%), not a float32 error bound.
  first_jax, first_torch = jax_row.losses[0], torch_row.losses[0]
  for key in vs_torch.LOSS_KEYS:
    assert first_torch[key] == pytest.approx(first_jax[key], rel=1e-2), key


def test_without_torch_the_torch_row_is_skipped_and_said(monkeypatch):
  monkeypatch.setattr(vs_torch, "torch", None)
  out = io.StringIO()
  # No JAX rows either: nothing is compiled.
  result = vs_torch.run(smallest_config(), [], steps=1, warmup=0,
                        devices=jax.devices()[:1], out=out)
  assert result["jax"] == [] and result["torch"] is None
  assert "torch row skipped: torch is not installed" in out.getvalue()


def test_overrides_take_the_type_of_the_field_and_name_unknown_keys():
  base = smallest_config()
  c = vs_torch.apply_overrides(
      base, "compute_dtype=bfloat16; train.batch_size=8;data.flip=false")
  assert (c.compute_dtype, c.train.batch_size, c.data.flip) == (
      "bfloat16", 8, False)
  assert base.compute_dtype == "float32"  # a copy
  assert vs_torch.apply_overrides(base, "baseline").to_json() == base.to_json()
  with pytest.raises(ValueError, match="unknown config key 'train.nope'"):
    vs_torch.apply_overrides(base, "train.nope=1")
  with pytest.raises(ValueError, match="bad value for 'train.batch_size'"):
    vs_torch.apply_overrides(base, "train.batch_size=x")
  with pytest.raises(ValueError, match="not key=value"):
    vs_torch.apply_overrides(base, "compute_dtype")
