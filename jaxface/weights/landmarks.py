r"""Importer of the AdaptiveWing landmark network's weights into `models.FAN`.

  python -m jaxface.weights.landmarks --input=WFLW_4HG.pth \
      --output=fan_wflw.npz
  python -m jaxface.weights.landmarks --workdir=runs/landmarks_lite \
      --output=fan_lite.npz          # a trained run's network (export_run)

Sources:
  * the published `WFLW_4HG.pth` (protossw512/AdaptiveWingLoss; re-hosted as
    `alignment_WFLW_4HG.pth`): a dict whose `'state_dict'` holds the
    reference FAN's PyTorch state dict (REFERENCE.md section 7.3), read
    without torch by `torch_pickle`. A bare state dict and a DataParallel
    `module.` prefix are accepted too.
  * our own `.npz` (`save_npz` / `load_npz`) holding `params`,
    `batch_stats` and `meta/input_size` (the side the network was trained
    at); the architecture is read back from the shapes (`architecture`).

`models.landmarks.FAN` names its modules after the reference's state dict,
so the conversion is a renaming plus layout changes:

  torch                          flax
  conv1.conv.{weight,bias}       params/conv1/{kernel,bias}  (CoordConv)
  m{i}.coordconv.conv.*          params/m{i}/coordconv/*     (CoordConv)
  <block>.downsample.0.*         <block>/downsample_bn/*     (BatchNorm)
  <block>.downsample.2.weight    <block>/downsample_conv/kernel
  <conv>.weight  [O, I, kh, kw]  params/<conv>/kernel  [kh, kw, I, O]
  <bn>.weight, <bn>.bias         params/<bn>/scale, params/<bn>/bias
  <bn>.running_mean, _var        batch_stats/<bn>/mean, batch_stats/<bn>/var

`<bn>.num_batches_tracked` has no counterpart and is ignored. The input
channels need no reordering: `models.landmarks.add_coords` appends the
coordinate channels in the reference's order.
"""

import functools
import os
import re
from typing import Any, Mapping

from absl import app
from absl import flags
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.models import landmarks as landmarks_model
from jaxface.weights import npz
from jaxface.weights import report
from jaxface.weights import torch_pickle

_TORCH_SUFFIXES = ('.pth', '.pt', '.pth.tar')
# How many offending keys an error message lists of each kind.
_COLLECTIONS = ('params', 'batch_stats')
# flax leaf name -> torch tensor name, per collection.
_LEAF_TO_TORCH = {
    'params': {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'},
    'batch_stats': {'mean': 'running_mean', 'var': 'running_var'},
}
# Modules that the reference wraps in a container: its CoordConv keeps the
# conv in `.conv`, a ConvBlock's downsample is Sequential(BN, ReLU, conv).
_MODULE_TO_TORCH = {
    'coordconv': 'coordconv.conv',
    'downsample_bn': 'downsample.0',
    'downsample_conv': 'downsample.2',
}
_STACK_KEY = re.compile(r'^l(\d+)\.weight$')


def _config(num_stacks: int, num_landmarks: int, width: int, depth: int,
            stem_width: int) -> str:
  return (f'FAN(num_stacks={num_stacks}, num_landmarks={num_landmarks}, '
          f'width={width}, depth={depth}, stem_width={stem_width})')


@functools.lru_cache(maxsize=8)
def _expected_flat(num_stacks: int, num_landmarks: int, width: int,
                   depth: int, stem_width: int
                   ) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Shapes of every FAN variable, keyed by (collection, *path)."""
  model = landmarks_model.FAN(num_stacks=num_stacks,
                              num_landmarks=num_landmarks, width=width,
                              depth=depth, stem_width=stem_width)
  # The smallest legal input: the hourglass halves it `depth` times after
  # the stem's factor 4. Shapes of the variables do not depend on it.
  side = 4 * 2**depth
  image = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), image)
  flat = traverse_util.flatten_dict(
      {c: variables[c] for c in _COLLECTIONS})
  return {k: tuple(v.shape) for k, v in flat.items()}


def expected_shapes(num_stacks: int = 4, *, num_landmarks: int = 98,
                    width: int = 256, depth: int = 4,
                    stem_width: int = 64) -> dict[str, Any]:
  """The shapes of `FAN(...)`'s `{'params': ..., 'batch_stats': ...}`."""
  return traverse_util.unflatten_dict(
      _expected_flat(num_stacks, num_landmarks, width, depth, stem_width))


def torch_name(key: tuple[str, ...]) -> str:
  """The reference's state-dict name of the flax variable (collection, ...).

  Args:
    key: the collection and the path, e.g. `('params', 'm0', 'coordconv',
      'kernel')`.

  Returns:
    The torch key, e.g. `'m0.coordconv.conv.weight'`.

  Raises:
    ValueError: a collection or leaf name the reference has no tensor for.
  """
  collection, *modules, leaf = key
  renames = _LEAF_TO_TORCH.get(collection)
  if renames is None or leaf not in renames or not modules:
    raise ValueError(f'no torch counterpart for FAN variable '
                     f"{'/'.join(key)}")
  # The stem is a CoordConv too (only the top-level `conv1`; a ConvBlock's
  # `conv1` is a plain conv).
  parts = (['conv1.conv'] if modules == ['conv1'] else
           [_MODULE_TO_TORCH.get(m, m) for m in modules])
  return '.'.join(parts + [renames[leaf]])


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  """A flax variable in torch's layout: kernels HWIO -> OIHW."""
  return value.transpose(3, 2, 0, 1) if leaf == 'kernel' else value


def _from_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  """A torch tensor in flax's layout: conv weights OIHW -> HWIO."""
  return value.transpose(2, 3, 1, 0) if leaf == 'kernel' else value


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if leaf == 'kernel':
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)
  return shape


