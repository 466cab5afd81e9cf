"""Maximum-inner-product search side by side: exact JAX (chunked), ScaNN, FAISS (if installed), NumPy.

Reports build time, queries/s and recall@k against exact search on clustered synthetic vectors (clusters
make approximate search meaningful: neighbours concentrate in a few partitions, as with real embeddings).
Prints a markdown table; `--out` also writes the results as JSON.

  python benchmarks/search_benchmark.py --num_vectors 1000000 --num_queries 1000 --out results.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kipjax.retrieval.index import ScannIndex, chunked_topk, dot_product_score


def clustered_vectors(rng: np.random.Generator, num_vectors: int, num_queries: int, dim: int,
                      num_clusters: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Database and queries drawn around shared cluster centres (float32, built in blocks to bound memory)."""
    centers = rng.standard_normal((num_clusters, dim), dtype=np.float32)

    def draw(n: int) -> np.ndarray:
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            out[start:stop] = centers[rng.integers(num_clusters, size=stop - start)]
            out[start:stop] += spread * rng.standard_normal((stop - start, dim), dtype=np.float32)
        return out

    return draw(num_vectors), draw(num_queries)


def numpy_topk(db: np.ndarray, queries: np.ndarray, k: int, block: int = 32) -> np.ndarray:
    """Brute force in query blocks (a [block, N] score matrix at a time); the ground truth."""
    ids = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start:start + block] @ db.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        ids[start:start + block] = np.take_along_axis(top, order, axis=1)
    return ids


def recall_at_k(ids: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(ids, exact)]))


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """Result and the best wall time of `repeats` calls (the CPU may be shared: the minimum is the least noisy)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def bench_jax(db: np.ndarray, queries: np.ndarray, k: int, chunk_size: int,
              repeats: int) -> tuple[float, float, np.ndarray]:
    search = jax.jit(lambda q, t: chunked_topk(dot_product_score, q, t, k, chunk_size=chunk_size))

    def build():
        table = jax.device_put(db)
        jax.block_until_ready(search(jnp.asarray(queries), table))  # compile
        return table

    table, build_s = timed(build)
    q = jnp.asarray(queries)
    (_, ids), search_s = timed(lambda: jax.block_until_ready(search(q, table)), repeats)
    return build_s, search_s, np.asarray(ids)


def bench_scann(db: np.ndarray, queries: np.ndarray, k: int, leaves_to_search: list[int],
                repeats: int) -> tuple[dict[str, Any], float, list[tuple[int, float, np.ndarray]]]:
    index, build_s = timed(lambda: ScannIndex.build(db))
    index.search(queries[:16], k)  # warm up thread pool
    rows = []
    for leaves in [None, *leaves_to_search]:
        (_, ids), search_s = timed(lambda: index.search(queries, k, leaves_to_search=leaves), repeats)
        rows.append((leaves or index.metadata.get("num_leaves_to_search"), search_s, ids))
    return index.metadata, build_s, rows


def bench_faiss(faiss: Any, db: np.ndarray, queries: np.ndarray, k: int, repeats: int) -> list[dict[str, Any]]:
    dim, n = db.shape[1], db.shape[0]
    results = []
    flat, build_s = timed(lambda: _faiss_flat(faiss, db))
    (_, ids), search_s = timed(lambda: flat.search(queries, k), repeats)
    results.append(dict(method="FAISS IndexFlatIP", build_s=build_s, search_s=search_s, ids=ids))

    nlist = max(16, int(4 * math.sqrt(n)))
    nprobe = max(1, nlist // 64)

    def build_ivfpq():
        quantizer = faiss.IndexFlatIP(dim)
        ivfpq = faiss.IndexIVFPQ(quantizer, dim, nlist, dim // 4, 8, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefineFlat(ivfpq)  # exact rescoring of the PQ shortlist, like ScaNN's reorder
        index.train(db[np.random.default_rng(0).permutation(n)[:min(n, 100 * nlist)]])
        index.add(db)
        return index, ivfpq

    (index, ivfpq), build_s = timed(build_ivfpq)
    ivfpq.nprobe = nprobe
    params = faiss.IndexRefineSearchParameters(k_factor=20)
    (_, ids), search_s = timed(lambda: index.search(queries, k, params=params), repeats)
    results.append(dict(method=f"FAISS IVF{nlist},PQ{dim // 4}+refine (nprobe={nprobe}, k_factor=20)",
                        build_s=build_s, search_s=search_s, ids=ids))
    return results


def _faiss_flat(faiss: Any, db: np.ndarray) -> Any:
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--num_queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num_clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="within-cluster std (centres have std 1)")
    parser.add_argument("--chunk_size", type=int, default=65536, help="exact JAX search: entities per scan step")
    parser.add_argument("--repeats", type=int, default=3, help="searches timed per method (best kept)")
    parser.add_argument("--scann_leaves_to_search", default="",
                        help="comma-separated extra leaves_to_search settings to report besides the default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write results as JSON here")
    args = parser.parse_args()
    start_all = time.perf_counter()

    rng = np.random.default_rng(args.seed)
    db, queries = clustered_vectors(rng, args.num_vectors, args.num_queries, args.dim, args.num_clusters, args.spread)
    k = args.k
    results: list[dict[str, Any]] = []

    exact, search_s = timed(lambda: numpy_topk(db, queries, k))
    results.append(dict(method="NumPy brute force", build_s=0.0, search_s=search_s, ids=exact))

    build_s, search_s, ids = bench_jax(db, queries, k, args.chunk_size, args.repeats)
    results.append(dict(method=f"exact JAX chunked_topk (chunk {args.chunk_size})", build_s=build_s,
                        search_s=search_s, ids=ids))

    extra = [int(x) for x in args.scann_leaves_to_search.split(",") if x]
    metadata, build_s, rows = bench_scann(db, queries, k, extra, args.repeats)
    for leaves, search_s, ids in rows:
        name = "ScaNN brute force" if metadata["brute_force"] else (
            f"ScaNN tree{metadata['num_leaves']}/search {leaves} + AH + reorder {metadata['reorder_num_neighbors']}")
        if leaves == metadata.get("num_leaves_to_search"):
            name += " (defaults)"
        results.append(dict(method=name, build_s=build_s, search_s=search_s, ids=ids))

    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        results.extend(bench_faiss(faiss, db, queries, k, args.repeats))

    exact_jax_s = results[1]["search_s"]
    for r in results:
        r["qps"] = args.num_queries / r["search_s"]
        r[f"recall@{k}"] = recall_at_k(r.pop("ids"), exact)
        r["speedup_vs_exact_jax"] = exact_jax_s / r["search_s"]

    total_s = time.perf_counter() - start_all
    print(f"N={args.num_vectors:,} x {args.dim} float32, {args.num_queries} queries, {args.num_clusters} clusters, "
          f"k={k}; {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].platform}; "
          f"total {total_s:.0f} s\n")
    print(f"| method | build s | queries/s | recall@{k} | speed-up vs exact JAX |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {r['build_s']:.1f} | {r['qps']:,.0f} | {r[f'recall@{k}']:.3f} | "
              f"{r['speedup_vs_exact_jax']:.1f}x |")
    if faiss is None:
        print("\nFAISS not installed (pip install faiss-cpu): skipped.")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"config": vars(args), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "jax_version": jax.__version__, "total_s": total_s, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
