r"""Importers of ImageNet InceptionV3 weights into the gender backbone.

  python -m jaxface.weights.gender \
      --input=inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --output=inception_v3_keras.npz
  python -m jaxface.weights.gender \
      --input=inception_v3_google-0cc3c7bd.pth --output=inception_v3_tv.npz

then train the classifier's head on them with
`--config.model.init_from=inception_v3_keras.npz` (or the file itself).
The `.npz` holds `{'params', 'batch_stats'}` of `models.inception
.InceptionV3` and the semantics it needs (`bn_scale`,
`avg_pool_include_pad`), which must match the config's `model.bn_scale`
and `model.avg_pool_include_pad`.

Keras (`keras.applications.InceptionV3(include_top=False)`, the authors'
backbone), the legacy HDF5 weights file read with h5py:

  * one group per layer, listed in the root's `layer_names` attribute, each
    with a `weight_names` attribute (`conv2d_7/kernel:0`); a whole-model
    file keeps them under `model_weights`;
  * the 94 `conv2d_N` layers hold `kernel` [kh, kw, I, O] (flax's layout);
    the 94 `batch_normalization_N` layers hold `beta`, `moving_mean`,
    `moving_variance` (no `gamma`: `scale=False`);
  * the N are session counters, so the layers are matched to
    `inception.UNITS` by creation order, i.e. by increasing N;
  * semantics: `bn_scale=False`, `avg_pool_include_pad=False` (Keras's
    "same" average pooling divides by the real pixels).

torchvision (`inception_v3(weights=IMAGENET1K_V1)`, file
`inception_v3_google-*.pth`), read without torch by `torch_pickle`:

  * `Mixed_6b.branch7x7_2.conv.weight` [O, I, kh, kw] and `.bn.{weight,
    bias, running_mean, running_var}`; `num_batches_tracked`, `AuxLogits.*`
    and `fc.*` (the ImageNet classifiers) are not needed and skipped;
  * semantics: `bn_scale=True`, `avg_pool_include_pad=True`.

Both expect inputs in [-1, 1] (`model.input_scale=symmetric`; torchvision's
`transform_input` only undoes its ImageNet normalisation). Every needed
tensor must be present with its shape; missing, unexpected and wrongly
shaped tensors are errors naming the file and keys.
"""

import os
import re
from typing import Any, Mapping

from absl import app
from absl import flags
from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.models import inception
from jaxface.weights import npz
from jaxface.weights import report
from jaxface.weights import torch_pickle

FORMATS = ("keras", "torchvision")
# The semantics each source's weights were trained with.
SEMANTICS = {"keras": dict(bn_scale=False, avg_pool_include_pad=False),
             "torchvision": dict(bn_scale=True, avg_pool_include_pad=True)}
# torchvision tensors an importer of the features does not need.
_TORCH_SKIPPED = re.compile(r"^(AuxLogits\.|fc\.)|\.num_batches_tracked$")
_TORCH_LEAF = {("params", "kernel"): "conv.weight",
               ("params", "scale"): "bn.weight",
               ("params", "bias"): "bn.bias",
               ("batch_stats", "mean"): "bn.running_mean",
               ("batch_stats", "var"): "bn.running_var"}
_KERAS_LEAF = {("params", "kernel"): "kernel", ("params", "bias"): "beta",
               ("params", "scale"): "gamma",
               ("batch_stats", "mean"): "moving_mean",
               ("batch_stats", "var"): "moving_variance"}


def template(width: float = 1.0, **semantics: bool) -> dict[str, Any]:
  """Zero-filled `{'params', 'batch_stats'}` of an `InceptionV3` (NumPy)."""
  model = inception.InceptionV3(width=width, **semantics)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, inception.MIN_SIZE,
                                    inception.MIN_SIZE, 3))))
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                      {c: shapes[c] for c in ("params", "batch_stats")})


def _unit_paths() -> list[tuple[str, ...]]:
  """The module path of every conv unit, in creation order."""
  return [tuple(path.split("/")) for path, _, _ in inception.UNITS]