def _is_float(dtype: np.dtype) -> bool:
  # bfloat16 and float8 (ml_dtypes) are not np.floating subtypes.
  return (np.issubdtype(dtype, np.floating) or
          (dtype.type.__module__.startswith('ml_dtypes') and
           dtype.kind == 'V'))


def _report(source: str, config: str, missing: list[str],
            unexpected: list[str], wrong: list[str]) -> None:
  """Raises a ValueError listing the first keys of each problem, if any."""
  report.raise_problems(f'{source}: does not fit {config}: ', missing,
                        unexpected, wrong, wrong_label='wrong')


def _infer_num_stacks(keys: Any, source: str) -> int:
  stacks = [int(m.group(1)) for m in map(_STACK_KEY.match, keys) if m]
  if not stacks:
    raise ValueError(f'{source}: no heatmap head l{{i}}.weight found, cannot '
                     'infer num_stacks; is this an AdaptiveWing FAN '
                     'checkpoint?')
  return max(stacks) + 1


def _state_dict_of(loaded: Any, source: str) -> Mapping[str, Any]:
  """The flat state dict inside a checkpoint object, `module.` stripped."""
  if not isinstance(loaded, Mapping):
    raise ValueError(f'{source}: expected a state dict, got '
                     f'{type(loaded).__name__}')
  # The published file: {'state_dict': {...}} (possibly with other entries).
  if isinstance(loaded.get('state_dict'), Mapping):
    loaded = loaded['state_dict']
  if not all(isinstance(k, str) for k in loaded):
    raise ValueError(f'{source}: state dict keys must be strings')
  if loaded and all(k.startswith('module.') for k in loaded):
    loaded = torch_pickle.strip_prefix(loaded, 'module.')
  return loaded


