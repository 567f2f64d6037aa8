r"""The weights of the whole pipeline, in one folder, loaded by name.

A bundle is a folder with one `.npz` per module and a `manifest.json`:

  gender.npz, landmarks.npz, segment.npz,
  inpaint_female.npz, inpaint_male.npz   (the paper's two generators)
  inpaint_all.npz                        (optional: one gender-agnostic
                                          generator, the baseline)
  manifest.json   {"name", "description", "modules": {module: {"file",
                  "sha256", "bytes", "task", "step", "params", "dtype",
                  "budget", ...}}}

Each `.npz` holds the trained network's inference variables (`variables/...`:
no optimiser state; floats stored as `dtype`, float16 by default, and read
back as float32) and the config of the run that trained it (`config`, JSON),
from which the task, and so the network, is rebuilt.

Bundles that ship with jaxface live in `jaxface/assets/weights/<name>/` and
load by name (`load("lite")`); any other folder loads by path. Every file is
checked against its SHA-256 in the manifest before it is read.

Writing a bundle from trained runs (the runs' newest checkpoints):

  python -m jaxface.weights.bundle --out=my_bundle \
      --gender=runs/gender --landmarks=runs/landmarks \
      --segment=runs/segment --inpaint_female=runs/inpaint_female \
      --inpaint_male=runs/inpaint_male [--inpaint_all=runs/inpaint_all]

  python -m jaxface.weights.bundle --verify=my_bundle
"""

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Mapping

import jax
import ml_collections
import ml_dtypes
import numpy as np

from jaxface.weights import npz

MANIFEST = "manifest.json"
# The modules of a bundle, in the order the pipeline runs them, and the
# task each one's run must have trained.
REQUIRED = {"gender": "gender", "landmarks": "landmarks",
            "segment": "segment", "inpaint_female": "inpaint",
            "inpaint_male": "inpaint"}
OPTIONAL = {"inpaint_all": "inpaint"}
MODULES = {**REQUIRED, **OPTIONAL}
SHIPPED_ROOT = pathlib.Path(__file__).resolve().parent.parent / "assets" / (
    "weights")
DTYPES = ("float16", "bfloat16", "float32")


class BundleError(ValueError):
  """A bundle is missing, incomplete or does not match its manifest."""


@dataclasses.dataclass(frozen=True)
class Module:
  """One trained network: the config it was trained with, its variables."""
  name: str
  config: ml_collections.ConfigDict
  variables: dict[str, Any]
  info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Bundle:
  name: str
  path: pathlib.Path
  manifest: dict[str, Any]
  modules: dict[str, Module]

  def __getitem__(self, module: str) -> Module:
    if module not in self.modules:
      raise KeyError(f"bundle {self.name!r} ({self.path}) has no module "
                     f"{module!r}; it has {sorted(self.modules)}")
    return self.modules[module]

  def __contains__(self, module: str) -> bool:
    return module in self.modules


def shipped() -> list[str]:
  """Names of the bundles that ship with jaxface."""
  if not SHIPPED_ROOT.is_dir():
    return []
  return sorted(p.name for p in SHIPPED_ROOT.iterdir()
                if (p / MANIFEST).is_file())


def resolve(name_or_path: str | os.PathLike[str]) -> pathlib.Path:
  """The folder of a shipped bundle's name, or the given folder."""
  text = os.fspath(name_or_path)
  candidate = SHIPPED_ROOT / text
  if os.sep not in text and (candidate / MANIFEST).is_file():
    return candidate
  path = pathlib.Path(text)
  if (path / MANIFEST).is_file():
    return path
  raise BundleError(
      f"weights {text!r}: neither a shipped bundle ({shipped() or 'none'}) "
      f"nor a folder with a {MANIFEST}")


def sha256(path: str | os.PathLike[str]) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
  path = pathlib.Path(folder) / MANIFEST
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise BundleError(f"{path}: unreadable manifest ({e})") from e
  if not isinstance(manifest, dict) or not isinstance(
      manifest.get("modules"), dict):
    raise BundleError(f"{path}: no 'modules' mapping")
  return manifest


