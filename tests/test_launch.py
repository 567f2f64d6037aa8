"""launch/tpu_vm.sh and launch/slurm_gpu.sh, without gcloud or SLURM.

`--dry-run` prints every command (`+ command`, shell-quoted) instead of
running it; the tests parse those lines back with `shlex` and check them.
Stand-ins for gcloud, sbatch, srun and scontrol, first on PATH, record how
they are called: in a dry run they must not be called at all, elsewhere they
play a TPU or a SLURM job, so that the parts that run on a worker or inside
the job (the run script, the status probe, the requeue logic) are run here
for real.
"""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_vm.sh"
SLURM = REPO / "launch" / "slurm_gpu.sh"
TPU_CMD = ["gcloud", "compute", "tpus", "tpu-vm"]

# A stand-in for gcloud, sbatch, srun and scontrol: appends its argv to
# $FAKE_DIR/calls.jsonl, then plays its part (see `_fake_bin`).
_FAKE = r'''
import json, os, pathlib, signal, sys, time
tool = os.path.basename(sys.argv[0])
d = pathlib.Path(os.environ["FAKE_DIR"])
with open(d / "calls.jsonl", "a") as f:
  f.write(json.dumps([tool] + sys.argv[1:]) + "\n")

def pop(name, default):
  """The first line of a queue file; the last line stays."""
  path = d / name
  lines = path.read_text().splitlines() if path.exists() else []
  if not lines:
    return default
  if len(lines) > 1:
    path.write_text("\n".join(lines[1:]) + "\n")
  return lines[0]

if tool == "gcloud":
  verb = sys.argv[4]
  if verb == "describe":
    state = pop("states", "ABSENT")
    if state == "ABSENT":
      sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: "
               "Resource not found")
    print(state)
  elif verb == "create":
    (d / "states").write_text("READY\n")
  elif verb == "ssh":
    command = next(a for a in sys.argv if a.startswith("--command="))
    if "jaxface-status" in command:
      for state in pop("worker_states", "running").split():
        print(f"jaxface-status worker {state}")
elif tool == "sbatch":
  print("4242;cluster")
elif tool == "srun":
  mode = os.environ.get("FAKE_SRUN", "0")
  if mode == "wait":  # a training step: SIGTERM saves and exits 75
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
    (d / "srun_started").touch()
    while True:
      time.sleep(0.05)
  sys.exit(int(mode))
'''


