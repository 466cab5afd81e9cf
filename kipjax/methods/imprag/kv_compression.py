"""Compressing ImpRAG's passage key / value states for storage (dissertation, appendix C.3).

With independent encoding, the middle-layer key / value states of every corpus passage can be computed once and
stored on disk. The appendix compares two ways to shrink them (Table C.3, EM: none 50.7, heavy hitters 49.9,
product quantization 50.3):

- Product quantization, FAISS's OPQ32x128-PQ32x8 per key / value head: a learned orthogonal rotation (OPQ), then
  32 sub-quantizers of 256 centroids, one byte each; a bfloat16 head vector of 128 dims (256 bytes) becomes 32
  bytes, ratio 8. `train_quantizers` learns them per layer, keys / values and kv head; `encode` stores uint8
  codes, `decode` gives back the {layer: (keys, values, mask)} that `Llama(extra_kv=...)` reads.
- Heavy-hitter token compression (H2O, Zhang et al. 2023), keeping half the tokens of each passage:
  `accumulated_attention` scores each key token by the attention it receives while its passage is encoded,
  `keep_heavy_hitters` keeps the best-scored tokens per kv head. The appendix names only heavy hitters, so
  H2O's window of recent tokens is not kept: the budget goes to the best-scored tokens alone.

Keys are stored rotated by RoPE, so either compression keeps each token's position: a reader still shifts the
query past the original k * l_max passage slots (`ImpragModel.read(..., passage_slots=...)`).
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from kipjax.models.llama import ExtraKV, full_pass_bias
from kipjax.run_log import atomic_save_npz

Array = jax.Array
Codes = tuple[Array, Array, Array]  # key codes, value codes: (batch, M, kv_heads, subquantizers) uint8; mask
HIGHEST = jax.lax.Precision.HIGHEST  # float32 dots on every backend: codes must not depend on the device
OPQ_PQ_ITERATIONS = 4  # k-means iterations per OPQ step, warm-started (FAISS's OPQMatrix.niter_pq)


@struct.dataclass
class HeadQuantizer:
    """OPQ + PQ of one layer's keys (or values), stacked over its kv heads: a vector x of head h is coded as the
    nearest centroid of each sub-vector of x @ rotation[h]."""

    rotation: Array  # (kv_heads, head_dim, head_dim), orthogonal
    codebooks: Array  # (kv_heads, subquantizers, 2 ** bits, head_dim // subquantizers)
    dtype: str = struct.field(pytree_node=False, default="float32")  # of the states: what `decode` returns


Quantizers = dict[int, tuple[HeadQuantizer, HeadQuantizer]]  # layer -> (keys', values') quantizers


@jax.jit
def _nearest(x: Array, centroids: Array) -> tuple[Array, Array]:
    """x (G, N, d), centroids (G, K, d) -> each point's nearest centroid (G, N) and squared distance to it."""
    x, centroids = x.astype(jnp.float32), centroids.astype(jnp.float32)
    dist = (jnp.sum(x * x, -1)[..., None] - 2 * jnp.einsum("gnd,gkd->gnk", x, centroids, precision=HIGHEST)
            + jnp.sum(centroids * centroids, -1)[:, None])
    return jnp.argmin(dist, -1), jnp.maximum(jnp.min(dist, -1), 0.0)


