"""The whole reconstruction of aligned face crops as one jitted function.

  masked face [B, S, S, 3]
    -> p(male)              gender classifier, on the masked face
    -> 98 landmarks         landmark network, on the masked face
    -> face-mask map M      segmentation network, grown by `dilation` px
                            (the known fix for seams at the mask's edge)
    -> landmark map         one lit pixel per landmark (LaFIn's input)
    -> generator output     the generator of the face's gender (`route`)
    -> composite            output where M is set, the input elsewhere

Every module runs at the size it was trained at (the face is resized inside
the function) and answers at the pipeline's size S, the inpainting
generator's. A user's mask or landmarks replace the predicted ones. All
modules' variables are one pytree:

  {"gender": ..., "landmarks": ..., "segment": ...,
   "inpaint": (female, male)}           or, gender-agnostic,
   "inpaint": (all,)

`Pipeline` holds the networks (built from the configs the modules were
trained with) and the pure function; `Reconstructor` is the Python API: it
loads a weight bundle (`jaxface.weights.bundle`), pads each batch to a
bucket size so that a few compilations serve every batch, and returns the
intermediates on request.
"""

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxface import route as route_lib
from jaxface import tasks
from jaxface.models import layers
from jaxface.models import segment as seg
from jaxface.weights import bundle as bundle_lib

GENDERS = route_lib.GENDERS
DTYPES = ("float32", "bfloat16")
BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def composite(output: jax.Array, image: jax.Array,
              mask: jax.Array) -> jax.Array:
  """The generator's output inside M, the input itself elsewhere (a select:
  pixels outside the mask are bit-identical to the input)."""
  return jnp.where(mask > 0.5, output, image)


def masked_input(image: jax.Array, mask: jax.Array) -> jax.Array:
  """The generator's input: the face with the hole painted white."""
  return image * (1 - mask) + mask