def from_torch(path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
               *, num_stacks: int | None = None, num_landmarks: int = 98,
               width: int = 256, depth: int = 4,
               stem_width: int = 64) -> dict[str, Any]:
  """Converts the reference FAN's PyTorch weights to `FAN` variables.

  Every key and shape is checked: the state dict must hold exactly the
  tensors of the reference `FAN` of this configuration (plus the ignored
  `num_batches_tracked` of its BatchNorms).

  Args:
    path_or_state_dict: a `.pth` file (`WFLW_4HG.pth`: a dict with key
      `'state_dict'`, or a bare state dict), or such an object already
      loaded; tensors may be numpy arrays or torch tensors, keys may carry a
      DataParallel `module.` prefix.
    num_stacks: hourglasses; inferred from the `l{i}.weight` keys when None.
    num_landmarks: landmark heatmaps (98 for WFLW); one boundary heatmap
      is added.
    width: channels of the hourglasses (256 in the reference).
    depth: hourglass recursion depth (4).
    stem_width: channels of the 7x7 stem convolution (64).

  Returns:
    `{'params': ..., 'batch_stats': ...}` of float32 numpy arrays for
    `FAN(num_stacks, num_landmarks, width, depth, stem_width)`.

  Raises:
    ValueError: the file or object is not such a state dict: the message
      names the source and the first missing, unexpected and wrongly shaped
      (or non-float) keys.
  """
  if isinstance(path_or_state_dict, Mapping):
    source = 'the given state dict'
    loaded = path_or_state_dict
  else:
    source = os.fspath(path_or_state_dict)
    loaded = torch_pickle.load(source)
  state_dict = _state_dict_of(loaded, source)
  if num_stacks is None:
    num_stacks = _infer_num_stacks(state_dict, source)
  config = (num_stacks, num_landmarks, width, depth, stem_width)
  expected = _expected_flat(*config)

  wanted = {torch_name(key): key for key in expected}
  # BatchNorm's step counter: no flax counterpart, accepted and dropped.
  ignored = {name[:-len('running_mean')] + 'num_batches_tracked'
             for name in wanted if name.endswith('.running_mean')}
  # Problems are listed in the file's order (the network's, for a state
  # dict of the reference), so the first one shown is the earliest layer.
  flat, wrong, unexpected = {}, [], []
  for name, value in state_dict.items():
    if name in ignored:
      continue
    if name not in wanted:
      unexpected.append(repr(name))
      continue
    key = wanted[name]
    value = torch_pickle.to_numpy(value)
    want = _torch_shape(key[-1], expected[key])
    if value.shape != want or not _is_float(value.dtype):
      wrong.append(f'{name!r} {value.dtype} {value.shape} (expected float '
                   f'{want})')
      continue
    flat[key] = np.ascontiguousarray(
        _from_torch_layout(key[-1], value), dtype=np.float32)
  missing = [repr(name) for name in wanted if name not in state_dict]
  _report(source, _config(*config), missing, unexpected, wrong)
  return traverse_util.unflatten_dict(flat)


def to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The reference's state dict of `FAN` variables (inverse of `from_torch`).

  Args:
    variables: `{'params': ..., 'batch_stats': ...}` of a `FAN` (numpy or
      jax arrays; other collections are not allowed).

  Returns:
    `{torch name: numpy array}` with OIHW conv weights, including a zero
    int64 `num_batches_tracked` per BatchNorm so that the reference's
    `load_state_dict(..., strict=True)` accepts it.

  Raises:
    ValueError: a collection or variable the reference has no tensor for.
  """
  extra = set(variables) - set(_COLLECTIONS)
  if extra:
    raise ValueError(f'FAN variables have no torch counterpart for '
                     f'collections {sorted(extra)}')
  flat = traverse_util.flatten_dict(
      {c: variables[c] for c in _COLLECTIONS if c in variables})
  state_dict = {}
  for key, value in flat.items():
    name = torch_name(key)
    value = np.asarray(jax.device_get(value))
    state_dict[name] = np.ascontiguousarray(_to_torch_layout(key[-1], value))
    if key[0] == 'batch_stats' and key[-1] == 'var':
      prefix = name[:-len('running_var')]
      state_dict[prefix + 'num_batches_tracked'] = np.zeros((), np.int64)
  return state_dict


def _check_variables(variables: Mapping[str, Any], source: str,
                     config: tuple[int, ...]) -> None:
  """Raises unless `variables` has exactly FAN(*config)'s keys and shapes."""
  expected = _expected_flat(*config)
  flat = traverse_util.flatten_dict(dict(variables))
  missing = ['/'.join(k) for k in expected if k not in flat]
  unexpected = ['/'.join(k) for k in flat if k not in expected]
  wrong = [f"{'/'.join(k)} {np.shape(v)} (expected {expected[k]})"
           for k, v in flat.items()
           if k in expected and tuple(np.shape(v)) != expected[k]]
  _report(source, _config(*config), missing, unexpected, wrong)


