#!/usr/bin/env bash
# Train jaxface on a Cloud TPU VM or pod slice. See usage() below, or run
# launch/tpu_vm.sh --help.
#
# What runs where: this script runs on your machine and drives gcloud. On
# every worker of the slice it keeps the code in ~/jaxface (replaced at each
# launch), a virtual environment in ~/jaxface-venv, and the run's state in
# ~/jaxface-run: run.sh (the training command), run.pid, exit_status and
# train.log (appended across launches). The commands sent to the workers are
# built here, so --dry-run prints them in full.
set -euo pipefail

prog=launch/tpu_vm.sh

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name=NAME --zone=ZONE [options] CONFIG WORKDIR [FLAGS...]
       launch/tpu_vm.sh --name=NAME --zone=ZONE --status | --stop

Train on a Cloud TPU VM or pod slice: create the TPU if it does not exist,
copy the code to every worker, install it with the `tpu` extra pinned by
constraints.txt, and start the same command on all workers (--worker=all):

  python -m jaxface.main --config=CONFIG --workdir=WORKDIR FLAGS...

CONFIG and WORKDIR are jaxface.main's --config and --workdir; FLAGS (e.g.
--config.train.batch_size=64) are passed through unchanged. Launcher
options go before CONFIG.

WORKDIR should be a gs:// bucket path: every worker of a pod slice must see
the same workdir, and a Spot/preemptible TPU's disks go when it is
preempted. A gs:// WORKDIR also installs the `gcs` extra (gcsfs). See
README.md ("Scaling and launching") for what jaxface does with a gs://
workdir today.

Options:
  --name=NAME              TPU name (required)
  --zone=ZONE              its zone (required), e.g. us-east5-b
  --project=PROJECT        gcloud project (default: gcloud's configured one)
  --accelerator-type=TYPE  used when creating: v5litepod-8 (default), v5p-16,
                           v6e-8, v4-32, ...
  --version=RUNTIME        TPU software version used when creating (default
                           by type: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
                           v5e/v5litepod v2-alpha-tpuv5-lite, v2-v4
                           tpu-ubuntu2204-base)
  --spot                   create a Spot TPU
  --preemptible            create a preemptible TPU
  --no-create              fail instead of creating a TPU that does not exist
  --source=head|worktree   code to copy: `git archive HEAD` (default), or the
                           working tree (tracked and untracked, not ignored
                           files, uncommitted changes included)
  --tarball=FILE           copy this .tar.gz of the repository instead
  --python=PY              Python on the workers (default python3.11, the
                           version constraints.txt pins for; installed with
                           apt-get when missing)
  --watch                  after starting, poll every --interval seconds and
                           relaunch after a preemption: a deleted, PREEMPTED
                           or TERMINATED TPU is recreated; a run that exited
                           75 (stopped by SIGTERM after saving) or vanished
                           (VM restarted) is started again and resumes from
                           WORKDIR's latest checkpoint. Ends when every
                           worker exited 0 (exit 0), or one failed (exit 1)
  --interval=SECONDS       --watch polling interval (default 300)
  --max-restarts=N         --watch gives up after N relaunches (default 20)
  --status                 print each worker's run state and its log tail
  --stop                   send SIGTERM to the runs: they save a checkpoint
                           and exit 75 (a watcher leaves such a run stopped)
  --dry-run                print the commands instead of running them
                           (neither gcloud nor git is run)
  -h, --help               this help

Without --watch, relaunching after a preemption is running the same command
again: the TPU is recreated if needed and training resumes from WORKDIR's
latest checkpoint.

Files that FLAGS name (e.g. --config.vgg_weights=...) are opened on the
workers: give paths that exist there (relative paths are inside the copied
code, ~/jaxface).

Example:
  launch/tpu_vm.sh --name=jaxface-v5e --zone=us-east5-b \
      --accelerator-type=v5litepod-8 --spot --watch \
      configs/inpaint.py:gender=male gs://BUCKET/runs/male \
      --config.train.batch_size=64
EOF
}

# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

note() {
  printf '%s: %s\n' "$prog" "$1" >&2
}

# ----------------------------------------------------------------- arguments
name="" zone="" project="" accelerator="v5litepod-8" version="" spot=0
preemptible=0 create=1 source_kind=head python=python3.11 watch=0
interval=300 max_restarts=20 dry_run=0 action=launch
config="" workdir="" tarball=""
flags=()
args=("$@")
launcher_options=" --name --zone --project --accelerator-type --version --spot
  --preemptible --no-create --source --tarball --python --watch --interval
  --max-restarts --status --stop --dry-run --help "

while (( $# )); do
  arg=$1
  shift
  if [[ $arg == --*=* ]]; then
    opt=${arg%%=*} value=${arg#*=} inline=1
  else
    opt=$arg value="" inline=0
  fi
  case $opt in
    -h|--help|--spot|--preemptible|--no-create|--watch|--status|--stop|\
    --dry-run)
      (( ! inline )) || usage_error "$opt takes no value"
      case $opt in
        -h|--help) usage; exit 0 ;;
        --spot) spot=1 ;;
        --preemptible) preemptible=1 ;;
        --no-create) create=0 ;;
        --watch) watch=1 ;;
        --status) action=status ;;
        --stop) action=stop ;;
        --dry-run) dry_run=1 ;;
      esac
      ;;
    --name|--zone|--project|--accelerator-type|--version|--source|--tarball|\
    --python|--interval|--max-restarts)
      if (( ! inline )); then
        (( $# )) || usage_error "$opt needs a value"
        value=$1
        shift
      fi
      [[ -n $value ]] || usage_error "$opt needs a value"
      case $opt in
        --name) name=$value ;;
        --zone) zone=$value ;;
        --project) project=$value ;;
        --accelerator-type) accelerator=$value ;;
        --version) version=$value ;;
        --source) source_kind=$value ;;
        --tarball) tarball=$value ;;
        --python) python=$value ;;
        --interval) interval=$value ;;
        --max-restarts) max_restarts=$value ;;
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

[[ -n $name ]] || usage_error "--name is required"
[[ -n $zone ]] || usage_error "--zone is required"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  usage_error "--name=$name: lowercase letters, digits and hyphens, starting with a letter"
[[ $zone =~ ^[a-z0-9-]+$ ]] || usage_error "--zone=$zone: e.g. us-east5-b"
[[ -z $project || $project =~ ^[a-z0-9.:-]+$ ]] ||
  usage_error "--project=$project: a project ID"
[[ $accelerator =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  usage_error "--accelerator-type=$accelerator: expected e.g. v5litepod-8, v5p-16, v6e-8"
[[ $interval =~ ^[1-9][0-9]*$ ]] ||
  usage_error "--interval=$interval: a positive number of seconds"
[[ $max_restarts =~ ^[0-9]+$ ]] ||
  usage_error "--max-restarts=$max_restarts: a number"
[[ $python =~ ^[A-Za-z0-9_.+-]+$ ]] ||
  usage_error "--python=$python: a command name such as python3.11"
case $source_kind in
  head|worktree) ;;
  *) usage_error "--source=$source_kind: head or worktree" ;;
esac
(( ! (spot && preemptible) )) ||
  usage_error "--spot and --preemptible exclude each other"

if [[ $action == launch ]]; then
  [[ -n $config ]] || usage_error "CONFIG and WORKDIR are required"
  [[ $config != -* ]] || usage_error "CONFIG must come before FLAGS"
  [[ -n $workdir && $workdir != -* ]] ||
    usage_error "WORKDIR is required (after CONFIG)"
  for flag in ${flags[@]+"${flags[@]}"}; do
    if [[ $launcher_options == *" ${flag%%=*} "* ]]; then
      usage_error "$flag is a launcher option: put it before CONFIG"
    fi
  done
  if [[ $workdir != gs://* ]]; then
    note "warning: WORKDIR $workdir is not a gs:// path: each worker writes its own copy on its own disk, lost when the TPU is deleted or preempted"
  fi
elif [[ -n $config ]]; then
  usage_error "--$action takes no CONFIG or WORKDIR"
fi
(( ! watch )) || [[ $action == launch ]] ||
  usage_error "--watch goes with a launch, not --$action"

if [[ -z $version ]]; then
  case $accelerator in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) version=tpu-ubuntu2204-base ;;
    *) usage_error "no default --version for $accelerator: pass --version" ;;
  esac
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
if [[ -n $project ]]; then
  where+=("--project=$project")
