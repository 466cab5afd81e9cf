"""Encode a passage corpus on every device of every host, resumably, and search all of its shards.

The corpus rows are split into one contiguous range per device of the mesh (the last ranges padded), and each
host owns the ranges of its devices: exactly the rows that host's devices hold when the embedding table is a
global array sharded over every mesh axis (`table_sharding`), so the exact search (`index.sharded_topk`)
runs on the table where it was written, with no host ever holding the whole corpus.

Encoding steps in lockstep on all hosts: at each step every host encodes `batch_size / hosts` rows of its own
range (its devices' share of one global batch; the encoder's params stay however the mesh shards them) and
keeps its rows of the output. Every `steps_per_block` steps each host writes its rows so far as one block,
`DIR/host_<h>-of-<n>/block_<j>.npy` (temp file + rename), beside a `manifest.json` naming the layout and a
`fingerprint` of what is encoded (the params). A killed run that is restarted with the same fingerprint and
layout loads the blocks every host has finished (the hosts agree on the smallest count) and encodes the rest;
any other fingerprint or layout starts that host's directory afresh. Without a directory nothing is written.

ScaNN (`scann_search`) is the host-side alternative when the table does not fit the devices: each host indexes
its own rows, searches every query for its local top-k, and the hosts' lists are merged.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kipjax import partitioning
from kipjax.retrieval import index
from kipjax.run_log import atomic_save_npy, atomic_write_text, track

# encode_fn(params, ids [b, L], mask [b, L]) -> [b, H] embeddings (jitted here).
EncodeFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
# A corpus's attention mask: the whole [N, L] array, a function of a batch's ids (a memory-mapped table's
# `token_tables.row_mask`, which no [N, L] array need hold), or None for `ids != 0`.
MaskSource = np.ndarray | Callable[[np.ndarray], np.ndarray] | None
MANIFEST = "manifest.json"
_save_block = atomic_save_npy  # a module attribute, so the tests can kill a run at a chosen block


@dataclasses.dataclass(frozen=True)
class CorpusLayout:
    """Which corpus rows each host encodes and holds: `num_rows` rows padded to `padded_rows`, a multiple of
    the device count, host h owning rows [starts[h], starts[h] + rows_per_host)."""

    num_rows: int
    padded_rows: int
    rows_per_host: int
    host_start: int  # this host's first row

    @property
    def host_stop(self) -> int:
        """End of this host's real rows (its range may end in padding)."""
        return min(self.host_start + self.rows_per_host, self.num_rows)


