#!/usr/bin/env bash
# Train jaxface on GPUs under SLURM: writes a batch script and submits it
# with sbatch. See usage() below, or run launch/slurm_gpu.sh --help.
set -euo pipefail

prog=launch/slurm_gpu.sh

usage() {
  cat <<'EOF'
Usage: launch/slurm_gpu.sh [options] CONFIG WORKDIR [FLAGS...]

Submit a SLURM batch job that trains on NODES x GPUS GPUs, one process per
GPU, all processes running

  python -m jaxface.main --config=CONFIG --workdir=WORKDIR FLAGS...

under `srun --ntasks-per-node=GPUS --gpu-bind=none`: every process sees all
the GPUs of its node and jax.distributed.initialize(), which jaxface.main
calls when SLURM_NTASKS > 1, gives process SLURM_LOCALID the GPU of that
number. (Binding one GPU per task with --gpus-per-task=1 or per-rank
CUDA_VISIBLE_DEVICES would leave each process one visible GPU, number 0,
while JAX asks for GPU SLURM_LOCALID; see README.md.)

CONFIG, WORKDIR and FLAGS (e.g. --config.train.batch_size=64) go to
jaxface.main unchanged; launcher options go before CONFIG. The job runs in
the directory you submit from (relative paths mean the same as here), with
this checkout's virtual environment, so both must be on a file system the
compute nodes share; WORKDIR too.

Preemption and time limits: the job is submitted with --requeue. When it is
--signal-before-limit seconds from its time limit, the batch script sends
SIGTERM to the training processes; they save a checkpoint and exit 75, and
the batch script requeues the job (scontrol requeue), which resumes from
the checkpoint. A job stopped by SIGTERM from SLURM (preemption, scancel)
is not requeued by the script: SLURM requeues preempted jobs itself when
the cluster preempts by requeueing, and a cancelled job stays cancelled;
submitting the same command again resumes.

Options:
  --nodes=N                nodes (default 1)
  --gpus-per-node=G        GPUs per node = processes per node (default 8)
  --gres                   request GPUs as --gres=gpu:G instead of
                           --gpus-per-node=G
  --cpus-per-task=C        CPUs per process (default: the cluster's)
  --partition=P            SLURM partition
  --account=A              SLURM account
  --qos=Q                  SLURM QOS
  --time=T                 time limit, e.g. 24:00:00 (default: the
                           partition's)
  --job-name=NAME          (default jaxface)
  --log-dir=DIR            job output NAME-JOBID.out, appended across
                           requeues, and the submitted batch scripts
                           (default runs/slurm)
  --max-requeues=N         requeue at most N times (default 20)
  --signal-before-limit=S  seconds before the time limit to stop and save
                           (default 300; 0: no signal)
  --venv=DIR               virtual environment (default: .venv in this
                           checkout); created with the CUDA extra pinned by
                           constraints.txt when it has no bin/python
  --python=PY              Python that creates it (default python3.11)
  --cuda=cuda12|cuda13     extra installed into a new venv (default cuda12)
  --sbatch-arg=ARG         extra sbatch option, repeatable, e.g.
                           --sbatch-arg=--exclusive
  --srun-arg=ARG           extra srun option, repeatable
  --dry-run                print the batch script and the commands instead
                           of writing or running anything (SLURM need not be
                           installed)
  -h, --help               this help

Example (2 nodes x 8 GPUs):
  launch/slurm_gpu.sh --nodes=2 --gpus-per-node=8 --time=24:00:00 \
      configs/inpaint.py runs/all \
      --config.vgg_weights=weights/vgg19-dcbb9e9d.pth
EOF
}

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ----------------------------------------------------------------- arguments
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nodes=1 gpus=8 gres=0 cpus="" partition="" account="" qos="" time_limit=""
job_name=jaxface log_dir=runs/slurm max_requeues=20 signal_before=300
venv=$repo/.venv python=python3.11 cuda=cuda12 dry_run=0
config="" workdir=""
flags=() sbatch_extra=() srun_extra=()
launcher_options=" --nodes --gpus-per-node --gres --cpus-per-task --partition
  --account --qos --time --job-name --log-dir --max-requeues
  --signal-before-limit --venv --python --cuda --sbatch-arg --srun-arg
  --dry-run --help "

while (( $# )); do
  arg=$1
  shift
  if [[ $arg == --*=* ]]; then
    opt=${arg%%=*} value=${arg#*=} inline=1
  else
    opt=$arg value="" inline=0
  fi
  case $opt in
    -h|--help|--gres|--dry-run)
      (( ! inline )) || usage_error "$opt takes no value"
      case $opt in
        -h|--help) usage; exit 0 ;;
        --gres) gres=1 ;;
        --dry-run) dry_run=1 ;;
      esac
      ;;
    --nodes|--gpus-per-node|--cpus-per-task|--partition|--account|--qos|\
    --time|--job-name|--log-dir|--max-requeues|--signal-before-limit|--venv|\
    --python|--cuda|--sbatch-arg|--srun-arg)
      if (( ! inline )); then
        (( $# )) || usage_error "$opt needs a value"
        value=$1
        shift
      fi
      [[ -n $value ]] || usage_error "$opt needs a value"
      case $opt in
        --nodes) nodes=$value ;;
        --gpus-per-node) gpus=$value ;;
        --cpus-per-task) cpus=$value ;;
        --partition) partition=$value ;;
        --account) account=$value ;;
        --qos) qos=$value ;;
        --time) time_limit=$value ;;
        --job-name) job_name=$value ;;
        --log-dir) log_dir=$value ;;
        --max-requeues) max_requeues=$value ;;
        --signal-before-limit) signal_before=$value ;;
        --venv) venv=$value ;;
        --python) python=$value ;;
        --cuda) cuda=$value ;;
        --sbatch-arg) sbatch_extra+=("$value") ;;
        --srun-arg) srun_extra+=("$value") ;;
      esac
      ;;
    --)
      (( $# >= 2 )) || usage_error "CONFIG and WORKDIR are required"
      config=$1 workdir=$2
      shift 2
      flags=("$@")
      break
      ;;
    -*) usage_error "unknown option: $arg" ;;
    *)
      config=$arg
      (( $# )) || usage_error "WORKDIR is required (after CONFIG)"
      workdir=$1
      shift
      flags=("$@")
      break
      ;;
  esac
done

positive() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || usage_error "$1=$2: a positive whole number"
}
positive --nodes "$nodes"
positive --gpus-per-node "$gpus"
if [[ -n $cpus ]]; then
  positive --cpus-per-task "$cpus"
fi
[[ $max_requeues =~ ^[0-9]+$ ]] ||
  usage_error "--max-requeues=$max_requeues: a whole number"
[[ $signal_before =~ ^[0-9]+$ ]] ||
  usage_error "--signal-before-limit=$signal_before: a whole number of seconds"
case $cuda in
  cuda12|cuda13) ;;
  *) usage_error "--cuda=$cuda: cuda12 or cuda13" ;;
