"""InceptionV3 without its classifier: the gender classifier's backbone.

The layers of torchvision's `inception_v3` and Keras's `InceptionV3`
(include_top=False), which are the same network: a stem of five
conv-BN-ReLU units and two max-pools, then the Mixed blocks

  Mixed_5b, 5c, 5d   InceptionA   (Keras mixed0-2)    35x35 at 299 px
  Mixed_6a           InceptionB   (mixed3, reduction)
  Mixed_6b-6e        InceptionC   (mixed4-7)          17x17
  Mixed_7a           InceptionD   (mixed8, reduction)
  Mixed_7b, 7c       InceptionE   (mixed9-10)         8x8 (6x6 at 256 px)

and a global average pool to 2048 features. 94 conv units in all; every
one is a bias-free convolution, BatchNorm (eps 1e-3) and ReLU. Parameters
carry torchvision's module names (`Mixed_6b/branch7x7_2/conv`), so the
torchvision importer is a renaming and the Keras importer follows the
units in creation order (`UNITS`).

Where the two sources differ, a flag picks the semantics of the weights:

  bn_scale            torchvision's BatchNorm has a scale (gamma); Keras's
                      has none (`scale=False`);
  avg_pool_include_pad  the branch pools (3x3, stride 1, pad 1) divide by 9
                      everywhere in torchvision (`count_include_pad`), by
                      the number of real pixels in Keras ("same" pooling).

`width` scales every unit's channels (the `lite` classifier trains from
scratch at width 0.5 on a CPU); any input of at least 75 px works (the
authors' 256, the canonical 299).

Channels-last; parameters float32, arithmetic in `dtype`; BatchNorm
statistics in `batch_stats`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

BN_EPS = 1e-3
# The smallest input side every valid convolution and pool can take.
MIN_SIZE = 75
# The canonical input side and the feature width at width 1.
CANONICAL_SIZE = 299
FEATURES = 2048

# The Mixed blocks in order: (name, kind, argument), the argument being the
# pool branch's channels (A) or the 7x7 branches' (C).
MIXED = (("Mixed_5b", "A", 32), ("Mixed_5c", "A", 64), ("Mixed_5d", "A", 64),
         ("Mixed_6a", "B", None),
         ("Mixed_6b", "C", 128), ("Mixed_6c", "C", 160),
         ("Mixed_6d", "C", 160), ("Mixed_6e", "C", 192),
         ("Mixed_7a", "D", None), ("Mixed_7b", "E", None),
         ("Mixed_7c", "E", None))

# The conv units of each block kind, in creation order (Keras builds the
# branches in this order, torchvision declares them in it):
# (name, channels, kernel (h, w), stride, padding (h, w)).
_BLOCK_UNITS = {
    "A": lambda pool: (
        ("branch1x1", 64, (1, 1), 1, (0, 0)),
        ("branch5x5_1", 48, (1, 1), 1, (0, 0)),
        ("branch5x5_2", 64, (5, 5), 1, (2, 2)),
        ("branch3x3dbl_1", 64, (1, 1), 1, (0, 0)),
        ("branch3x3dbl_2", 96, (3, 3), 1, (1, 1)),
        ("branch3x3dbl_3", 96, (3, 3), 1, (1, 1)),
        ("branch_pool", pool, (1, 1), 1, (0, 0))),
    "B": lambda _: (
        ("branch3x3", 384, (3, 3), 2, (0, 0)),
        ("branch3x3dbl_1", 64, (1, 1), 1, (0, 0)),
        ("branch3x3dbl_2", 96, (3, 3), 1, (1, 1)),
        ("branch3x3dbl_3", 96, (3, 3), 2, (0, 0))),
    "C": lambda c7: (
        ("branch1x1", 192, (1, 1), 1, (0, 0)),
        ("branch7x7_1", c7, (1, 1), 1, (0, 0)),
        ("branch7x7_2", c7, (1, 7), 1, (0, 3)),
        ("branch7x7_3", 192, (7, 1), 1, (3, 0)),
        ("branch7x7dbl_1", c7, (1, 1), 1, (0, 0)),
        ("branch7x7dbl_2", c7, (7, 1), 1, (3, 0)),
        ("branch7x7dbl_3", c7, (1, 7), 1, (0, 3)),
        ("branch7x7dbl_4", c7, (7, 1), 1, (3, 0)),
        ("branch7x7dbl_5", 192, (1, 7), 1, (0, 3)),
        ("branch_pool", 192, (1, 1), 1, (0, 0))),
    "D": lambda _: (
        ("branch3x3_1", 192, (1, 1), 1, (0, 0)),
        ("branch3x3_2", 320, (3, 3), 2, (0, 0)),
        ("branch7x7x3_1", 192, (1, 1), 1, (0, 0)),
        ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
        ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)),
        ("branch7x7x3_4", 192, (3, 3), 2, (0, 0))),
    "E": lambda _: (
        ("branch1x1", 320, (1, 1), 1, (0, 0)),
        ("branch3x3_1", 384, (1, 1), 1, (0, 0)),
        ("branch3x3_2a", 384, (1, 3), 1, (0, 1)),
        ("branch3x3_2b", 384, (3, 1), 1, (1, 0)),
        ("branch3x3dbl_1", 448, (1, 1), 1, (0, 0)),
        ("branch3x3dbl_2", 384, (3, 3), 1, (1, 1)),
        ("branch3x3dbl_3a", 384, (1, 3), 1, (0, 1)),
        ("branch3x3dbl_3b", 384, (3, 1), 1, (1, 0)),
        ("branch_pool", 192, (1, 1), 1, (0, 0))),
}

_STEM = (("Conv2d_1a_3x3", 32, (3, 3), 2, (0, 0)),
         ("Conv2d_2a_3x3", 32, (3, 3), 1, (0, 0)),
         ("Conv2d_2b_3x3", 64, (3, 3), 1, (1, 1)),
         # a 3x3 stride-2 max-pool
         ("Conv2d_3b_1x1", 80, (1, 1), 1, (0, 0)),
         ("Conv2d_4a_3x3", 192, (3, 3), 1, (0, 0)))
         # a 3x3 stride-2 max-pool

# Every conv unit in creation order: (path, channels, kernel (h, w)), the
# path as in the parameter tree ("Mixed_5b/branch1x1"). Keras's 94
# `conv2d_N` / `batch_normalization_N` layers are these, in this order.
UNITS: tuple[tuple[str, int, tuple[int, int]], ...] = tuple(
    [(name, c, k) for name, c, k, _, _ in _STEM]
    + [(f"{block}/{name}", c, k)
       for block, kind, arg in MIXED
       for name, c, k, _, _ in _BLOCK_UNITS[kind](arg)])


def channels(c: int, width: float) -> int:
  """A unit's channels at width multiplier `width` (at least 1)."""
  return max(1, int(round(c * width)))


