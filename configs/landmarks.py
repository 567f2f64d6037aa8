r"""98-point landmarks on masked faces (AdaptiveWing's stacked hourglass).

Smoke run on the embedded procedural faces (2-core CPU, a few minutes):

  python -m jaxface.main --config=configs/landmarks.py:tiny \
      --workdir=runs/landmarks_tiny

  Measured on a 2-core CPU: 10-13 steps/s (80-100 img/s) after ~10 s of
  compilation; the training NME falls from ~1.9 (step 25) to ~0.31 (step
  300); eval/nme from ~0.58 (step 100) to ~0.26 (step 300), eval/nme_masked
  ~0.27 (64x64 faces, a smoke test: the points are not yet usable).

CPU-sized real training (`lite`: 128x128, two hourglasses of 128 channels)
on a prepared dataset (docs/DATA.md), then the evaluation against the
MediaPipe teacher on the same masked faces:

  python -m jaxface.main --config=configs/landmarks.py:lite \
      --config.data.source=prepared:data/utkface --workdir=runs/landmarks_lite
  python -m jaxface.evaluate --workdir=runs/landmarks_lite --split=test \
      --size=256 --baseline=mediapipe:/path/to/mediapipe-0.10.21-...whl

  Measured on UTKFace (4,000 steps, 1 h 42 min on 2 CPU cores): test NME of
  the points under the mask 0.036 (MediaPipe on the same masked faces:
  0.098, and no face found in 30 % of them), visible points 0.020
  (docs/LANDMARKS.md has the table per gender).

Full size (one GPU or TPU host): the reference network, 4 stacks, 256x256,
24,153,036 parameters:

  python -m jaxface.main --config=configs/landmarks.py \
      --config.data.source=prepared:data/ffhq --workdir=runs/landmarks

The published WFLW weights (`WFLW_4HG.pth`) convert with
`python -m jaxface.weights.landmarks` (docs/LANDMARKS.md).

Config arguments after the colon (comma separated): `tiny`, `lite`,
`gender=all|male|female`, `size=<int>`. Any field can be overridden with
`--config.<dotted.key>=value`.
"""

import ml_collections

from jaxface import config_utils


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_utils.parse_arg(arg, tiny=False, lite=False, gender="all",
                                size=256)
  c = ml_collections.ConfigDict()
  c.task = "landmarks"
  c.seed = 0
  c.compute_dtype = "bfloat16"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  c.data = ml_collections.ConfigDict(dict(
      # procedural[:num_records=N] (embedded default) | prepared:DIR | ...
      # (jaxface.data.sources.open_source)
      source="procedural:num_records=100000",
      image_size=args["size"],
      gender=args["gender"],
      flip=True,             # with the WFLW flip permutation of the points
      mask_styles="",        # as configs/inpaint.py
      mask_templates="",
      num_threads=8,
      prefetch=8,
      worker_count=0,
  ))

  c.model = ml_collections.ConfigDict(dict(
      num_stacks=4,   # hourglasses; every one is supervised
      width=256,      # hourglass channels
      depth=4,        # hourglass halvings
      stem_width=64,  # the 7x7 stride-2 stem convolution
      # The network's input side; 0: data.image_size. Batches of another
      # size are resized on the device (e.g. evaluating a 128-px network
      # on 256-px faces), and the points mapped back.
      input_size=0,
  ))

  # Host-side augmentation of training examples (none for evaluation).
  c.augment = ml_collections.ConfigDict(dict(
      rotation=20.0,      # degrees, either way
      scale=0.1,          # zoom in [0.9, 1.1]
      translation=0.05,   # fraction of the side
      brightness=0.1,
      contrast=0.2,
      saturation=0.2,
      unmasked=0.1,       # share of faces shown without a mask
  ))

  c.losses = ml_collections.ConfigDict(dict(
      # Adaptive Wing (paper values).
      alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5,
      weight=10.0,             # W: pixels near a point weigh W + 1
      weight_threshold=0.2,    # M = dilate3x3(target) > this
      boundary=1.0,            # weight of the boundary heatmap channel
  ))

  c.optim = ml_collections.ConfigDict(dict(
      name="adam",           # adam | rmsprop
      lr=1e-4,
      b1=0.9, b2=0.999,      # adam
      decay=0.9,             # rmsprop
      schedule="cosine",     # constant | cosine (after a linear warm-up)
      warmup_steps=1000,
      final_lr_fraction=0.01,
      grad_clip=0.0,         # global-norm clipping; 0: none
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, num_steps=200_000, log_every=100, image_every=5_000,
      eval_every=10_000, checkpoint_every=5_000, max_to_keep=3,
      keep_every=50_000))
  c.eval = ml_collections.ConfigDict(dict(batch_size=32, num_batches=16))

  if args["lite"]:
    c.compute_dtype = "float32"
    c.data.image_size = 128 if args["size"] == 256 else args["size"]
    c.data.num_threads = 2
    c.data.prefetch = 4
    c.model.num_stacks = 2
    c.model.width = 128
    c.model.stem_width = 32
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.train.batch_size = 16
    c.train.num_steps = 4000
    c.train.log_every = 50
    c.train.image_every = 1000
    c.train.eval_every = 1000
    c.train.checkpoint_every = 250
    c.train.keep_every = 0
    c.eval.batch_size = 16
    c.eval.num_batches = 8

  if args["tiny"]:
    c.compute_dtype = "float32"
    c.data.image_size = 64 if args["size"] == 256 else args["size"]
    c.data.source = "procedural:num_records=2048"
    c.data.num_threads = 2
    c.data.prefetch = 2
    c.model.num_stacks = 2
    c.model.width = 32
    c.model.depth = 2
    c.model.stem_width = 16
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 20
    c.train.batch_size = 8
    c.train.num_steps = 300
    c.train.log_every = 25
    c.train.image_every = 100
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.keep_every = 0
    c.eval.batch_size = 8
    c.eval.num_batches = 4
  return c
