"""The gender classifier: InceptionV3 features and the authors' dense head.

The paper's authors (REFERENCE.md section 1) put a fully connected head on a
frozen ImageNet InceptionV3 (Keras, no top, average-pooled):

  BN -> Dense 2048 ReLU -> BN -> Dense 320 ReLU -> BN -> Dense 320 ReLU
     -> BN -> Dropout -> Dense 1 sigmoid

with Keras's BatchNorm (momentum 0.99, eps 1e-3, with scale), 4,974,017
head parameters of which 4,964,545 train. `Classifier` returns the logit
of "male" (`schema.MALE`); the probability is its sigmoid, the loss binary
cross-entropy on the logit.

Parameters: {"backbone": InceptionV3, "head": Head}; BatchNorm statistics
in `batch_stats` under the same two names. `train_backbone=False` runs the
backbone in inference mode (its BatchNorm on the running statistics), as a
frozen Keras model does, so only the head's statistics move.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models import inception

Dtype = Any

# Keras BatchNormalization defaults, the head's (flax momentum = Keras's).
HEAD_BN_MOMENTUM = 0.99
HEAD_BN_EPS = 1e-3
# The authors' head (keras-tuner's best: both hidden widths 320).
HEAD_WIDTHS = (2048, 320, 320)
INPUT_SCALES = ("symmetric", "unit")
# Keras Dense's default initialiser (the authors' head).
_GLOROT = nn.initializers.glorot_uniform()


class Head(nn.Module):
  """BN, then per width Dense-ReLU-BN, dropout, Dense 1: [B, F] -> [B]."""
  widths: Sequence[int] = HEAD_WIDTHS
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  def _bn(self, x, train, name):
    return nn.BatchNorm(use_running_average=not train,
                        momentum=HEAD_BN_MOMENTUM, epsilon=HEAD_BN_EPS,
                        dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, features: jax.Array, train: bool) -> jax.Array:
    x = self._bn(features.astype(self.dtype), train, "bn0")
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, kernel_init=_GLOROT,
                           name=f"dense{i}")(x))
      x = self._bn(x, train, f"bn{i + 1}")
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    logit = nn.Dense(1, dtype=self.dtype, kernel_init=_GLOROT,
                     name="logit")(x)
    return logit[:, 0].astype(jnp.float32)


class Classifier(nn.Module):
  """Images [B, S, S, 3] in [0, 1] -> [B] logits of "male".

  `input_scale`: "symmetric" feeds the backbone 2x - 1 (what ImageNet
  InceptionV3 weights of Keras and torchvision expect); "unit" feeds [0, 1]
  as the authors did (`rescale=1/255` before an ImageNet backbone).
  """
  width: float = 1.0
  head_widths: Sequence[int] = HEAD_WIDTHS
  dropout: float = 0.0
  input_scale: str = "symmetric"
  bn_scale: bool = True
  bn_momentum: float = 0.9   # the backbone's (flax convention)
  avg_pool_include_pad: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    self.backbone = inception.InceptionV3(
        width=self.width, bn_scale=self.bn_scale,
        bn_momentum=self.bn_momentum,
        avg_pool_include_pad=self.avg_pool_include_pad, dtype=self.dtype)
    self.head = Head(self.head_widths, self.dropout, self.dtype)

  def features(self, image: jax.Array, train: bool = False) -> jax.Array:
    """[B, F] pooled backbone features (float32)."""
    if self.input_scale not in INPUT_SCALES:
      raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got "
                       f"{self.input_scale!r}")
    x = image * 2.0 - 1.0 if self.input_scale == "symmetric" else image
    return self.backbone(x, train=train)

  def __call__(self, image: jax.Array, train: bool = False,
               train_backbone: bool | None = None) -> jax.Array:
    """Logits [B]; `train_backbone` defaults to `train`."""
    if train_backbone is None:
      train_backbone = train
    return self.head(self.features(image, train_backbone), train)
