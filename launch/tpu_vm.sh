#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or pod slice): copy this checkout to
# every worker, install it with the TPU extra, and start the same command on
# all workers. jaxface.main calls jax.distributed.initialize() on pod slices.
#
#   launch/tpu_vm.sh NAME ZONE configs/inpaint.py:gender=male /mnt/runs/male \
#       --config.vgg_weights=/mnt/weights/vgg19.npz
#
# NAME/ZONE: an existing TPU VM (gcloud compute tpus tpu-vm create ...).
# The workdir must be a path every worker sees: on a pod slice, a bucket
# mounted with gcsfuse at the same path on all workers. Re-running the same
# command resumes from the workdir's latest checkpoint.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
name=$1 zone=$2 config=$3 workdir=$4
shift 4
here=$(cd "$(dirname "$0")/.." && pwd)
tarball=$(mktemp -d)/jaxface.tgz
git -C "$here" archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$name":jaxface.tgz \
  --zone="$zone" --worker=all
remote="set -e; rm -rf jaxface && mkdir jaxface && tar xzf jaxface.tgz -C jaxface
cd jaxface
python3 -m venv .venv
.venv/bin/pip install -q -e '.[tpu]'
nohup .venv/bin/python -m jaxface.main --config=$config --workdir=$workdir $* \
  > train.log 2>&1 &
echo started on \$(hostname)"
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
  --command="$remote"
echo "Logs: gcloud compute tpus tpu-vm ssh $name --zone=$zone --worker=0 --command='tail -f jaxface/train.log'"