def table_sharding(mesh: Mesh) -> NamedSharding:
    """The embedding table's sharding: rows over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def corpus_layout(num_rows: int, mesh: Mesh) -> CorpusLayout:
    """This host's rows of a `num_rows` table sharded as `table_sharding` (one contiguous range per host)."""
    if num_rows < 1:
        raise ValueError(f"cannot encode an empty corpus (num_rows={num_rows})")
    padded = -(-num_rows // mesh.devices.size) * mesh.devices.size
    slices = sorted({(s[0].start or 0, s[0].stop or padded) for s in
                     table_sharding(mesh).addressable_devices_indices_map((padded,)).values()})
    start, stop = slices[0][0], slices[-1][1]
    if any(a[1] != b[0] for a, b in zip(slices, slices[1:])) or (stop - start) * jax.process_count() != padded:
        raise ValueError(f"this host's devices do not hold one contiguous, equal share of the table's rows "
                         f"({slices}); build the mesh with each host's devices adjacent (partitioning.make_mesh)")
    return CorpusLayout(num_rows, padded, stop - start, start)


def _host_dir(out_dir: str) -> str:
    return os.path.join(out_dir, f"host_{jax.process_index():05d}-of-{jax.process_count():05d}")


def _block_path(host_dir: str, block: int) -> str:
    return os.path.join(host_dir, f"block_{block:06d}.npy")


def _finished_blocks(host_dir: str, manifest: dict) -> int:
    """Blocks 0..n-1 on disk under a manifest equal to `manifest` (else the directory is cleared: 0)."""
    path = os.path.join(host_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            same = json.load(f) == manifest
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(host_dir, ignore_errors=True)
        os.makedirs(host_dir)
        atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
        return 0
    done = 0
    while os.path.exists(_block_path(host_dir, done)):
        done += 1
    return done


def _agreed_minimum(value: int) -> int:
    if jax.process_count() == 1:
        return value
    return int(np.min(multihost_utils.process_allgather(np.asarray(value, np.int64))))


@functools.lru_cache(maxsize=16)
def _jitted(encode_fn: EncodeFn, sharding: NamedSharding) -> Callable[..., jax.Array]:
    """One compiled encoder per (function, output sharding), reused across calls (e.g. ANCE episodes)."""
    return jax.jit(encode_fn, out_shardings=sharding)


def _nonzero(batch_ids: np.ndarray) -> np.ndarray:
    """The default mask: every id but the pad id 0 (T5's and BERT's pads, never a real token there)."""
    return batch_ids != 0


def encode_corpus(encode_fn: EncodeFn, params: Any, ids: np.ndarray, mask: MaskSource, *, mesh: Mesh,
                  batch_size: int,
                  out_dir: str | None = None, fingerprint: str = "", steps_per_block: int = 64,
                  desc: str = "encode corpus") -> tuple[np.ndarray, CorpusLayout]:
    """This host's rows of the encoded corpus ([layout.rows_per_host, H] float32, padding rows included) and the
    layout (module docstring). `ids` / `mask` are the whole corpus's [N, L] arrays (each host reads only its
    rows, so a memory-mapped file serves; ids of any integer dtype; `mask` a `MaskSource`); `batch_size` rows
    per step over all hosts."""
    num_hosts = jax.process_count()
    data_parallel = partitioning.data_parallel_size(mesh)
    if batch_size % (num_hosts * data_parallel // math.gcd(num_hosts, data_parallel)):
        raise ValueError(f"batch_size {batch_size} must be divisible by the {num_hosts} hosts and the "
                         f"{data_parallel}-way data parallelism")
    layout = corpus_layout(len(ids), mesh)
    local_batch = batch_size // num_hosts
    num_steps = -(-layout.rows_per_host // local_batch)
    block_steps = max(1, steps_per_block)
    num_blocks = -(-num_steps // block_steps)
    host_dir = None
    done = 0
    if out_dir is not None:
        host_dir = _host_dir(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        manifest = {"num_rows": layout.num_rows, "padded_rows": layout.padded_rows, "host_start": layout.host_start,
                    "rows_per_host": layout.rows_per_host, "batch_size": batch_size, "steps_per_block": block_steps,
                    "fingerprint": fingerprint}
        done = _agreed_minimum(_finished_blocks(host_dir, manifest))
    mask = _nonzero if mask is None else mask
    batch_sharding = partitioning.batch_sharding(mesh)
    encode = _jitted(encode_fn, batch_sharding)
    blocks: list[np.ndarray] = [np.load(_block_path(host_dir, b)) for b in range(done)]
    remaining = range(done * block_steps, num_steps)
    pending: list[np.ndarray] = []
    for step in track(remaining, total=len(remaining) * local_batch * num_hosts, desc=desc,
                      rows_per_item=local_batch * num_hosts):
        rows = np.arange(layout.host_start + step * local_batch, layout.host_start + (step + 1) * local_batch)
        rows = np.where(rows < layout.num_rows, rows, 0)  # padding rows re-encode row 0; they are never returned
        batch_ids = np.asarray(ids[rows], np.int32)
        batch_mask = np.asarray(mask(batch_ids) if callable(mask) else mask[rows], np.int32)
        inputs = [jax.make_array_from_process_local_data(batch_sharding, a, (batch_size, *a.shape[1:]))
                  for a in (batch_ids, batch_mask)]
        out = encode(params, *inputs)
        pending.append(np.asarray(multihost_utils.global_array_to_host_local_array(out, mesh, batch_sharding.spec),
                                  np.float32))
        if len(pending) == block_steps or step == num_steps - 1:
            block = np.concatenate(pending)
            pending = []
            if host_dir is not None:
                _save_block(_block_path(host_dir, len(blocks)), block)
            blocks.append(block)
    assert len(blocks) == num_blocks, (len(blocks), num_blocks)
    return np.concatenate(blocks)[:layout.rows_per_host], layout


def encode_everywhere(encode_fn: EncodeFn, params: Any, ids: np.ndarray, mask: MaskSource, *, mesh: Mesh,
                      batch_size: int, desc: str) -> np.ndarray:
    """[N, H]: all rows encoded (shared out over hosts and devices as `encode_corpus`), whole on every host;
    for the queries, which every host searches with."""
    local, layout = encode_corpus(encode_fn, params, ids, mask, mesh=mesh, batch_size=batch_size, desc=desc)
    if jax.process_count() > 1:  # the hosts' rows, put in row order
        starts = multihost_utils.process_allgather(np.asarray(layout.host_start, np.int64))
        parts = multihost_utils.process_allgather(local)
        local = np.concatenate([parts[h] for h in np.argsort(starts)])
    return local[:layout.num_rows]


def device_table(local_rows: np.ndarray, layout: CorpusLayout, mesh: Mesh, dtype: jnp.dtype = jnp.float32
                 ) -> jax.Array:
    """The global [padded_rows, H] table sharded as `table_sharding`, each host contributing its rows."""
    return jax.make_array_from_process_local_data(table_sharding(mesh), local_rows.astype(dtype),
                                                  (layout.padded_rows, local_rows.shape[1]))


@functools.lru_cache(maxsize=16)
def _search_fn(mesh: Mesh, k: int, shard_chunk: int, num_rows: int) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The compiled exact top-k of `exact_search`, one per (mesh, k, chunk, table size): repeated searches (a
    served linker's requests, ANCE episodes) reuse it instead of compiling again."""
    def topk(q: jax.Array, excluded: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        def bias(qs: tuple, _: jax.Array, ids: jax.Array) -> jax.Array:
            return jnp.where((ids[None, :, None] == qs[1][:, None, :]).any(-1), -jnp.inf, 0.0)

        return index.sharded_topk(lambda qs, chunk: index.dot_product_score(qs[0], chunk), (q, excluded), rows, k,
                                  mesh=mesh, chunk_size=shard_chunk, bias_fn=bias, num_entities=num_rows)

    return jax.jit(topk)  # the table is an argument: a multi-host array cannot be closed over


def exact_search(queries: np.ndarray, table: jax.Array, layout: CorpusLayout, mesh: Mesh, k: int, *,
                 exclude: np.ndarray | None = None, query_batch: int = 1024, chunk_size: int = 16384,
                 desc: str = "search") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows of the sharded `table` for every query ([Q, k] scores and ids, ids -1 where fewer rows
    exist), the rows in `exclude` ([Q, G], -1 padded) left out. `queries` are the same on every host."""
    exclude = np.full((len(queries), 1), -1, np.int32) if exclude is None else exclude.astype(np.int32)
    k = min(k, layout.num_rows)
    search = _search_fn(mesh, k, min(chunk_size, layout.padded_rows // mesh.devices.size), layout.num_rows)
    scores, ids = [], []
    for start in track(range(0, len(queries), query_batch), total=len(queries), desc=desc, rows_per_item=query_batch):
        q, g = _padded(queries[start:start + query_batch], query_batch), _padded(exclude[start:start + query_batch],
                                                                                query_batch, fill=-1)
        s, i = search(*partitioning.put_replicated((q.astype(table.dtype), g), mesh), table)
        count = min(query_batch, len(queries) - start)
        scores.append(np.asarray(s, np.float32)[:count])
        ids.append(np.asarray(i)[:count])
    return np.concatenate(scores), np.concatenate(ids)


def _padded(rows: np.ndarray, size: int, fill: float = 0) -> np.ndarray:
    """`rows` topped up to `size` rows, so every search call compiles once."""
    if len(rows) == size:
        return rows
    return np.concatenate([rows, np.full((size - len(rows), *rows.shape[1:]), fill, rows.dtype)])


def scann_search(queries: np.ndarray, local_rows: np.ndarray, layout: CorpusLayout, k: int, *,
                 exclude: np.ndarray | None = None, **scann_options) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k over every host's rows with ScaNN: each host indexes its real rows and retrieves
    `k + G` per query (G = `exclude`'s width, so that k remain after leaving out the excluded rows); the hosts'
    lists are gathered and merged by score (ties to the lower row). Same contract as `exact_search`."""
    real = local_rows[:max(0, layout.host_stop - layout.host_start)]
    width = 0 if exclude is None else exclude.shape[1]
    k = min(k, layout.num_rows)
    if len(real):
        scores, ids = index.ScannIndex.build(real, **scann_options).search(queries, k + width)
        ids = np.where(ids >= 0, ids + layout.host_start, -1)
    else:
        scores, ids = np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    scores, ids = _pad_columns(scores, ids, k + width)
    if exclude is not None:
        dropped = (ids[:, :, None] == exclude[:, None, :]).any(-1) | (ids < 0)
        scores = np.where(dropped, -np.inf, scores)
    if jax.process_count() > 1:  # [hosts, Q, k + G] -> [Q, hosts * (k + G)]
        scores, ids = (np.concatenate(list(multihost_utils.process_allgather(x)), axis=1) for x in (scores, ids))
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    best, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return best.astype(np.float32), np.where(np.isfinite(best), best_ids, -1).astype(np.int32)


SEARCH_KINDS = ("exact", "scann")


def search_corpus(kind: str, queries: np.ndarray, local_rows: np.ndarray, layout: CorpusLayout, mesh: Mesh, k: int,
                  *, exclude: np.ndarray | None = None, table_dtype: jnp.dtype = jnp.float32, query_batch: int = 1024,
                  chunk_size: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """`exact_search` over the rows placed on the devices (in `table_dtype`) or `scann_search` over each host's
    rows, as `kind` says; what a method's `search` binding chooses between."""
    if kind not in SEARCH_KINDS:
        raise ValueError(f"search kind must be one of {SEARCH_KINDS}, got {kind!r}")
    if kind == "scann":
        return scann_search(queries, local_rows, layout, k, exclude=exclude)
    table = device_table(local_rows, layout, mesh, table_dtype)
    return exact_search(queries, table, layout, mesh, k, exclude=exclude, query_batch=query_batch,
                        chunk_size=chunk_size)


def _pad_columns(scores: np.ndarray, ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    missing = width - scores.shape[1]
    if missing <= 0:
        return scores.astype(np.float32), ids.astype(np.int64)
    return (np.pad(scores.astype(np.float32), ((0, 0), (0, missing)), constant_values=-np.inf),
            np.pad(ids.astype(np.int64), ((0, 0), (0, missing)), constant_values=-1))
