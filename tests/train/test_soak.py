"""The soak command: kills and damaged checkpoints leave the result exact.

A short run on the toy task; the 30-minute soak of the tiny inpainting
config is run by hand (`python -m jaxface.soak`, docs/RELIABILITY.md).
"""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_soak_survives_kills_and_damage_with_an_exact_result(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "jaxface.soak",
       f"--config={REPO / 'tests' / 'toy_config.py'}",
       f"--workdir={tmp_path}", "--minutes=10", "--kills=3", "--steps=400",
       "--checkpoint_every=5", "--kill_after=1.5", "--damage=1", "--seed=3"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  table = out.stdout
  assert out.returncode == 0, table + out.stderr[-3000:]
  assert re.search(r"result\s+EQUAL", table), table
  kills = int(re.search(r"SIGKILLs\s+(\d+)", table).group(1))
  damaged = int(re.search(r"checkpoints damaged\s+(\d+)", table).group(1))
  assert kills == 3, table
  assert int(re.search(r"lives\s+(\d+)", table).group(1)) == kills + 1
  detected = int(re.search(r"detected and skipped\s+(\d+)", table).group(1))
  assert detected <= damaged, table  # a flipped bit may hit unused bytes
  digests = re.findall(r"step 400, digest (\w+)", table)
  assert len(digests) == 2 and digests[0] == digests[1], table
