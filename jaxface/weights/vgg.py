"""Importers for VGG-19 feature weights into `jaxface.models.vgg.VGG19` params.

Sources:
  * torchvision's ImageNet `vgg19` checkpoint (`vgg19-dcbb9e9d.pth`), read
    without torch by `torch_pickle`; `classifier.*` is ignored.
  * our own `.npz` (`save_npz` / `load_npz`), e.g. a converted copy.

The param tree is `{'conv1_1': {'kernel': [3, 3, I, O], 'bias': [O]}, ...}`
with kernels in HWIO (torch stores OIHW).
"""

import os
from typing import Any, Mapping

import numpy as np

from jaxface.models import vgg as vgg_model
from jaxface.weights import npz
from jaxface.weights import torch_pickle

_TORCH_SUFFIXES = ('.pth', '.pt', '.pth.tar')


def expected_shapes(
    last_layer: str = 'relu5_4') -> dict[str, dict[str, tuple[int, ...]]]:
  """The param shapes of VGG19 built up to `last_layer`."""
  shapes = {}
  in_channels = 3
  for layer in vgg_model.layers_up_to(last_layer):
    out_channels = vgg_model.CHANNELS[layer]
    shapes[vgg_model.conv_name(layer)] = {
        'kernel': (3, 3, in_channels, out_channels),
        'bias': (out_channels,),
    }
    in_channels = out_channels
  return shapes


def from_torchvision(path_or_state_dict: str | os.PathLike[str] | Mapping[
    str, Any], *, last_layer: str = 'relu5_4',
                     dtype: Any = np.float32) -> dict[str, Any]:
  """Converts a torchvision `vgg19` state dict to VGG19 params.

  Args:
    path_or_state_dict: a `.pth` file or an already loaded state dict with
      keys `features.{i}.weight` / `features.{i}.bias` (a `module.` prefix is
      stripped).
    last_layer: convert the convs up to this ReLU (the full 16 by default; a
      VGG19 with an earlier `last_layer` ignores extra params, but passing its
      `last_layer` here keeps the tree exact).
    dtype: dtype of the returned arrays.

  Returns:
    `{'conv1_1': {'kernel': HWIO, 'bias': [O]}, ...}` of numpy arrays.

  Raises:
    KeyError: a needed key is missing (the message names key and source).
    ValueError: a tensor has the wrong shape (names key, shapes and source).
  """
  if isinstance(path_or_state_dict, Mapping):
    source = 'the given state dict'
    state_dict = path_or_state_dict
  else:
    source = os.fspath(path_or_state_dict)
    state_dict = torch_pickle.load(source)
    if not isinstance(state_dict, Mapping):
      raise ValueError(f'{source}: expected a state dict, got '
                       f'{type(state_dict).__name__}')
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = torch_pickle.strip_prefix(state_dict, 'module.')

  params = {}
  for name, shapes in expected_shapes(last_layer).items():
    layer = 'relu' + name[len('conv'):]
    index = vgg_model.TORCHVISION_CONV_INDEX[layer]
    out_channels, in_channels = shapes['kernel'][3], shapes['kernel'][2]
    entry = {}
    for torch_name, ours, torch_shape in (
        ('weight', 'kernel', (out_channels, in_channels, 3, 3)),
        ('bias', 'bias', (out_channels,))):
      key = f'features.{index}.{torch_name}'
      if key not in state_dict:
        raise KeyError(f'{source}: missing {key!r} (for {name}/{ours}); is '
                       'this a torchvision vgg19 checkpoint?')
      value = torch_pickle.to_numpy(state_dict[key])
      if value.shape != torch_shape:
        raise ValueError(f'{source}: {key!r} has shape {value.shape}, expected '
                         f'{torch_shape} for VGG-19 {name}/{ours}')
      if torch_name == 'weight':
        value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
      entry[ours] = np.ascontiguousarray(value, dtype=dtype)
    params[name] = entry
  return params


def _check_tree(params: Mapping[str, Any], source: str,
                last_layer: str) -> None:
  """Raises if `params` lacks a VGG19 param or has one of the wrong shape."""
  for name, shapes in expected_shapes(last_layer).items():
    for leaf, shape in shapes.items():
      if name not in params or leaf not in params[name]:
        raise KeyError(f'{source}: missing VGG-19 param {name}/{leaf}')
      got = tuple(np.shape(params[name][leaf]))
      if got != shape:
        raise ValueError(f'{source}: VGG-19 param {name}/{leaf} has shape '
                         f'{got}, expected {shape}')


def save_npz(path: str | os.PathLike[str], params: Mapping[str, Any]) -> None:
  """Saves VGG19 params in our `.npz` format (atomic write)."""
  npz.save_npz(path, params)


def load_npz(path: str | os.PathLike[str], *,
             last_layer: str = 'relu5_4') -> dict[str, Any]:
  """Loads VGG19 params saved by `save_npz`.

  Args:
    path: the `.npz` file.
    last_layer: the convs up to this ReLU must be present with the right
      shapes (extra entries are kept).

  Returns:
    The params tree of numpy arrays.
  """
  params = npz.load_npz(path)
  _check_tree(params, os.fspath(path), last_layer)
  return params


def load_vgg19(path: str | os.PathLike[str], *,
               last_layer: str = 'relu5_4') -> dict[str, Any]:
  """Loads VGG19 params from a torchvision `.pth`/`.pt`/`.pth.tar` or `.npz`.

  Args:
    path: the weights file; the format follows its extension.
    last_layer: the deepest layer whose params must be present (and, for
      torchvision files, the deepest converted).

  Returns:
    The VGG19 `params` tree of numpy float32 arrays.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: unknown extension or wrong contents.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'VGG-19 weights not found: {path}')
  lower = path.lower()
  if lower.endswith(_TORCH_SUFFIXES):
    return from_torchvision(path, last_layer=last_layer)
  if lower.endswith('.npz'):
    return load_npz(path, last_layer=last_layer)
  raise ValueError(f'{path}: unknown VGG-19 weights format; expected one of '
                   f"{_TORCH_SUFFIXES + ('.npz',)}")
