"""The task contract: everything the shared loop needs from a module.

A task (one per learned module: reconstruction, landmarks, ...) is a `Task`
subclass that builds its networks from the config and provides pure
functions. The loop (`jaxface.train.loop`), the benchmarks and the
ahead-of-time compile use only what is declared here, and never name a
task; the registry (`jaxface.tasks`) maps `config.task` to the class.

  examples             the batch keys it needs and how the data layer makes
                       one example (`jaxface.data.examples.ExampleSpec`); a
                       class attribute, or set in `__init__` when it
                       depends on the config
  console_metrics      {label: train metric} shown on the progress line
  init_state(rng)      -> state: a pytree with an int32 scalar `step`
                       (the number of finished steps)
  constants()          -> frozen inputs of the steps (a loss network's
                       weights); replicated, never saved
  train_step(state, batch, consts, rng) -> (state, metrics)
                       one optimisation step; `rng` is derived by the loop
                       from the seed and `state.step`, so dropout and
                       on-device augmentation are reproducible and exact
                       on resume; `metrics` are scalars and include
                       `finite` (a bool: losses, gradients and new
                       parameters are all finite; see `all_finite`);
                       traced under the mesh: with FSDP, pass parameters
                       and gradients through `jaxface.sharding.gathered`
  eval_step(state, batch, consts) -> {name: [B] values}
                       per-example metrics of a held-out batch (include
                       `gender` for the per-gender summary)
  summarize_eval({name: [N]}) -> {name: float}
                       the scalars an evaluation reports (default: means
                       overall and per gender)
  sample(state, batch, consts) -> {column: [B, ...]}
                       device-side pictures for the sample grid
  sample_grid(columns, batch) -> uint8 [H, W, 3]
                       host-side: the grid written to TensorBoard and
                       `samples/`; `batch` is this process's host batch
  uncounted_flops(batch_size) -> float
                       FLOPs of a training step that XLA's cost analysis
                       cannot see (custom calls); 0 by default
  pretrained(state) -> state
                       optional, host side: a fresh state with published
                       or imported weights put in (e.g. COCO Mask R-CNN);
                       the loop calls it once when a run starts from
                       scratch, never on resume; default: unchanged
  baseline(spec) -> fn(host batch) -> {name: [B] values}
                       optional: a reference model (e.g. a teacher) that
                       `python -m jaxface.evaluate --baseline=SPEC` scores
                       like `eval_step` on the same batches; its `found`
                       entry ([B] bool), when present, marks the examples
                       it could process

Every function of a step is pure: the loop jits `init_state`, `train_step`,
`eval_step` and `sample` once, with explicit shardings, a donated state and
the per-step rng; nothing in a task touches devices, files of the run or
the clock.
"""

import abc
from typing import Any, Callable, ClassVar, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxface import config_utils
from jaxface import metrics as metrics_lib
from jaxface.data import examples as examples_lib

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """The state of a task with one network and one optimiser.

  Tasks with more (a GAN's two networks) define their own dataclass; any
  pytree with an int32 scalar `step` satisfies the contract.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  # Non-parameter collections of the network (e.g. {"batch_stats": ...}),
  # returned by the step.
  model_state: Any


def all_finite(*trees: Any) -> jax.Array:
  """True when every leaf of every pytree is finite (one fused reduction).

  The usual `metrics["finite"]`: pass the losses, the gradient norms and
  the new parameters (a finite gradient can still overflow a parameter, and
  a state that is saved must be usable).
  """
  def magnitude(tree):
    if isinstance(tree, jax.Array) and tree.ndim == 0:
      return jnp.abs(tree).astype(jnp.float32)
    return optax.tree.norm(tree)  # inf or NaN if any leaf is

  return jnp.all(jnp.isfinite(jnp.stack([magnitude(t) for t in trees])))


class Task(abc.ABC):
  """Base class of every task; see the module docstring for the contract."""

  # The batch keys this task needs and how an example is made.
  examples: ClassVar[examples_lib.ExampleSpec]
  # {console label: train metric key}, e.g. {"loss": "loss"}.
  console_metrics: ClassVar[Mapping[str, str]] = {}

  def __init__(self, config: ml_collections.ConfigDict):
    """Checks the shared config sections; subclasses check their own after.

    Raises:
      ValueError: naming the first bad config key.
    """
    config_utils.validate_common(config)
    self.config = config
    self.dtype = config_utils.compute_dtype(config)

  @abc.abstractmethod
  def init_state(self, rng: jax.Array) -> Any:
    """The initial state (a pytree with an int32 scalar `step`)."""

  def constants(self) -> Any:
    """Frozen inputs of the steps (loaded weights); none by default."""
    return {}

  @abc.abstractmethod
  def train_step(self, state: Any, batch: Batch, consts: Any,
                 rng: jax.Array) -> tuple[Any, Metrics]:
    """One optimisation step -> (new state, scalar metrics incl. `finite`)."""

  @abc.abstractmethod
  def eval_step(self, state: Any, batch: Batch,
                consts: Any) -> dict[str, jax.Array]:
    """Per-example metrics `{name: [B]}` of a held-out batch."""

  def summarize_eval(self, per_example: Mapping[str, np.ndarray]
                     ) -> dict[str, float]:
    """Evaluation scalars: means overall and per gender."""
    return metrics_lib.summarize_per_gender(per_example)

  @abc.abstractmethod
  def sample(self, state: Any, batch: Batch,
             consts: Any) -> dict[str, jax.Array]:
    """Device-side columns of the sample grid, `{name: [B, ...]}`."""

  @abc.abstractmethod
  def sample_grid(self, columns: Mapping[str, np.ndarray],
                  batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """The uint8 [H, W, 3] sample grid from host columns and host batch."""

  def uncounted_flops(self, batch_size: int) -> float:
    """FLOPs of one training step hidden from XLA's cost analysis."""
    del batch_size
    return 0.0

  def pretrained(self, state: Any) -> Any:
    """A fresh state with pretrained weights put in; unchanged by default."""
    return state

  # Inference. The trained network's variables without the optimiser, as
  # exported weight files and the fused pipeline (`jaxface.pipeline`) hold
  # them, and back into a state that `predict` takes.
  def inference_variables(self, state: Any) -> dict[str, Any]:
    """{"params": ..., <other collections>} of the trained network."""
    return {"params": state.params, **state.model_state}

  def inference_state(self, variables: Mapping[str, Any]) -> Any:
    """A state for `predict` from `inference_variables`' output."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"],
        opt_state=None,
        model_state={k: v for k, v in variables.items() if k != "params"})

  def baseline(self, spec: str) -> Callable[[Batch], dict[str, np.ndarray]]:
    """A host-side reference model scored like `eval_step`; none here."""
    raise NotImplementedError(
        f"task {self.config.task!r} has no baseline (asked for {spec!r})")
