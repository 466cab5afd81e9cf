"""Where the time of the kipjax dual-encoder train step goes on XLA:CPU, by kind of operation.

Runs the step of `train_step_benchmark.py` (same shapes and flags) under `jax.profiler`, then joins the trace
with XLA's optimized HLO: every executed op is classed as a 2-D matmul, a batched matmul (attention), or an
element-wise / layout fusion named after its root ops, with its share of op time and, for matmuls, the GFLOP/s
it reached. Op times overlap a little where XLA runs two ops at once, so shares are of summed op time.

  python benchmarks/profile_train_step.py --dropout 0.0 --out benchmarks/results/profile_train_step.json
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
from typing import Any, Sequence

STEPS = 2


def _dims(shape: str) -> list[int]:
    match = re.match(r"\w+\[([\d,]*)\]", shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def classify_ops(hlo_text: str) -> dict[str, tuple[str, float]]:
    """Instruction name -> (category, FLOPs) for every fusion / dot of the entry computation."""
    computations = {m.group(1).lstrip("%"): m.group(2)
                    for m in re.finditer(r"\n(%?[\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo_text, re.S)}
    entry = hlo_text[hlo_text.index("ENTRY"):]
    ops = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w+)\((.*)$", entry, re.M):
        name, _, opcode, rest = m.groups()
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        body = computations.get(called.group(1), "") if called else m.group(0)
        shapes = dict(re.findall(r"%?([\w.\-]+) = (\w+\[[\d,]*\])", body))
        flops, batched = 0.0, False
        for out, lhs, dims in re.findall(r"= (\w+\[[\d,]*\])\S* dot\(%?([\w.\-]+), [^)]*\), (.*)", body):
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", dims).group(1)
            lhs_shape = _dims(shapes.get(lhs, "")) if lhs in shapes else []
            k = math.prod(lhs_shape[int(i)] for i in contracting.split(",")) if lhs_shape else 0
            flops += 2 * math.prod(_dims(out)) * k
            batched |= "lhs_batch_dims" in dims
        if flops:
            ops[name] = ("matmul, batched (attention)" if batched else "matmul, 2-D", flops)
        else:
            ops[name] = (re.sub(r"[.\d]+$", "", name) if opcode == "fusion" else opcode, 0.0)
    return ops


def op_times(trace_dir: str) -> dict[str, float]:
    """Instruction name -> seconds per step, from the Perfetto trace jax.profiler wrote."""
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/perfetto_trace.json.gz")))[-1]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            times[event["name"]] += event.get("dur", 0) / 1e6 / STEPS
    return times


def breakdown(ops: dict[str, tuple[str, float]], times: dict[str, float]) -> list[dict[str, Any]]:
    seconds, flops = collections.Counter(), collections.Counter()
    for name, (category, op_flops) in ops.items():
        if name in times:
            seconds[category] += times[name]
            flops[category] += op_flops
    total = sum(seconds.values())
    return [{"category": c, "seconds_per_step": s, "share": s / total,
             "gflops_per_s": flops[c] / s / 1e9 if flops[c] else None} for c, s in seconds.most_common()]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--top", type=int, default=12, help="categories printed")
    parser.add_argument("--out", help="write the breakdown as JSON here")
    args, bench_argv = parser.parse_known_args(argv)
    work = tempfile.mkdtemp(prefix="kipjax_profile_")
    dump = os.path.join(work, "hlo")
    # The dump flag must be in place before JAX starts its backend.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_pass_re=NONE"
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train_step_benchmark as bench

    bargs = bench.parse_args([f"--dropout={args.dropout}", *bench_argv])
    model, optimizer, state = bench.kipjax_setup(bargs, bench.bert_config(bargs))
    batch = {k: jnp.asarray(v) for k, v in bench.token_batch(bargs).items()}
    step = jax.jit(bench.kipjax_train_step(model, optimizer), donate_argnums=0)
    for _ in range(2):  # compile, then one warm step
        state, loss = step(state, batch)
        jax.block_until_ready(loss)
    trace_dir = os.path.join(work, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(STEPS):
            state, loss = step(state, batch)
            jax.block_until_ready(loss)
    step_hlo = max(glob.glob(os.path.join(dump, "*jit_step*after_optimizations.txt")), key=os.path.getsize)
    with open(step_hlo, encoding="utf-8") as f:
        rows = breakdown(classify_ops(f.read()), op_times(trace_dir))
    print(f"summed op time per step: {sum(r['seconds_per_step'] for r in rows):.2f} s (dropout {args.dropout})")
    print("| ops | s / step | share | GFLOP/s |\n|---|---:|---:|---:|")
    for r in rows[:args.top]:
        rate = f"{r['gflops_per_s']:.0f}" if r["gflops_per_s"] else ""
        print(f"| {r['category']} | {r['seconds_per_step']:.3f} | {100 * r['share']:.1f}% | {rate} |")
    if args.out:
        from kipjax.run_log import atomic_write_text
        atomic_write_text(args.out, json.dumps({"dropout": args.dropout, "xla_flags": os.environ["XLA_FLAGS"],
                                                "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
