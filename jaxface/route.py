"""Gender routing: each face of a batch through the model of its gender.

The paper keeps one inpainting generator per gender and lets the gender
classifier choose. Inside one jitted function, with static shapes, a mixed
batch is routed without running both generators on every face:

  "chunks" (default): the faces are sorted by gender (stably) into slots
    of `chunk` faces, the males starting on a fresh chunk, so that every
    chunk holds one gender (or padding). `lax.map` walks the chunks and
    `lax.switch` runs only that chunk's generator (padding chunks run
    nothing); the outputs go back to the faces' own places. F female and
    M male faces cost ceil(F/c) + ceil(M/c) chunks of c faces of generator
    work (at most B + c when c divides B), against 2B for "both".
  "both": every generator on every face, then a per-face select: the
    simplest, and cheaper only when chunks would be tiny.

`python -m jaxface.bench.route` measures both on the inpainting generator.
Routing is generic: `apply_fn(params, *inputs)` is any function of
per-face inputs (leading batch axis) whose outputs have a leading batch
axis too.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxface.data import schema

GENDERS = ("auto", "female", "male")
STRATEGIES = ("chunks", "both")


def choose(p_male: jax.Array, gender: str = "auto",
           threshold: float = 0.5) -> jax.Array:
  """[B] int32 gender codes (`schema.FEMALE` / `schema.MALE`).

  Args:
    p_male: [B] probabilities of "male" (the classifier's).
    gender: "auto" (the classifier decides: male at `threshold` or above),
      or "female" / "male" for every face (a user's override).
    threshold: of "auto".
  """
  if gender not in GENDERS:
    raise ValueError(f"gender must be one of {GENDERS}, got {gender!r}")
  if gender == "auto":
    return jnp.where(p_male >= threshold, schema.MALE,
                     schema.FEMALE).astype(jnp.int32)
  return jnp.full(p_male.shape, schema.GENDERS[gender], jnp.int32)


def default_chunk(batch_size: int) -> int:
  """A quarter of the batch (at least 1): about 1.25 B faces of work."""
  return max(1, batch_size // 4)


def route(apply_fn: Callable[..., Any], params: Sequence[Any],
          genders: jax.Array, *inputs: Any, strategy: str = "chunks",
          chunk: int = 0) -> Any:
  """`apply_fn(params[genders[i]], input_i)` for every face i of a batch.

  Args:
    apply_fn: `apply_fn(params, *inputs) -> outputs`, per face along the
      leading axis (e.g. a generator's `apply`).
    params: one parameter set per gender code: `(female, male)`.
    genders: [B] int32 codes (`choose`).
    *inputs: pytrees of [B, ...] arrays.
    strategy: "chunks" or "both" (module docstring).
    chunk: faces per chunk; 0: `default_chunk(B)`.

  Returns:
    The outputs, [B, ...], face i's from its gender's parameters.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got "
                     f"{strategy!r}")
  params = tuple(params)
  if len(params) != len(schema.GENDERS):
    raise ValueError(f"one parameter set per gender (female, male), got "
                     f"{len(params)}")
  b = genders.shape[0]
  if strategy == "both":
    outs = [apply_fn(p, *inputs) for p in params]

    def pick(*leaves):
      sel = genders.reshape((b,) + (1,) * (leaves[0].ndim - 1))
      return jnp.where(sel == schema.MALE, leaves[schema.MALE],
                       leaves[schema.FEMALE])

    return jax.tree.map(pick, *outs)

  c = _chunk_size(b, chunk)
  num_chunks = -(-b // c) + 1  # the worst case: both genders end mid-chunk
  slots = num_chunks * c
  male = genders == schema.MALE
  num_female = b - jnp.sum(male)
  female_chunks = -(-num_female // c)  # the males start on this chunk
  # Each face's slot: the j-th female at j, the j-th male at
  # female_chunks * c + j.
  rank = jnp.where(male, jnp.cumsum(male) - 1, jnp.cumsum(~male) - 1)
  slot = jnp.where(male, female_chunks * c + rank, rank)
  source = jnp.zeros((slots,), jnp.int32).at[slot].set(
      jnp.arange(b, dtype=jnp.int32))
  used = jnp.zeros((slots,), bool).at[slot].set(True)
  chunk_used = used.reshape(num_chunks, c).any(axis=1)
  # 0: padding only, 1 + gender code otherwise.
  branch = jnp.where(chunk_used, 1 + jnp.where(
      jnp.arange(num_chunks) >= female_chunks, schema.MALE, schema.FEMALE),
                     0)
  chunked = jax.tree.map(
      lambda x: x[source].reshape((num_chunks, c) + x.shape[1:]), inputs)
  one = jax.tree.map(lambda x: x[0], chunked)
  out_shape = jax.eval_shape(apply_fn, params[0], *one)

  def nothing(_):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

  def runner(p):
    return lambda xs: apply_fn(p, *xs)

  branches = [nothing] + [runner(params[g]) for g in sorted(
      schema.GENDERS.values())]
  outs = jax.lax.map(lambda a: jax.lax.switch(a[0], branches, a[1]),
                     (branch, chunked))
  return jax.tree.map(
      lambda o: o.reshape((slots,) + o.shape[2:])[slot], outs)


def inpaint(generator: Any, variables: Sequence[Any], p_male: jax.Array,
            masked_image: jax.Array, landmark_map: jax.Array,
            mask: jax.Array, *, gender: str = "auto",
            strategy: str = "chunks", chunk: int = 0) -> jax.Array:
  """A mixed batch through the inpainting generator of each face's gender.

  Args:
    generator: a `models.inpaint.Generator`.
    variables: its variables per gender, `(female, male)`.
    p_male: [B] the gender classifier's probabilities of "male".
    masked_image, landmark_map, mask: the generator's inputs, [B, H, W, C].
    gender: "auto" (by `p_male`), or "female" / "male" for every face: then
      only that generator runs, on the whole batch.
    strategy, chunk: as `route`.

  Returns:
    [B, H, W, 3] the generators' outputs (not yet composited).
  """
  inputs = (masked_image, landmark_map, mask)
  if gender != "auto":
    choose(p_male, gender)  # checks the name
    return generator.apply(variables[schema.GENDERS[gender]], *inputs)
  return route(generator.apply, variables, choose(p_male), *inputs,
               strategy=strategy, chunk=chunk)


def _chunk_size(batch_size: int, chunk: int) -> int:
  return min(chunk or default_chunk(batch_size), batch_size)


def stats(genders: jax.Array, chunk: int = 0) -> dict[str, jax.Array]:
  """Chunks the "chunks" strategy runs for these genders (for reports)."""
  b = genders.shape[0]
  chunk = _chunk_size(b, chunk)
  male = jnp.sum(genders == schema.MALE)
  runs = -(-(b - male) // chunk) + -(-male // chunk)
  return {"chunks_run": runs, "faces_of_work": runs * chunk}
