r"""The face-mask map M: Mask R-CNN (ResNet-50-FPN) or a one-pass U-Net.

Smoke run on the embedded procedural faces (2-core CPU, a few minutes):

  python -m jaxface.main --config=configs/segment.py:tiny \
      --workdir=runs/segment_tiny
  python -m jaxface.main --config=configs/segment.py:tiny,model=unet \
      --workdir=runs/segment_unet_tiny

CPU-sized real training (`lite`, 128x128) on a prepared dataset
(docs/DATA.md), then its evaluation (IoU, Dice, boundary F, uncovered
face-mask pixels per style; box and mask AP for Mask R-CNN):

  python -m jaxface.main --config=configs/segment.py:lite,model=unet \
      --config.data.source=prepared:data/utkface --workdir=runs/segment_unet
  python -m jaxface.evaluate --workdir=runs/segment_unet --split=test

  Measured on UTKFace (3,000 steps of batch 8 on 2 CPU cores, from
  scratch): U-Net (15 min) test mask IoU 0.963, 1.8 % of face-mask pixels
  left uncovered; Mask R-CNN (40 min) IoU 0.935, 3.8 % uncovered (2.3 %
  with `--config.model.dilation=1`), box AP@0.5 1.0, mask AP@[.5:.95] 0.90
  (docs/SEGMENT.md).

Full size (one GPU or TPU host): ResNet-50-FPN at 256x256, the paper's
input size:

  python -m jaxface.main --config=configs/segment.py \
      --config.data.source=prepared:data/ffhq --workdir=runs/segment

Config arguments after the colon (comma separated): `tiny`, `lite`,
`model=maskrcnn|unet`, `gender=all|male|female`, `size=<int>`. Any field
can be overridden with `--config.<dotted.key>=value`.
"""

import ml_collections

from jaxface import config_utils


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_utils.parse_arg(arg, tiny=False, lite=False, gender="all",
                                size=256, model="maskrcnn")
  c = ml_collections.ConfigDict()
  c.task = "segment"
  c.seed = 0
  c.compute_dtype = "bfloat16"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  c.data = ml_collections.ConfigDict(dict(
      # procedural[:num_records=N] (embedded default) | prepared:DIR | ...
      # (jaxface.data.sources.open_source)
      source="procedural:num_records=100000",
      image_size=args["size"],
      gender=args["gender"],
      flip=True,
      mask_styles="",        # as configs/inpaint.py: every style by default
      mask_templates="",
      num_threads=8,
      prefetch=8,
      worker_count=0,
  ))

  c.model = ml_collections.ConfigDict(dict(
      name=args["model"],    # maskrcnn | unet
      # Mask R-CNN: the backbone (ResNet-50-FPN by default).
      stage_sizes=(3, 4, 6, 3),
      width=64,
      fpn_channels=256,
      # frozen: fixed BatchNorm (imported COCO weights) | batch | group
      # (training from scratch at small batches).
      norm="group",
      epsilon=0.0,           # of the norm; 0: its own default
      # torchvision COCO maskrcnn_resnet50_fpn weights (.pth, or the .npz
      # of `python -m jaxface.weights.segment`) to start from; needs
      # norm=frozen (and freeze_at=2 to fine-tune as torchvision does).
      init_from="",
      freeze_at=0,           # 2: stem and stage 1 fixed (fine-tuning)
      representation=1024,   # box head FC width
      mask_channels=256,     # mask head conv width
      # RPN top-k per level before NMS, and overall after (torchvision's
      # 2000/2000 in training, 1000/1000 in inference).
      pre_nms_train=2000, post_nms_train=2000,
      pre_nms_test=1000, post_nms_test=1000,
      rpn_nms=0.7,
      rpn_samples=256, rpn_positive=0.5,
      # RoIAlign's `aligned`: False as torchvision's Mask R-CNN (what its
      # COCO weights saw); True: half-pixel-correct (RoIAlignV2).
      roi_aligned=False,
      roi_samples=512, roi_positive=0.25,
      box_score=0.05, box_nms=0.5, max_detections=100,
      # Face-mask detections at or above this score make the map M.
      score_threshold=0.5,
      # U-Net: channels per level, finest first.
      unet_widths=(32, 64, 128, 256),
      # Pixels M is grown by (both networks).
      dilation=0,
  ))

  # Host-side augmentation of training examples, plus the device-side
  # mosaic (none for evaluation).
  c.augment = ml_collections.ConfigDict(dict(
      rotation=15.0,        # degrees, either way
      scale_min=0.4,        # zoom range: < 1 shows smaller faces, on a
                            # plain colour
      scale_max=1.15,
      translation=0.1,      # fraction of the side
      brightness=0.1,
      contrast=0.2,
      saturation=0.3,
      unmasked=0.2,         # faces without a mask (an empty map)
      grey=0.1,             # black-and-white photos
      occlusion=0.2,        # fingers / a palm across the mask, cut out
                            # of the map (hands adjusting masks)
      mosaic=0.5,           # 2x2 scenes of four faces at half size
  ))

  c.losses = ml_collections.ConfigDict(dict(
      dice=1.0,             # U-Net: Dice beside BCE
  ))

  c.optim = ml_collections.ConfigDict(dict(
      name="adam",           # adam | rmsprop | sgd
      lr=1e-4,
      b1=0.9, b2=0.999,      # adam
      decay=0.9,             # rmsprop
      momentum=0.9,          # sgd
      schedule="cosine",     # constant | cosine (after a linear warm-up)
      warmup_steps=500,
      final_lr_fraction=0.01,
      grad_clip=10.0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=8, num_steps=60_000, log_every=100, image_every=5_000,
      eval_every=5_000, checkpoint_every=2_500, max_to_keep=3,
      keep_every=20_000))
  c.eval = ml_collections.ConfigDict(dict(batch_size=8, num_batches=32))

  if args["lite"]:
    c.compute_dtype = "float32"
    c.data.image_size = 128 if args["size"] == 256 else args["size"]
    c.data.num_threads = 2
    c.data.prefetch = 4
    # A quarter-width ResNet with two blocks per stage.
    c.model.stage_sizes = (2, 2, 2, 2)
    c.model.width = 16
    c.model.fpn_channels = 64
    c.model.representation = 256
    c.model.mask_channels = 64
    c.model.pre_nms_train, c.model.post_nms_train = 400, 200
    c.model.pre_nms_test, c.model.post_nms_test = 200, 100
    c.model.roi_samples = 128
    c.model.max_detections = 20
    c.model.unet_widths = (16, 32, 64, 128)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.train.batch_size = 8
    c.train.num_steps = 3000
    c.train.log_every = 50
    c.train.image_every = 500
    c.train.eval_every = 500
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
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.width = 8
    c.model.fpn_channels = 32
    c.model.representation = 64
    c.model.mask_channels = 32
    c.model.pre_nms_train, c.model.post_nms_train = 100, 64
    c.model.pre_nms_test, c.model.post_nms_test = 50, 32
    c.model.rpn_samples = 64
    c.model.roi_samples = 32
    c.model.max_detections = 8
    c.model.unet_widths = (8, 16, 32)
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
