"""InceptionV3 and the gender classifier: sizes, shapes, pooling semantics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models import gender
from jaxface.models import inception


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(model, size, **kwargs):
  return jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, size, size, 3)), **kwargs))


def test_backbone_sizes_match_keras_and_torchvision():
  # Keras InceptionV3(include_top=False): 21,802,784 weights (BN without
  # scale: beta and the two moving statistics per channel).
  _, keras = _shapes(inception.InceptionV3(bn_scale=False), 75)
  assert _count(keras) == 21_802_784
  # torchvision inception_v3 without AuxLogits and fc: 21,785,568
  # parameters (BN with weight and bias), plus the running statistics.
  _, tv = _shapes(inception.InceptionV3(bn_scale=True), 75)
  assert _count(tv["params"]) == 21_785_568
  assert len(inception.UNITS) == 94
  assert len(jax.tree.leaves(tv["params"])) == 94 * 3


def test_classifier_sizes_are_the_authors():
  # The authors' model: 26,776,801 weights in all, 4,964,545 trainable
  # (the head's Dense layers and BN scales and offsets).
  _, v = _shapes(gender.Classifier(bn_scale=False), 75)
  assert _count(v) == 26_776_801
  assert _count(v["params"]["head"]) == 4_964_545


@pytest.mark.parametrize("size,side", [(256, 6), (299, 8), (75, 1)])
def test_feature_map_and_logit_shapes(size, side):
  out, _ = _shapes(inception.InceptionV3(), size, pool=False)
  assert out.shape == (2, side, side, 2048)
  out, _ = _shapes(gender.Classifier(), size)
  assert out.shape == (2,) and out.dtype == jnp.float32


def test_width_multiplier_and_small_inputs():
  out, _ = _shapes(inception.InceptionV3(width=0.5), 128)
  assert out.shape == (2, inception.feature_width(0.5)) == (2, 1024)
  with pytest.raises(ValueError, match="at least 75 px"):
    _shapes(inception.InceptionV3(), 64)


@pytest.mark.parametrize("include_pad", [True, False])
def test_branch_pool_semantics(include_pad):
  """torchvision's pool divides by 9 everywhere; Keras's 'same' pool by the
  number of real pixels under the window (4 at a corner, 6 on an edge)."""
  x = jnp.ones((1, 5, 5, 1))
  block = inception.InceptionBlock(avg_pool_include_pad=include_pad)
  pooled = np.asarray(block._avg_pool(x))[0, ..., 0]  # pylint: disable=protected-access
  if include_pad:
    assert pooled[0, 0] == pytest.approx(4 / 9)
    assert pooled[0, 2] == pytest.approx(6 / 9)
  else:
    np.testing.assert_allclose(pooled, 1.0)


def test_input_scale():
  model = gender.Classifier(width=0.125, head_widths=(8,), input_scale="bad")
  with pytest.raises(ValueError, match="input_scale"):
    model.init(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  assert isinstance(model, nn.Module)