def _assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_nearest` in chunks of points, so the (G, chunk, K) distances stay within 2^25 floats."""
    chunk = max(1, 2 ** 25 // (x.shape[0] * centroids.shape[1]))
    parts = [_nearest(x[:, s:s + chunk], centroids) for s in range(0, x.shape[1], chunk)]
    return tuple(np.concatenate([np.asarray(p[i]) for p in parts], axis=1) for i in range(2))


def _kmeans(x: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd's iterations on G independent problems, x (G, N, d) from centroids (G, K, d). An empty cluster is
    re-seeded with a point of the largest error (largest first, ties by index), so duplicate centroids split."""
    g, n, d = x.shape
    k = centroids.shape[1]
    for _ in range(iterations):
        assign, dist = _assign(x, centroids)
        flat = (np.arange(g)[:, None] * k + assign).ravel()
        counts = np.bincount(flat, minlength=g * k).reshape(g, k)
        sums = np.stack([np.bincount(flat, x[..., j].ravel(), g * k) for j in range(d)], -1).reshape(g, k, d)
        centroids = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], centroids)
        for p in np.flatnonzero((counts == 0).any(axis=1)):
            empty = np.flatnonzero(counts[p] == 0)
            farthest = np.argsort(-dist[p], kind="stable")
            centroids[p, empty] = x[p, farthest[np.arange(len(empty)) % n]]
    return centroids.astype(np.float32)


def _split(x: np.ndarray, subquantizers: int) -> np.ndarray:
    """(H, N, D) -> (H * subquantizers, N, D // subquantizers) sub-vectors."""
    h, n, d = x.shape
    return x.reshape(h, n, subquantizers, -1).transpose(0, 2, 1, 3).reshape(h * subquantizers, n, -1)


def _merge(x: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `_split`."""
    g, n, dsub = x.shape
    return x.reshape(heads, g // heads, n, dsub).transpose(0, 2, 1, 3).reshape(heads, n, -1)


def _train_head_quantizer(x: np.ndarray, subquantizers: int, bits: int, opq_iterations: int,
                          kmeans_iterations: int, rng: np.random.Generator, dtype: str) -> HeadQuantizer:
    """OPQ (non-parametric, alternating) + PQ of x (H, N, D); codebooks start at a seeded sample of points."""
    h, n, d = x.shape
    sample = rng.choice(n, 2 ** bits, replace=n < 2 ** bits)
    rotation = np.broadcast_to(np.eye(d, dtype=np.float32), (h, d, d))
    codebooks = _split(x, subquantizers)[:, sample]
    for _ in range(opq_iterations):
        rotated = _split(x @ rotation, subquantizers)
        codebooks = _kmeans(rotated, codebooks, OPQ_PQ_ITERATIONS)
        assign, _ = _assign(rotated, codebooks)
        y = _merge(np.take_along_axis(codebooks, assign[..., None], axis=1), h)
        u, _, vt = np.linalg.svd(np.einsum("hnd,hne->hde", x, y, dtype=np.float64))  # max tr(R^T X^T Y)
        rotation = (u @ vt).astype(np.float32)
    codebooks = _kmeans(_split(x @ rotation, subquantizers), codebooks, kmeans_iterations)
    return HeadQuantizer(np.ascontiguousarray(rotation), codebooks.reshape(h, subquantizers, 2 ** bits, -1), dtype)


def train_quantizers(states: Mapping[int, ExtraKV], subquantizers: int = 32, bits: int = 8,
                     opq_iterations: int = 20, kmeans_iterations: int = 25, seed: int = 0) -> Quantizers:
    """Quantizers of every layer's keys and values, trained on the states' attended (mask 1) vectors; 0 OPQ
    iterations is plain PQ. Deterministic given `seed` (each layer, keys / values draw from their own stream)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8 (codes are uint8), got {bits}")
    quantizers: Quantizers = {}
    for layer, (keys, values, mask) in states.items():
        pair = []
        for kind, x in enumerate((keys, values)):
            head_dim = x.shape[-1]
            if head_dim % subquantizers:
                raise ValueError(f"head_dim {head_dim} is not a multiple of {subquantizers} sub-quantizers")
            vectors = np.asarray(x)[np.asarray(mask) == 1].astype(np.float32)  # (N, kv_heads, head_dim)
            if not len(vectors):
                raise ValueError(f"layer {layer} has no attended (mask 1) vector to train on")
            pair.append(_train_head_quantizer(vectors.transpose(1, 0, 2), subquantizers, bits, opq_iterations,
                                              kmeans_iterations, np.random.default_rng([seed, layer, kind]),
                                              jnp.dtype(x.dtype).name))
        quantizers[layer] = tuple(pair)
    return quantizers


def _encode(q: HeadQuantizer, x: Array) -> Array:
    """(batch, M, kv_heads, head_dim) states -> (batch, M, kv_heads, subquantizers) uint8 codes."""
    batch, length, heads, _ = x.shape
    subq, k, dsub = q.codebooks.shape[1:]
    rotated = jnp.einsum("blhd,hde->hble", x.astype(jnp.float32), q.rotation, precision=HIGHEST)
    rotated = rotated.reshape(heads, -1, subq, dsub)
    codes, _ = _nearest(rotated.transpose(0, 2, 1, 3).reshape(heads * subq, -1, dsub), q.codebooks.reshape(-1, k, dsub))
    return codes.reshape(heads, subq, batch, length).transpose(2, 3, 0, 1).astype(jnp.uint8)


def _decode(q: HeadQuantizer, codes: Array) -> Array:
    """The inverse of `_encode`, up to quantization: (batch, M, kv_heads, head_dim) in the quantizer's dtype."""
    heads, subq = q.codebooks.shape[:2]
    parts = jnp.asarray(q.codebooks)[jnp.arange(heads)[:, None], jnp.arange(subq), codes.astype(jnp.int32)]
    rotated = parts.reshape(*codes.shape[:3], -1)
    return jnp.einsum("blhe,hde->blhd", rotated, q.rotation, precision=HIGHEST).astype(q.dtype)


def encode(quantizers: Quantizers, states: Mapping[int, ExtraKV]) -> dict[int, Codes]:
    """{layer: (keys, values, mask)} -> {layer: (key codes, value codes, mask)}; traceable."""
    return {i: (_encode(quantizers[i][0], k), _encode(quantizers[i][1], v), m) for i, (k, v, m) in states.items()}


def decode(quantizers: Quantizers, compressed: Mapping[int, Codes]) -> dict[int, ExtraKV]:
    """Codes back into the {layer: (keys, values, mask)} that `Llama(extra_kv=...)` reads; traceable. Pads
    (mask 0) decode to some centroid and keep mask 0."""
    return {i: (_decode(quantizers[i][0], k), _decode(quantizers[i][1], v), m) for i, (k, v, m) in compressed.items()}


def compression_ratio(head_dim: int, subquantizers: int = 32) -> float:
    """Bytes of a bfloat16 head vector over its code's: 2 * head_dim / subquantizers (8 for 128 and 32, the
    appendix's). Codes take one byte per sub-quantizer whatever `bits` (fewer bits only shrink the codebooks)."""
    return 2 * head_dim / subquantizers


def save_quantizers(path: str, quantizers: Quantizers) -> None:
    """Writes `quantizers` to the .npz `path` through a temporary file in its folder and a rename."""
    arrays = {"layers": np.asarray(sorted(quantizers), np.int64)}
    for layer, pair in quantizers.items():
        for kind, q in zip(("keys", "values"), pair):
            arrays.update({f"{layer}/{kind}/rotation": np.asarray(q.rotation),
                           f"{layer}/{kind}/codebooks": np.asarray(q.codebooks),
                           f"{layer}/{kind}/dtype": np.asarray(q.dtype)})
    atomic_save_npz(path, **arrays)


def load_quantizers(path: str) -> Quantizers:
    """The quantizers `save_quantizers` wrote to `path`."""
    with np.load(path) as data:
        def get(key: str) -> np.ndarray:
            if key not in data:
                raise KeyError(f"{path} has no {key!r}: not a file of save_quantizers")
            return data[key]
        return {int(layer): tuple(HeadQuantizer(get(f"{layer}/{kind}/rotation"), get(f"{layer}/{kind}/codebooks"),
                                                str(get(f"{layer}/{kind}/dtype")))
                                  for kind in ("keys", "values"))
                for layer in get("layers")}


def accumulated_attention(query_states: Array, key_states: Array, mask: Array,
                          segment_ids: Array | None = None) -> Array:
    """(batch, M, kv_heads): the attention each key token receives while its passage is encoded, summed over the
    (causal) query positions and the query heads of its grouped-query group (head h reads kv head
    h // (heads // kv_heads)). States are the post-RoPE (batch, M, heads | kv_heads, head_dim) ones of
    `Llama(return_qk_layers=...)`; pads neither give nor receive attention, nor do other segments."""
    batch, length, heads, head_dim = query_states.shape
    kv_heads = key_states.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    q = query_states.astype(jnp.float32).reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("bqgrd,bkgd->bgrqk", q, key_states.astype(jnp.float32)) * head_dim ** -0.5
    probs = jax.nn.softmax(logits + full_pass_bias(mask, segment_ids)[:, :, None], axis=-1)
    probs = jnp.where(mask[:, None, None, :, None] > 0, probs, 0.0)  # pad queries give nothing
    return jnp.where(mask[..., None] > 0, probs.sum(axis=(2, 3)).swapaxes(1, 2), 0.0)


def keep_heavy_hitters(states: Mapping[int, ExtraKV], scores: Mapping[int, Array], keep_fraction: float = 0.5,
                       passages: int = 1) -> dict[int, ExtraKV]:
    """Each layer's states with only the heavy hitters of each passage: per kv head, the ceil(keep_fraction *
    n_valid) attended tokens of highest `scores[layer]` (batch, M, kv_heads), ties to the earlier position.

    A row is `passages` equal blocks of l = M / passages slots (ImpRAG's k passages of l_max); each block
    becomes ceil(keep_fraction * l) slots, static, its kept tokens first in their original order, then mask-0
    padding. Heads may keep different tokens; the mask is the same for all. Traceable with static arguments."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    out = {}
    for layer, (keys, values, mask) in states.items():
        batch, length, heads, head_dim = keys.shape
        if length % passages:
            raise ValueError(f"{length} slots do not split into {passages} equal passages")
        l = length // passages
        keep = math.ceil(keep_fraction * l)
        budget = jnp.asarray([math.ceil(keep_fraction * n) for n in range(l + 1)])  # exact, not in float32
        valid = mask.reshape(-1, l) > 0
        n_keep = budget[valid.sum(axis=1)]
        score = jnp.where(valid[..., None], -scores[layer].astype(jnp.float32).reshape(-1, l, heads), jnp.inf)
        ranked = jnp.argsort(score, axis=1, stable=True)[:, :keep]  # (batch * passages, keep, heads)
        kept = jnp.arange(keep)[None, :] < n_keep[:, None]
        index = jnp.minimum(jnp.sort(jnp.where(kept[..., None], ranked, l), axis=1), l - 1)

        def gather(x: Array) -> Array:
            x = jnp.take_along_axis(x.reshape(-1, l, heads, head_dim), index[..., None], axis=1)
            return x.reshape(batch, passages * keep, heads, head_dim)

        out[layer] = (gather(keys), gather(values), kept.reshape(batch, passages * keep).astype(mask.dtype))
    return out
