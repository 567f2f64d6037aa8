"""A bundle of untrained `tiny` networks for pipeline and CLI tests.

Random weights exercise every code path of the fused pipeline in seconds;
the generators of the two genders differ (different seeds), so routing is
visible in the outputs.
"""

import pathlib
import sys

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import gender as gender_config
from configs import inpaint as inpaint_config
from configs import landmarks as landmarks_config
from configs import segment as segment_config
from jaxface import tasks
from jaxface.weights import bundle

SIZE = 64  # the tiny inpainting generator's


def tiny_configs() -> dict[str, ml_collections.ConfigDict]:
  return {"gender": gender_config.get_config("tiny"),
          "landmarks": landmarks_config.get_config("tiny"),
          "segment": segment_config.get_config("tiny,model=unet"),
          "inpaint": inpaint_config.get_config("tiny")}


def random_variables(shapes, seed: int):
  """Variables of the given shapes, without running (or compiling) the
  networks' initialisers: kernels ~ N(0, 1 / fan-in), BatchNorm scales and
  variances 1, everything else (biases, means) small."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape, dtype = leaf.shape, leaf.dtype
    if not np.issubdtype(dtype, np.floating):
      return np.zeros(shape, dtype)
    if name in ("scale", "var"):
      return np.ones(shape, dtype)
    if len(shape) >= 2:
      fan_in = int(np.prod(shape[:-1]))
      return rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(dtype)
    values = rng.normal(0, 0.05, shape)
    if name.startswith("u") or name.startswith("v"):  # power-iteration vectors
      values = rng.normal(0, 1, shape)
      values /= np.linalg.norm(values)
    return values.astype(dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def make_bundle(folder: pathlib.Path, dtype: str = "float32",
                agnostic: bool = True) -> dict:
  """Writes a bundle of randomly initialised tiny networks; returns the
  manifest."""
  configs = tiny_configs()
  modules = {"gender": configs["gender"], "landmarks": configs["landmarks"],
             "segment": configs["segment"],
             "inpaint_female": configs["inpaint"],
             "inpaint_male": configs["inpaint"]}
  if agnostic:
    modules["inpaint_all"] = configs["inpaint"]
  folder.mkdir(parents=True, exist_ok=True)
  entries = {}
  for seed, (module, config) in enumerate(modules.items()):
    task = tasks.make(config)
    shapes = jax.eval_shape(
        lambda t=task: t.inference_variables(t.init_state(jax.random.key(0))))
    entry = bundle.write_module(folder / f"{module}.npz", config,
                                random_variables(shapes, seed), dtype)
    entries[module] = {"file": f"{module}.npz", "step": 0, **entry}
  manifest = {"name": "tiny-random", "description": "untrained, for tests",
              "modules": entries}
  bundle.write_manifest(folder, manifest)
  return manifest