def _fill(template_: Mapping[str, Any], found: Mapping[tuple, np.ndarray],
          source: str, what: str, unexpected: list[str],
          names: Mapping[tuple, str]) -> dict[str, Any]:
  """`template_`'s tree with `found` values, every leaf checked."""
  flat = traverse_util.flatten_dict({c: template_[c]
                                     for c in ("params", "batch_stats")})
  out, missing, wrong = {}, [], []
  for key, like in flat.items():
    if key not in found:
      missing.append(repr(names[key]))
      continue
    value = found[key]
    if value.shape != like.shape or value.dtype.kind != "f":
      wrong.append(f"{names[key]!r} {value.dtype} {value.shape} (expected "
                   f"float {like.shape})")
      continue
    out[key] = np.ascontiguousarray(value, np.float32)
  report.raise_problems(f"{source} is not {what} for this model: ", missing,
                        unexpected, wrong)
  return traverse_util.unflatten_dict(out)


# ------------------------------------------------------------------ Keras
def _keras_layers(path: str) -> dict[str, dict[str, np.ndarray]]:
  """{layer name: {weight name: array}} of a legacy Keras HDF5 file."""
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading Keras .h5 weights needs h5py "
                      "(pip install 'jaxface[keras]')") from e
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not an HDF5 file ({e})") from None
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
      raise ValueError(f"{path}: no 'layer_names' attribute; not a Keras "
                       "HDF5 weights file (Keras 3's .weights.h5 layout is "
                       "not read: save with model.save_weights('x.h5') in "
                       "Keras 2 or pass torchvision weights)")
    layers = {}
    for raw in root.attrs["layer_names"]:
      name = raw.decode() if isinstance(raw, bytes) else str(raw)
      group = root[name]
      weights = {}
      for wraw in group.attrs.get("weight_names", []):
        wname = wraw.decode() if isinstance(wraw, bytes) else str(wraw)
        leaf = wname.rsplit("/", 1)[-1].split(":")[0]
        weights[leaf] = np.asarray(group[wname])
      layers[name] = weights
  return layers


def _counter(name: str, prefix: str) -> int | None:
  """N of `prefix_N` (`prefix` alone is 0), else None."""
  match = re.fullmatch(rf"{prefix}(?:_(\d+))?", name)
  if not match:
    return None
  return int(match.group(1) or 0)


def from_keras(path: str | os.PathLike[str],
               width: float = 1.0) -> dict[str, Any]:
  """Keras InceptionV3 (notop) weights as `InceptionV3` variables.

  Returns:
    `{'params', 'batch_stats'}` float32 NumPy trees of
    `InceptionV3(width, **SEMANTICS['keras'])`.
  """
  source = os.fspath(path)
  layers = _keras_layers(source)
  convs = sorted((n for n in layers if _counter(n, "conv2d") is not None),
                 key=lambda n: _counter(n, "conv2d"))
  norms = sorted((n for n in layers
                  if _counter(n, "batch_normalization") is not None),
                 key=lambda n: _counter(n, "batch_normalization"))
  units = _unit_paths()
  unexpected = [repr(n) for n in layers
                if n not in convs and n not in norms and layers[n]]
  for kind, found in (("conv2d", convs), ("batch_normalization", norms)):
    if len(found) != len(units):
      raise ValueError(f"{source}: {len(found)} {kind} layers with weights, "
                       f"InceptionV3 has {len(units)}; not a Keras "
                       "InceptionV3 weights file")
  found, names = {}, {}
  tmpl = template(width, **SEMANTICS["keras"])
  flat = traverse_util.flatten_dict(tmpl)
  for unit, conv, norm in zip(units, convs, norms):
    for key in flat:
      collection, *mods, module, leaf = key
      if tuple(mods) != unit:
        continue
      layer = conv if module == "conv" else norm
      keras_leaf = _KERAS_LEAF[(collection, leaf)]
      names[key] = f"{layer}/{keras_leaf}"
      if keras_leaf in layers[layer]:
        found[key] = layers[layer][keras_leaf]
    for layer, allowed in ((conv, ("kernel",)),
                           (norm, ("beta", "moving_mean",
                                   "moving_variance"))):
      unexpected += [f"'{layer}/{w}'" for w in layers[layer]
                     if w not in allowed]
  return _fill(tmpl, found, source, "a Keras InceptionV3 weights file",
               unexpected, names)


# ------------------------------------------------------------ torchvision
def torch_name(key: tuple[str, ...]) -> str:
  """The torchvision state-dict name of an `InceptionV3` variable.

  Args:
    key: (collection, module..., "conv" | "bn", leaf), e.g. ("params",
      "Mixed_6b", "branch7x7_2", "bn", "scale").
  """
  collection, *mods, _, leaf = key
  return ".".join([*mods, _TORCH_LEAF[(collection, leaf)]])


