"""Shared pytest setup: four fake CPU devices so sharded code runs anywhere."""

import pathlib
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache
import pytest

# Test helpers (`numerics`) import as top-level modules.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# Must run before any JAX computation creates the CPU client.
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """`../shared/data` beside the checkout; tests that need it skip without."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent (fresh clone): real-data test "
                "skipped")
  return SHARED_DATA


@pytest.fixture(scope="module")
def module_compilation_cache(tmp_path_factory):
  """A persistent compilation cache for one test module (restored after).

  For modules that build the same step more than once (a run and its
  resumption): the second build loads what the first compiled.
  """
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  compilation_cache.reset_cache()


@pytest.fixture
def torch_vgg19():
  """A PyTorch VGG-19 laid out like torchvision's (no torchvision needed).

  `features` has torchvision's indices (convs at 0, 2, 5, ...), so its state
  dict has the keys and shapes of `vgg19-dcbb9e9d.pth`; the classifier is a
  small stand-in that importers must ignore. He-initialised so activations
  stay O(1) through all 16 convs. Skips without torch.
  """
  torch = pytest.importorskip("torch")
  nn = torch.nn
  torch.manual_seed(0)
  layers, channels = [], 3
  for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
            512, 512, 512, 512, "M", 512, 512, 512, 512, "M"):
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      conv = nn.Conv2d(channels, v, kernel_size=3, padding=1)
      nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
      nn.init.normal_(conv.bias, std=0.1)
      layers += [conv, nn.ReLU(inplace=False)]
      channels = v
  model = nn.Module()
  model.features = nn.Sequential(*layers)
  model.classifier = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Dropout(),
                                   nn.Linear(8, 4))
  return model.eval()
