r"""Importer of torchvision's COCO Mask R-CNN weights into `models.MaskRCNN`.

  python -m jaxface.weights.segment \
      --input=maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output=maskrcnn.npz

then train from them with `--config.model.init_from=maskrcnn.npz` (or the
`.pth` itself) and `--config.model.norm=frozen` (the COCO backbone's
BatchNorms are frozen statistics).

The checkpoint is torchvision's `maskrcnn_resnet50_fpn` state dict (a bare
dict of tensors), read without torch by `torch_pickle`, in either layout:

  v1 (torchvision < 0.13)             v2 (later: Conv2dNormActivation)
  backbone.fpn.inner_blocks.{i}.*     backbone.fpn.inner_blocks.{i}.0.*
  backbone.fpn.layer_blocks.{i}.*     backbone.fpn.layer_blocks.{i}.0.*
  rpn.head.conv.*                     rpn.head.conv.0.0.*
  roi_heads.mask_head.mask_fcn{k}.*   roi_heads.mask_head.{k-1}.0.*

Names map to `models.segment` (dots become underscores, `layer1.0` is
`layer1_0`); layouts: conv `[O, I, kh, kw]` -> `[kh, kw, I, O]`, linear
`[O, I]` -> `[I, O]`, the transposed `conv5_mask` `[I, O, 2, 2]` ->
`[2, 2, O, I]`; FrozenBatchNorm2d's `weight`, `bias`, `running_mean`,
`running_var` -> `batch_stats/.../{scale, bias, mean, var}`. The
class-specific layers (`box_predictor.cls_score`, `box_predictor.bbox_pred`,
`mask_predictor.mask_fcn_logits`) are COCO's 91 classes: for another class
count they are skipped, and keep the fresh initialisation of the model
they are imported into. Every other tensor must be consumed; missing,
unexpected and wrongly shaped tensors are errors naming the file and keys.
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

from jaxface.models import segment as seg
from jaxface.weights import npz
from jaxface.weights import report
from jaxface.weights import torch_pickle

LAYOUTS = ("v1", "v2")
# The class-specific layers (COCO: 91 classes).
CLASS_SPECIFIC = ("roi_heads.box_predictor.cls_score.",
                  "roi_heads.box_predictor.bbox_pred.",
                  "roi_heads.mask_predictor.mask_fcn_logits.")
_LEAF = {"params": {"kernel": "weight", "bias": "bias"},
         "batch_stats": {"scale": "weight", "bias": "bias",
                         "mean": "running_mean", "var": "running_var"}}


def torch_name(key: tuple[str, ...], layout: str = "v2") -> str:
  """The torchvision state-dict name of a flax variable.

  Args:
    key: (collection, module..., leaf), e.g. ("params", "backbone",
      "body", "layer1_0", "conv1", "kernel").
    layout: "v1" or "v2" (see the module docstring).
  """
  collection, *path, leaf = key
  if leaf.startswith("conv5_mask_"):  # MaskHead's own parameters
    return ("roi_heads.mask_predictor.conv5_mask."
            + ("weight" if leaf.endswith("kernel") else "bias"))
  tail = _LEAF[collection][leaf]
  top = path[0]
  if top == "backbone":
    part = path[1]
    mods = [re.sub(r"^(layer\d|downsample|inner_blocks|layer_blocks)_(\d+)$",
                   r"\1.\2", m) for m in path[2:]]
    if part == "fpn" and layout == "v2":
      mods = [m + ".0" for m in mods]
    return ".".join(["backbone", part, *mods, tail])
  if top == "rpn":
    conv = path[1]
    if conv == "conv" and layout == "v2":
      conv = "conv.0.0"
    return f"rpn.head.{conv}.{tail}"
  if top == "box_head":
    if path[1] in ("fc6", "fc7"):
      return f"roi_heads.box_head.{path[1]}.{tail}"
    return f"roi_heads.box_predictor.{path[1]}.{tail}"
  if top == "mask_head":
    name = path[1]
    if name == "mask_fcn_logits":
      return f"roi_heads.mask_predictor.mask_fcn_logits.{tail}"
    k = int(name[len("mask_fcn"):])
    if layout == "v2":
      return f"roi_heads.mask_head.{k - 1}.0.{tail}"
    return f"roi_heads.mask_head.{name}.{tail}"
  raise KeyError(f"no torchvision name for {'/'.join(key)}")


def _from_torch_layout(key: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:   # conv [O, I, kh, kw]; conv5_mask [I, O, kh, kw]
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:   # linear [O, I]
    return value.T
  return value


def _torch_shape(value_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(value_shape) == 4:
    kh, kw, a, b = value_shape
    return (b, a, kh, kw)
  if len(value_shape) == 2:
    return value_shape[::-1]
  return value_shape


def detect_layout(state_dict: Mapping[str, Any]) -> str:
  """"v2" when the FPN blocks carry the extra `.0` level, else "v1"."""
  return ("v2" if any(k.startswith("backbone.fpn.inner_blocks.0.0.")
                      for k in state_dict) else "v1")


def from_torch(path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
               template: Mapping[str, Any]) -> dict[str, Any]:
  """torchvision Mask R-CNN weights as the variables of `template`'s model.

  Args:
    path_or_state_dict: a `.pth` file (a bare state dict, or one under
      'model' / 'state_dict') or such a dict (numpy arrays or tensors).
    template: `{'params', 'batch_stats'}` of the `MaskRCNN` to fill
      (`norm="frozen"`), e.g. a fresh `init`: its shapes say what is
      expected, and its class-specific layers stay where the checkpoint's
      class count differs.

  Returns:
    `{'params', 'batch_stats'}` float32 numpy trees like `template`.

  Raises:
    ValueError: naming the source and the offending keys.
  """
  source, state_dict = torch_pickle.read_state_dict(path_or_state_dict)
  if "batch_stats" not in template:
    raise ValueError("the model to import into has no frozen BatchNorm "
                     "statistics: build it with norm='frozen' "
                     "(config.model.norm=frozen)")
  layout = detect_layout(state_dict)
  flat = traverse_util.flatten_dict(
      {c: jax.device_get(template[c]) for c in ("params", "batch_stats")})
  wanted = {torch_name(k, layout): k for k in flat}
  out, wrong, unexpected, skipped = {}, [], [], []
  for name, value in state_dict.items():
    if name not in wanted:
      unexpected.append(repr(name))
      continue
    key = wanted[name]
    value = torch_pickle.to_numpy(value)
    want = _torch_shape(tuple(flat[key].shape))
    if value.shape != want or value.dtype.kind != "f":
      if name.startswith(CLASS_SPECIFIC) and value.dtype.kind == "f":
        skipped.append(f"{name} {value.shape}")
        continue
      wrong.append(f"{name!r} {value.dtype} {value.shape} (expected float "
                   f"{want})")
      continue
    out[key] = np.ascontiguousarray(_from_torch_layout(key, value),
                                    np.float32)
  missing = [repr(n) for n, k in wanted.items()
             if n not in state_dict and not n.startswith(CLASS_SPECIFIC)]
  report.raise_problems(
      f"{source} is not a torchvision maskrcnn_resnet50_fpn state dict "
      f"({layout} layout) for this model: ", missing, unexpected, wrong)
  if skipped:
    logging.info("%s: class-specific layers left at their initialisation "
                 "(another class count): %s", source, "; ".join(skipped))
  for key, value in flat.items():
    if key not in out:  # the skipped class-specific layers
      out[key] = np.asarray(value, np.float32)
  return traverse_util.unflatten_dict(out)


def template(num_classes: int = len(seg.CLASSES),
             stage_sizes=(3, 4, 6, 3), **kwargs) -> dict[str, Any]:
  """The freshly initialised variables of a frozen-norm `MaskRCNN`."""
  model = seg.MaskRCNN(num_classes=num_classes, stage_sizes=stage_sizes,
                       norm="frozen", **kwargs)
  return jax.device_get(jax.jit(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
      method=seg.MaskRCNN.init_all))())


def load(path: str | os.PathLike[str], template_: Mapping[str, Any]
         ) -> dict[str, Any]:
  """Variables from a `.pth` checkpoint or an `.npz` this module wrote."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    loaded = npz.load_npz(path)
    for c in ("params", "batch_stats"):
      got = jax.tree.map(np.shape, loaded.get(c, {}))
      want = jax.tree.map(np.shape, dict(template_[c]))
      if got != want:
        raise ValueError(f"{path}: its {c} do not fit the configured model "
                         "(another architecture or class count)")
    return {c: loaded[c] for c in ("params", "batch_stats")}
  return from_torch(path, template_)


_FLAGS = {}


def define_flags() -> None:
  _FLAGS["input"] = flags.DEFINE_string(
      "input", None, "torchvision maskrcnn_resnet50_fpn .pth")
  _FLAGS["output"] = flags.DEFINE_string("output", None, ".npz to write")
  _FLAGS["num_classes"] = flags.DEFINE_integer(
      "num_classes", len(seg.CLASSES),
      "classes of the model to import into (3: background, face mask, face)")


def main(argv) -> None:
  del argv
  variables = from_torch(_FLAGS["input"].value,
                         template(_FLAGS["num_classes"].value))
  npz.save_npz(_FLAGS["output"].value, variables)
  print(f"wrote {_FLAGS['output'].value}: "
        f"{seg.num_params(variables['params']):,} parameters")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
