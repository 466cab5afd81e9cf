"""ImpRAG's passage key / value compression (appendix C.3): OPQ + PQ codes against exact cases, plain PQ and
FAISS; heavy-hitter scores against a loop over tokens; kept tokens by hand; and reading compressed states with a
tiny Llama."""
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn, traverse_util

from kipjax.methods.imprag import kv_compression as kc
from kipjax.methods.imprag.model import ImpragModel, LayerGroups
from kipjax.models.llama import Llama, LlamaConfig


def as_states(x, mask=None):
    """One layer (3) of states whose keys are `x` (batch, M, kv_heads, head_dim) and values 2 * x."""
    mask = np.ones(x.shape[:2], np.int32) if mask is None else mask
    return {3: (x, 2 * x, mask)}


def squared_error(quantizers, states):
    """Mean squared error per attended key vector after an encode / decode round trip."""
    keys, _, mask = states[3]
    got = np.asarray(kc.decode(quantizers, kc.encode(quantizers, states))[3][0], np.float64)
    return float(((got - np.asarray(keys, np.float64)) ** 2).sum(-1)[np.asarray(mask) == 1].mean())


def anisotropic(rng, n, d):
    """Correlated data: Gaussian with scales 3 .. 0.1, randomly rotated (PQ's axis-aligned split suits it badly)."""
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return ((rng.normal(size=(n, d)) * np.geomspace(3, 0.1, d)) @ rotation).astype(np.float32)


def test_pq_round_trip_is_exact_with_few_distinct_sub_vectors_and_keeps_dtype():
    # Each sub-vector (2 dims) takes one of 16 values, full vectors are many: plain PQ with 16 centroids is exact.
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 4, 16, 2)).astype(jnp.bfloat16)  # (kv_heads, subquantizers, 16 values, 2)
    pick = rng.integers(0, 16, size=(3, 40, 2, 4))
    x = values[np.arange(2)[:, None], np.arange(4), pick].reshape(3, 40, 2, 8)
    mask = np.ones((3, 40), np.int32)
    mask[1, 30:] = 0
    states = as_states(jnp.asarray(x), mask)
    quantizers = kc.train_quantizers(states, subquantizers=4, bits=4, opq_iterations=0, kmeans_iterations=20)
    codes = jax.jit(kc.encode)(quantizers, states)
    assert codes[3][0].shape == codes[3][1].shape == (3, 40, 2, 4) and codes[3][0].dtype == jnp.uint8
    keys, values_out, mask_out = jax.jit(kc.decode)(quantizers, codes)[3]
    assert keys.dtype == values_out.dtype == jnp.bfloat16 and keys.shape == x.shape
    np.testing.assert_array_equal(np.asarray(mask_out), mask)
    valid = mask == 1
    np.testing.assert_array_equal(np.asarray(keys, np.float32)[valid], x.astype(np.float32)[valid])
    np.testing.assert_array_equal(np.asarray(values_out, np.float32)[valid], 2 * x.astype(np.float32)[valid])


def test_opq_round_trip_is_exact_with_fewer_distinct_vectors_than_centroids():
    # 50 distinct vectors, 256 centroids: duplicate centroids must still be fine, and any rotation keeps it exact.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2, 8)).astype(np.float32)[rng.integers(0, 50, size=(2, 60))]
    states = as_states(x)
    quantizers = kc.train_quantizers(states, subquantizers=2, bits=8, opq_iterations=3, kmeans_iterations=5)
    assert quantizers[3][0].codebooks.shape == (2, 2, 256, 4)
    assert squared_error(quantizers, states) < 1e-10


def test_error_falls_with_more_bits():
    states = as_states(np.random.default_rng(2).normal(size=(1, 1500, 1, 8)).astype(np.float32))
    errors = [squared_error(kc.train_quantizers(states, subquantizers=2, bits=bits, opq_iterations=0), states)
              for bits in (2, 4, 6)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_opq_rotation_is_orthogonal_and_beats_plain_pq_on_correlated_data():
    x = anisotropic(np.random.default_rng(3), 1500, 16)[None, :, None]
    states = as_states(x)
    pq = kc.train_quantizers(states, subquantizers=4, bits=4, opq_iterations=0)
    opq = kc.train_quantizers(states, subquantizers=4, bits=4, opq_iterations=10)
    np.testing.assert_array_equal(pq[3][0].rotation, np.eye(16)[None])
    for quantizer in opq[3]:
        rotation = np.asarray(quantizer.rotation, np.float64)[0]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(16), atol=1e-5)
    assert squared_error(opq, states) < 0.8 * squared_error(pq, states)


