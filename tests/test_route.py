"""Gender routing: each face through its own gender's parameters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import route
from jaxface.models import inpaint


def test_choose_auto_and_overrides():
  p = jnp.array([0.1, 0.5, 0.9, 0.49])
  np.testing.assert_array_equal(route.choose(p), [0, 1, 1, 0])
  np.testing.assert_array_equal(route.choose(p, "male"), [1, 1, 1, 1])
  np.testing.assert_array_equal(route.choose(p, "female"), [0, 0, 0, 0])
  with pytest.raises(ValueError, match="gender must be one of"):
    route.choose(p, "other")


def _affine(params, x, extra):
  """A per-face function with two inputs and a pytree output."""
  return {"y": x * params["w"] + params["b"], "z": extra.sum(-1) * params["w"]}


PARAMS = ({"w": jnp.float32(2.0), "b": jnp.float32(-1.0)},   # female
          {"w": jnp.float32(-3.0), "b": jnp.float32(5.0)})   # male


@pytest.mark.parametrize("strategy,chunk", [
    ("chunks", 0), ("chunks", 1), ("chunks", 3), ("chunks", 7),
    ("both", 0)])
def test_every_face_gets_its_gender_parameters(strategy, chunk):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(7, 2, 3)), jnp.float32)
  extra = jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
  fn = jax.jit(lambda g: route.route(_affine, PARAMS, g, x, extra,
                                     strategy=strategy, chunk=chunk))
  for genders in ([0, 1, 1, 0, 1, 0, 0], [1] * 7, [0] * 7,
                  [1, 1, 1, 0, 0, 0, 0]):
    g = jnp.asarray(genders, jnp.int32)
    got = fn(g)
    for i, code in enumerate(genders):
      want = _affine(PARAMS[code], x[i], extra[i])
      # One multiply-add per value (fused or not): a rounding or two.
      for k in ("y", "z"):
        np.testing.assert_allclose(got[k][i], want[k], rtol=1e-6, atol=1e-6)


def test_chunks_run_only_what_the_genders_need():
  g = jnp.asarray([0, 1, 1, 0, 1, 0, 0, 1], jnp.int32)
  # 4 females and 4 males in chunks of 3: 2 + 2 chunks of 3 faces.
  assert int(route.stats(g, 3)["chunks_run"]) == 4
  assert int(route.stats(g, 4)["faces_of_work"]) == 8


def test_routed_generators_equal_each_on_its_own_faces():
  """Two LaFIn generators on a mixed batch: each face's output is what its
  gender's generator gives when run on that gender's faces alone."""
  g = inpaint.Generator(width=4, num_res_blocks=1)
  rng = np.random.default_rng(1)
  b, s = 5, 32
  image = jnp.asarray(rng.uniform(size=(b, s, s, 3)), jnp.float32)
  lmap = jnp.asarray(rng.uniform(size=(b, s, s, 1)) > 0.9, jnp.float32)
  mask = jnp.zeros((b, s, s, 1)).at[:, 12:24, 8:24].set(1.0)
  init = jax.jit(g.init)
  variables = [init(jax.random.key(k), image[:1], lmap[:1], mask[:1])
               for k in (0, 1)]
  p_male = jnp.asarray([0.9, 0.2, 0.4, 0.7, 0.1])
  genders = np.asarray([1, 0, 0, 1, 0])

  def routed_fn(v0, v1, *x, gender="auto"):
    return route.inpaint(g, (v0, v1), p_male, *x, gender=gender, chunk=2)

  routed = jax.jit(routed_fn)(*variables, image, lmap, mask)
  apply = jax.jit(g.apply)
  for code in (0, 1):
    idx = np.flatnonzero(genders == code)
    alone = apply(variables[code], image[idx], lmap[idx], mask[idx])
    np.testing.assert_allclose(routed[idx], alone, rtol=0,
                               atol=1e-5 * float(jnp.abs(alone).max()))
  # The override: one generator for every face.
  everyone = jax.jit(functools.partial(routed_fn, gender="female"))(
      *variables, image, lmap, mask)
  np.testing.assert_array_equal(everyone,
                                apply(variables[0], image, lmap, mask))
