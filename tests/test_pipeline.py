"""The fused reconstruction pipeline against its modules run one by one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import pipeline
from jaxface import route
from jaxface.models import layers
from jaxface.models import segment as seg
from jaxface.weights import bundle as bundle_lib
import pipeline_helpers

SIZE = pipeline_helpers.SIZE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bundle")
  pipeline_helpers.make_bundle(folder)
  return folder


@pytest.fixture(scope="module")
def rec(tiny):
  return pipeline.Reconstructor(str(tiny), buckets=(4, 8))


def _faces(n, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0.2, 0.8, (n, 1, 1, 3))
  noise = rng.normal(0, 0.1, (n, SIZE, SIZE, 3))
  return np.clip(base + noise, 0, 1).astype(np.float32)


def test_fused_equals_modules_one_by_one(rec):
  faces = _faces(3)
  got = rec(faces, intermediates=True)
  p, v = rec.pipeline, rec.variables
  x = jnp.asarray(faces)
  p_male = p.gender.predict(p.gender.inference_state(v["gender"]), x)
  points = p.landmarks.predict(p.landmarks.inference_state(v["landmarks"]),
                               x)
  small = layers.resize_square(x, p.segment_size)
  binary = p.segment.predict(p.segment.inference_state(v["segment"]),
                             small)["map"]
  binary = (jax.image.resize(binary, (3, SIZE, SIZE, 1), "linear")
            >= 0.5).astype(jnp.float32)
  mask = seg.dilate(binary, rec.dilation)
  holed = x * (1 - mask) + mask
  lmap = layers.landmark_map(points, SIZE, SIZE)
  outs = []
  for i in range(3):
    g = int(p_male[i] >= 0.5)
    outs.append(p.generator.apply(v["inpaint"][g], holed[i:i + 1],
                                  lmap[i:i + 1], mask[i:i + 1]))
  generated = jnp.concatenate(outs)
  expected = jnp.where(mask > 0.5, generated, x)
  np.testing.assert_allclose(got.p_male, p_male, atol=1e-5)
  np.testing.assert_allclose(got.landmarks, points, atol=1e-3)
  np.testing.assert_array_equal(got.mask, mask)
  np.testing.assert_allclose(got.output, expected, atol=2e-5)
  assert got.output.shape == (3, SIZE, SIZE, 3)


def test_composite_leaves_unmasked_pixels_bit_identical(rec):
  faces = _faces(4, seed=1)
  mask = np.zeros((4, SIZE, SIZE, 1), np.float32)
  mask[:, 20:44, 10:50] = 1
  got = rec(faces, mask=mask, intermediates=True)
  keep = np.broadcast_to(mask == 0, faces.shape)
  assert np.array_equal(got.output[keep], faces[keep])
  assert not np.allclose(got.output[~keep], faces[~keep])
  np.testing.assert_array_equal(got.mask, mask)  # the user's map, as given


def test_routing_per_face_and_override(rec):
  faces = _faces(4, seed=2)
  mask = np.zeros((4, SIZE, SIZE, 1), np.float32)
  mask[:, 24:48, 16:48] = 1
  landmarks = np.tile(np.linspace(8, 56, 98 * 2).reshape(1, 98, 2),
                      (4, 1, 1)).astype(np.float32)
  auto = rec(faces, mask, landmarks, intermediates=True)
  by_gender = {g: rec(faces, mask, landmarks, gender=g, intermediates=True)
               for g in ("female", "male")}
  assert set(np.unique(by_gender["male"].gender)) == {1}
  assert set(np.unique(by_gender["female"].gender)) == {0}
  # The two generators differ, and each face got its own gender's.
  assert not np.allclose(by_gender["male"].generated,
                         by_gender["female"].generated)
  for i in range(4):
    g = ("female", "male")[int(auto.p_male[i] >= 0.5)]
    assert auto.gender[i] == int(g == "male")
    np.testing.assert_allclose(auto.generated[i],
                               by_gender[g].generated[i], atol=2e-5)
  np.testing.assert_array_equal(auto.landmarks, landmarks)


def test_mixed_batch_routes_each_face(rec):
  # A mixed batch by construction: given p(male), through the routing the
  # pipeline uses.
  faces = jnp.asarray(_faces(4, seed=3))
  mask = jnp.ones((4, SIZE, SIZE, 1)) * (jnp.arange(SIZE)[None, :, None,
                                                           None] > 30)
  lmap = jnp.zeros((4, SIZE, SIZE, 1))
  holed = pipeline.masked_input(faces, mask)
  gens = rec.variables["inpaint"]
  p_male = jnp.array([0.9, 0.1, 0.6, 0.2])
  out = route.inpaint(rec.pipeline.generator, gens, p_male, holed, lmap,
                      mask)
  for i, g in enumerate([1, 0, 1, 0]):
    ref = rec.pipeline.generator.apply(gens[g], holed[i:i + 1],
                                       lmap[i:i + 1], mask[i:i + 1])
    np.testing.assert_allclose(out[i:i + 1], ref, atol=2e-5)


def test_agnostic_generator_and_bucketing(tiny):
  rec = pipeline.Reconstructor(str(tiny), agnostic=True, buckets=(2, 4))
  one = rec(_faces(1)[0])
  assert one.shape == (SIZE, SIZE, 3)
  five = rec(_faces(5))  # beyond the largest bucket: padded to 8
  assert five.shape == (5, SIZE, SIZE, 3)
  assert pipeline.bucket(5, (2, 4)) == 8
  assert pipeline.bucket(3, (2, 4)) == 4


def test_bfloat16_is_close_to_float32(tiny, rec):
  faces = _faces(4, seed=4)
  mask = np.zeros((4, SIZE, SIZE), np.uint8)
  mask[:, 20:40, 20:40] = 255
  half = pipeline.Reconstructor(str(tiny), dtype="bfloat16", buckets=(4,))
  a, b = rec(faces, mask), half(faces, mask)
  assert b.dtype == np.float32
  assert np.mean(np.abs(a - b)) < 0.05


def test_bad_shapes_are_named(rec):
  with pytest.raises(ValueError, match=f"{SIZE}, {SIZE}, 3"):
    rec(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="mask must be"):
    rec(_faces(2), mask=np.zeros((2, 8, 8), np.float32))
  with pytest.raises(ValueError, match="gender must be"):
    rec(_faces(2), gender="other")


def test_bundle_verify_names_a_tampered_file(tmp_path):
  folder = tmp_path / "b"
  manifest = pipeline_helpers.make_bundle(folder, dtype="float16",
                                          agnostic=False)
  loaded = bundle_lib.load(str(folder))
  assert set(loaded.modules) == set(bundle_lib.REQUIRED)
  leaf = jax.tree.leaves(loaded["gender"].variables["params"])[0]
  assert leaf.dtype == np.float32  # stored float16, read back float32
  assert manifest["modules"]["gender"]["dtype"] == "float16"
  path = folder / "segment.npz"
  data = bytearray(path.read_bytes())
  data[-100] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(bundle_lib.BundleError, match="segment.npz: SHA-256"):
    bundle_lib.load(str(folder))
  (folder / "gender.npz").unlink()
  with pytest.raises(bundle_lib.BundleError, match="gender.npz: missing"):
    bundle_lib.verify(folder)
  with pytest.raises(bundle_lib.BundleError, match="neither a shipped"):
    bundle_lib.resolve(str(tmp_path / "nowhere"))


def test_shipped_weights_match_their_manifest():
  names = bundle_lib.shipped()
  assert "lite" in names
  for name in names:
    manifest = bundle_lib.verify(bundle_lib.resolve(name))
    assert set(bundle_lib.REQUIRED) <= set(manifest["modules"])
    total = sum(e["bytes"] for e in manifest["modules"].values())
    assert total <= 32 * 2**20, f"bundle {name}: {total} bytes"
  lite = bundle_lib.load("lite")  # by name, verified, every module read
  assert lite["inpaint_female"].config.task == "inpaint"
  assert "budget" in lite.manifest["modules"]["gender"]


def test_float16_overflow_and_escaping_files_are_refused(tmp_path):
  config = pipeline_helpers.tiny_configs()["gender"]
  with pytest.raises(ValueError, match="does not fit float16"):
    bundle_lib.write_module(tmp_path / "g.npz", config,
                            {"params": {"w": np.full((2, 2), 1e6)}})
  folder = tmp_path / "b"
  manifest = pipeline_helpers.make_bundle(folder, agnostic=False)
  manifest["modules"]["gender"]["file"] = "../elsewhere.npz"
  bundle_lib.write_manifest(folder, manifest)
  with pytest.raises(bundle_lib.BundleError, match="not in the bundle"):
    bundle_lib.verify(folder)
