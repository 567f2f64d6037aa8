"""VGG-19 convolutional features, the frozen network of perceptual/style losses.

Same layers as torchvision's `vgg19().features` (3x3 convs with bias and
padding 1, ReLU, 2x2 max-pools with stride 2), so its ImageNet weights import
directly (`jaxface.weights.vgg`). Only the features are built, and only up to
`last_layer`. Parameters are named after the ReLU they feed: `conv3_2` is the
conv before `relu3_2`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jax.ad_checkpoint import checkpoint_name

# (block, number of convs, channels) of VGG-19; a max-pool follows each block
# except the last (torchvision's final pool is never needed by a loss).
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))

# Every ReLU in order, with its output channels.
LAYERS: tuple[str, ...] = tuple(
    f'relu{b}_{i}' for b, n, _ in _BLOCKS for i in range(1, n + 1))
CHANNELS: dict[str, int] = {
    f'relu{b}_{i}': c for b, n, c in _BLOCKS for i in range(1, n + 1)}

# torchvision `features` index of the conv before each ReLU.
TORCHVISION_CONV_INDEX: dict[str, int] = dict(zip(
    LAYERS, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)))

# The layers LaFIn / EdgeConnect read: the perceptual loss uses relu{1..5}_1,
# the style loss relu2_2, relu3_4, relu4_4 and relu5_2.
DEFAULT_OUTPUTS: tuple[str, ...] = (
    'relu1_1', 'relu2_1', 'relu2_2', 'relu3_1', 'relu3_4', 'relu4_1',
    'relu4_4', 'relu5_1', 'relu5_2')

# The name of each block's output (before its max-pool): under
# `jax.checkpoint(..., policy=save_only_these_names(BLOCK_OUTPUT))` a
# backward pass through the network keeps only these and recomputes each
# block's convolutions from its input.
BLOCK_OUTPUT = 'vgg_block_output'

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_name(layer: str) -> str:
  """The param name of the conv feeding `layer`: relu3_2 -> conv3_2."""
  return 'conv' + layer[len('relu'):]


def layers_up_to(last_layer: str) -> tuple[str, ...]:
  """The ReLU names from relu1_1 to `last_layer` inclusive."""
  if last_layer not in LAYERS:
    raise ValueError(f'unknown VGG-19 layer {last_layer!r}; one of {LAYERS}')
  return LAYERS[:LAYERS.index(last_layer) + 1]


class VGG19(nn.Module):
  """VGG-19 features returning the requested ReLU activations.

  Attributes:
    outputs: names of the ReLU activations to return (`relu1_1` ...
      `relu5_4`), all computed in one pass.
    last_layer: the deepest layer built; params and compute stop there. Every
      name in `outputs` must be at or before it.
    imagenet_normalize: subtract the ImageNet mean and divide by its std
      first. Off by default: LaFIn / EdgeConnect feed [0, 1] RGB as is.
    width: channels of the first block (64 = VGG-19; pretrained weights need
      64). The other blocks scale with it. Smaller widths are only for smoke
      tests with random loss-network weights.
    dtype: compute dtype (e.g. `jnp.bfloat16`); outputs come back in it.
    param_dtype: dtype of the parameters.
  """
  outputs: Sequence[str] = DEFAULT_OUTPUTS
  last_layer: str = 'relu5_2'
  imagenet_normalize: bool = False
  width: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Runs the features.

    Args:
      x: `[B, H, W, 3]` RGB images, float in [0, 1].

    Returns:
      `{name: [B, H / 2**(block - 1), W / 2**(block - 1), C]}` for each name
      in `outputs` (sizes floored at each pool as in torch).
    """
    layers = layers_up_to(self.last_layer)
    unknown = [name for name in self.outputs if name not in layers]
    if unknown:
      raise ValueError(f'outputs {unknown} are not VGG-19 layers up to '
                       f'last_layer={self.last_layer!r}: {layers}')
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'expected [B, H, W, 3] RGB images, got {x.shape}')

    if self.imagenet_normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(
          IMAGENET_STD, x.dtype)
    x = x.astype(self.dtype)
    wanted = set(self.outputs)
    out = {}
    block = 1
    for layer in layers:
      layer_block = int(layer[len('relu')])
      if layer_block != block:
        # [B, H, W, C] -> [B, H // 2, W // 2, C]
        # The block's output: what a rematerialised pass keeps (see
        # BLOCK_OUTPUT).
        x = checkpoint_name(x, BLOCK_OUTPUT)
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        block = layer_block
      x = nn.relu(nn.Conv(
          CHANNELS[layer] * self.width // 64, (3, 3), padding=((1, 1), (1, 1)),
          dtype=self.dtype, param_dtype=self.param_dtype,
          name=conv_name(layer))(x))
      if layer in wanted:
        out[layer] = x
    return {name: out[name] for name in self.outputs}