fi

# ------------------------------------------------- commands for the workers
# Each is a bash script run by `gcloud ... ssh --worker=all --command=...`.
# True when this worker's run.sh is alive (the pid in run.pid is a run.sh).
# shellcheck disable=SC2016  # expanded on the worker
alive_fn='jf_alive() { [ -f ~/jaxface-run/run.pid ] && grep -qsa run.sh "/proc/$(cat ~/jaxface-run/run.pid)/cmdline"; }'

extras=tpu
if [[ $workdir == gs://* ]]; then
  extras=tpu,gcs
fi

if [[ $python =~ ^python3\.[0-9]+$ ]]; then
  get_python="sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $python $python-venv"
else
  get_python="echo \"\$(hostname): $python not found\" >&2; exit 1"
fi

setup_cmd="set -euo pipefail
$alive_fn
if jf_alive; then echo \"\$(hostname): a run is still going (pid \$(cat ~/jaxface-run/run.pid)); stop it first: $prog --name=$name --zone=$zone --stop\" >&2; exit 1; fi
if ! command -v $python > /dev/null; then $get_python; fi
[ -x ~/jaxface-venv/bin/$python ] || { rm -rf ~/jaxface-venv && $python -m venv ~/jaxface-venv; }
rm -rf ~/jaxface && mkdir ~/jaxface && tar -xzf ~/jaxface.tgz -C ~/jaxface
cd ~/jaxface
~/jaxface-venv/bin/pip install -q -c constraints.txt -e \".[$extras]\"
echo \"\$(hostname): installed jaxface[$extras] with $python\""

train_line="\"\$HOME/jaxface-venv/bin/python\" -m jaxface.main $(quote_cmd \
  "--config=$config" "--workdir=$workdir" ${flags[@]+"${flags[@]}"})"

start_cmd="set -euo pipefail
mkdir -p ~/jaxface-run && cd ~/jaxface-run
cat > run.sh <<\\JAXFACE_EOF
# Written by $prog: one training run on this worker; its exit status goes
# to exit_status. SIGTERM/SIGINT are passed on to jaxface.main, which saves
# a checkpoint and exits 75.
echo \$\$ > \"\$HOME/jaxface-run/run.pid\"
cd \"\$HOME/jaxface\" || { echo 1 > \"\$HOME/jaxface-run/exit_status\"; exit 1; }
echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) start on \$(hostname)\"
$train_line &
child=\$!
trap 'kill -TERM \"\$child\" 2> /dev/null' TERM INT
wait \"\$child\"
status=\$?
while kill -0 \"\$child\" 2> /dev/null; do wait \"\$child\"; status=\$?; done
wait \"\$child\" 2> /dev/null
last=\$?
if [ \"\$last\" -ne 127 ]; then status=\$last; fi
echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) exit status \$status\"
echo \"\$status\" > \"\$HOME/jaxface-run/exit_status\"
JAXFACE_EOF
rm -f exit_status stopped
setsid nohup bash run.sh >> train.log 2>&1 < /dev/null &
echo \"\$(hostname): started; log: ~/jaxface-run/train.log\""

# One line per worker: `jaxface-status HOST STATE`, STATE one of running,
# an exit status, stopped (by --stop), lost (no exit status: the VM
# restarted), none (never launched).
status_cmd="$alive_fn
if jf_alive; then s=running
elif [ -f ~/jaxface-run/exit_status ] && [ -f ~/jaxface-run/stopped ]; then s=stopped
elif [ -f ~/jaxface-run/exit_status ]; then s=\$(cat ~/jaxface-run/exit_status)
elif [ -d ~/jaxface-run ]; then s=lost
else s=none; fi
echo \"jaxface-status \$(hostname) \$s\""

stop_cmd="$alive_fn
if jf_alive; then touch ~/jaxface-run/stopped; kill -TERM \"\$(cat ~/jaxface-run/run.pid)\"; echo \"\$(hostname): asked the run to save a checkpoint and stop\"
else echo \"\$(hostname): no run is going\"; fi"

ssh_all() {
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all \
    "--command=$1"
}

# ------------------------------------------------------------------ the TPU
# Prints the TPU's state (READY, PREEMPTED, ...), ABSENT, or UNKNOWN when
# gcloud fails for another reason (its message goes to stderr).
tpu_state() {
  local out err
  err=$(mktemp)
  if out=$("${gcloud_tpu[@]}" describe "$name" "${where[@]}" \
      '--format=value(state)' 2> "$err"); then
    printf '%s\n' "${out:-UNKNOWN}"
  elif grep -qiE 'NOT_FOUND|not found' "$err"; then
    echo ABSENT
  else
    cat "$err" >&2
    echo UNKNOWN
  fi
  rm -f "$err"
}

create_cmd=("${gcloud_tpu[@]}" create "$name" "${where[@]}"
            "--accelerator-type=$accelerator" "--version=$version")
if (( spot )); then
  create_cmd+=(--spot)
elif (( preemptible )); then
  create_cmd+=(--preemptible)
fi

create_tpu() {
  (( create )) || die "TPU $name does not exist in $zone (--no-create)"
  run "${create_cmd[@]}"
}

# Makes the TPU READY: creates it when absent, recreates it when preempted,
# starts it when stopped, waits while it is changing.
ensure_tpu() {
  if (( dry_run )); then
    printf '+ %s\n' "$(quote_cmd "${gcloud_tpu[@]}" describe "$name" \
      "${where[@]}" '--format=value(state)')"
    if (( create )); then
      echo "# when absent (PREEMPTED/TERMINATED: deleted first; STOPPED: started instead):"
      printf '+ %s\n' "$(quote_cmd "${create_cmd[@]}")"
    fi
    return
  fi
  local state tries=0
  while true; do
    state=$(tpu_state)
    case $state in
      READY) note "TPU $name is READY"; return ;;
      ABSENT) create_tpu ;;
      PREEMPTED|TERMINATED)
        note "TPU $name is $state: deleting it to create it again"
        run "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet
        create_tpu
        ;;
      STOPPED) run "${gcloud_tpu[@]}" start "$name" "${where[@]}" ;;
      CREATING|STARTING|RESTARTING|REPAIRING|STOPPING|DELETING)
        (( ++tries <= 60 )) || die "TPU $name stayed $state for 30 minutes"
        note "TPU $name is $state; waiting"
        sleep 30
        ;;
      UNKNOWN) die "cannot read the state of TPU $name (gcloud's message above)" ;;
      *) die "TPU $name is in state $state; not touching it" ;;
    esac
  done
}