def from_torch(path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
               width: float = 1.0) -> dict[str, Any]:
  """torchvision InceptionV3 weights as `InceptionV3` variables.

  Args:
    path_or_state_dict: a `.pth` file (a bare state dict, or one under
      'model' / 'state_dict'; `module.` prefixes are stripped) or such a
      dict (NumPy arrays or tensors).
    width: of the model to import into (1 for the published weights).

  Returns:
    `{'params', 'batch_stats'}` float32 NumPy trees of
    `InceptionV3(width, **SEMANTICS['torchvision'])`.
  """
  source, state_dict = torch_pickle.read_state_dict(path_or_state_dict)
  tmpl = template(width, **SEMANTICS["torchvision"])
  flat = traverse_util.flatten_dict(tmpl)
  names = {key: torch_name(key) for key in flat}
  wanted = {name: key for key, name in names.items()}
  found, unexpected, skipped = {}, [], 0
  for name, value in state_dict.items():
    if name not in wanted:
      if _TORCH_SKIPPED.search(name):
        skipped += 1
      else:
        unexpected.append(repr(name))
      continue
    value = torch_pickle.to_numpy(value)
    if value.ndim == 4:  # [O, I, kh, kw] -> [kh, kw, I, O]
      value = value.transpose(2, 3, 1, 0)
    found[wanted[name]] = value
  if skipped:
    logging.info("%s: %d tensors not needed by the features (AuxLogits, fc,"
                 " num_batches_tracked) skipped", source, skipped)
  return _fill(tmpl, found, source,
               "a torchvision inception_v3 state dict", unexpected, names)


# ------------------------------------------------------------------ files
def detect_format(path: str | os.PathLike[str]) -> str:
  """"keras" for HDF5 files, "torchvision" otherwise (by content)."""
  with open(path, "rb") as f:
    return "keras" if f.read(8) == b"\x89HDF\r\n\x1a\n" else "torchvision"


def convert(path: str | os.PathLike[str], width: float = 1.0
            ) -> tuple[dict[str, Any], dict[str, bool]]:
  """Variables and semantics from a Keras `.h5` or torchvision `.pth`."""
  fmt = detect_format(path)
  variables = (from_keras(path, width) if fmt == "keras"
               else from_torch(path, width))
  return variables, dict(SEMANTICS[fmt])


def save(path: str | os.PathLike[str], variables: Mapping[str, Any],
         semantics: Mapping[str, bool]) -> None:
  """An `.npz` of the variables and the semantics they need."""
  npz.save_npz(path, {**{c: variables[c] for c in ("params", "batch_stats")},
                      "semantics": {k: np.asarray(bool(v))
                                    for k, v in semantics.items()}})


def load(path: str | os.PathLike[str], width: float = 1.0
         ) -> tuple[dict[str, Any], dict[str, bool]]:
  """(variables, semantics) from a `.h5`, a `.pth` or an `.npz` of `save`.

  Raises:
    ValueError: naming the file, when it does not fit `InceptionV3(width)`.
  """
  path = os.fspath(path)
  if not path.endswith(".npz"):
    return convert(path, width)
  loaded = npz.load_npz(path)
  if "semantics" not in loaded:
    raise ValueError(f"{path}: no 'semantics' entry; not written by "
                     "jaxface.weights.gender")
  semantics = {k: bool(np.asarray(v)) for k, v in loaded["semantics"].items()}
  tmpl = template(width, **semantics)
  for c in ("params", "batch_stats"):
    if jax.tree.map(np.shape, loaded.get(c, {})) != jax.tree.map(
        np.shape, tmpl[c]):
      raise ValueError(f"{path}: its {c} do not fit InceptionV3 at width "
                       f"{width}")
  return {c: loaded[c] for c in ("params", "batch_stats")}, semantics


_FLAGS = {}


def define_flags() -> None:
  _FLAGS["input"] = flags.DEFINE_string(
      "input", None, "Keras notop .h5 or torchvision inception_v3 .pth")
  _FLAGS["output"] = flags.DEFINE_string("output", None, ".npz to write")


def main(argv) -> None:
  del argv
  variables, semantics = convert(_FLAGS["input"].value)
  save(_FLAGS["output"].value, variables, semantics)
  n = sum(v.size for v in jax.tree.leaves(variables["params"]))
  print(f"wrote {_FLAGS['output'].value}: {n:,} parameters, {semantics}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
