"""Square-matmul throughput of XLA (jax.jit) and PyTorch on this machine, in fp32 and bf16.

It shows the ceiling each framework's kernels set for model FLOPs utilisation, e.g. whether bf16 reaches the
CPU's matrix units (AMX) in either:

  python benchmarks/matmul_peak.py --out benchmarks/results/matmul_peak.json
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import torch

from kipjax.run_log import atomic_write_text


def best_gflops(matmul: Callable[[], Any], n: int, repeats: int) -> float:
    matmul()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1024,2048,4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        for name, jax_dtype, torch_dtype in (("fp32", jnp.float32, torch.float32),
                                             ("bf16", jnp.bfloat16, torch.bfloat16)):
            a = jax.random.normal(jax.random.PRNGKey(n), (n, n), jax_dtype)
            f = jax.jit(jnp.matmul)
            t = torch.randn(n, n, dtype=torch_dtype)
            results.setdefault(f"jax {name}", {})[str(n)] = best_gflops(
                lambda: f(a, a).block_until_ready(), n, args.repeats)
            results.setdefault(f"torch {name}", {})[str(n)] = best_gflops(lambda: t @ t, n, args.repeats)
    print("| kernel | " + " | ".join(f"{n}² GFLOP/s" for n in args.sizes.split(",")) + " |")
    print("|---|" + "---:|" * len(args.sizes.split(",")))
    for kernel, per_size in results.items():
        print(f"| {kernel} | " + " | ".join(f"{g:.0f}" for g in per_size.values()) + " |")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
