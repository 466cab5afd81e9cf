"""Exact maximum-inner-product top-k in JAX (chunked, sharded) and an approximate ScaNN index.

Exact search streams the entity table through `lax.scan` in fixed-size chunks, so a [B, N] score matrix
never exists; only a running [B, k] top-k does. The same scan runs on every shard of a table whose entity
axis is split over the mesh, and an all-gather of the per-shard top-k gives the global answer.

Ties are broken towards the lower entity id everywhere (within a chunk, across chunks and across shards),
so results are deterministic and equal to a stable brute-force sort.

`ScannIndex` is the approximate path for tables served from the host at retrieval scale (millions of
vectors), where ScaNN's tree + asymmetric hashing + exact reordering is far faster than exact search.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from kipjax import topk
from kipjax.run_log import atomic_save_npy, atomic_write_text

# score_fn(queries, table_chunk) -> [B, C] scores; both arguments are pytrees (chunk leaves: [C, ...]).
ScoreFn = Callable[[Any, Any], jax.Array]
# bias_fn(queries, table_chunk, ids [C] int32 global ids) -> [B, C] additive bias; -inf excludes an entity.
BiasFn = Callable[[Any, Any, jax.Array], jax.Array]

NO_ID = -1  # id reported in slots for which fewer than k admissible entities exist


def _num_entities(table: Any) -> int:
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(table)}
    if len(sizes) != 1:
        raise ValueError(f"every leaf of `table` needs the same leading entity axis, got sizes {sorted(sizes)}")
    return sizes.pop()


def _scan_topk(score_fn: ScoreFn, queries: Any, table: Any, k: int, chunk_size: int, bias_fn: BiasFn | None,
               id_offset: jax.Array | int, num_valid: jax.Array | int,
               varying_axes: tuple[str, ...]) -> tuple[jax.Array, jax.Array]:
    """Running top-k over `table` (local rows `[0, num_valid)` count), reporting ids as `id_offset + row`.

    The last chunk is not padded but re-read from `n - chunk` (dynamic_slice clamps), with the rows already
    seen masked out: no copy of the table is ever made, and no row is returned twice.
    """
    n = _num_entities(table)
    if n == 0 or chunk_size < 1:
        raise ValueError(f"need a non-empty table and chunk_size >= 1, got N={n}, chunk_size={chunk_size}")
    chunk = min(chunk_size, n)
    num_chunks = -(-n // chunk)

    def chunk_scores(chunk_table: Any, ids: jax.Array) -> jax.Array:
        scores = score_fn(queries, chunk_table)
        if bias_fn is not None:
            scores = scores + bias_fn(queries, chunk_table, ids)
        return scores

    chunk_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct((chunk,) + x.shape[1:], x.dtype), table)
    shape = jax.eval_shape(chunk_scores, chunk_shapes, jax.ShapeDtypeStruct((chunk,), jnp.int32))
    if shape.ndim != 2 or shape.shape[1] != chunk:
        raise ValueError(f"score_fn (+ bias_fn) must return [B, {chunk}] for a chunk of {chunk}, got {shape.shape}")
    num_queries, dtype = shape.shape[0], shape.dtype
    neg_inf = jnp.array(-jnp.inf, dtype)
    group = topk.group_size(chunk, k)

    def step(carry: tuple[jax.Array, jax.Array], chunk_index: jax.Array):
        best_scores, best_ids = carry
        nominal_start = chunk_index * chunk
        start = jnp.minimum(nominal_start, n - chunk)
        chunk_table = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0), table)
        rows = start + jnp.arange(chunk, dtype=jnp.int32)
        ids = (id_offset + rows).astype(jnp.int32)
        scores = chunk_scores(chunk_table, ids)
        admissible = (rows >= nominal_start) & (rows < num_valid)
        scores = jnp.where(admissible[None, :], scores, neg_inf)
        if group > 1:
            scores, positions = topk.shortlist(scores, k, group)
            ids = ids[positions]
        else:
            ids = jnp.broadcast_to(ids, scores.shape)
        # Earlier chunks hold lower ids and top_k prefers lower positions on ties: ties go to lower ids.
        merged_scores = jnp.concatenate([best_scores, scores], axis=1)
        merged_ids = jnp.concatenate([best_ids, ids], axis=1)
        best_scores, positions = jax.lax.top_k(merged_scores, k)
        return (best_scores, jnp.take_along_axis(merged_ids, positions, axis=1)), None

    init = (jnp.full((num_queries, k), neg_inf, dtype), jnp.full((num_queries, k), NO_ID, jnp.int32))
    if varying_axes:
        init = jax.lax.pcast(init, varying_axes, to="varying")
    (scores, ids), _ = jax.lax.scan(step, init, jnp.arange(num_chunks, dtype=jnp.int32))
    return scores, ids


def _drop_inadmissible(scores: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    return scores, jnp.where(scores == -jnp.inf, NO_ID, ids)


def chunked_topk(score_fn: ScoreFn, queries: Any, table: Any, k: int, *, chunk_size: int,
                 bias_fn: BiasFn | None = None) -> tuple[jax.Array, jax.Array]:
    """Exact top-k entities per query without materialising the [B, N] score matrix.

    Args:
      score_fn: `(queries, table_chunk) -> [B, C]`; any score (dot product, sum-of-max, ...).
      queries: pytree passed whole to `score_fn` / `bias_fn`.
      table: pytree of arrays with a common leading entity axis N (e.g. vectors [N, m, H], masks [N, m]).
      k: number of results per query.
      chunk_size: entities scored per scan step (memory is O(B * chunk_size)).
      bias_fn: `(queries, table_chunk, ids) -> [B, C]` added to the scores; `ids` are global entity ids.
        Use -inf to exclude entities (e.g. other worlds) and `gumbel_bias` to sample without replacement.

    Returns:
      (scores [B, k], ids [B, k] int32), sorted by descending score, ties to the lower id. Scores include the
      bias. Slots without an admissible entity (score -inf, or k > N) get id -1.
    """
    scores, ids = _scan_topk(score_fn, queries, table, k, chunk_size, bias_fn, 0, _num_entities(table), ())
    return _drop_inadmissible(scores, ids)


def sharded_topk(score_fn: ScoreFn, queries: Any, table: Any, k: int, *, mesh: Mesh, chunk_size: int,
                 bias_fn: BiasFn | None = None, entity_axes: tuple[str, ...] | None = None,
                 num_entities: int | None = None) -> tuple[jax.Array, jax.Array]:
    """`chunked_topk` with the table's entity axis sharded over `entity_axes` of `mesh` (default: all axes).

    Each shard scans its own slice; the per-shard top-k lists ([D, B, k], shards in id order) are
    all-gathered and merged, so the result is replicated and equals the single-device answer.
    `queries` are replicated. A table whose N is not divisible by the shard count is padded here (a copy);
    callers keeping a large table resident should store it pre-padded and pass `num_entities`, the number of
    real rows (padding rows are never returned).
    """
    axes = tuple(entity_axes) if entity_axes is not None else tuple(mesh.axis_names)
    num_shards = math.prod(mesh.shape[a] for a in axes)
    stored = _num_entities(table)
    num_real = stored if num_entities is None else num_entities
    if not 0 <= num_real <= stored:
        raise ValueError(f"num_entities={num_entities} must be within [0, {stored}] (rows in the table)")
    padded = -(-stored // num_shards) * num_shards
    if padded != stored:
        table = jax.tree.map(
            lambda x: jnp.pad(x, [(0, padded - stored)] + [(0, 0)] * (x.ndim - 1)), table)
    shard_len = padded // num_shards

    def local_topk(local_queries: Any, local_table: Any) -> tuple[jax.Array, jax.Array]:
        offset = jax.lax.axis_index(axes) * shard_len
        num_valid = jnp.clip(num_real - offset, 0, shard_len)
        scores, ids = _scan_topk(score_fn, local_queries, local_table, k, chunk_size, bias_fn, offset,
                                 num_valid, axes)
        all_scores, all_ids = jax.lax.all_gather((scores, ids), axes, to="invarying")  # [D, B, k]
        num_queries = scores.shape[0]
        all_scores = jnp.transpose(all_scores, (1, 0, 2)).reshape(num_queries, num_shards * k)
        all_ids = jnp.transpose(all_ids, (1, 0, 2)).reshape(num_queries, num_shards * k)
        best, positions = jax.lax.top_k(all_scores, k)
        return best, jnp.take_along_axis(all_ids, positions, axis=1)

    table_specs = jax.tree.map(lambda _: PartitionSpec(axes), table)
    query_specs = jax.tree.map(lambda _: PartitionSpec(), queries)
    scores, ids = jax.shard_map(local_topk, mesh=mesh, in_specs=(query_specs, table_specs),
                                out_specs=(PartitionSpec(), PartitionSpec()))(queries, table)
    return _drop_inadmissible(scores, ids)


def dot_product_score(queries: jax.Array, table_chunk: jax.Array) -> jax.Array:
    """[B, H] x [C, H] -> [B, C]; the dual-encoder score, the common `score_fn`."""
    return queries @ table_chunk.T


def gumbel_bias(key: jax.Array, num_queries: int, temperature: float = 1.0) -> BiasFn:
    """Bias that turns top-k into sampling k entities without replacement from softmax(score / temperature).

    The noise of (query b, entity i) depends only on `key`, b and the global id i, never on the chunking or
    sharding, so chunked, sharded and full-table Gumbel top-k draw exactly the same sample.
    """
    def bias(queries: Any, table_chunk: Any, ids: jax.Array) -> jax.Array:
        del queries, table_chunk
        noise = jax.vmap(lambda i: jax.random.gumbel(jax.random.fold_in(key, i), (num_queries,)))(ids)
        return temperature * noise.T

    return bias


def _import_scann() -> Any:
    """ScaNN pulls in TensorFlow on import (seconds), so only the approximate path pays for it."""
    from scann.scann_ops.py import scann_ops_pybind
    return scann_ops_pybind


_METADATA_FILE = "kipjax_scann.json"
_SCANN_ASSETS_FILE = "scann_assets.pbtxt"


class ScannIndex:
    """Approximate maximum-inner-product search over [N, H] float32 vectors with ScaNN."""

    def __init__(self, searcher: Any, metadata: dict[str, Any]):
        self._searcher = searcher
        self.metadata = metadata

    @property
    def num_vectors(self) -> int:
        return int(self.metadata["num_vectors"])

    @property
    def dim(self) -> int:
        return int(self.metadata["dim"])

    @classmethod
    def build(cls, embeddings: np.ndarray, *, num_leaves: int | None = None,
              num_leaves_to_search: int | None = None, reorder_num_neighbors: int = 100,
              dims_per_block: int = 2, anisotropic_quantization_threshold: float = 0.2,
              training_sample_size: int = 250_000, brute_force_below: int = 20_000,
              training_threads: int = 0) -> "ScannIndex":
        """Builds a tree + asymmetric-hashing + float reorder index, or brute force below `brute_force_below`.

        Defaults scale with N: 2 sqrt(N) leaves, max(20, leaves / 50) of them searched per query (2% at
        1M), then the `reorder_num_neighbors` best asymmetric-hashing candidates rescored exactly. Tuned on
        clustered 100k-1M x 128 data (benchmarks/search_benchmark.py), where this keeps recall@10 >= 0.95.
        Tables under `brute_force_below` vectors get exact brute force, which is fast enough there.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"embeddings must be a non-empty [N, H] array, got shape {embeddings.shape}")
        n, dim = embeddings.shape
        scann = _import_scann()
        builder = scann.builder(embeddings, 10, "dot_product").set_n_training_threads(training_threads)
        metadata: dict[str, Any] = {"num_vectors": n, "dim": dim}
        if n < brute_force_below:
            builder = builder.score_brute_force()
            metadata["brute_force"] = True
        else:
            leaves = num_leaves if num_leaves is not None else int(round(2 * math.sqrt(n)))
            leaves = min(leaves, n)
            to_search = num_leaves_to_search if num_leaves_to_search is not None else max(20, leaves // 50)
            builder = (builder
                       .tree(num_leaves=leaves, num_leaves_to_search=min(to_search, leaves),
                             training_sample_size=min(training_sample_size, n))
                       .score_ah(dims_per_block, anisotropic_quantization_threshold=anisotropic_quantization_threshold)
                       .reorder(reorder_num_neighbors))
            metadata.update(brute_force=False, num_leaves=leaves, num_leaves_to_search=min(to_search, leaves),
                            reorder_num_neighbors=reorder_num_neighbors)
        return cls(builder.build(), metadata)

    def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
               reorder_num_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores [B, k] float32, ids [B, k] int64), best first.

        `leaves_to_search` / `reorder_num_neighbors` trade speed for recall per call (build-time defaults
        otherwise); at least 10 k candidates are reordered, so a large k keeps its recall.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, {self.dim}], got shape {queries.shape}")
        k = min(k, self.num_vectors)
        pre_reorder = None
        if not self.metadata["brute_force"]:
            pre_reorder = max(10 * k, reorder_num_neighbors or self.metadata["reorder_num_neighbors"])
        ids, scores = self._searcher.search_batched_parallel(
            queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder,
            leaves_to_search=leaves_to_search)
        return np.asarray(scores, np.float32), np.asarray(ids, np.int64)

    def save(self, directory: str | os.PathLike) -> None:
        """Serializes into `directory`, atomically: written to a sibling temp dir, then renamed into place.

        Assets are stored with relative paths, so the directory can be moved or copied afterwards.
        """
        directory = os.path.abspath(os.fspath(directory))
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
        try:
            self._searcher.serialize(staging, relative_path=True)
            with open(os.path.join(staging, _METADATA_FILE), "w", encoding="utf-8") as f:
                json.dump(self.metadata, f)
            if os.path.exists(directory):
                retired = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
                os.rename(directory, os.path.join(retired, "index"))
                os.rename(staging, directory)
                shutil.rmtree(retired)
            else:
                os.rename(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ScannIndex":
        """Loads an index written by `save`; raises FileNotFoundError / ValueError naming what is wrong."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"ScaNN index directory {directory!r} does not exist")
        missing = [f for f in (_SCANN_ASSETS_FILE, _METADATA_FILE) if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise ValueError(f"{directory!r} is not a ScaNN index written by ScannIndex.save: missing {missing}")
        metadata_path = os.path.join(directory, _METADATA_FILE)
        try:
            with open(metadata_path, encoding="utf-8") as f:
                metadata = json.load(f)
            if not {"num_vectors", "dim", "brute_force"} <= set(metadata):
                raise ValueError("expected keys num_vectors, dim, brute_force")
        except ValueError as e:
            raise ValueError(f"{metadata_path}: invalid index metadata ({e})") from e
        scann = _import_scann()
        try:
            searcher = scann.load_searcher(directory, assets_backcompat_shim=False)
        except Exception as e:
            raise ValueError(f"{directory!r}: ScaNN could not load the index ({e})") from e
        return cls(searcher, metadata)


def export_scann_index(out_dir: str, entity_vecs: np.ndarray, queries: np.ndarray, entity_records: list[dict],
                       report: dict[str, Any], k: int = 10, chunk_size: int = 4096) -> dict[str, Any]:
    """Writes what `python -m kipjax.index --out` promises: `embeddings.npy`, `entities.json` (one record per
    row), `scann/` and `index_report.json`, which compares ScaNN's top-k with exact search for `queries`
    (recall@k of ScaNN against exact, queries/s of both). `report` holds the caller's fields (e.g. the split)."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_save_npy(os.path.join(out_dir, "embeddings.npy"), entity_vecs)
    atomic_write_text(os.path.join(out_dir, "entities.json"), json.dumps(entity_records))
    exact_fn = jax.jit(lambda q, e: chunked_topk(dot_product_score, q, e, k, chunk_size=chunk_size)[1])
    jax.block_until_ready(exact_fn(queries[:1], entity_vecs))  # compile outside the timing
    start = time.perf_counter()
    exact = np.asarray(exact_fn(queries, entity_vecs))
    exact_seconds = time.perf_counter() - start
    scann = ScannIndex.build(entity_vecs)
    start = time.perf_counter()
    _, approx = scann.search(queries, k)
    scann_seconds = time.perf_counter() - start
    scann.save(os.path.join(out_dir, "scann"))
    overlap = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.tolist())])
    report = {**report, "num_entities": len(entity_vecs), "num_queries": len(queries),
              f"scann_recall@{k}_vs_exact": float(overlap),
              "exact_queries_per_second": len(queries) / exact_seconds,
              "scann_queries_per_second": len(queries) / scann_seconds}
    atomic_write_text(os.path.join(out_dir, "index_report.json"), json.dumps(report, indent=2))
    return report