def verify(folder: str | os.PathLike[str]) -> dict[str, Any]:
  """Checks every file of a bundle against its manifest.

  Returns:
    The manifest.

  Raises:
    BundleError: naming each file that is missing, of the wrong size or
      checksum, and each required module the manifest lacks.
  """
  folder = pathlib.Path(folder)
  manifest = read_manifest(folder)
  problems = []
  missing = [m for m in REQUIRED if m not in manifest["modules"]]
  if missing:
    problems.append(f"no module {', '.join(missing)} in {MANIFEST}")
  for module, entry in manifest["modules"].items():
    if module not in MODULES:
      problems.append(f"unknown module {module!r}")
      continue
    if not isinstance(entry, dict) or not all(
        k in entry for k in ("file", "bytes", "sha256")):
      problems.append(f"module {module!r}: its entry needs 'file', 'bytes' "
                      "and 'sha256'")
      continue
    path = folder / str(entry["file"])
    if path.resolve().parent != folder.resolve():
      problems.append(f"module {module!r}: file {entry['file']!r} is not in "
                      "the bundle's folder")
      continue
    if not path.is_file():
      problems.append(f"{path}: missing")
    elif path.stat().st_size != entry["bytes"]:
      problems.append(f"{path}: {path.stat().st_size} bytes, the manifest "
                      f"says {entry['bytes']}")
    elif sha256(path) != entry["sha256"]:
      problems.append(f"{path}: SHA-256 differs from the manifest's")
  if problems:
    raise BundleError(f"bundle {folder}: " + "; ".join(problems))
  return manifest


# ------------------------------------------------------------------ reading
def read_module(path: str | os.PathLike[str]
                ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(config, float32 variables) of one module file."""
  tree = npz.load_npz(path)
  if "config" not in tree or "variables" not in tree:
    raise BundleError(f"{path}: not a module file of a bundle (it needs "
                      "'config' and 'variables')")
  config = ml_collections.ConfigDict(
      json.loads(bytes(np.asarray(tree["config"], np.uint8)).decode()))
  variables = jax.tree.map(
      lambda a: a.astype(np.float32) if np.issubdtype(a.dtype, np.floating)
      or a.dtype.name == "bfloat16" else a, tree["variables"])
  return config, variables


def load(name_or_path: str | os.PathLike[str] = "lite",
         modules: tuple[str, ...] | None = None) -> Bundle:
  """A bundle by shipped name or folder, verified against its manifest.

  Args:
    name_or_path: "lite" (or another shipped name), or a bundle folder.
    modules: which modules to read (default: all in the manifest).
  """
  folder = resolve(name_or_path)
  manifest = verify(folder)
  wanted = modules or tuple(m for m in MODULES if m in manifest["modules"])
  out = {}
  for module in wanted:
    entry = manifest["modules"].get(module)
    if entry is None:
      raise BundleError(f"bundle {folder} has no module {module!r}")
    config, variables = read_module(folder / entry["file"])
    if config.task != MODULES[module]:
      raise BundleError(f"{folder / entry['file']}: module {module!r} needs "
                        f"task {MODULES[module]!r}, the file holds "
                        f"{config.task!r}")
    out[module] = Module(module, config, variables, entry)
  return Bundle(manifest.get("name", folder.name), folder, manifest, out)


# ------------------------------------------------------------------ writing
def _relative_paths(config: Mapping[str, Any]) -> dict[str, Any]:
  """The config with absolute paths cut to their base names (a bundle must
  not carry the paths of the machine it was written on)."""
  def clean(value):
    if isinstance(value, dict):
      return {k: clean(v) for k, v in value.items()}
    if isinstance(value, str) and ("/" in value) and (
        os.path.isabs(value.split(":", 1)[-1])):
      kind, sep, rest = value.rpartition(":")
      return f"{kind}{sep}{os.path.basename(rest)}"
    return value
  return clean(dict(config))


def write_module(path: str | os.PathLike[str],
                 config: ml_collections.ConfigDict,
                 variables: Mapping[str, Any], dtype: str = "float16"
                 ) -> dict[str, Any]:
  """Writes one module file: the variables (floats as `dtype`) and the
  config (absolute paths cut to base names).

  Returns:
    Its manifest entry without the file name and step: task, dtype,
    params, sha256, bytes.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: one of {DTYPES}")
  target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)

  def cast(key_path, a):
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
      return a
    out = a.astype(target)
    if not np.all(np.isfinite(out.astype(np.float32))):
      raise ValueError(f"{path}: {jax.tree_util.keystr(key_path)} does not fit "
                       f"{dtype} (largest magnitude {np.abs(a).max():.3g}); "
                       "store this module as float32")
    return out

  variables = jax.device_get(dict(variables))
  text = json.dumps(_relative_paths(config.to_dict()), sort_keys=True)
  npz.save_npz(path, {"variables": jax.tree_util.tree_map_with_path(
                          cast, variables),
                      "config": np.frombuffer(text.encode(), np.uint8)})
  os.chmod(path, 0o644)
  return {"task": config.task, "dtype": dtype,
          "params": int(sum(np.size(x) for x in
                            jax.tree.leaves(variables["params"]))),
          "sha256": sha256(path), "bytes": os.path.getsize(path)}


