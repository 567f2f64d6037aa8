r"""Entry point: `python -m jaxface.main --config=configs/<task>.py ...`.

Kept short on purpose: flags, multi-host initialisation, device logging, and
a hand-off to the training loop, where all the logic lives (importable from
tests and notebooks).

  --config                 an ml_collections config file, optionally with an
                           argument: configs/inpaint.py:tiny,gender=male
  --config.<key>=<value>   override any field, e.g. --config.train.batch_size=32
  --workdir                checkpoints, TensorBoard events and samples; a run
                           pointed at an existing workdir resumes from its
                           latest checkpoint. A local path or gs://BUCKET/DIR
                           (needs the gcs extra)

Several processes (one per host, or several on one machine) without a
cluster manager that JAX detects: start the same command in each with
JAX_COORDINATOR_ADDRESS=<host of process 0>:<port>, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (0, 1, ...); on CPUs they talk over gloo.

Exit status: 0 trained to `train.num_steps`; 75 stopped by SIGTERM/SIGINT
(preemption) after saving a checkpoint, rerun the same command to resume;
1 failed (the message says why).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from jaxface import logging_utils
from jaxface.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:args]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, events and samples.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): 'auto' does so when a multi-process "
    "launch is detected (TPU pod slice, SLURM, or JAX_COORDINATOR_ADDRESS; "
    "with the latter, JAX_NUM_PROCESSES and JAX_PROCESS_ID name the "
    "processes where no cluster manager does).")

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Also show the INFO logs of orbax, grain and JAX.")

flags.mark_flags_as_required(["config", "workdir"])


def _multi_process_launch() -> bool:
  env = os.environ
  return ("JAX_COORDINATOR_ADDRESS" in env
          or int(env.get("SLURM_NTASKS", "1")) > 1
          or int(env.get("TPU_WORKER_COUNT", env.get("CLOUD_TPU_TASK_COUNT",
                                                        "1"))) > 1
          or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def _distributed_args() -> dict[str, int]:
  """`num_processes` and `process_id` from JAX_NUM_PROCESSES/JAX_PROCESS_ID.

  JAX reads the coordinator from JAX_COORDINATOR_ADDRESS, but the number of
  processes and the id of this one only from a cluster manager it detects
  (SLURM, Open MPI, Kubernetes, TPU VMs): without one, `initialize()` fails
  unless they are given. Set, they override what JAX detects.
  """
  env = os.environ
  names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  try:
    return {arg: int(env[name]) for arg, name in names.items() if name in env}
  except ValueError as e:
    raise app.UsageError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID: {e}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _VERBOSE.value:
    logging_utils.quiet_libraries()
  if _DISTRIBUTED.value == "yes" or (_DISTRIBUTED.value == "auto"
                                     and _multi_process_launch()):
    jax.distributed.initialize(**_distributed_args())
  logging.info("JAX %s, process %d/%d, %d local / %d global devices: %s",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except loop.Preempted as e:
    logging.warning("%s", e)
    sys.exit(loop.EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main)
