"""LaFIn generator checkpoints: the reference's key layout, on random weights.

A PyTorch re-statement of LaFIn's generator (`bench.vs_torch`) with random
weights is saved under the reference's state-dict names (pads and norms
counted in the Sequential indices, spectral norm's `weight_orig` / `_u` /
`_v`, the aliased keys, `module.` prefixes, the `{'generator': ...}`
wrapper); the imported flax generator must compute what it does.
"""

import jax
import numpy as np
import pytest

from jaxface.models import inpaint
from jaxface.weights import inpaint as lafin

WIDTH, BLOCKS, SIZE = 4, 2, 32


def _reference_state_dict(net):
  """`net`'s tensors under LaFIn's own names, aliases included."""
  out = {}
  for name, value in {**dict(net.named_parameters()),
                      **dict(net.named_buffers())}.items():
    value = value.detach().clone()
    parts = name.split(".")
    if parts[0].startswith("middle_"):
      i = parts[0][len("middle_"):]
      conv = {"conv1": "1", "conv2": "5"}[parts[1]]
      out[f"middle.{i}.conv_block.{conv}.{parts[2]}"] = value
    elif parts[0] == "auto_attn" and len(parts) > 2 and parts[1] == "model":
      leaf = {"weight": "weight_orig", "u": "weight_u", "v": "weight_v",
              "bias": "bias"}[parts[3]]
      out[f"auto_attn.model.{parts[2]}.{leaf}"] = value
      alias = {"conv1": "model.1", "conv2": "model.3",
               "bypass": "shortcut.0"}[parts[2]]
      out[f"auto_attn.model.{alias}.{leaf}"] = value
    elif parts[0] == "auto_attn":
      out[name] = value
    else:
      index = "1" if parts[0] in ("encoder1", "decoder3") else "0"
      out[f"{parts[0]}.{index}.{parts[1]}"] = value
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  torch = pytest.importorskip("torch")
  from jaxface.bench import vs_torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  net = vs_torch.TorchGenerator(width=WIDTH, num_res_blocks=BLOCKS).eval()
  with torch.no_grad():  # attention that matters: gamma, alpha non-zero
    net.auto_attn.gamma.fill_(0.7)
    net.auto_attn.alpha.fill_(0.5)
    for p in net.parameters():
      if p.ndim == 4:
        p.mul_(10.0)  # N(0, 0.2): activations of order one
  sd = _reference_state_dict(net)
  path = tmp_path_factory.mktemp("lafin") / "InpaintingModel_gen.pth"
  torch.save({"iteration": 7, "generator": {f"module.{k}": v
                                             for k, v in sd.items()}}, path)
  return torch, net, sd, path


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  lmap = (rng.uniform(size=(2, SIZE, SIZE, 1)) > 0.95).astype(np.float32)
  mask = np.zeros((2, SIZE, SIZE, 1), np.float32)
  mask[:, 10:26, 6:24] = 1
  return image * (1 - mask) + mask, lmap, mask


def test_lafin_checkpoint_computes_what_the_reference_does(reference):
  torch, net, _, path = reference
  variables = lafin.from_lafin(path, lafin.template(WIDTH, BLOCKS))
  g = inpaint.Generator(width=WIDTH, num_res_blocks=BLOCKS)
  masked, lmap, mask = _inputs()
  ours = jax.jit(g.apply)(variables, masked, lmap, mask)
  nchw = lambda x: torch.tensor(x.transpose(0, 3, 1, 2),  # pylint: disable=unnecessary-lambda-assignment
                                 dtype=torch.float64)
  with torch.no_grad():  # the reference in float64
    want = net.double()(nchw(masked), nchw(lmap), nchw(mask)).numpy()
  net.float()
  want = want.transpose(0, 2, 3, 1)
  assert float(np.abs(want - 0.5).max()) > 0.1  # not a flat output
  # Outputs in [0, 1]; float32 rounding through the 2 + 2 * BLOCKS + 8
  # convolutions (sums of at most 7 * 7 * 2 * WIDTH terms, each followed
  # by an instance norm that keeps activations of order one) stays some
  # orders of magnitude below this.
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-4)