def test_error_is_close_to_faiss():
    faiss = pytest.importorskip("faiss")
    d, subquantizers, bits, n = 16, 4, 6, 1000
    x = anisotropic(np.random.default_rng(4), n, d)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # FAISS's OpenMP threads crawl on a shared 2-core machine
    states = as_states(x[None, :, None])

    def faiss_error(decoded):
        return float(((decoded.astype(np.float64) - x) ** 2).sum(-1).mean())

    pq = faiss.ProductQuantizer(d, subquantizers, bits)
    pq.train(x)
    opq = faiss.index_factory(d, f"OPQ{subquantizers},PQ{subquantizers}x{bits}")
    opq.train(x)
    opq.add(x)
    faiss.omp_set_num_threads(threads)
    ours = {iterations: squared_error(kc.train_quantizers(states, subquantizers, bits, opq_iterations=iterations),
                                      states) for iterations in (0, 10)}
    # Measured: plain PQ 0.98 x FAISS's ProductQuantizer's error, OPQ 0.80 x FAISS's OPQ4,PQ4x6's.
    assert ours[0] <= 1.1 * faiss_error(pq.decode(pq.compute_codes(x)))
    assert ours[10] <= 1.1 * faiss_error(opq.reconstruct_n(0, n))


def test_compression_ratio_and_argument_errors():
    assert kc.compression_ratio(128, 32) == 8.0  # the appendix's 128 * 2 / 32
    assert kc.compression_ratio(64, 16) == 8.0
    states = as_states(np.zeros((1, 4, 1, 8), np.float32))
    with pytest.raises(ValueError, match="not a multiple of 3"):
        kc.train_quantizers(states, subquantizers=3)
    for bits in (0, 9):
        with pytest.raises(ValueError, match="bits must be in 1..8"):
            kc.train_quantizers(states, subquantizers=2, bits=bits)


def test_save_load_round_trip_and_missing_key(tmp_path):
    x = np.random.default_rng(5).normal(size=(1, 30, 2, 4)).astype(jnp.bfloat16)
    quantizers = kc.train_quantizers(as_states(x), subquantizers=2, bits=3, opq_iterations=1, kmeans_iterations=2)
    path = str(tmp_path / "quantizers.npz")
    kc.save_quantizers(path, quantizers)
    assert os.listdir(tmp_path) == ["quantizers.npz"]  # no temporary file left
    loaded = kc.load_quantizers(path)
    assert set(loaded) == {3}
    for got, want in zip(loaded[3], quantizers[3]):
        np.testing.assert_array_equal(got.rotation, want.rotation)
        np.testing.assert_array_equal(got.codebooks, want.codebooks)
        assert got.dtype == want.dtype == "bfloat16"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "3/values/codebooks"}
    broken = str(tmp_path / "broken.npz")
    np.savez(broken, **arrays)
    with pytest.raises(KeyError, match=re.escape(broken) + ".*3/values/codebooks"):
        kc.load_quantizers(broken)


def test_accumulated_attention_equals_a_loop_over_tokens():
    rng = np.random.default_rng(6)
    batch, length, heads, kv_heads, head_dim = 2, 7, 4, 2, 3
    q = rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)
    k = rng.normal(size=(batch, length, kv_heads, head_dim)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]])
    segments = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])
    for seg in (None, segments):
        want = np.zeros((batch, length, kv_heads))
        for b in range(batch):
            for h in range(heads):
                g = h // (heads // kv_heads)
                for i in np.flatnonzero(mask[b]):
                    seen = [j for j in range(i + 1) if mask[b, j] and (seg is None or seg[b, j] == seg[b, i])]
                    logits = np.array([q[b, i, h] @ k[b, j, g] for j in seen]) / np.sqrt(head_dim)
                    want[b, seen, g] += np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        got = jax.jit(kc.accumulated_attention)(q, k, mask, None if seg is None else jnp.asarray(seg))
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    # Each valid query gives 1 per query head: a kv head receives group * (valid queries) in all.
    np.testing.assert_allclose(np.asarray(got).sum(1), np.outer(mask.sum(1), [2, 2]), atol=1e-5)