# ----------------------------------------------------------------- the code
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=""
cleanup() {
  if [[ -n $tmp ]]; then
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

make_tarball() {
  if [[ -n $tarball ]]; then
    [[ -f $tarball ]] || (( dry_run )) || die "--tarball=$tarball: no such file"
    return
  fi
  tmp=$(mktemp -d)
  tarball=$tmp/jaxface.tgz
  if [[ $source_kind == head ]]; then
    if (( ! dry_run )) && [[ -n $(git -C "$repo" status --porcelain) ]]; then
      note "warning: uncommitted changes are not copied (--source=worktree copies them)"
    fi
    run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
  else
    printf '+ %s | %s\n' \
      "$(quote_cmd git -C "$repo" ls-files -z --cached --others --exclude-standard)" \
      "$(quote_cmd tar -C "$repo" --null --ignore-failed-read -T - -czf "$tarball")"
    if (( ! dry_run )); then
      git -C "$repo" ls-files -z --cached --others --exclude-standard |
        tar -C "$repo" --null --ignore-failed-read -T - -czf "$tarball"
    fi
  fi
}

copy_and_start() {
  run "${gcloud_tpu[@]}" scp "$tarball" "$name:jaxface.tgz" "${where[@]}" \
    --worker=all
  ssh_all "$setup_cmd"
  ssh_all "$start_cmd"
}

# The workers' states, one word each (see status_cmd); nothing if ssh fails.
worker_states() {
  "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all \
    "--command=$status_cmd" 2> /dev/null |
    grep -o 'jaxface-status [^ ]* [a-z0-9]*' | cut -d' ' -f3 || true
}

watch_loop() {
  local restarts=0 state states s running failed done_all relaunch
  while true; do
    sleep "$interval"
    state=$(tpu_state)
    relaunch=0
    case $state in
      READY)
        states=$(worker_states)
        if [[ -z $states ]]; then
          note "no answer from the workers; trying again later"
          continue
        fi
        running=0 failed="" done_all=1
        for s in $states; do
          case $s in
            running) running=1; done_all=0 ;;
            0) ;;
            75|lost|none) done_all=0 ;;
            stopped) note "the run was stopped with --stop; not relaunching"; exit 0 ;;
            *) failed+=" $s"; done_all=0 ;;
          esac
        done
        if [[ -n $failed ]]; then
          note "training failed (exit status$failed); see $prog --status and ~/jaxface-run/train.log on the workers"
          exit 1
        elif (( done_all )); then
          note "training finished on every worker"
          exit 0
        elif (( ! running )); then
          relaunch=1
        fi
        ;;
      ABSENT|PREEMPTED|TERMINATED|STOPPED) relaunch=1 ;;
      *) note "TPU $name is $state; waiting" ;;
    esac
    if (( relaunch )); then
      (( restarts < max_restarts )) ||
        die "gave up after $max_restarts relaunches (--max-restarts)"
      restarts=$((restarts + 1))
      note "relaunch $restarts/$max_restarts (TPU $state); training resumes from $workdir"
      # A separate run of this script (same options, same archive), so that
      # a failed relaunch (e.g. no Spot capacity) is retried next time.
      if ! "${relaunch_cmd[@]}"; then
        note "relaunch failed; trying again in $interval s"
      fi
    fi
  done
}

