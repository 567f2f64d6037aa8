r"""Importer of LaFIn checkpoints (the paper authors' released ones).

  python -m jaxface.weights.inpaint --input=InpaintingModel_gen.pth \
      --output=lafin_gen.npz
  python -m jaxface.weights.inpaint --input=InpaintingModel_dis.pth \
      --network=discriminator --output=lafin_dis.npz

The file is LaFIn's `{'iteration': int, 'generator': state_dict}` (a bare
state dict, or one under 'model' / 'state_dict', is read too; DataParallel's
`module.` prefixes are dropped), read without torch by `torch_pickle`.
Its keys (REFERENCE.md section 5) map onto `models.inpaint.Generator`:

  encoder1.1.*            encoder1 (index 0 is the reflection pad)
  encoder{2,3}.0.*        encoder{2,3}
  middle.{i}.conv_block.{1,5}.*     middle_{i}/conv{1,2}
  auto_attn.{gamma,alpha}, auto_attn.query_conv.*
  auto_attn.model.{conv1,conv2,bypass}.{weight_orig,bias,weight_u,weight_v}
                          spectral-norm convs: the unnormalised kernel and
                          the power-iteration vectors (`spectral_norm_stats`)
  decoder{1,2}.0.*        transposed convs, (in, out, kh, kw)
  fushion{1,2}.0.*, decoder3.1.*

`auto_attn.model.model.{1,3}.*` and `auto_attn.model.shortcut.0.*` are the
same tensors under a second name (aliases in the reference module) and are
skipped. The discriminator's file, `{'discriminator': state_dict}`, holds
`conv{1..5}.0.{weight_orig,weight_u,weight_v}` (bias-free spectral-norm
convs; `features.0.*` is conv1 again) and `auto_attn.{gamma,query_conv.*}`;
its attention also registers `alpha` and a ResBlock that its forward never
calls, which are skipped. Checkpoints written by torch 1.0 have no `weight_v`: it is
recovered by one power step, v = normalize(W^T u), which is what torch's
spectral norm computes from u. Missing, unexpected and wrongly shaped
tensors are errors naming the file and keys.
"""

import os
import re
from typing import Any, Mapping

from absl import app
from absl import flags
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.models import inpaint
from jaxface.models import layers
from jaxface.weights import npz
from jaxface.weights import report
from jaxface.weights import torch_pickle

NETWORKS = ("generator", "discriminator")
# Reference tensors an import leaves out: second names of the same tensors
# (aliases in the reference modules) and, in the discriminator, the
# attention's long-term parts, which its forward never calls.
_SKIPPED = {
    "generator": re.compile(
        r"^auto_attn\.model\.(model\.[13]|shortcut\.0)\."),
    "discriminator": re.compile(
        r"^(features\.0\.|auto_attn\.alpha$|auto_attn\.model\.)"),
}
_EPS = 1e-12  # torch's spectral-norm normalisation epsilon


def reference_name(key: tuple[str, ...],
                   network: str = "generator") -> str:
  """The LaFIn state-dict name of a generator or discriminator variable.

  Args:
    key: (collection, module..., leaf), e.g. ("params", "middle_3",
      "conv2", "kernel") or ("spectral_norm_stats", "auto_attn", "model",
      "conv1", "u").
  """
  collection, *mods, leaf = key
  sn_leaf = {"u": "weight_u", "v": "weight_v", "kernel": "weight_orig",
             "bias": "bias"}
  if network == "discriminator" and mods[0].startswith("conv"):
    return f"{mods[0]}.0.{sn_leaf[leaf]}"  # Sequential(SN conv, LeakyReLU)
  if collection == layers.SPECTRAL_STATS:
    return ".".join(mods) + "." + sn_leaf[leaf]
  top = mods[0]
  tail = "weight" if leaf == "kernel" else leaf
  if top == "auto_attn":
    if leaf in ("gamma", "alpha"):
      return f"auto_attn.{leaf}"
    if mods[1] == "model":  # a spectral-norm conv
      return ".".join(mods) + "." + sn_leaf[leaf]
    return f"auto_attn.query_conv.{tail}"
  match = re.fullmatch(r"middle_(\d+)", top)
  if match:  # conv_block: pad, conv1, IN, ReLU, pad, conv2, IN
    index = 1 if mods[1] == "conv1" else 5
    return f"middle.{match.group(1)}.conv_block.{index}.{tail}"
  # encoder1 and decoder3 follow a reflection pad in their Sequential.
  index = 1 if top in ("encoder1", "decoder3") else 0
  return f"{top}.{index}.{tail}"