class ConvUnit(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU (`BasicConv2d`)."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  bn_scale: bool = True
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=self.stride,
                padding=((ph, ph), (pw, pw)), use_bias=False,
                dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=BN_EPS, use_scale=self.bn_scale,
                     dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class _Settings(nn.Module):
  """What every unit of the network shares."""
  width: float = 1.0
  bn_scale: bool = True
  bn_momentum: float = 0.9        # flax's convention (torch 0.1, Keras 0.99)
  avg_pool_include_pad: bool = True
  dtype: Dtype = jnp.float32

  def _unit(self, spec) -> ConvUnit:
    name, c, kernel, stride, padding = spec
    return ConvUnit(channels(c, self.width), kernel, stride, padding,
                    bn_scale=self.bn_scale, bn_momentum=self.bn_momentum,
                    dtype=self.dtype, name=name)

  def _settings(self) -> dict[str, Any]:
    return dict(width=self.width, bn_scale=self.bn_scale,
                bn_momentum=self.bn_momentum,
                avg_pool_include_pad=self.avg_pool_include_pad,
                dtype=self.dtype)


class InceptionBlock(_Settings):
  """One Mixed block of `kind` A-E; `arg` as in `MIXED`."""
  kind: str = "A"
  arg: Any = None

  def _avg_pool(self, x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)),
                       count_include_pad=self.avg_pool_include_pad)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    units = {spec[0]: self._unit(spec)
             for spec in _BLOCK_UNITS[self.kind](self.arg)}

    def run(*names, inp=x):
      for n in names:
        inp = units[n](inp, train)
      return inp

    kind = self.kind
    if kind == "A":
      branches = [run("branch1x1"), run("branch5x5_1", "branch5x5_2"),
                  run("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                  run("branch_pool", inp=self._avg_pool(x))]
    elif kind == "B":
      branches = [run("branch3x3"),
                  run("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                  _max_pool(x)]
    elif kind == "C":
      branches = [run("branch1x1"),
                  run("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                  run(*(f"branch7x7dbl_{i}" for i in range(1, 6))),
                  run("branch_pool", inp=self._avg_pool(x))]
    elif kind == "D":
      branches = [run("branch3x3_1", "branch3x3_2"),
                  run(*(f"branch7x7x3_{i}" for i in range(1, 5))),
                  _max_pool(x)]
    else:  # "E": each 3x3 is split into a 1x3 and a 3x1 side by side
      b3 = run("branch3x3_1")
      bd = run("branch3x3dbl_1", "branch3x3dbl_2")
      branches = [run("branch1x1"),
                  run("branch3x3_2a", inp=b3), run("branch3x3_2b", inp=b3),
                  run("branch3x3dbl_3a", inp=bd),
                  run("branch3x3dbl_3b", inp=bd),
                  run("branch_pool", inp=self._avg_pool(x))]
    return jnp.concatenate(branches, axis=-1)


class InceptionV3(_Settings):
  """InceptionV3 features: images [B, H, W, 3] -> [B, 2048 * width].

  The input is used as given (the ImageNet weights of both sources expect
  [-1, 1]; the caller scales). `pool=False` returns the last block's map
  [B, h, w, C] instead of its average (float32).
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               pool: bool = True) -> jax.Array:
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"InceptionV3 needs inputs of at least {MIN_SIZE} px, "
                       f"got {x.shape[1]}x{x.shape[2]}")
    x = x.astype(self.dtype)
    for i, spec in enumerate(_STEM):
      x = self._unit(spec)(x, train)
      if i in (2, 4):
        x = _max_pool(x)
    for name, kind, arg in MIXED:
      x = InceptionBlock(kind=kind, arg=arg, name=name,
                         **self._settings())(x, train)
    if not pool:
      return x
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


def feature_width(width: float) -> int:
  """The pooled feature size at width multiplier `width`."""
  # Mixed_7c's branches: 320, 2 x 384, 2 x 384 and 192 channels.
  return sum(channels(c, width) for c in (320, 384, 384, 384, 384, 192))