def test_torch_1_0_checkpoints_without_weight_v(reference):
  _, net, sd, _ = reference
  sd = {k: v for k, v in sd.items() if not k.endswith("weight_v")}
  variables = lafin.from_lafin(sd, lafin.template(WIDTH, BLOCKS))
  conv = net.auto_attn.model.conv1
  w = conv.weight.detach().numpy().reshape(conv.weight.shape[0], -1)
  v = w.T @ conv.u.numpy()
  v /= np.linalg.norm(v)
  _, cin, kh, kw = conv.weight.shape
  want = v.reshape(cin, kh, kw).transpose(1, 2, 0).reshape(-1)
  got = variables["spectral_norm_stats"]["auto_attn"]["model"]["conv1"]["v"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_checkpoints_name_the_keys(reference):
  _, _, sd, _ = reference
  sd = dict(sd)
  del sd["middle.1.conv_block.5.bias"]
  sd["middle.9.conv_block.1.weight"] = sd["middle.0.conv_block.1.weight"]
  sd["fushion1.0.weight"] = sd["fushion2.0.weight"]
  with pytest.raises(ValueError) as err:
    lafin.from_lafin(sd, lafin.template(WIDTH, BLOCKS))
  text = str(err.value)
  assert "1 missing: 'middle.1.conv_block.5.bias'" in text
  assert "1 unexpected: 'middle.9.conv_block.1.weight'" in text
  assert "'fushion1.0.weight'" in text and "wrongly shaped" in text


def test_every_full_size_variable_has_a_distinct_reference_name():
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat = traverse_util.flatten_dict(lafin.template())
  names = {lafin.reference_name(k) for k in flat}
  assert len(names) == len(flat)
  assert {"encoder1.1.weight", "middle.6.conv_block.5.bias",
          "auto_attn.model.bypass.weight_orig",
          "auto_attn.model.conv2.weight_v", "decoder1.0.weight",
          "decoder3.1.bias", "auto_attn.query_conv.weight"} <= names
  params = sum(v.size for v in jax.tree.leaves(
      traverse_util.unflatten_dict(flat)["params"]))
  assert params == 11_734_981  # REFERENCE.md section 2


def test_lafin_discriminator_checkpoint(tmp_path):
  torch = pytest.importorskip("torch")
  from jaxface.bench import vs_torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(1)
  net = vs_torch.TorchDiscriminator(width=WIDTH).eval()
  with torch.no_grad():
    net.auto_attn.gamma.fill_(0.7)
  sd = {}
  for name, value in {**dict(net.named_parameters()),
                      **dict(net.named_buffers())}.items():
    parts = name.split(".")
    if parts[0].startswith("conv"):
      leaf = {"weight": "weight_orig", "u": "weight_u",
              "v": "weight_v"}[parts[1]]
      sd[f"{parts[0]}.0.{leaf}"] = value.detach().clone()
      if parts[0] == "conv1":  # `features` is conv1 under a second name
        sd[f"features.0.{leaf}"] = value.detach().clone()
    else:
      sd[name] = value.detach().clone()
  # Registered by the reference's attention, never used by its forward.
  sd["auto_attn.alpha"] = torch.zeros(1)
  sd["auto_attn.model.conv1.weight_orig"] = torch.zeros(8, 16, 3, 3)
  torch.save({"discriminator": sd}, tmp_path / "InpaintingModel_dis.pth")
  variables = lafin.from_lafin(
      tmp_path / "InpaintingModel_dis.pth",
      lafin.template(WIDTH, network="discriminator"), "discriminator")
  masked, lmap, _ = _inputs(1)
  ours = jax.jit(inpaint.Discriminator(width=WIDTH).apply)(
      variables, masked, lmap)
  nchw = lambda x: torch.tensor(x.transpose(0, 3, 1, 2),  # pylint: disable=unnecessary-lambda-assignment
                                 dtype=torch.float64)
  with torch.no_grad():
    want = net.double()(nchw(masked), nchw(lmap)).numpy().transpose(
        0, 2, 3, 1)
  # Probabilities; five convolutions of at most 4 * 4 * 8 * WIDTH terms.
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)