def from_lafin(path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
               template: Mapping[str, Any],
               network: str = "generator") -> dict[str, Any]:
  """LaFIn weights as the variables of `template`'s network.

  Args:
    path_or_state_dict: `InpaintingModel_gen.pth` / `_dis.pth` or its
      state dict.
    template: `{'params', 'spectral_norm_stats'}` of the `Generator` or
      `Discriminator` to fill (e.g. a fresh `init`): its shapes say what is
      expected.
    network: "generator" or "discriminator".

  Returns:
    `{'params', 'spectral_norm_stats'}` float32 NumPy trees like `template`.
  """
  if network not in NETWORKS:
    raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
  source, state_dict = torch_pickle.read_state_dict(
      path_or_state_dict, wrappers=(network, "model", "state_dict"))
  flat = traverse_util.flatten_dict(jax.device_get(dict(template)))
  names = {key: reference_name(key, network) for key in flat}
  wanted = {name: key for key, name in names.items()}
  out, unexpected, wrong = {}, [], []
  for name, value in state_dict.items():
    if name not in wanted:
      if not _SKIPPED[network].match(name):
        unexpected.append(repr(name))
      continue
    key = wanted[name]
    value = torch_pickle.to_numpy(value)
    out[key] = value
  # torch 1.0 checkpoints: v from u by one power step.
  for v_key in flat:
    if v_key[0] != layers.SPECTRAL_STATS or v_key[-1] != "v":
      continue
    path = v_key[1:-1]
    w_key, u_key = ("params", *path, "kernel"), (layers.SPECTRAL_STATS,
                                                 *path, "u")
    if v_key not in out and w_key in out and u_key in out:
      w_mat = out[w_key].reshape(out[w_key].shape[0], -1)
      v = w_mat.T.astype(np.float64) @ out[u_key]
      out[v_key] = (v / max(np.linalg.norm(v), _EPS)).astype(np.float32)
  missing = [repr(names[k]) for k in flat if k not in out]
  converted = {}
  for key, value in out.items():
    like = flat[key]
    if key[-1] == "v":  # (in, kh, kw) -> (kh, kw, in), flattened
      kernel = flat[("params", *key[1:-1], "kernel")]
      kh, kw, cin, _ = kernel.shape
      if value.shape == (cin * kh * kw,):
        value = value.reshape(cin, kh, kw).transpose(1, 2, 0).reshape(-1)
    elif value.ndim == 4 and key[-1] == "kernel":
      # Conv (out, in, kh, kw) -> (kh, kw, in, out); transposed conv
      # (in, out, kh, kw) -> (kh, kw, out, in): one permutation.
      value = value.transpose(2, 3, 1, 0)
    if value.shape != like.shape or value.dtype.kind != "f":
      wrong.append(f"{names[key]!r} {value.dtype} {value.shape}")
      continue
    converted[key] = np.array(value, np.float32, order="C")  # keeps 0-d
  what = {"generator": "InpaintGenerator", "discriminator": "Discriminator"}
  report.raise_problems(
      f"{source} is not a LaFIn {what[network]} state dict for this model: ",
      missing, unexpected, wrong)
  return traverse_util.unflatten_dict(converted)


def template(width: int = 64, num_res_blocks: int = 7,
             network: str = "generator") -> dict[str, Any]:
  """Zero-filled variables of a `Generator` or `Discriminator` (NumPy;
  shapes only traced)."""
  x = jnp.zeros((1, 32, 32, 3))
  if network == "generator":
    g = inpaint.Generator(width=width, num_res_blocks=num_res_blocks)
    init = lambda: g.init(jax.random.key(0), x, x[..., :1], x[..., :1])  # pylint: disable=unnecessary-lambda-assignment
  else:
    d = inpaint.Discriminator(width=width)
    init = lambda: d.init(jax.random.key(0), x, x[..., :1])  # pylint: disable=unnecessary-lambda-assignment
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                      dict(jax.eval_shape(init)))


_FLAGS = {}


def define_flags() -> None:
  _FLAGS["input"] = flags.DEFINE_string(
      "input", None, "LaFIn InpaintingModel_gen.pth or _dis.pth")
  _FLAGS["output"] = flags.DEFINE_string("output", None, ".npz to write")
  _FLAGS["network"] = flags.DEFINE_enum(
      "network", "generator", list(NETWORKS), "Which network the file holds.")


def main(argv) -> None:
  del argv
  network = _FLAGS["network"].value
  variables = from_lafin(_FLAGS["input"].value,
                         template(network=network), network)
  npz.save_npz(_FLAGS["output"].value, variables)
  n = sum(v.size for v in jax.tree.leaves(variables["params"]))
  print(f"wrote {_FLAGS['output'].value}: {n:,} parameters")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