esac
[[ $job_name =~ ^[A-Za-z0-9_.-]+$ ]] ||
  usage_error "--job-name=$job_name: letters, digits, . _ -"
[[ -n $config ]] || usage_error "CONFIG and WORKDIR are required"
[[ $config != -* ]] || usage_error "CONFIG must come before FLAGS"
[[ -n $workdir && $workdir != -* ]] ||
  usage_error "WORKDIR is required (after CONFIG)"
for flag in ${flags[@]+"${flags[@]}"}; do
  if [[ $launcher_options == *" ${flag%%=*} "* ]]; then
    usage_error "$flag is a launcher option: put it before CONFIG"
  fi
done

here=$(pwd)
case $log_dir in
  /*) ;;
  *) log_dir=$here/$log_dir ;;
esac
case $venv in
  /*) ;;
  *) venv=$here/$venv ;;
esac

# -------------------------------------------------------------- the script
directives=("--job-name=$job_name" "--nodes=$nodes"
            "--ntasks-per-node=$gpus")
if (( gres )); then
  directives+=("--gres=gpu:$gpus")
else
  directives+=("--gpus-per-node=$gpus")
fi
if [[ -n $cpus ]]; then
  directives+=("--cpus-per-task=$cpus")
fi
if [[ -n $partition ]]; then
  directives+=("--partition=$partition")
fi
if [[ -n $account ]]; then
  directives+=("--account=$account")
fi
if [[ -n $qos ]]; then
  directives+=("--qos=$qos")
fi
if [[ -n $time_limit ]]; then
  directives+=("--time=$time_limit")
fi
if (( signal_before > 0 )); then
  directives+=("--signal=B:USR1@$signal_before")
fi
directives+=(--requeue --open-mode=append "--output=$log_dir/%x-%j.out")
directives+=(${sbatch_extra[@]+"${sbatch_extra[@]}"})

srun_cmd=(srun "--ntasks-per-node=$gpus" --gpu-bind=none
          ${srun_extra[@]+"${srun_extra[@]}"}
          "$venv/bin/python" -m jaxface.main "--config=$config"
          "--workdir=$workdir" ${flags[@]+"${flags[@]}"})

batch_script() {
  local d
  echo '#!/bin/bash'
  for d in "${directives[@]}"; do
    printf '#SBATCH %s\n' "$d"
  done
  cat <<EOF
# Written by $prog. Requeued runs start this script again; training
# resumes from WORKDIR's latest checkpoint.
set -uo pipefail
cd $(shquote "$here") || exit 1
# Let XLA take most of each GPU's memory up front; fragmentation costs speed.
export XLA_PYTHON_CLIENT_MEM_FRACTION=\${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
echo "jaxface: job \$SLURM_JOB_ID (restart \${SLURM_RESTART_COUNT:-0}) on \$SLURM_JOB_NODELIST, \$(date -u +%Y-%m-%dT%H:%M:%SZ)"
got_term=0
stop_asked=0
# Near the time limit (--signal=B:USR1): ask the training processes to save
# and exit 75 (from the loop below, never from inside a trap).
trap 'stop_asked=1' USR1
# Preemption or scancel: SLURM signals the training processes itself.
trap 'got_term=1; echo "jaxface: SIGTERM from SLURM"' TERM
$(quote_cmd "${srun_cmd[@]}") &
step=\$!
# Poll instead of a wait that a trap cuts short: bash can lose the status
# of a step that ends while a trap runs. Here a trap runs between polls, and
# the status is collected once the step has ended, with the traps off.
sent=0
while kill -0 "\$step" 2> /dev/null; do
  if [ "\$stop_asked" -eq 1 ] && [ "\$sent" -eq 0 ]; then
    echo "jaxface: time limit near: stopping training (SIGTERM) to save a checkpoint"
    kill -TERM "\$step" 2> /dev/null
    sent=1
  fi
  sleep 1
done
trap '' TERM USR1
wait "\$step"
status=\$?
echo "jaxface: training exited with status \$status, \$(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ "\$status" -eq 75 ] && [ "\$got_term" -eq 0 ]; then
  if [ "\${SLURM_RESTART_COUNT:-0}" -lt $max_requeues ]; then
    echo "jaxface: checkpoint saved; requeueing job \$SLURM_JOB_ID"
    scontrol requeue "\$SLURM_JOB_ID"
  else
    echo "jaxface: checkpoint saved; $max_requeues requeues done (--max-requeues), not requeueing: submit again to resume"
  fi
elif [ "\$status" -eq 75 ]; then
  echo "jaxface: checkpoint saved after SIGTERM from SLURM: a preempted job is requeued by SLURM (--requeue), a cancelled one is not; submit again to resume"
fi
exit "\$status"
EOF
}

# -------------------------------------------------------------------- main
if [[ ! -x $venv/bin/python ]]; then
  echo "# $venv/bin/python is missing: creating it"
  run "$python" -m venv "$venv"
  run "$venv/bin/pip" install -q -c "$repo/constraints.txt" -e "${repo}[$cuda]"
fi

script_file=$log_dir/$job_name-$(date +%Y%m%d-%H%M%S).sbatch
run mkdir -p "$log_dir"
printf "+ cat > %s <<'JAXFACE_SBATCH_EOF'\n" "$(shquote "$script_file")"
batch_script
echo JAXFACE_SBATCH_EOF
printf '+ %s\n' "$(quote_cmd sbatch --parsable "$script_file")"
if (( dry_run )); then
  exit 0
fi
batch_script > "$script_file"
job_id=$(sbatch --parsable "$script_file")
job_id=${job_id%%;*}
echo "Submitted job $job_id: $nodes node(s) x $gpus GPU(s), one process per GPU."
echo "Log: $log_dir/$job_name-$job_id.out    Stop: scancel $job_id"