@pytest.fixture
def fake(tmp_path):
  """(environment with the stand-ins first on PATH, their folder)."""
  fake_dir = tmp_path / "fake"
  bin_dir = fake_dir / "bin"
  bin_dir.mkdir(parents=True)
  for tool in ("gcloud", "sbatch", "srun", "scontrol"):
    path = bin_dir / tool
    path.write_text(f"#!{sys.executable}\n{_FAKE}")
    path.chmod(0o755)
  env = dict(os.environ, FAKE_DIR=str(fake_dir),
             PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return env, fake_dir


def _calls(fake_dir):
  path = fake_dir / "calls.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()]


def _run(script, *args, env, cwd=REPO, timeout=60):
  return subprocess.run(["bash", str(script), *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def _commands(stdout):
  """The `+ command` lines of a dry run, each as its argv."""
  lines, commands, i = stdout.splitlines(), [], 0
  while i < len(lines):
    if lines[i].startswith("+ "):
      text = lines[i][2:]
      while True:  # a quoted argument may span lines
        try:
          commands.append(shlex.split(text))
          break
        except ValueError:
          i += 1
          text += "\n" + lines[i]
    i += 1
  return commands


def _option(argv, name):
  """The value of `--name=value` in argv."""
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def _line_with(script, text):
  lines = [line for line in script.splitlines() if text in line]
  assert len(lines) == 1, (text, script)
  return lines[0]


def _bash_syntax_ok(script):
  """bash parses it, and shellcheck (where installed) finds nothing."""
  result = subprocess.run(["bash", "-n"], input=script, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr
  if shutil.which("shellcheck"):
    result = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
  # -x: follow the shared helpers each script sources (launch/common.sh).
  result = subprocess.run(["shellcheck", "-x", str(TPU), str(SLURM)],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout


# ------------------------------------------------------------------ TPU VM
TPU_ARGS = ["--name=jf-test", "--zone=us-east5-b"]
TRAIN_ARGS = ["configs/inpaint.py:gender=male", "gs://bkt/runs/male",
              "--config.train.batch_size=64",
              "--config.data.source=folder:/data/it's here"]


def test_tpu_dry_run_prints_every_command_and_runs_none(fake):
  env, fake_dir = fake
  result = _run(TPU, "--dry-run", *TPU_ARGS, "--accelerator-type=v5p-16",
                "--spot", *TRAIN_ARGS, env=env)
  assert result.returncode == 0, result.stderr
  assert _calls(fake_dir) == []  # neither gcloud nor anything else ran
  cmds = _commands(result.stdout)
  assert [c[:5] for c in cmds if c[0] == "gcloud"] == [
      TPU_CMD + [v] for v in ("describe", "create", "scp", "ssh", "ssh")]
  describe, create, archive, scp, setup, start = cmds
  assert describe[5:] == ["jf-test", "--zone=us-east5-b",
                          "--format=value(state)"]
  assert create[5:] == ["jf-test", "--zone=us-east5-b",
                        "--accelerator-type=v5p-16",
                        "--version=v2-alpha-tpuv5", "--spot"]
  # The code: HEAD of this checkout, copied to every worker.
  assert archive[:3] == ["git", "-C", str(REPO)]
  assert archive[3:6] == ["archive", "--format=tar.gz", "-o"]
  assert archive[-1] == "HEAD"
  assert scp[5:] == [archive[6], "jf-test:jaxface.tgz", "--zone=us-east5-b",
                     "--worker=all"]
  for ssh in (setup, start):
    assert ssh[5:8] == ["jf-test", "--zone=us-east5-b", "--worker=all"]
  setup_cmd = _option(setup, "--command")
  start_cmd = _option(start, "--command")
  # Installed with the tpu extra (and gcs, for the gs:// workdir), pinned.
  assert ('~/jaxface-venv/bin/pip install -q -c constraints.txt -e '
          '".[tpu,gcs]"') in setup_cmd
  assert "python3.11 -m venv ~/jaxface-venv" in setup_cmd
  # The same training command on every worker, arguments intact.
  train = shlex.split(_line_with(start_cmd, "-m jaxface.main"))
  assert train == ["$HOME/jaxface-venv/bin/python", "-m", "jaxface.main",
                   "--config=configs/inpaint.py:gender=male",
                   "--workdir=gs://bkt/runs/male",
                   "--config.train.batch_size=64",
                   "--config.data.source=folder:/data/it's here", "&"]
  run_sh = start_cmd.split("<<\\JAXFACE_EOF\n")[1].split("JAXFACE_EOF\n")[0]
  for script in (setup_cmd, start_cmd, run_sh):
    _bash_syntax_ok(script)


@pytest.mark.parametrize("accelerator,version", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v6e-16", "v2-alpha-tpuv6e"),
    ("v4-32", "tpu-ubuntu2204-base"),
])
def test_tpu_runtime_version_follows_the_accelerator(fake, accelerator,
                                                     version):
  env, _ = fake
  result = _run(TPU, "--dry-run", *TPU_ARGS,
                f"--accelerator-type={accelerator}", *TRAIN_ARGS[:2], env=env)
  assert result.returncode == 0, result.stderr
  create = _commands(result.stdout)[1]
  assert create[4] == "create"
  assert f"--accelerator-type={accelerator}" in create
  assert f"--version={version}" in create
  assert "--spot" not in create and "--preemptible" not in create


def test_tpu_options_reach_gcloud(fake):
  env, _ = fake
  result = _run(TPU, "--dry-run", *TPU_ARGS, "--project=proj",
                "--version=v2-alpha-tpuv6e", "--preemptible",
                "--source=worktree", "--accelerator-type=v6e-8",
                "configs/inpaint.py", "/mnt/runs/a", env=env)
  assert result.returncode == 0, result.stderr
  # A workdir outside gs:// is each worker's own: said, not refused.
  assert "not a gs:// path" in result.stderr
  cmds = _commands(result.stdout)
  for cmd in cmds:
    if cmd[0] == "gcloud":
      assert "--project=proj" in cmd
  create = cmds[1]
  assert create[-2:] == ["--version=v2-alpha-tpuv6e", "--preemptible"]
  # The working tree: tracked and untracked files that git does not ignore.
  pipe = cmds[2]
  assert pipe[:2] == ["git", "-C"] and "ls-files" in pipe
  assert "--exclude-standard" in pipe and "|" in pipe
  setup = _option(cmds[4], "--command")
  assert '-e ".[tpu]"' in setup  # no gcs extra without a gs:// workdir


def test_tpu_watch_status_and_stop_dry_runs(fake):
  env, fake_dir = fake
  watch = _run(TPU, "--dry-run", *TPU_ARGS, "--watch", "--interval=60",
               *TRAIN_ARGS[:2], env=env)
  assert watch.returncode == 0, watch.stderr
  assert "--watch: every 60 s" in watch.stdout
  probe = _commands(watch.stdout)[-1]
  assert probe[4:7] == ["ssh", "jf-test", "--zone=us-east5-b"]
  assert "jaxface-status" in _option(probe, "--command")
  for action in ("--status", "--stop"):
    result = _run(TPU, "--dry-run", *TPU_ARGS, action, env=env)
    assert result.returncode == 0, result.stderr
    (cmd,) = _commands(result.stdout)
    assert cmd[4:8] == ["ssh", "jf-test", "--zone=us-east5-b", "--worker=all"]
    _bash_syntax_ok(_option(cmd, "--command"))
  assert _calls(fake_dir) == []


@pytest.mark.parametrize("args,message", [
    (TRAIN_ARGS[:2], "--name is required"),
    (["--name=jf", *TRAIN_ARGS[:2]], "--zone is required"),
    ([*TPU_ARGS, "configs/inpaint.py"], "WORKDIR is required"),
    (TPU_ARGS, "CONFIG and WORKDIR are required"),
    ([*TPU_ARGS, "--bogus", *TRAIN_ARGS[:2]], "unknown option: --bogus"),
    ([*TPU_ARGS, "--spot", "--preemptible", *TRAIN_ARGS[:2]],
     "--spot and --preemptible exclude each other"),
    ([*TPU_ARGS, "--accelerator-type=tpu8", *TRAIN_ARGS[:2]],
     "--accelerator-type=tpu8"),
    ([*TPU_ARGS, "--accelerator-type=v9x-8", *TRAIN_ARGS[:2]],
     "no default --version"),
    ([*TPU_ARGS, "--interval=0", *TRAIN_ARGS[:2]], "--interval=0"),
    ([*TPU_ARGS, "--source=tree", *TRAIN_ARGS[:2]], "--source=tree"),
    ([*TPU_ARGS, "--zone", ], "--zone needs a value"),
    ([*TPU_ARGS, "--spot=yes", *TRAIN_ARGS[:2]], "--spot takes no value"),
    ([*TPU_ARGS, *TRAIN_ARGS[:2], "--dry-run"],
     "--dry-run is a launcher option: put it before CONFIG"),
    ([*TPU_ARGS, "--status", *TRAIN_ARGS[:2]], "--status takes no CONFIG or WORKDIR"),
    ([*TPU_ARGS, "--stop", "--watch"], "--watch goes with a launch"),
    (["--name=Bad_Name", "--zone=z", *TRAIN_ARGS[:2]], "--name=Bad_Name"),
])
def test_tpu_bad_arguments_are_usage_errors(fake, args, message):
  env, fake_dir = fake
  result = _run(TPU, "--dry-run", *args, env=env)
  assert result.returncode == 2
  assert f"error: {message}" in result.stderr
  assert "--help" in result.stderr
  assert result.stdout == ""
  assert _calls(fake_dir) == []


def test_help_prints_usage(fake):
  env, fake_dir = fake
  for script in (TPU, SLURM):
    for flag in ("--help", "-h"):
      result = _run(script, flag, env=env)
      assert result.returncode == 0
      assert result.stdout.startswith(f"Usage: launch/{script.name} ")
      assert "--dry-run" in result.stdout
  assert _calls(fake_dir) == []


def test_tpu_launch_creates_an_absent_tpu_then_copies_and_starts(fake):
  env, fake_dir = fake
  result = _run(TPU, *TPU_ARGS, "--spot", *TRAIN_ARGS[:2], env=env)
  assert result.returncode == 0, result.stderr
  calls = _calls(fake_dir)
  assert [c[4] for c in calls] == ["describe", "create", "describe", "scp",
                                   "ssh", "ssh"]
  assert calls[1][-1] == "--spot"
  # The copied archive existed when scp ran and is gone afterwards.
  assert calls[3][6] == "jf-test:jaxface.tgz"
  assert not pathlib.Path(calls[3][5]).exists()


def test_tpu_launch_does_not_create_with_no_create(fake):
  env, fake_dir = fake
  result = _run(TPU, *TPU_ARGS, "--no-create", *TRAIN_ARGS[:2], env=env)
  assert result.returncode == 1
  assert "does not exist" in result.stderr
  assert [c[4] for c in _calls(fake_dir)] == ["describe"]


@pytest.mark.parametrize("states,worker_states,verbs,rc", [
    # Running, then stopped by SIGTERM (75) on a READY TPU: started again
    # on the same TPU; finished (0) on both workers after that.
    (["READY"], ["running running", "75 75", "0 0"],
     ["ssh", "ssh", "describe", "scp", "ssh", "ssh", "ssh"], 0),
    # Preempted Spot TPU: deleted, created again, code copied, started.
    (["READY", "PREEMPTED", "PREEMPTED", "READY"], ["0"],
     ["delete", "create", "describe", "scp", "ssh", "ssh", "ssh"], 0),
    # A worker failed: the watcher stops and says so.
    (["READY"], ["1 running"], ["ssh"], 1),
])
def test_tpu_watch_relaunches_after_preemption(fake, states, worker_states,
                                               verbs, rc):
  env, fake_dir = fake
  (fake_dir / "states").write_text("\n".join(states) + "\n")
  (fake_dir / "worker_states").write_text("\n".join(worker_states) + "\n")
  result = _run(TPU, *TPU_ARGS, "--spot", "--watch", "--interval=1",
                *TRAIN_ARGS[:2], env=env)
  assert result.returncode == rc, result.stderr
  calls = _calls(fake_dir)
  launch = ["describe", "scp", "ssh", "ssh"]
  assert [c[4] for c in calls[:4]] == launch
  # After the launch: one describe per poll, then what the poll did.
  after = [c[4] for c in calls[4:] if c[4] != "describe"]
  assert after == [v for v in verbs if v != "describe"]
  if "create" in verbs:
    create = next(c for c in calls if c[4] == "create")
    assert create[-1] == "--spot"
  if rc:
    assert "training failed (exit status 1)" in result.stderr


@pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid")
def test_tpu_worker_scripts_run_save_on_stop_and_report(fake, tmp_path):
  """The run script, status probe and stop command, run on this machine
  with a stand-in for the venv's python."""
  env, _ = fake
  result = _run(TPU, "--dry-run", *TPU_ARGS, "--watch", *TRAIN_ARGS, env=env)
  cmds = _commands(result.stdout)
  start = _option(cmds[5], "--command")
  assert "run.sh" in start
  status = _option(cmds[-1], "--command")  # --watch's probe
  stop = _option(_commands(_run(TPU, "--dry-run", *TPU_ARGS, "--stop",
                                env=env).stdout)[0], "--command")
  home = tmp_path / "home"
  python = home / "jaxface-venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  (home / "jaxface").mkdir()
  # Records its arguments; SIGTERM -> exit 75, as jaxface.main does.
  python.write_text(textwrap.dedent("""\
      #!/usr/bin/env bash
      printf '%s\\n' "$@" > "$HOME/args"
      [ "$FAKE_TRAIN" = wait ] || exit "$FAKE_TRAIN"
      trap 'exit 75' TERM
      while :; do sleep 0.05; done
      """))
  python.chmod(0o755)
  worker_env = dict(env, HOME=str(home))

  def on_worker(script, **extra):
    out = subprocess.run(["bash", "-c", script], env=dict(worker_env, **extra),
                         cwd=home, capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout

  def state():
    (line,) = on_worker(status).splitlines()
    assert line.startswith("jaxface-status ")
    return line.split()[-1]

  def wait_for(value):
    deadline = time.monotonic() + 20
    while (now := state()) != value:
      assert time.monotonic() < deadline, f"{now}, not {value}"
      time.sleep(0.05)

  try:
    assert state() == "none"
    on_worker(start, FAKE_TRAIN="wait")
    wait_for("running")
    deadline = time.monotonic() + 20
    while not (home / "args").exists():
      assert time.monotonic() < deadline
      time.sleep(0.05)
    assert (home / "args").read_text().splitlines() == [
        "-m", "jaxface.main", "--config=configs/inpaint.py:gender=male",
        "--workdir=gs://bkt/runs/male", "--config.train.batch_size=64",
        "--config.data.source=folder:/data/it's here"]
    # A second launch while the run is going is refused by the setup step.
    setup = _option(cmds[4], "--command")
    refused = subprocess.run(["bash", "-c", setup], env=worker_env, cwd=home,
                             capture_output=True, text=True, timeout=30,
                             check=False)
    assert refused.returncode == 1
    assert "a run is still going" in refused.stderr
    on_worker(stop)
    wait_for("stopped")  # saved (exit 75) on request: not to be relaunched
    assert (home / "jaxface-run" / "exit_status").read_text() == "75\n"
    on_worker(start, FAKE_TRAIN="0")
    wait_for("0")
    log = (home / "jaxface-run" / "train.log").read_text()
    assert log.count("start on") == 2 and "exit status 75" in log
  finally:
    pid_file = home / "jaxface-run" / "run.pid"
    if pid_file.exists():  # a run left by a failed assertion
      try:
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
      except (ProcessLookupError, ValueError):
        pass


# ------------------------------------------------------------------- SLURM
def _batch_script(stdout):
  """The batch script that a dry run writes with `cat > FILE <<'EOF'`."""
  lines = stdout.splitlines()
  start = next(i for i, line in enumerate(lines)
               if line.startswith("+ cat > "))
  end = lines.index("JAXFACE_SBATCH_EOF", start)
  path = shlex.split(lines[start][2:])[2]
  return path, "\n".join(lines[start + 1:end]) + "\n"


def _directives(script):
  return [line.split(" ", 1)[1] for line in script.splitlines()
          if line.startswith("#SBATCH ")]


def test_slurm_dry_run_prints_the_batch_script_and_sbatch(fake, tmp_path):
  env, fake_dir = fake
  result = _run(SLURM, "--dry-run", "--nodes=2", "--gpus-per-node=8",
                "--time=24:00:00", "--partition=gpu", "--account=acc",
                "--cpus-per-task=12", "--sbatch-arg=--exclusive",
                "--srun-arg=--cpu-bind=none", "--log-dir=logs",
                "configs/inpaint.py:gender=female", "runs/female",
                "--config.train.batch_size=64",
                "--config.data.source=folder:/data/it's here", env=env,
                cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert _calls(fake_dir) == []  # nothing submitted, nothing written
  assert not (tmp_path / "logs").exists()
  path, script = _batch_script(result.stdout)
  assert path.startswith(f"{tmp_path}/logs/jaxface-")
  assert _commands(result.stdout)[-1] == ["sbatch", "--parsable", path]
  assert _directives(script) == [
      "--job-name=jaxface", "--nodes=2", "--ntasks-per-node=8",
      "--gpus-per-node=8", "--cpus-per-task=12", "--partition=gpu",
      "--account=acc", "--time=24:00:00", "--signal=B:USR1@300",
      "--requeue", "--open-mode=append",
      f"--output={tmp_path}/logs/%x-%j.out", "--exclusive"]
  # One process per GPU, each seeing all of its node's GPUs.
  srun = shlex.split(_line_with(script, "srun "))
  assert srun == [
      "srun", "--ntasks-per-node=8", "--gpu-bind=none", "--cpu-bind=none",
      f"{REPO}/.venv/bin/python", "-m", "jaxface.main",
      "--config=configs/inpaint.py:gender=female", "--workdir=runs/female",
      "--config.train.batch_size=64",
      "--config.data.source=folder:/data/it's here", "&"]
  assert f"cd {tmp_path} || exit 1\n" in script
  assert 'scontrol requeue "$SLURM_JOB_ID"' in script
  _bash_syntax_ok(script)


def test_slurm_gres_and_a_new_venv(fake, tmp_path):
  env, fake_dir = fake
  venv = tmp_path / "venv"
  result = _run(SLURM, "--dry-run", "--gres", "--gpus-per-node=4",
                "--cuda=cuda13", f"--venv={venv}", "--signal-before-limit=0",
                "configs/inpaint.py", "runs/a", env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  cmds = _commands(result.stdout)
  assert cmds[0] == ["python3.11", "-m", "venv", str(venv)]
  assert cmds[1] == [f"{venv}/bin/pip", "install", "-q", "-c",
                     f"{REPO}/constraints.txt", "-e", f"{REPO}[cuda13]"]
  _, script = _batch_script(result.stdout)
  directives = _directives(script)
  assert "--gres=gpu:4" in directives and "--ntasks-per-node=4" in directives
  assert not any(d.startswith(("--gpus-per-node", "--signal"))
                 for d in directives)
  assert not venv.exists() and _calls(fake_dir) == []


@pytest.mark.parametrize("args,message", [
    ([], "CONFIG and WORKDIR are required"),
    (["configs/inpaint.py"], "WORKDIR is required"),
    (["--nodes=0", "c", "w"], "--nodes=0: a positive whole number"),
    (["--gpus-per-node=two", "c", "w"], "--gpus-per-node=two"),
    (["--cuda=rocm", "c", "w"], "--cuda=rocm"),
    (["--max-requeues=-1", "c", "w"], "--max-requeues=-1"),
    (["--bogus", "c", "w"], "unknown option: --bogus"),
    (["--nodes"], "--nodes needs a value"),
    (["--gres=4", "c", "w"], "--gres takes no value"),
    (["c", "w", "--nodes=2"],
     "--nodes=2 is a launcher option: put it before CONFIG"),
    (["--job-name=a b", "c", "w"], "--job-name=a b"),
])
def test_slurm_bad_arguments_are_usage_errors(fake, args, message):
  env, fake_dir = fake
  result = _run(SLURM, "--dry-run", *args, env=env)
  assert result.returncode == 2
  assert f"error: {message}" in result.stderr
  assert "--help" in result.stderr
  assert result.stdout == ""
  assert _calls(fake_dir) == []


def test_slurm_submits_the_script_it_prints(fake, tmp_path):
  env, fake_dir = fake
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").symlink_to(sys.executable)
  args = ["--nodes=2", f"--venv={venv}", "--log-dir=logs",
          "configs/inpaint.py", "runs/a"]
  dry = _run(SLURM, "--dry-run", *args, env=env, cwd=tmp_path)
  result = _run(SLURM, *args, env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "Submitted job 4242" in result.stdout
  (call,) = _calls(fake_dir)
  assert call[:2] == ["sbatch", "--parsable"]
  written = pathlib.Path(call[2])
  assert written.parent == tmp_path / "logs"
  assert written.read_text() == _batch_script(dry.stdout)[1]


@pytest.mark.parametrize("srun,signal_to,restarts,requeued,rc", [
    ("0", None, 0, False, 0),       # trained to the end
    ("1", None, 0, False, 1),       # failed: not requeued
    ("75", None, 0, True, 75),      # stopped after saving: requeued
    ("75", None, 20, False, 75),    # ... unless --max-requeues is used up
    ("wait", "USR1", 0, True, 75),  # time limit near: save, requeue
    ("wait", "TERM", 0, False, 75),  # SLURM's SIGTERM: SLURM decides
])
def test_slurm_batch_script_requeues_after_a_save(fake, tmp_path, srun,
                                                  signal_to, restarts,
                                                  requeued, rc):
  env, fake_dir = fake
  dry = _run(SLURM, "--dry-run", "--nodes=2", "configs/inpaint.py", "runs/a",
             env=env, cwd=tmp_path)
  _, script = _batch_script(dry.stdout)
  job_env = dict(env, FAKE_SRUN=srun, SLURM_JOB_ID="77",
                 SLURM_JOB_NODELIST="node[1-2]",
                 SLURM_RESTART_COUNT=str(restarts))
  job = subprocess.Popen(["bash", "-c", script], env=job_env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
  if signal_to:
    deadline = time.monotonic() + 20
    while not (fake_dir / "srun_started").exists():
      assert time.monotonic() < deadline and job.poll() is None
      time.sleep(0.05)
    if signal_to == "USR1":  # --signal=B:USR1: the batch shell only
      job.send_signal(signal.SIGUSR1)
    else:  # preemption or scancel: every process of the job
      os.killpg(job.pid, signal.SIGTERM)
  out, _ = job.communicate(timeout=30)
  assert job.returncode == rc, out
  requeues = [c for c in _calls(fake_dir) if c[0] == "scontrol"]
  assert requeues == ([["scontrol", "requeue", "77"]] if requeued else []), out
  assert [c[0] for c in _calls(fake_dir)].count("srun") == 1