class Pipeline:
  """The four modules' networks and the fused function of their variables.

  Args:
    configs: {"gender", "landmarks", "segment", "inpaint"}: the config each
      module was trained with (a bundle's modules carry them).
    dtype: compute dtype of every network ("float32" or "bfloat16");
      variables stay float32.
  """

  def __init__(self, configs: Mapping[str, ml_collections.ConfigDict],
               dtype: str = "float32"):
    if dtype not in DTYPES:
      raise ValueError(f"dtype {dtype!r}: one of {DTYPES}")
    built = {}
    for module in ("gender", "landmarks", "segment", "inpaint"):
      if module not in configs:
        raise ValueError(f"Pipeline needs the config of {module!r}")
      config = ml_collections.ConfigDict(configs[module].to_dict())
      config.compute_dtype = dtype
      built[module] = tasks.make(config)
    self.gender = built["gender"]
    self.landmarks = built["landmarks"]
    self.segment = built["segment"]
    self.inpaint = built["inpaint"]
    self.generator = self.inpaint.generator
    self.size = int(self.inpaint.image_size)
    self.segment_size = int(configs["segment"].data.image_size)
    self.dtype = dtype

  # ------------------------------------------------------------- stages
  def predict_gender(self, variables, image: jax.Array) -> jax.Array:
    """[B] p(male) of masked faces."""
    state = self.gender.inference_state(variables)
    return self.gender.predict(state, image).astype(jnp.float32)

  def predict_landmarks(self, variables, image: jax.Array) -> jax.Array:
    """[B, 98, 2] pixel points at the image's size."""
    state = self.landmarks.inference_state(variables)
    return self.landmarks.predict(state, image).astype(jnp.float32)

  def predict_mask(self, variables, image: jax.Array,
                   dilation: int = 0) -> jax.Array:
    """[B, S, S, 1] binary face-mask map, grown by `dilation` pixels."""
    s = image.shape[1]
    state = self.segment.inference_state(variables)
    small = layers.resize_square(image, self.segment_size)
    binary = self.segment.predict(state, small)["map"].astype(jnp.float32)
    if self.segment_size != s:
      binary = (jax.image.resize(binary, (binary.shape[0], s, s, 1),
                                 "linear") >= 0.5).astype(jnp.float32)
    return seg.dilate(binary, dilation)

  # ------------------------------------------------------------ the whole
  def __call__(self, variables: Mapping[str, Any], image: jax.Array,
               mask: jax.Array | None = None,
               landmarks: jax.Array | None = None, *,
               gender: str = "auto", dilation: int = 2,
               strategy: str = "chunks") -> dict[str, jax.Array]:
    """Reconstructs a batch of aligned masked faces.

    Args:
      variables: {"gender", "landmarks", "segment", "inpaint"}; "inpaint"
        is (female, male), or (all,) for one gender-agnostic generator.
      image: [B, S, S, 3] float in [0, 1], S = `self.size`.
      mask: optional [B, S, S, 1] map (1 = face mask) replacing the
        predicted one (used as given: not dilated).
      landmarks: optional [B, 98, 2] pixel points replacing the predicted.
      gender: "auto" (the classifier routes each face), "female", "male".
      dilation: pixels the predicted map is grown by.
      strategy: of the gender routing (`jaxface.route`).

    Returns:
      {"output": the composite [B, S, S, 3], "generated": the generator's
      raw output, "p_male" [B], "gender" [B] int32 (the generator used),
      "landmarks" [B, 98, 2], "mask" [B, S, S, 1], "masked_input"}.
    """
    if image.shape[1:] != (self.size, self.size, 3):
      raise ValueError(f"faces must be [B, {self.size}, {self.size}, 3], "
                       f"got {image.shape}")
    image = image.astype(jnp.float32)
    p_male = self.predict_gender(variables["gender"], image)
    if landmarks is None:
      landmarks = self.predict_landmarks(variables["landmarks"], image)
    if mask is None:
      mask = self.predict_mask(variables["segment"], image, dilation)
    landmarks = landmarks.astype(jnp.float32)
    mask = (mask > 0.5).astype(jnp.float32)
    holed = masked_input(image, mask)
    lmap = layers.landmark_map(landmarks, self.size, self.size)
    generators = tuple(variables["inpaint"])
    if len(generators) == 1:  # gender-agnostic
      generated = self.generator.apply(generators[0], holed, lmap, mask)
      used = route_lib.choose(p_male, gender)
    elif len(generators) == 2:
      generated = route_lib.inpaint(self.generator, generators, p_male,
                                    holed, lmap, mask, gender=gender,
                                    strategy=strategy)
      used = route_lib.choose(p_male, gender)
    else:
      raise ValueError("variables['inpaint'] must be (female, male) or "
                       f"(all,), got {len(generators)} generators")
    generated = generated.astype(jnp.float32)
    return {"output": composite(generated, image, mask),
            "generated": generated, "p_male": p_male, "gender": used,
            "landmarks": landmarks, "mask": mask, "masked_input": holed}


def variables_of(bundle: bundle_lib.Bundle, agnostic: bool = False
                 ) -> dict[str, Any]:
  """The pipeline's variable pytree from a loaded bundle."""
  if agnostic:
    generators = (bundle["inpaint_all"].variables,)
  else:
    generators = (bundle["inpaint_female"].variables,
                  bundle["inpaint_male"].variables)
  return {"gender": bundle["gender"].variables,
          "landmarks": bundle["landmarks"].variables,
          "segment": bundle["segment"].variables,
          "inpaint": generators}


