r"""Trains the four modules in order and writes their weight bundle.

  python -m jaxface.recipe --data=prepared:data/utkface --workdir=runs/lite
  python -m jaxface.recipe --set=full --data=prepared:data/ffhq \
      --workdir=runs/full --extra=inpaint_male=--config.vgg_weights=vgg.pth

One `python -m jaxface.main` run per module (gender classifier, landmarks,
face-mask segmentation (U-Net), the female and male inpainting generators,
and the gender-agnostic one), each in `WORKDIR/<module>`, then
`python -m jaxface.weights.bundle` writes `WORKDIR/bundle` (or `--out`),
which `python -m jaxface.reconstruct --weights=...` loads. Every run resumes
where it stopped, so the recipe can be stopped and started again at will;
finished runs return at once. `--dry_run` prints the commands.

`--set`: `lite` (CPU-sized, what ships as `jaxface/assets/weights/lite`),
`full` (the paper's sizes), `tiny` (smoke test on the embedded procedural
faces; `--data` is ignored).
"""

import argparse
import shlex
import subprocess
import sys
from typing import Sequence

SETS = ("lite", "full", "tiny")
# (module, config file, config argument) in training order.
MODULES = (
    ("gender", "configs/gender.py", ""),
    ("landmarks", "configs/landmarks.py", ""),
    ("segment", "configs/segment.py", "model=unet"),
    ("inpaint_female", "configs/inpaint.py", "gender=female"),
    ("inpaint_male", "configs/inpaint.py", "gender=male"),
    ("inpaint_all", "configs/inpaint.py", "gender=all"),
)


def commands(data: str, workdir: str, which: str = "lite",
             extra: Sequence[str] = (), out: str = "",
             modules: Sequence[str] = ()) -> list[list[str]]:
  """The recipe's commands, in order (the bundle last)."""
  if which not in SETS:
    raise ValueError(f"--set={which!r}: one of {SETS}")
  # `--extra=MODULE=FLAG` adds FLAG to that module's run ("all": every).
  names = [m for m, _, _ in MODULES]
  extras: dict[str, list[str]] = {}
  for item in extra:
    module, _, flag = item.partition("=")
    if module not in names + ["all"] or not flag:
      raise ValueError(f"--extra={item!r}: MODULE=FLAG with MODULE one of "
                       f"{names + ['all']}")
    extras.setdefault(module, []).append(flag)
  unknown = [m for m in modules if m not in names]
  if unknown:
    raise ValueError(f"--only {unknown}: modules are {names}")
  out_cmds, bundle_args = [], []
  wanted = set(modules) or {m for m, _, _ in MODULES}
  for module, config, arg in MODULES:
    run_dir = f"{workdir}/{module}"
    bundle_args.append(f"--{module}={run_dir}")
    if module not in wanted:
      continue
    args = ",".join(a for a in (which if which != "full" else "", arg) if a)
    cmd = [sys.executable, "-m", "jaxface.main",
           f"--config={config}" + (f":{args}" if args else ""),
           f"--workdir={run_dir}"]
    if which != "tiny":
      cmd.append(f"--config.data.source={data}")
    cmd += extras.get("all", []) + extras.get(module, [])
    out_cmds.append(cmd)
  out_cmds.append([sys.executable, "-m", "jaxface.weights.bundle",
                   f"--out={out or workdir + '/bundle'}",
                   f"--name={which}"] + bundle_args)
  return out_cmds


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxface.recipe",
                              description=__doc__.split("\n\n")[1])
  p.add_argument("--data", default="",
                 help="dataset spec for every module, e.g. "
                 "prepared:data/utkface")
  p.add_argument("--workdir", required=True)
  p.add_argument("--set", dest="which", default="lite", choices=SETS)
  p.add_argument("--out", default="", help="bundle folder "
                 "(default: WORKDIR/bundle)")
  p.add_argument("--extra", action="append", default=[],
                 help="MODULE=FLAG (MODULE 'all': every run), added to that "
                 "run's command, e.g. all=--config.train.num_steps=100")
  p.add_argument("--only", action="append", default=[],
                 help="train only these modules (the bundle still lists all)")
  p.add_argument("--dry_run", action="store_true")
  args = p.parse_args(argv)
  if args.which != "tiny" and not args.data:
    p.error("--data is needed (except for --set=tiny)")
  try:
    cmds = commands(args.data, args.workdir, args.which, args.extra,
                    args.out, args.only)
  except ValueError as e:
    p.error(str(e))
  for cmd in cmds:
    line = " ".join(shlex.quote(c) for c in cmd)
    print(f"+ {line}", flush=True)
    if args.dry_run:
      continue
    status = subprocess.call(cmd)
    if status != 0:
      print(f"error: exit status {status} of: {line}\n(run the recipe again "
            "to resume)", file=sys.stderr)
      return status
  return 0


if __name__ == "__main__":
  sys.exit(main())
