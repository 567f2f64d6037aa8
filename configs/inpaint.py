r"""Landmark-guided inpainting GAN (LaFIn), one model per gender.

Smoke run on the embedded procedural faces (2-core CPU, about 3 minutes):

  python -m jaxface.main --config=configs/inpaint.py:tiny \
      --workdir=runs/inpaint_tiny

  Measured on 2-core CPUs: 1.8-2.6 steps/s (14-21 img/s, by machine) after
  ~20 s of start-up and compilation; the hole-normalised L1
  (train/loss/l1) falls from ~1.27 (steps 1-25) to ~0.60 (steps 276-300);
  eval/psnr of the composite rises from ~22.5 dB (step 100) to ~25.5 dB
  (step 300), eval/ssim from ~0.78 to ~0.81.
  The reconstructions are blurry at this size and step count.

CPU-sized real training (`lite`: 128x128, generator and discriminator at
half width, 4 residual blocks) on a prepared dataset (docs/DATA.md), one run
per gender as in the paper (and `gender=all` for the gender-agnostic
baseline). No pretrained VGG-19 can be had here, so `lite` trains without the
perceptual and style losses (pixel + TV + LSGAN); pass
`--config.vgg_weights=... --config.losses.perceptual=0.1
--config.losses.style=250` where the weights exist:

  python -m jaxface.main --config=configs/inpaint.py:lite,gender=female \
      --config.data.source=prepared:data/utkface --workdir=runs/inpaint_female

Full size (one GPU or TPU host; 256x256, the reference architecture):

  python -m jaxface.main --config=configs/inpaint.py:gender=male \
      --workdir=runs/inpaint_male --config.vgg_weights=/path/vgg19-dcbb9e9d.pth

  (`gender=female` and `gender=all` likewise; the paper trains one model per
  gender.) The reference trains 500k-1.3M steps at batch 4; the paper reports
  PSNR 28.8 (male) / 30.0 (female) on FFHQ and 31.4 / 33.3 on CelebA at the
  end of training. On the procedural faces numbers are not comparable: they
  are a smoke test, not a benchmark.

Config arguments after the colon (comma separated): `tiny`, `lite`,
`gender=all|male|female`, `size=<int>`. Any field can be overridden with
`--config.<dotted.key>=value`, e.g. `--config.train.batch_size=32`.
"""

import ml_collections

from jaxface import config_utils

PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_utils.parse_arg(arg, tiny=False, lite=False, gender="all",
                                size=256)
  c = ml_collections.ConfigDict()
  c.task = "inpaint"
  c.seed = 0
  # bfloat16 on GPU/TPU; float32 for exact CPU runs. Parameters, losses,
  # spectral-norm iterations and metrics are float32 either way.
  c.compute_dtype = "bfloat16"
  # torchvision's vgg19-dcbb9e9d.pth or a .npz from jaxface.weights; empty =
  # random VGG features (smoke tests only; a warning is logged).
  c.vgg_weights = ""

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  c.data = ml_collections.ConfigDict(dict(
      # procedural[:num_records=N,seed=K] (embedded default, no files) |
      # prepared:DIR | folder:DIR | celeba:DIR | ffhq:DIR
      # (see jaxface.data.sources.open_source)
      source="procedural:num_records=100000",
      image_size=args["size"],
      gender=args["gender"],  # all | male | female
      flip=True,
      # Face masks: comma-separated styles of jaxface.data.facemask
      # (surgical, surgical_pleated, n95, kn95, cloth, cloth_printed,
      # template, box, freeform); empty = the source's own masks when it has
      # them (procedural), else the six procedural styles.
      mask_styles="",
      mask_templates="",     # a MaskTheFace-format directory for `template`
      num_threads=8,         # host threads decoding/rendering records
      prefetch=8,            # batches read ahead
      worker_count=0,        # >0: grain worker processes
  ))

  c.model = ml_collections.ConfigDict(dict(
      generator=dict(width=64, num_res_blocks=7, dilation=2),
      discriminator=dict(width=64),
      # auto | xla | chunked (no N x N matrix kept: TPU) | cudnn (GPU)
      attention_impl="auto",
      # Rematerialisation (jax.checkpoint) of every conv stage, residual
      # block and attention of G, D and the VGG loss network, under a named
      # policy: none | dots_saveable | dots_with_no_batch_dims_saveable |
      # nothing_saveable. Trades compute for memory (docs/PERFORMANCE.md).
      remat="none",
      # The decoder's 2x upsampling: subpixel (four 2x2 convolutions in one;
      # fast gradients everywhere) | dilated (a convolution of the
      # zero-dilated input; its kernel gradient is slow on XLA:CPU).
      conv_transpose="subpixel",
  ))

  c.losses = ml_collections.ConfigDict(dict(
      l1=1.0, perceptual=0.1, style=250.0, tv=0.1, adversarial=0.01,
      perceptual_layers=PERCEPTUAL_LAYERS,
      style_layers=STYLE_LAYERS,
      # LaFIn feeds VGG raw [0, 1] RGB; True applies ImageNet mean/std.
      vgg_imagenet_normalize=False,
      # Channels of VGG's first block (torchvision: 64; pretrained weights
      # need 64). Smaller only for smoke tests with random VGG features.
      vgg_width=64,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      g_lr=1e-4, d_lr=1e-5, b1=0.0, b2=0.9))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=16,          # global; the reference used 4
      num_steps=500_000,
      log_every=100,
      image_every=5_000,
      eval_every=10_000,
      checkpoint_every=5_000,
      max_to_keep=3,          # the newest checkpoints kept...
      keep_every=100_000,     # ...plus these steps for good (0: none)
  ))

  c.eval = ml_collections.ConfigDict(dict(batch_size=16, num_batches=32))

  if args["lite"]:
    c.compute_dtype = "float32"
    c.data.image_size = 128 if args["size"] == 256 else args["size"]
    c.data.num_threads = 2
    c.data.prefetch = 4
    c.model.generator.width = 32
    c.model.generator.num_res_blocks = 4
    c.model.discriminator.width = 32
    # Without pretrained VGG-19 features the perceptual and style terms
    # are off (a weight of 0 skips the loss network entirely).
    c.losses.perceptual = 0.0
    c.losses.style = 0.0
    c.train.batch_size = 8
    c.train.num_steps = 8000
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
    c.model.generator.width = 16
    c.model.generator.num_res_blocks = 4
    c.model.discriminator.width = 16
    c.losses.vgg_width = 16
    c.train.batch_size = 8
    c.train.num_steps = 300
    c.train.log_every = 25
    c.train.image_every = 100
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.eval.batch_size = 8
    c.eval.num_batches = 4
  return c