def test_keep_heavy_hitters_by_hand():
    # One row of 3 passages of 4 slots, 2 kv heads; a key's value is its slot, so the kept slots show.
    slots = np.arange(12, dtype=np.float32)
    keys = np.broadcast_to(slots[None, :, None, None], (1, 12, 2, 1))
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0]])
    scores = np.array([[[.1, .3], [.5, .1], [.5, .3], [.2, .3],   # passage 0: ties go to the earlier slot
                        [.2, .7], [.9, .7], [.4, .7], [5., 9.],   # passage 1: 3 valid, the pad's score is ignored
                        [9., 9.], [9., 9.], [0., 0.], [9., 9.]]])  # passage 2: 1 valid
    keep = jax.jit(functools.partial(kc.keep_heavy_hitters, keep_fraction=0.5, passages=3))
    got_keys, got_values, got_mask = keep({7: (keys, 10 * keys, mask)}, {7: scores})[7]
    assert got_keys.shape == (1, 6, 2, 1)  # ceil(0.5 * 4) = 2 slots per passage
    np.testing.assert_array_equal(np.asarray(got_mask), [[1, 1, 1, 1, 1, 0]])  # ceil(n_valid / 2): 2, 2, 1
    kept = np.asarray(got_keys)[0, :, :, 0].T  # (heads, slots), in original order within each passage
    np.testing.assert_array_equal(kept[:, :5], [[1, 2, 5, 6, 10], [0, 2, 4, 5, 10]])
    np.testing.assert_array_equal(np.asarray(got_values), 10 * np.asarray(got_keys))
    # A float32 ceil(0.1 * 10) would be 2; the budget is exact.
    ten = np.ones((1, 10), np.int32)
    one = kc.keep_heavy_hitters({0: (keys[:, :10], keys[:, :10], ten)}, {0: np.ones((1, 10, 2))}, keep_fraction=0.1)
    np.testing.assert_array_equal(np.asarray(one[0][2]), [[1]])
    np.testing.assert_array_equal(np.asarray(one[0][0])[0, 0, :, 0], [0, 0])
    with pytest.raises(ValueError, match="keep_fraction"):
        kc.keep_heavy_hitters({0: (keys, keys, mask)}, {0: scores}, keep_fraction=0)


@pytest.fixture(scope="module")
def tiny_imprag():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    llama = Llama(config)
    # Random params of the init's shapes, without compiling the init: N(0, 0.02) weights, unit norm scales.
    shapes = traverse_util.flatten_dict(nn.unbox(jax.eval_shape(
        lambda: llama.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32)))["params"]))
    rng = np.random.default_rng(8)
    params = traverse_util.unflatten_dict({
        path: jnp.ones(s.shape) if path[-1] == "scale" else jnp.asarray(0.02 * rng.normal(size=s.shape), jnp.float32)
        for path, s in shapes.items()})
    return ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2)), params


def random_passages(rng, rows, k=2, l_max=6):
    ids = rng.integers(3, 64, size=(rows, k, l_max))
    mask = (np.arange(l_max) < rng.integers(2, l_max + 1, size=(rows, k, 1))).astype(np.int32)
    return jnp.asarray(ids * mask), jnp.asarray(mask)


@pytest.mark.slow  # about 13 s; the quantizers' own tests stay fast
def test_reading_compressed_passages(tiny_imprag):
    model, params = tiny_imprag
    rng = np.random.default_rng(7)
    # One pass encodes both the 2 rows read and the 48 rows PQ trains on (as the appendix trains on a sample).
    all_ids, all_mask = random_passages(rng, rows=50)
    encoded = model.passage_states(params, all_ids, all_mask)
    states = {i: tuple(x[:2] for x in kv) for i, kv in encoded.items()}
    sample = {i: tuple(x[2:] for x in kv) for i, kv in encoded.items()}
    ids, mask = all_ids[:2], all_mask[:2]
    queries = jnp.asarray(rng.integers(3, 64, size=(2, 5)))
    query_mask = jnp.ones((2, 5), jnp.int32)
    batch, k, l_max = ids.shape

    read_jit = jax.jit(model.read, static_argnames="passage_slots")

    def read(passages, slots=k * l_max):
        return np.asarray(read_jit(params, queries, query_mask, passages, passage_slots=slots).logits)

    full = read(states)
    # Heavy hitters from the passage encoding's own query / key states (the 'concatenated' encoding: no segments).
    flat_mask = mask.reshape(batch, -1)
    out = model.llama.apply({"params": params}, ids.reshape(batch, -1), flat_mask, layer_range=(0, 2),
                            return_qk_layers=(1, 2))
    np.testing.assert_allclose(np.asarray(out.key_states[2]), np.asarray(states[2][0]), atol=1e-6)
    scores = {i: kc.accumulated_attention(out.query_states[i], out.key_states[i], flat_mask) for i in (1, 2)}
    np.testing.assert_allclose(read(kc.keep_heavy_hitters(states, scores, 1.0, passages=k)), full, atol=1e-5)
    half = kc.keep_heavy_hitters(states, scores, 0.5, passages=k)
    np.testing.assert_array_equal(np.asarray(half[1][2]).reshape(batch, k, -1).sum(-1),
                                  (np.asarray(mask).sum(-1) + 1) // 2)
    assert np.isfinite(read(half)).all() and np.abs(read(half) - full).max() > 1e-3
    # PQ trained on other passages' states: 4 sub-quantizers of head_dim 8, 256 centroids.
    quantizers = kc.train_quantizers(sample, subquantizers=4, bits=8, opq_iterations=5, kmeans_iterations=10)
    decoded = kc.decode(quantizers, kc.encode(quantizers, states))
    change = np.abs(read(decoded) - full).max()
    without_passages = np.abs(read(None, 0) - full).max()
    # Measured: PQ moves the logits by 0.0098, 0.058 of the 0.17 that dropping the passages does.
    assert change < 0.15 * without_passages