def architecture(params: Mapping[str, Any]) -> dict[str, int]:
  """The `FAN` attributes that `params` were made for, from their shapes.

  Returns:
    {'num_stacks', 'num_landmarks', 'width', 'depth', 'stem_width'}.

  Raises:
    ValueError: not a FAN parameter tree.
  """
  try:
    stacks = 1 + max(int(name[1:]) for name in params
                     if re.fullmatch(r'l\d+', name))
    head = np.shape(params['l0']['kernel'])  # [1, 1, width, K + 1]
    depth = max(int(name[3:]) for name in params['m0']
                if re.fullmatch(r'b1_\d+', name))
    stem = np.shape(params['conv1']['kernel'])[-1]
  except (KeyError, ValueError, TypeError) as e:
    raise ValueError(f'not FAN parameters ({type(e).__name__}: {e})') from e
  return dict(num_stacks=stacks, num_landmarks=head[3] - 1, width=head[2],
              depth=depth, stem_width=stem)


def save_npz(path: str | os.PathLike[str], variables: Mapping[str, Any], *,
             input_size: int = 256) -> None:
  """Saves `FAN` variables (`params` and `batch_stats`) as `.npz` (atomic).

  `input_size`, the image side the network was trained at (the reference:
  256), is stored beside them as `meta/input_size`; the architecture is
  read back from the shapes.
  """
  extra = set(variables) - set(_COLLECTIONS)
  absent = set(_COLLECTIONS) - set(variables)
  if extra or absent:
    raise ValueError(f'expected FAN variables with collections '
                     f'{list(_COLLECTIONS)}, got {sorted(variables)}')
  tree = {c: variables[c] for c in _COLLECTIONS}
  tree['meta'] = {'input_size': np.asarray(input_size, np.int32)}
  npz.save_npz(path, tree)


def load_npz(path: str | os.PathLike[str], *, num_stacks: int | None = None,
             num_landmarks: int | None = None, width: int | None = None,
             depth: int | None = None, stem_width: int | None = None
             ) -> dict[str, Any]:
  """Loads `FAN` variables saved by `save_npz`, checking every key and shape.

  Args:
    path: the `.npz` file.
    num_stacks, num_landmarks, width, depth, stem_width: the FAN the file
      must hold; each inferred from the shapes when None.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of numpy arrays as saved.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: corrupt file, or missing, unexpected or wrongly shaped
      variables (the message names the file and the first of each).
  """
  source = os.fspath(path)
  variables = npz.load_npz(source)
  variables.pop('meta', None)
  if num_stacks is None:
    heads = (f'{name}.weight' for name in variables.get('params', {}))
    num_stacks = _infer_num_stacks(heads, source)
  given = dict(num_stacks=num_stacks, num_landmarks=num_landmarks,
               width=width, depth=depth, stem_width=stem_width)
  if any(v is None for v in given.values()):
    try:
      inferred = architecture(variables.get('params', {}))
    except ValueError as e:
      raise ValueError(f'{source}: {e}') from None
    given = {k: inferred[k] if v is None else v for k, v in given.items()}
  _check_variables(variables, source,
                   (given['num_stacks'], given['num_landmarks'],
                    given['width'], given['depth'], given['stem_width']))
  return variables


def input_size(path: str | os.PathLike[str]) -> int:
  """The input side stored with `.npz` weights; 256 (the reference's) else."""
  path = os.fspath(path)
  if path.lower().endswith('.npz'):
    meta = npz.load_npz(path).get('meta', {})
    if 'input_size' in meta:
      return int(meta['input_size'])
  return 256