def bucket(n: int, buckets: Sequence[int] = BUCKETS) -> int:
  """The smallest bucket holding n faces (a multiple of the largest one
  beyond it)."""
  for b in buckets:
    if n <= b:
      return b
  top = buckets[-1]
  return -(-n // top) * top


@dataclasses.dataclass
class Result:
  """A batch's reconstructions and, on request, how they came about."""
  output: np.ndarray            # [B, S, S, 3] float32 in [0, 1]
  p_male: np.ndarray | None = None
  gender: np.ndarray | None = None
  landmarks: np.ndarray | None = None
  mask: np.ndarray | None = None
  generated: np.ndarray | None = None


class Reconstructor:
  """Reconstructs aligned masked faces with a weight bundle.

    rec = jaxface.Reconstructor("lite")        # the shipped weights
    out = rec(faces)                            # [B, S, S, 3] in [0, 1]
    res = rec(faces, intermediates=True)        # + p_male, landmarks, mask

  Faces are uint8 or float in [0, 1], [B, S, S, 3] (or one [S, S, 3]) at
  `rec.size`, aligned like the training faces (`jaxface.faces` aligns
  faces in photos). Each batch is padded to a bucket size (`BUCKETS`), so
  one compilation per bucket serves every batch.

  Args:
    weights: a shipped bundle's name or a bundle folder.
    dtype: "float32" or "bfloat16" compute.
    dilation: pixels the predicted face-mask map is grown by.
    agnostic: use the bundle's gender-agnostic generator (`inpaint_all`)
      instead of the two per-gender ones.
    strategy: gender routing inside the batch (`jaxface.route`).
  """

  def __init__(self, weights: str = "lite", *, dtype: str = "float32",
               dilation: int = 2, agnostic: bool = False,
               strategy: str = "chunks",
               buckets: Sequence[int] = BUCKETS):
    self.bundle = bundle_lib.load(weights)
    configs = {m: self.bundle[m].config
               for m in ("gender", "landmarks", "segment")}
    configs["inpaint"] = self.bundle[
        "inpaint_all" if agnostic else "inpaint_female"].config
    self.pipeline = Pipeline(configs, dtype)
    self.variables = jax.device_put(variables_of(self.bundle, agnostic))
    self.size = self.pipeline.size
    self.dilation = int(dilation)
    self.strategy = strategy
    self.buckets = tuple(buckets)
    self._fn = jax.jit(self.pipeline.__call__,
                       static_argnames=("gender", "dilation", "strategy"))

  def __call__(self, faces: np.ndarray, mask: np.ndarray | None = None,
               landmarks: np.ndarray | None = None, *,
               gender: str = "auto", intermediates: bool = False
               ) -> np.ndarray | Result:
    faces = np.asarray(faces)
    single = faces.ndim == 3
    if single:
      faces = faces[None]
      mask = None if mask is None else np.asarray(mask)[None]
      landmarks = None if landmarks is None else np.asarray(landmarks)[None]
    if faces.shape[1:] != (self.size, self.size, 3):
      raise ValueError(f"faces must be [B, {self.size}, {self.size}, 3] "
                       f"(aligned crops; jaxface.faces aligns photos), got "
                       f"{faces.shape}")
    if gender not in GENDERS:
      raise ValueError(f"gender must be one of {GENDERS}, got {gender!r}")
    if faces.dtype == np.uint8:
      images = faces.astype(np.float32) / 255.0
    elif np.issubdtype(faces.dtype, np.floating):
      images = faces.astype(np.float32)
    else:
      raise ValueError(f"faces must be uint8 or float in [0, 1], got "
                       f"{faces.dtype}")
    n = len(images)
    size = bucket(n, self.buckets)

    def pad(x):
      if x is None:
        return None
      x = np.asarray(x, np.float32)
      return np.concatenate([x, np.zeros((size - n,) + x.shape[1:],
                                         x.dtype)])

    if mask is not None:
      mask = np.asarray(mask)
      if mask.ndim == 3:
        mask = mask[..., None]  # [B, S, S] -> [B, S, S, 1]
      if mask.shape != (n, self.size, self.size, 1):
        raise ValueError(f"mask must be [B, {self.size}, {self.size}(, 1)] "
                         f"like the faces, got {mask.shape}")
      if mask.dtype == np.uint8:  # 0/1 or 0/255 maps
        mask = mask > (127 if mask.max() > 1 else 0)
    if landmarks is not None and np.shape(landmarks)[0] != n:
      raise ValueError(f"landmarks must be [B, 98, 2], got "
                       f"{np.shape(landmarks)}")
    out = self._fn(self.variables, pad(images), pad(mask), pad(landmarks),
                   gender=gender, dilation=self.dilation,
                   strategy=self.strategy)
    out = jax.tree.map(lambda a: np.asarray(a)[:n], jax.device_get(out))
    take = (lambda a: a[0]) if single else (lambda a: a)
    if not intermediates:
      return take(out["output"])
    return Result(**{k: take(out[k]) for k in (
        "output", "p_male", "gender", "landmarks", "mask", "generated")})
