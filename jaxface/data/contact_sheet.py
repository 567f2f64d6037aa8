r"""Writes a contact sheet PNG of faces wearing synthetic masks.

  python -m jaxface.data.contact_sheet --source=prepared:data/utkface \
      --out=runs/contact_sheet.png

A quick look at what the training pipelines feed the networks: `--n` faces
(default 64) from a source, each with a face mask rendered from its
landmarks in a random style (`--styles` to choose), as a square grid; with
`--landmarks` the 98 points are drawn as dots and `--holes` adds each
example's binary mask as a second tile.
"""

import math

from absl import app
from absl import flags
import ml_collections
import numpy as np

from jaxface import visualize
from jaxface.data import examples
from jaxface.data import pipeline
from jaxface.data import schema


def _masked_face(face: examples.Face, rng,
                 augment) -> dict[str, np.ndarray]:
  del rng, augment
  return {schema.MASKED_IMAGE: face.masked_image, schema.MASK: face.mask,
          schema.LANDMARKS: face.landmarks}


# What a sheet shows of each face.
EXAMPLES = examples.ExampleSpec(
    keys=(schema.MASKED_IMAGE, schema.MASK, schema.LANDMARKS),
    make=_masked_face)


def sheet(source: str, n: int, size: int, *, split: str = "train",
          styles: str = "", templates: str = "", seed: int = 0,
          landmarks: bool = False, holes: bool = False,
          shuffle: bool = True) -> np.ndarray:
  """The uint8 contact sheet (rows of masked faces)."""
  data = ml_collections.ConfigDict(dict(
      source=source, image_size=size, gender="all", flip=False,
      mask_styles=styles, mask_templates=templates))
  src = pipeline.open_split(data, split)
  maker = pipeline.ExampleMaker(EXAMPLES, data, src, seed=seed,
                                augment=False)
  tiles = []
  order = np.arange(len(src))
  if shuffle:
    order = np.random.default_rng(seed).permutation(order)
  for i in order:
    example = maker(0, i)
    if not example:
      continue
    face = example[schema.MASKED_IMAGE].astype(np.float32) / 255
    if landmarks:
      face = visualize.draw_points(face, example[schema.LANDMARKS], radius=1,
                                   color=(0.1, 1.0, 0.1))
    tiles.append(face)
    if holes:
      tiles.append(np.repeat(example[schema.MASK].astype(np.float32), 3,
                             axis=-1))
    if len(tiles) >= n * (2 if holes else 1):
      break
  if not tiles:
    raise ValueError(f"no readable faces with landmarks in {source!r}")
  columns = int(math.ceil(math.sqrt(len(tiles))))
  if holes and columns % 2:
    columns += 1
  rows = int(math.ceil(len(tiles) / columns))
  tiles += [np.ones_like(tiles[0])] * (rows * columns - len(tiles))
  grid = np.stack(tiles).reshape(rows, columns, size, size, 3)
  # make_grid takes columns of batches: column c = tiles c, c+columns, ...
  return visualize.make_grid([grid[:, c] for c in range(columns)],
                             max_rows=rows)


def define_flags() -> None:
  """Registers the command-line flags (only when run as a program)."""
  flags.DEFINE_string("source", "procedural",
                      "procedural | prepared:DIR | folder:DIR | ...")
  flags.DEFINE_string("out", "contact_sheet.png", "Output PNG.")
  flags.DEFINE_integer("n", 64, "Number of faces.")
  flags.DEFINE_integer("size", 128, "Tile size in pixels.")
  flags.DEFINE_string("split", "train", "Split of the source.")
  flags.DEFINE_string(
      "styles", "", "Comma-separated mask styles (default: the source's "
      "own masks if it has them, else the six procedural styles).")
  flags.DEFINE_string("templates", "",
                      "MaskTheFace directory for `template`.")
  flags.DEFINE_integer("seed", 0, "Which random draws to show.")
  flags.DEFINE_bool("landmarks", False, "Draw the landmarks.")
  flags.DEFINE_bool("holes", False, "Show the binary masks too.")
  flags.DEFINE_bool("shuffle", True,
                    "Pick faces across the split (else the first).")


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  grid = sheet(FLAGS.source, FLAGS.n, FLAGS.size, split=FLAGS.split,
               styles=FLAGS.styles, templates=FLAGS.templates,
               seed=FLAGS.seed, landmarks=FLAGS.landmarks,
               holes=FLAGS.holes, shuffle=FLAGS.shuffle)
  visualize.write_png(FLAGS.out, grid)
  print(f"wrote {FLAGS.out} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