# --------------------------------------------------------------------- main
case $action in
  status)
    ssh_all "$status_cmd
tail -n 3 ~/jaxface-run/train.log 2> /dev/null || true"
    ;;
  stop)
    ssh_all "$stop_cmd"
    ;;
  launch)
    ensure_tpu
    make_tarball
    copy_and_start
    echo "# follow worker 0's log:"
    printf '#   %s\n' "$(quote_cmd "${gcloud_tpu[@]}" ssh "$name" \
      "${where[@]}" --worker=0 '--command=tail -f ~/jaxface-run/train.log')"
    if (( watch )); then
      if (( dry_run )); then
        echo "# --watch: every $interval s, read the TPU's state and each worker's run state:"
        printf '+ %s\n' "$(quote_cmd "${gcloud_tpu[@]}" describe "$name" \
          "${where[@]}" '--format=value(state)')"
        printf '+ %s\n' "$(quote_cmd "${gcloud_tpu[@]}" ssh "$name" \
          "${where[@]}" --worker=all "--command=$status_cmd")"
        echo "# and after a preemption (TPU gone, PREEMPTED or TERMINATED; runs exited 75 or lost) repeat the steps above, at most $max_restarts times."
      else
        relaunch_cmd=(bash "${BASH_SOURCE[0]}" "--tarball=$tarball")
        for arg in "${args[@]}"; do
          if [[ $arg != --watch ]]; then
            relaunch_cmd+=("$arg")
          fi
        done
        watch_loop
      fi
    fi
    ;;
esac
