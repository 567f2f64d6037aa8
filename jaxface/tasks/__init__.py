"""The task registry: `config.task` -> the module's `Task` class.

One line per module, imported on first use (a task's networks and losses
are only loaded when that task runs). Each task file holds the task's
`Task` subclass and its `ExampleSpec` (`docs/DEVELOPING.md`, "Adding a
module"); the shared loop and the data layer never name a task.
"""

import importlib
from typing import Any

import ml_collections

from jaxface.data import examples as examples_lib
from jaxface.train import task as task_lib

# config.task -> "module:Class".
_REGISTRY: dict[str, Any] = {
    "gender": "jaxface.tasks.gender:GenderTask",
    "inpaint": "jaxface.tasks.inpaint:InpaintTask",
    "landmarks": "jaxface.tasks.landmarks:LandmarksTask",
    "segment": "jaxface.tasks.segment:SegmentTask",
}


def register(name: str, target: "str | type[task_lib.Task]") -> None:
  """Adds a task: a `Task` subclass or its "module:Class" path.

  For tasks that live outside this package (a test fixture, a user's own
  module); jaxface's own tasks are the lines above. Registering the same
  target again is a no-op; another target under a taken name is an error.
  """
  if name in _REGISTRY and _REGISTRY[name] is not target and (
      _REGISTRY[name] != target):
    raise ValueError(f"task {name!r} is already registered as "
                     f"{_REGISTRY[name]!r}")
  _REGISTRY[name] = target


def names() -> tuple[str, ...]:
  """The registered task names."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> type[task_lib.Task]:
  """The `Task` subclass registered as `name`."""
  if name not in _REGISTRY:
    raise ValueError(f"config.task={name!r} is not a known task (known: "
                     f"{', '.join(names())})")
  target = _REGISTRY[name]
  if isinstance(target, str):
    module, _, attr = target.partition(":")
    target = getattr(importlib.import_module(module), attr)
  if not (isinstance(target, type) and issubclass(target, task_lib.Task)):
    raise TypeError(f"task {name!r} is registered as {target!r}, which is "
                    "not a jaxface.train.task.Task subclass")
  return target


def make(config: ml_collections.ConfigDict) -> task_lib.Task:
  """The task of `config.task`, built (and its config checked)."""
  return get(config.task)(config)


def examples(config: ml_collections.ConfigDict) -> examples_lib.ExampleSpec:
  """What the data layer makes for `config.task`.

  The task is built, since its examples may depend on the config (e.g.
  augmentation strengths); building checks the config and creates no
  parameters.
  """
  return make(config).examples
