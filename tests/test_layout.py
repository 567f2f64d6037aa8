"""The layout's promises: the loop and the data layer know no task.

Nor does the data layer reach up into training.
"""

import pathlib
import re

import pytest

from jaxface import tasks

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxface"


def _sources(*folders):
  for folder in folders:
    for path in sorted((PACKAGE / folder).rglob("*.py")):
      yield path.relative_to(PACKAGE.parent), path.read_text()


@pytest.mark.parametrize("name", tasks.names())
def test_loop_and_data_layer_never_name_a_task(name):
  # A task's module or class; not its bare name, which may also be a batch
  # key ("landmarks", "gender").
  task_class = tasks.get(name)
  pattern = re.compile(
      rf"jaxface\.tasks\.{re.escape(name)}\b|tasks/{re.escape(name)}\.py"
      rf"|\b{re.escape(task_class.__name__)}\b|\btasks\.get\(")
  for path, text in _sources("train", "data"):
    found = pattern.search(text)
    assert not found, f"{path} names the task {name!r}: {found.group(0)!r}"


def _jaxface_imports(text):
  """Top-level jaxface packages a source imports: {"jaxface.data", ...}."""
  found = set(re.findall(r"^\s*(?:from|import)\s+(jaxface\.\w+)", text,
                         re.MULTILINE))
  for names in re.findall(r"^\s*from\s+jaxface\s+import\s+([\w, ]+)",
                          text, re.MULTILINE):
    found |= {f"jaxface.{n.strip()}" for n in names.split(",")}
  return found


def test_data_layer_does_not_import_training_or_tasks():
  for path, text in _sources("data"):
    assert not {"jaxface.train", "jaxface.tasks"} & _jaxface_imports(text), (
        path)


def test_only_the_loop_uses_the_registry():
  users = [str(path) for path, text in _sources("train")
           if re.search(r"^from jaxface import tasks$", text, re.MULTILINE)]
  assert users == ["jaxface/train/loop.py"]
