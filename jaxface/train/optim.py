"""Optimisers from the config's `optim` section, shared by the tasks.

`optim.name`: "adam" (b1, b2), "rmsprop" (decay) or "sgd" (momentum);
`optim.schedule`: "constant" or "cosine", after `warmup_steps` of linear
warm-up, ending at `lr * final_lr_fraction`; `optim.grad_clip`: global-norm
clipping (0: none). The inpainting GAN keeps its own two Adams (its
config's `optim` section differs).
"""

import ml_collections
import optax

from jaxface import config_utils

OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine")


def validate(o: ml_collections.ConfigDict,
             names: tuple[str, ...] = OPTIMIZERS) -> None:
  """Checks `optim`, naming the key; `names`: the optimisers a task allows."""
  check = config_utils.check
  check(o.name in names, "optim.name", o.name, " | ".join(names))
  check(o.schedule in SCHEDULES, "optim.schedule", o.schedule,
        " | ".join(SCHEDULES))
  check(o.lr > 0, "optim.lr", o.lr, "> 0")
  check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, ">= 0")
  check(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip,
        ">= 0 (0: no clipping)")


def make(o: ml_collections.ConfigDict,
         num_steps: int) -> optax.GradientTransformation:
  """The optimiser of config section `o` for a run of `num_steps`."""
  if o.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, max(o.warmup_steps, 1), max(num_steps, o.warmup_steps + 1),
        end_value=o.lr * o.final_lr_fraction)
  elif o.warmup_steps:
    lr = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
  else:
    lr = o.lr
  if o.name == "adam":
    tx = optax.adam(lr, b1=o.b1, b2=o.b2)
  elif o.name == "rmsprop":
    tx = optax.rmsprop(lr, decay=o.decay)
  else:
    tx = optax.sgd(lr, momentum=o.get("momentum", 0.9))
  if o.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx
