r"""Evaluates a trained checkpoint on a dataset split, per gender.

  python -m jaxface.evaluate --workdir=runs/landmarks_lite --split=test
  python -m jaxface.evaluate --workdir=runs/landmarks_lite --split=test \
      --source=prepared:data/utkface --size=256 \
      --baseline=mediapipe:/path/to/mediapipe-0.10.21-...whl

The run's config comes from `<workdir>/config.json` (or `--config`, with
`--config.<key>=value` overrides, for a run started before a config key
existed); its newest checkpoint (or `--step`) is restored read-only, so a
run may still be training. Every example of the split is scored by the
task's `eval_step` (masks rendered as in training evaluation: the same
every time) and summarised by its `summarize_eval`: a table with a column
per gender.

`--size` evaluates at another image size than the run trained at (the
network's own input size is kept; a landmark network, for one, resizes on
the device). `--baseline=SPEC` also scores a reference model the task
knows (the landmark task: a teacher such as MediaPipe's face mesh, run on
the masked images), and then both on the examples the baseline could
process. `--output=FILE.json` writes every figure.
"""

import json
from typing import Mapping

from absl import app
from absl import flags
from absl import logging
import numpy as np
from ml_collections import config_flags

from jaxface import fileio
from jaxface import logging_utils
from jaxface.data import pipeline
from jaxface.data import schema
from jaxface.train import loop

def define_flags() -> None:
  """Registers the command-line flags (only when run as a program, so that
  importing this module next to other commands defines nothing)."""
  flags.DEFINE_string("workdir", None, "The trained run's workdir.")
  config_flags.DEFINE_config_file(
      "config", None, "The run's config (default: <workdir>/config.json).",
      lock_config=False)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
  flags.DEFINE_enum("split", "test", ["train", "val", "test"],
                    "Which split of the source.")
  flags.DEFINE_string("source", "",
                      "Another data source (default: the run's).")
  flags.DEFINE_integer("size", 0, "Image size (0: the run's).")
  flags.DEFINE_integer("batch_size", 0,
                       "Batch size (0: the run's eval.batch_size).")
  flags.DEFINE_integer("num_batches", 0,
                       "Batches to score (0: the whole split).")
  flags.DEFINE_string(
      "baseline", "", "A reference model to score alongside (task-specific;"
      " landmarks: a teacher spec such as mediapipe:/path/to/wheel).")
  flags.DEFINE_string("output", "", "Write the figures as JSON here.")
  flags.mark_flags_as_required(["workdir"])


def eval_config(config, *, source: str = "", size: int = 0,
                batch_size: int = 0, num_batches: int = 0):
  """The run's config with the evaluation's data settings applied."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if size and "input_size" in config.get("model", {}) and (
        not config.model.input_size):
      # A network with its own input size (0: the data's) keeps the size
      # it was trained at.
      config.model.input_size = config.data.image_size
    if source:
      config.data.source = source
    if size:
      config.data.image_size = size
    if batch_size:
      config.eval.batch_size = batch_size
    config.eval.num_batches = num_batches
  return config


# Breakdowns a summary may carry (`<figure>/<by>/<group>`), each printed as
# a table of its own: a row per group, a column per figure.
BREAKDOWNS = ("style", "age")


def format_table(summary: Mapping[str, float], title: str) -> str:
  """One row per figure, columns all / female / male.

  A figure's per-gender values are its key with `/female`, `/male`
  appended. Figures broken down by mask style or age band
  (`<figure>/style/<style>`, `<figure>/age/<band>`) get a table per
  breakdown: one row per style or band, one column per figure.
  """
  genders = list(schema.GENDERS)
  broken = {by: {k: v for k, v in summary.items() if f"/{by}/" in k}
            for by in BREAKDOWNS}
  cells: dict[str, dict[str, float]] = {}
  for key, value in summary.items():
    if any(key in b for b in broken.values()):
      continue
    figure, _, last = key.rpartition("/")
    if last not in genders:
      figure, last = key, "all"
    cells.setdefault(figure, {})[last] = value
  cols = ["all"] + [g for g in genders
                    if any(g in row for row in cells.values())]
  width = max([len(r) for r in cells] + [8]) + 2

  def cell(name, v):
    return (f"{'-':>10}" if v is None else f"{v:>10.0f}"
            if name.startswith("count") else f"{v:>10.4f}")

  lines = [title, " " * width + "".join(f"{c:>10}" for c in cols)]
  for r in sorted(cells):
    lines.append(f"{r:<{width}}" + "".join(cell(r, cells[r].get(c))
                                           for c in cols))
  for by, items in broken.items():
    if not items:
      continue
    table: dict[str, dict[str, float]] = {}
    for key, value in items.items():
      figure, _, group = key.partition(f"/{by}/")
      table.setdefault(group, {})[figure] = value
    figures = sorted({k.partition(f"/{by}/")[0] for k in items})
    head = f"per {'mask style' if by == 'style' else by}"
    width = max([len(s) for s in table] + [len(head)]) + 2
    col = max([len(f) for f in figures] + [10]) + 2
    lines += ["", f"{head:<{width}}" + "".join(f"{f:>{col}}"
                                               for f in figures)]
    for group in sorted(table):
      lines.append(f"{group:<{width}}" + "".join(
          f"{cell(f, table[group].get(f)):>{col}}" for f in figures))
  return "\n".join(lines)


def _subset(per_example: Mapping[str, np.ndarray],
            keep: np.ndarray) -> dict[str, np.ndarray]:
  return {k: np.asarray(v)[keep] for k, v in per_example.items()}


def evaluate(workdir: str, config=None, *, step: int | None = None,
             split: str = "test", source: str = "", size: int = 0,
             batch_size: int = 0, num_batches: int = 0,
             baseline: str = "") -> dict[str, dict[str, float]]:
  """Scores a run's checkpoint (and optionally a baseline) on a split.

  Returns:
    {"model": summary} and, with a baseline, also "baseline" and
    "model_on_baseline_examples" (the model on the examples the baseline
    processed); plus "info" (step, split, source, counts).
  """
  config = loop.read_config(workdir) if config is None else config
  config = eval_config(config, source=source, size=size,
                       batch_size=batch_size, num_batches=num_batches)
  setup = loop.build(config)
  state, step = loop.load_state(setup, workdir, step)
  logging.info("Restored step %d of %s; scoring the %s split of %s.", step,
               workdir, split, config.data.source)
  batches = pipeline.eval_batches(setup.task.examples, config,
                                  batch_size=setup.eval_batch_size,
                                  split=split)
  ours = loop.eval_outputs(setup, state, setup.constants(), batches)
  count = len(next(iter(ours.values())))
  out = {"info": {"workdir": workdir, "step": step, "split": split,
                  "source": config.data.source,
                  "image_size": config.data.image_size, "examples": count},
         "model": setup.task.summarize_eval(ours)}
  if baseline:
    fn = setup.task.baseline(baseline)
    theirs = loop.concat_examples([fn(b) for b in batches])
    found = np.asarray(theirs.pop("found", np.ones(count, bool)), bool)
    out["info"].update(baseline=baseline, baseline_found=int(found.sum()))
    out["baseline"] = setup.task.summarize_eval(_subset(theirs, found))
    out["model_on_baseline_examples"] = setup.task.summarize_eval(
        _subset(ours, found))
  return out


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  logging_utils.quiet_libraries()
  result = evaluate(
      FLAGS.workdir, FLAGS.config, step=FLAGS.step, split=FLAGS.split,
      source=FLAGS.source, size=FLAGS.size, batch_size=FLAGS.batch_size,
      num_batches=FLAGS.num_batches, baseline=FLAGS.baseline)
  info = result["info"]
  head = (f"{info['workdir']} step {info['step']}, {info['split']} split of "
          f"{info['source']} at {info['image_size']} px, "
          f"{info['examples']} examples")
  print(format_table(result["model"], head))
  if "baseline" in result:
    n = info["baseline_found"]
    print()
    print(format_table(result["baseline"],
                       f"baseline {info['baseline']}: processed {n} of "
                       f"{info['examples']} examples"))
    print()
    print(format_table(result["model_on_baseline_examples"],
                       f"this model on the same {n} examples"))
  if FLAGS.output:
    fileio.write_atomic(fileio.as_path(FLAGS.output),
                        json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {FLAGS.output}")
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
