"""Shapes and parameter counts of the LaFIn generator and discriminator."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import inpaint
from jaxface.models import layers


def _intermediate_shapes(module, *args, **kwargs):
  """Output shape of every submodule, from abstract evaluation only."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))

  def run(v):
    _, state = module.apply(v, *args, capture_intermediates=True,
                            mutable=["intermediates"], **kwargs)
    return state["intermediates"]

  inter = jax.eval_shape(run, variables)
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(inter)[0]:
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    flat["/".join(k for k in keys if k != "__call__")] = leaf.shape
  return variables, flat


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_generator_layer_shapes_at_256():
  g = inpaint.Generator()
  x = jnp.zeros((1, 256, 256, 3))
  one = jnp.zeros((1, 256, 256, 1))
  variables, shapes = _intermediate_shapes(g, x, one, one)
  # REFERENCE.md section 2 (NCHW there, NHWC here).
  expected = {
      "encoder1": (1, 256, 256, 64),
      "encoder2": (1, 128, 128, 128),
      "encoder3": (1, 64, 64, 256),
      **{f"middle_{i}": (1, 64, 64, 256) for i in range(7)},
      "auto_attn": (1, 64, 64, 256),
      "auto_attn/query_conv": (1, 64, 64, 64),
      "auto_attn/model": (1, 64, 64, 256),
      "decoder1": (1, 128, 128, 128),
      "fushion1": (1, 128, 128, 256),
      "decoder2": (1, 256, 256, 64),
      "fushion2": (1, 256, 256, 128),
      "decoder3": (1, 256, 256, 3),
      "": (1, 256, 256, 3),
  }
  for name, shape in expected.items():
    assert shapes[name] == shape, name
  assert _count(variables["params"]) == 11_734_981  # the reference's count


def test_generator_block_parameter_counts():
  g = inpaint.Generator()
  x = jnp.zeros((1, 64, 64, 3))
  one = jnp.zeros((1, 64, 64, 1))
  params = jax.eval_shape(lambda: g.init(jax.random.key(0), x, one, one))[
      "params"]
  counts = {k: _count(v) for k, v in params.items()}
  assert counts["encoder1"] == 12_608
  assert counts["encoder2"] == 131_200
  assert counts["encoder3"] == 524_544
  assert sum(counts[f"middle_{i}"] for i in range(7)) == 8_261_120
  assert counts["auto_attn"] == 1_917_762
  assert counts["decoder1"] == 524_416
  assert counts["decoder2"] == 262_208
  assert counts["decoder3"] == 18_819
  assert counts["fushion1"] == 65_792
  assert counts["fushion2"] == 16_512


def test_discriminator_layer_shapes_at_256():
  d = inpaint.Discriminator()
  x = jnp.zeros((1, 256, 256, 3))
  one = jnp.zeros((1, 256, 256, 1))
  variables, shapes = _intermediate_shapes(d, x, one)
  expected = {
      "conv1": (1, 128, 128, 64),
      "conv2": (1, 64, 64, 128),
      "auto_attn": (1, 64, 64, 128),
      "auto_attn/query_conv": (1, 64, 64, 32),
      "conv3": (1, 32, 32, 256),
      "conv4": (1, 31, 31, 512),
      "conv5": (1, 30, 30, 1),
      "": (1, 30, 30, 1),  # the 70x70-receptive-field patch map
  }
  for name, shape in expected.items():
    assert shapes[name] == shape, name
  # Five bias-free SN convs (2,764,800) + attention query, gamma.
  assert _count(variables["params"]) == 2_764_800 + 4_128 + 1
  for i in range(1, 6):
    assert "bias" not in variables["params"][f"conv{i}"]
    assert set(variables[layers.SPECTRAL_STATS][f"conv{i}"]) == {"u", "v"}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_small_forward_ranges_and_dtypes(dtype):
  g = inpaint.Generator(width=8, num_res_blocks=2, dtype=dtype)
  d = inpaint.Discriminator(width=8, dtype=dtype)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, 32, 32, 3)), jnp.float32)
  lm = jnp.zeros((2, 32, 32, 1))
  mask = jnp.zeros((2, 32, 32, 1)).at[:, 8:24, 8:24].set(1.0)
  gv = g.init(jax.random.key(0), x, lm, mask)
  out = g.apply(gv, x, lm, mask)
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  dv = d.init(jax.random.key(1), x, lm)
  prob = d.apply(dv, x, lm)
  assert prob.shape == (2, 2, 2, 1)
  assert float(prob.min()) > 0 and float(prob.max()) < 1


def test_generator_rejects_sizes_not_multiple_of_four():
  g = inpaint.Generator(width=4, num_res_blocks=1)
  x = jnp.zeros((1, 30, 30, 3))
  with pytest.raises(ValueError, match="multiple of 4"):
    g.init(jax.random.key(0), x, x[..., :1], x[..., :1])


def test_remat_keeps_parameters_values_and_gradients():
  # Rematerialisation only changes what the backward pass keeps: the same
  # parameter tree for every network, and (checked on one generator stage
  # as the networks build them, `layers.remat` of a function of a module)
  # the same outputs and gradients, recomputed by the same operations.
  x = jnp.zeros((1, 16, 16, 3))
  one = x[..., :1]
  for make, inputs in ((lambda r: inpaint.Generator(width=4, num_res_blocks=1,
                                                     remat=r), (x, one, one)),
                       (lambda r: inpaint.Discriminator(width=4, remat=r),
                        (jnp.zeros((1, 24, 24, 3)), jnp.zeros((1, 24, 24, 1))))):
    shapes = lambda r: jax.tree.map(jnp.shape, jax.eval_shape(
        make(r).init, jax.random.key(0), *inputs))
    assert shapes("nothing_saveable") == shapes("none")

  class Stage(nn.Module):
    policy: str

    @nn.compact
    def __call__(self, t):
      stage = layers.remat(
          lambda conv, t: nn.relu(layers.instance_norm(conv(t))), self.policy)
      t = stage(layers.conv(6, 3, padding=1, name="a"), t)
      return stage(layers.conv(5, 3, padding=1, name="b"), t)

  t = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)),
                  jnp.float32)
  variables = Stage("none").init(jax.random.key(0), t)
  grad = lambda policy: jax.value_and_grad(
      lambda v: jnp.sum(jnp.sin(Stage(policy).apply(v, t))))(variables)
  want = grad("none")
  for policy in ("dots_saveable", "nothing_saveable"):
    got = grad(policy)
    # A conv bias right before an instance norm has a true gradient of
    # zero, so its computed gradient is rounding noise: compared on the
    # scale of the largest gradient.
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want[1]))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)


def test_remat_policy_is_checked():
  with pytest.raises(ValueError, match="remat policy"):
    inpaint.Generator(width=4, num_res_blocks=1, remat="everything").init(
        jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
        jnp.zeros((1, 16, 16, 1)), jnp.zeros((1, 16, 16, 1)))
