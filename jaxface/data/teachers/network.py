"""A landmark teacher from jaxface's own landmark network.

  --landmarks=jaxface:fan_lite.npz    a trained run, exported by
      python -m jaxface.weights.landmarks --workdir=runs/landmarks_lite \
          --output=fan_lite.npz
  --landmarks=jaxface:WFLW_4HG.pth    the reference AdaptiveWing weights
                                      (or their .npz conversion)

Weights files, not workdirs: the data layer reads models and weights, never
training state (a workdir named here gets the export command in its error).

The network expects a face crop, as it was trained on: the teacher runs it on
the largest centred square of the photo, resized to the network's input
(stored with exported weights; 256 for the reference's), which is the
`--align=center` case of `prepare` (aligned crops such as UTKFace, CelebA or
FFHQ), and maps the points back to the photo. Its score is the mean heatmap
peak (about 1 for a confident face, near 0 for none); below `min_score` the
teacher reports no face.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.data import transforms
from jaxface.data import wflw
from jaxface.data.teachers import base
from jaxface.models import landmarks as fan
from jaxface.weights import landmarks as fan_weights

# Mean heatmap peak below which no face is reported.
MIN_SCORE = 0.2
_WEIGHT_SUFFIXES = (".npz", ".pth", ".pt", ".pth.tar")


class NetworkTeacher:
  """98 WFLW points from a jaxface landmark network (see module docstring)."""

  def __init__(self, path: str, min_score: float = MIN_SCORE):
    path = os.fspath(path)
    if os.path.isdir(path):
      raise ValueError(
          f"{path} is a directory; a trained run is used through its "
          "exported weights: python -m jaxface.weights.landmarks "
          f"--workdir={path} --output=fan.npz, then jaxface:fan.npz")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist (expected landmark "
                              f"weights: {', '.join(_WEIGHT_SUFFIXES)})")
    if not path.lower().endswith(_WEIGHT_SUFFIXES):
      raise ValueError(f"{path}: expected a weights file "
                       f"({', '.join(_WEIGHT_SUFFIXES)})")
    variables = fan_weights.load(path)
    arch = fan_weights.architecture(variables["params"])
    model = fan.FAN(**arch)
    size = fan_weights.input_size(path)
    self.name = f"jaxface-{os.path.basename(path)}"
    self.size, self.min_score = size, min_score

    def predict(image):  # [1, S, S, 3] uint8 -> points [K, 2], score
      hm = model.apply(variables, image.astype(jnp.float32) / 255.0)[-1]
      hm = hm[..., :-1]
      points = fan.decode_argmax(hm, size)[0]
      score = jnp.mean(jnp.clip(jnp.max(hm[0], axis=(0, 1)), 0.0, 1.0))
      return points, score

    self._predict = jax.jit(predict)

  def __call__(self, image: np.ndarray) -> base.LandmarkResult | None:
    image = base.check_image(image)
    h, w = image.shape[:2]
    box = transforms.center_square_box(h, w)
    crop = transforms.crop_and_resize({"image": image}, box, self.size)
    points, score = jax.device_get(self._predict(crop["image"][None]))
    if not score >= self.min_score:
      return None
    # crop_and_resize maps x -> (x - x0) * size / side - 0.5 on the box
    # snapped to whole pixels; invert that.
    x0, y0 = np.floor(box[0] + 0.5) - 0.5, np.floor(box[1] + 0.5) - 0.5
    side = np.ceil(box[2] + 0.5) - 0.5 - x0
    points = (points + 0.5) * (side / self.size) + np.array([x0, y0])
    return base.LandmarkResult(
        landmarks=points.astype(np.float32),
        approximate=np.zeros(wflw.NUM_LANDMARKS, bool), score=float(score))