def load(path: str | os.PathLike[str], **config: int) -> dict[str, Any]:
  """Loads `FAN` variables from a `.pth`/`.pt`/`.pth.tar` or `.npz` file.

  Args:
    path: the weights file; the format follows its extension.
    **config: `num_stacks`, `num_landmarks`, `width`, `depth`,
      `stem_width` as for `from_torch` (reference values by default).

  Returns:
    `{'params': ..., 'batch_stats': ...}` of numpy arrays.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: unknown extension or wrong contents.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'FAN weights not found: {path}')
  lower = path.lower()
  if lower.endswith(_TORCH_SUFFIXES):
    return from_torch(path, **config)
  if lower.endswith('.npz'):
    return load_npz(path, **config)
  raise ValueError(f'{path}: unknown FAN weights format; expected one of '
                   f"{_TORCH_SUFFIXES + ('.npz',)}")


def count(variables: Mapping[str, Any], collection: str = 'params') -> int:
  """The number of scalars in one collection of `variables`."""
  return sum(int(np.prod(np.shape(v)))
             for v in jax.tree.leaves(variables[collection]))


def export_run(workdir: str, output: str, step: int | None = None
               ) -> tuple[dict[str, Any], int, int]:
  """Writes a trained landmark run's network as `.npz` weights.

  The checkpoint is restored (and verified against its checksums) by the
  training loop's reader; the network's input size goes with the weights.

  Returns:
    (variables, input size, step).
  """
  # pylint: disable-next=import-outside-toplevel
  from jaxface.train import loop
  config = loop.read_config(workdir)
  setup = loop.build(config, devices=jax.local_devices()[:1])
  if not isinstance(setup.task.model, landmarks_model.FAN):
    raise ValueError(f'{workdir}: the run trained task {config.task!r}, '
                     'not a FAN landmark network')
  state, step = loop.load_state(setup, workdir, step)
  variables = jax.device_get({'params': state.params,
                              'batch_stats':
                                  state.model_state['batch_stats']})
  size = setup.task.image_size
  save_npz(output, variables, input_size=size)
  return variables, size, step


def define_flags() -> None:
  """Registers the command-line flags (only when run as a program)."""
  flags.DEFINE_string('input', None, 'WFLW_4HG.pth (or .pt, .pth.tar, .npz).')
  flags.DEFINE_string('workdir', None,
                      'Instead of --input: a trained landmark run to export.')
  flags.DEFINE_integer('step', None, '--workdir: the checkpoint (default: '
                       'the newest).')
  flags.DEFINE_string('output', None, 'The .npz to write.')
  flags.DEFINE_integer('num_stacks', None,
                       'Hourglasses (default: inferred from the file).')
  flags.DEFINE_integer('num_landmarks', None, 'Landmark heatmaps per stack '
                       '(default: 98, or inferred from an .npz).')
  flags.DEFINE_integer('width', None, 'Channels of the hourglasses (256).')
  flags.DEFINE_integer('depth', None, 'Hourglass recursion depth (4).')
  flags.DEFINE_integer('stem_width', None,
                       'Channels of the stem convolution (64).')
  flags.mark_flags_as_required(['output'])


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if (FLAGS.input is None) == (FLAGS.workdir is None):
    raise app.UsageError('pass exactly one of --input and --workdir')
  if FLAGS.workdir:
    variables, size, step = export_run(FLAGS.workdir, FLAGS.output,
                                       FLAGS.step)
    source = f'{FLAGS.workdir} step {step} ({size} px input)'
  else:
    config = {k: FLAGS[k].value for k in ('num_stacks', 'num_landmarks',
                                          'width', 'depth', 'stem_width')
              if FLAGS[k].value is not None}
    variables = load(FLAGS.input, **config)
    save_npz(FLAGS.output, variables)
    source = FLAGS.input
  arch = architecture(variables['params'])
  print(f"{_config(*arch.values())} from {source}: "
        f'{count(variables):,} parameters, '
        f"{count(variables, 'batch_stats'):,} BatchNorm statistics")
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