def export_run(workdir: str, output: str | os.PathLike[str],
               step: int | None = None, dtype: str = "float16"
               ) -> dict[str, Any]:
  """Writes one trained run's network (its newest checkpoint, or `step`)
  as a module file; returns its manifest entry (with the step)."""
  # pylint: disable-next=import-outside-toplevel
  from jaxface.train import loop
  config = loop.read_config(workdir)
  setup = loop.build(config, devices=jax.local_devices()[:1])
  state, step = loop.load_state(setup, workdir, step)
  entry = write_module(output, config,
                       setup.task.inference_variables(state), dtype)
  return {**entry, "step": int(step)}


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]
                   ) -> None:
  """Writes `manifest.json` atomically."""
  folder = pathlib.Path(folder)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-manifest-")
  with os.fdopen(fd, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
  os.chmod(tmp, 0o644)
  os.replace(tmp, folder / MANIFEST)


def write_bundle(folder: str | os.PathLike[str], runs: Mapping[str, str],
                 name: str = "", description: str = "",
                 dtype: str = "float16",
                 notes: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> dict[str, Any]:
  """Exports each module's run into `folder` and writes the manifest.

  Args:
    folder: created if need be.
    runs: {module: workdir}; every required module.
    name, description: for the manifest.
    dtype: how floats are stored.
    notes: extra manifest fields per module (training budget, quality).
  """
  missing = [m for m in REQUIRED if m not in runs]
  unknown = [m for m in runs if m not in MODULES]
  if missing or unknown:
    raise BundleError(f"modules missing: {missing}; unknown: {unknown}")
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  entries = {}
  for module, workdir in runs.items():
    entry = export_run(workdir, folder / f"{module}.npz", dtype=dtype)
    if entry["task"] != MODULES[module]:
      raise BundleError(f"{workdir}: module {module!r} needs a "
                        f"{MODULES[module]!r} run, it trained "
                        f"{entry['task']!r}")
    entries[module] = {"file": f"{module}.npz", **entry,
                       **dict((notes or {}).get(module, {}))}
  manifest = {"name": name or folder.name, "description": description,
              "written": datetime.date.today().isoformat(),
              "modules": entries}
  write_manifest(folder, manifest)
  return manifest


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  for _module in MODULES:
    flags.DEFINE_string(_module, None, f"The trained run of `{_module}`.")
  flags.DEFINE_string("out", None, "The bundle folder to write.")
  flags.DEFINE_string("name", "", "The bundle's name (default: the folder's).")
  flags.DEFINE_string("description", "", "One line for the manifest.")
  flags.DEFINE_enum("dtype", "float16", DTYPES, "How floats are stored.")
  flags.DEFINE_string("notes", "", "A JSON file {module: {field: value}} of "
                      "extra manifest fields (training budget, quality).")
  flags.DEFINE_string("verify", None, "Instead: check a bundle (a shipped "
                      "name or a folder) against its manifest.")

  def main(argv):
    del argv
    f = flags.FLAGS
    if f.verify:
      folder = resolve(f.verify)
      manifest = verify(folder)
      for module, entry in manifest["modules"].items():
        print(f"{module:15s} {entry['file']:20s} {entry['bytes']:>10d} B  "
              f"step {entry.get('step', '-'):>6}  {entry['sha256'][:16]}  ok")
      return
    if not f.out:
      raise app.UsageError("pass --out (or --verify)")
    runs = {m: getattr(f, m) for m in MODULES if getattr(f, m)}
    notes = json.loads(pathlib.Path(f.notes).read_text()) if f.notes else None
    manifest = write_bundle(f.out, runs, f.name, f.description, f.dtype,
                            notes)
    total = sum(e["bytes"] for e in manifest["modules"].values())
    print(f"wrote {f.out}: {len(runs)} modules, {total / 2**20:.1f} MiB")

  app.run(main)
