"""A second task for the tests: four landmarks regressed from masked faces.

`ToyPoints` regresses four landmarks (eye corners, nose tip, chin) from
procedural faces wearing masks, with a BatchNorm (non-parameter state the
step returns) and on-device noise drawn from the loop's per-step rng. A test
fixture, not a product feature: it exists to show that the loop, the
pipeline and the benchmarks need nothing but the task contract. Importing
this module registers it as "toy_points".
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxface import tasks
from jaxface import visualize
from jaxface.data import examples
from jaxface.data import schema
from jaxface.train import task as task_lib

POINTS = np.array([60, 72, 54, 16])  # WFLW: eye corners, nose tip, chin


def make_example(face, rng, augment):
  del rng, augment
  return {schema.IMAGE: face.masked_image, schema.LANDMARKS: face.landmarks,
          schema.GENDER: face.gender}


class Regressor(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(3):
      x = nn.Conv(self.width * 2**i, (3, 3), strides=2)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(2 * len(POINTS))(x).reshape(-1, len(POINTS), 2)


class ToyPoints(task_lib.Task):
  """Four points in [0, 1] image coordinates from a masked face."""

  examples = examples.ExampleSpec(
      keys=(schema.IMAGE, schema.LANDMARKS, schema.GENDER), make=make_example)
  console_metrics = {"loss": "loss", "noise": "noise"}

  def __init__(self, config):
    super().__init__(config)
    self.model = Regressor(config.model.width)
    self.tx = optax.adam(config.optim.lr, b1=config.optim.b1,
                         b2=config.optim.b2)
    self.size = config.data.image_size

  def _inputs(self, batch):
    batch = schema.to_float(batch)
    target = batch[schema.LANDMARKS][:, POINTS] / self.size
    return batch[schema.IMAGE], target

  def init_state(self, rng):
    variables = self.model.init(
        rng, jnp.zeros((1, self.size, self.size, 3)), train=False)
    params = variables.pop("params")
    return task_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=self.tx.init(params),
                               model_state=variables)

  def train_step(self, state, batch, consts, rng):
    del consts
    image, target = self._inputs(batch)
    # On-device augmentation from the per-step rng: exact on resume.
    noise = 0.02 * jax.random.normal(rng, image.shape)

    def loss_fn(params):
      out, updates = self.model.apply(
          {"params": params, **state.model_state}, image + noise, train=True,
          mutable=["batch_stats"])
      return jnp.mean((out - target) ** 2), updates

    (loss, model_state), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, model_state=model_state)
    return new_state, {
        "loss": loss, "grad_norm": grad_norm, "noise": noise[0, 0, 0, 0],
        "finite": task_lib.all_finite(loss, grad_norm, params)}

  def _predict(self, state, image):
    return self.model.apply({"params": state.params, **state.model_state},
                            image, train=False)

  def eval_step(self, state, batch, consts):
    del consts
    image, target = self._inputs(batch)
    error = jnp.linalg.norm(self._predict(state, image) - target, axis=-1)
    return {"error": jnp.mean(error, axis=-1) * self.size,
            "gender": batch[schema.GENDER]}

  def sample(self, state, batch, consts):
    del consts
    image, target = self._inputs(batch)
    return {"image": image, "predicted": self._predict(state, image) *
            self.size, "target": target * self.size}

  def sample_grid(self, columns, batch):
    del batch
    drawn = visualize.draw_points(columns["image"], columns["target"],
                                  color=(0.0, 1.0, 0.0))
    drawn = visualize.draw_points(drawn, columns["predicted"],
                                  color=(1.0, 0.0, 0.0))
    return visualize.make_grid([columns["image"], drawn])


tasks.register("toy_points", ToyPoints)


def toy_config(**train):
  c = ml_collections.ConfigDict()
  c.task = "toy_points"
  c.seed = 3
  c.compute_dtype = "float32"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.data = ml_collections.ConfigDict(dict(
      source="procedural:num_records=200", image_size=32, gender="all",
      flip=True, mask_styles="", mask_templates="", num_threads=1,
      prefetch=1, worker_count=0))
  c.model = ml_collections.ConfigDict(dict(width=4))
  c.optim = ml_collections.ConfigDict(dict(lr=3e-3, b1=0.9, b2=0.999))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=8, num_steps=4, log_every=2, image_every=0, eval_every=0,
      checkpoint_every=100, max_to_keep=2, keep_every=0))
  c.train.update(train)
  c.eval = ml_collections.ConfigDict(dict(batch_size=8, num_batches=1))
  return c
