"""Shared pytest setup: four fake CPU devices so sharded code runs anywhere."""

import os
import pathlib

import jax
import pytest

# Must run before any JAX computation creates the CPU client.
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """`../shared/data` beside the checkout; tests that need it skip without."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent (fresh clone): real-data test skipped")
  return SHARED_DATA
