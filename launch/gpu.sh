#!/usr/bin/env bash
# Train on the GPUs of this machine (all of them, data parallel), or on
# several machines under SLURM (one process per node; jaxface.main detects
# SLURM and calls jax.distributed.initialize()).
#
#   launch/gpu.sh configs/inpaint.py:gender=female runs/female \
#       --config.vgg_weights=weights/vgg19-dcbb9e9d.pth --config.train.batch_size=64
#
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 \
#       --wrap "launch/gpu.sh configs/inpaint.py runs/all"
#
# JAXFACE_CUDA=cuda13 selects the CUDA 13 wheels (default cuda12).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e ".[${JAXFACE_CUDA:-cuda12}]"
fi
# Let XLA use most of the GPU memory up front; fragmentation costs speed.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
launcher=()
if [[ -n "${SLURM_NTASKS:-}" && "${SLURM_NTASKS}" -gt 1 ]]; then
  launcher=(srun --ntasks-per-node=1)
fi
exec "${launcher[@]}" .venv/bin/python -m jaxface.main \
  --config="$config" --workdir="$workdir" "$@"
