"""LaFIn: the landmark-guided inpainting generator and its patch discriminator.

Layer for layer the networks of Yang et al., "LaFIn: Generative Landmark
Guided Face Inpainting" (the inpainting module of the paper), channels-last.
With `width=64` and 7 residual blocks the generator has 11,734,981 parameters,
as the reference, and the discriminator 2,768,929 (the reference also
registers an attention `alpha` and a ResBlock that its forward never uses).

Generator input: the image with holes painted white (value 1) and a
one-channel landmark map (one lit pixel per landmark); the hole mask itself is
not an input channel: it only gates the skip connections and the attention.
Output: `(tanh(x) + 1) / 2` in [0, 1].
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models import attention
from jaxface.models import layers

Dtype = Any


class ResnetBlock(nn.Module):
  """Dilated residual block: pad-conv(d)-IN-ReLU-pad-conv-IN, plus identity."""
  dilation: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    h = layers.reflect_pad(x, self.dilation)
    h = layers.conv(c, 3, dilation=self.dilation, dtype=self.dtype,
                    name="conv1")(h)
    h = nn.relu(layers.instance_norm(h))
    h = layers.reflect_pad(h, 1)
    h = layers.conv(c, 3, dtype=self.dtype, name="conv2")(h)
    return x + layers.instance_norm(h)


class Generator(nn.Module):
  """LaFIn's `InpaintGenerator`.

  Attributes:
    width: channels of the first encoder level (64 in the reference); the
      levels use width, 2*width, 4*width.
    num_res_blocks: dilated residual blocks in the middle (7).
    dilation: their dilation (2).
    attention_impl: see `attention.LongShortAttention`.
    remat: a `layers.REMAT_POLICIES` name: each encoder and decoder stage,
      residual block and the attention are rematerialised under it.
    conv_transpose: the decoder's upsampling, see `layers.conv_transpose`.
    dtype: compute dtype.
  """
  width: int = 64
  num_res_blocks: int = 7
  dilation: int = 2
  attention_impl: str = "auto"
  remat: str = "none"
  conv_transpose: str = "subpixel"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, masked_image: jax.Array, landmark_map: jax.Array,
               mask: jax.Array, *, update_stats: bool = False) -> jax.Array:
    """Inpaints the holes.

    Args:
      masked_image: [B, H, W, 3] in [0, 1], holes painted white.
      landmark_map: [B, H, W, 1].
      mask: [B, H, W, 1], 1 in the hole.
      update_stats: advance the spectral-norm power iteration (training).

    Returns:
      [B, H, W, 3] float32 in [0, 1].
    """
    b, h, w, _ = masked_image.shape
    if h % 4 or w % 4:
      raise ValueError(f"image size must be a multiple of 4, got {h}x{w}")
    dt = self.dtype
    c1, c2, c3 = self.width, 2 * self.width, 4 * self.width
    # A conv (or transposed conv) followed by instance norm and ReLU.
    stage = layers.remat(lambda conv, t: nn.relu(layers.instance_norm(conv(t))),
                         self.remat)
    mask = mask.astype(jnp.float32)
    mask_half = layers.resize_align_corners(mask, (h // 2, w // 2))
    mask_quarter = layers.resize_align_corners(mask, (h // 4, w // 4))

    x = jnp.concatenate([masked_image, landmark_map], axis=-1).astype(dt)
    # Encoder.                                        # [B, H, W, 4]
    x = layers.reflect_pad(x, 3)
    f_e1 = stage(layers.conv(c1, 7, dtype=dt, name="encoder1"), x)
    f_e2 = stage(layers.conv(c2, 4, stride=2, padding=1, dtype=dt,
                             name="encoder2"), f_e1)   # [B, H/2, W/2, 2c]
    f_e3 = stage(layers.conv(c3, 4, stride=2, padding=1, dtype=dt,
                             name="encoder3"), f_e2)   # [B, H/4, W/4, 4c]
    # Dilated residual blocks.
    x = f_e3
    block = layers.remat(ResnetBlock, self.remat)
    for i in range(self.num_res_blocks):
      x = block(self.dilation, dtype=dt, name=f"middle_{i}")(x)
    # Long+short-term attention against the encoder feature at 1/4 size.
    attn = layers.remat(
        lambda m, x, pre, mask: m(x, pre, mask, update_stats=update_stats),
        self.remat)
    x = attn(attention.LongShortAttention(
        long_term=True, impl=self.attention_impl, dtype=dt, name="auto_attn"),
             x, f_e3, mask_quarter)
    # Decoder with masked 1x1 fusion of the encoder features.
    x = stage(layers.conv_transpose(c2, impl=self.conv_transpose, dtype=dt,
                                    name="decoder1"), x)
    x = jnp.concatenate([f_e2 * (1 - mask_half).astype(dt), x], axis=-1)
    x = stage(layers.conv(2 * c2, 1, dtype=dt, name="fushion1"), x)
    x = stage(layers.conv_transpose(c1, impl=self.conv_transpose, dtype=dt,
                                    name="decoder2"), x)
    x = jnp.concatenate([f_e1 * (1 - mask).astype(dt), x], axis=-1)
    x = stage(layers.conv(2 * c1, 1, dtype=dt, name="fushion2"), x)
    x = layers.reflect_pad(x, 3)
    x = layers.conv(3, 7, dtype=dt, name="decoder3")(x)
    return (jnp.tanh(x.astype(jnp.float32)) + 1) / 2


class Discriminator(nn.Module):
  """LaFIn's 70x70 PatchGAN with spectral norm and self-attention.

  Input: concat(image, landmark map). Output: sigmoid patch map, 30x30 for a
  256x256 input. All convs are spectrally normalised and bias-free.
  """
  width: int = 64
  attention_impl: str = "auto"
  remat: str = "none"  # a layers.REMAT_POLICIES name, per layer
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, landmark_map: jax.Array, *,
               update_stats: bool = False) -> jax.Array:
    """Returns [B, h, w, 1] float32 probabilities that each patch is real."""
    dt, c = self.dtype, self.width
    x = jnp.concatenate([image, landmark_map], axis=-1).astype(dt)

    def sn_conv(features, stride, name):
      return layers.SpectralConv(features, 4, stride=stride, padding=1,
                                 dtype=dt, name=name)

    # A spectral-norm conv followed by leaky ReLU.
    stage = layers.remat(
        lambda conv, t: nn.leaky_relu(conv(t, update_stats=update_stats), 0.2),
        self.remat)
    attn = layers.remat(lambda m, t: m(t, update_stats=update_stats),
                        self.remat)
    x = stage(sn_conv(c, 2, "conv1"), x)
    x = stage(sn_conv(2 * c, 2, "conv2"), x)
    x = attn(attention.LongShortAttention(
        long_term=False, impl=self.attention_impl, dtype=dt, name="auto_attn"),
             x)
    x = stage(sn_conv(4 * c, 2, "conv3"), x)
    x = stage(sn_conv(8 * c, 1, "conv4"), x)
    x = sn_conv(1, 1, "conv5")(x, update_stats=update_stats)
    return jax.nn.sigmoid(x.astype(jnp.float32))
