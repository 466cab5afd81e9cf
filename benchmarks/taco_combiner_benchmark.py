"""Cost of TACO's adaptive learning: the train step with `task_sensitivity_combiner` against the naive
multi-task step, in step time (target: at most 1.3x) and in XLA's compiled memory.

Three `Trainer`s of one `TacoRetrieval` (the TACO demo config, `gin_configs/taco/demo.gin`, at the shape the
flags give) compile the production step, `Trainer._train_step`, and run it on one batch of the demo's SeqIO
feed (B_k queries of each task, 1 positive + `hard_negatives` passages per query):

- naive: no combiner; the gradient of `method.loss`, the mean of the task losses (what TACO's warmup stage and
  non-adaptive episodes run);
- naive_combiner: one gradient per task on its own rows, stacked [T, ...], then `naive_combiner` (their mean):
  the cost of per-task gradients alone;
- adaptive: the same per-task gradients, then `task_sensitivity_combiner` (tau 2, beta 0.999), timed after its
  burn-in; its state, I, is T x the parameters in float32.

All three start from the same params. For the first two steps the results record each variant's loss, gradient
norm, and how far its new params and Adam moments are from the naive step's: in the first (the adaptive one in
burn-in) all three should agree up to float rounding; in the second, the loss still agrees and only the adaptive
gradient differs. Then the steps run interleaved, in rotating order, so background load hits all three alike;
medians and best steps are reported, with ratios against the naive step of the same run.

The combiner's update (and its median alone) is also timed by itself, on random gradients of the model's
parameter shapes, for the demo's 4 tasks and KILT's 8 (`--alone_tasks`).

Model FLOPs (ST5-EncDec: the T5 encoder over every token, one decoder position; `model_flops_per_step`) count
what every variant computes alike; MFU is against the best fp32 matmul XLA reaches in the same run.

  python benchmarks/taco_combiner_benchmark.py --out benchmarks/results/taco_combiner.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import gin
import jax
import jax.numpy as jnp

from kipjax import partitioning, runner  # noqa: F401  (runner: the configurables the gin files bind)
from kipjax.checkpoints import tree_bytes
from kipjax.methods.taco import inputs
from kipjax.methods.taco.retrieval import TacoRetrieval
from kipjax.models.t5 import T5Config
from kipjax.optim.task_combiners import lower_median, naive_combiner, task_sensitivity_combiner
from kipjax.run_log import atomic_write_text
from kipjax.trainer import Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_benchmark import GIB, _median_pair, _timed, compute_threads, matmul_peak, memory_report  # noqa: E402

VARIANTS = ("naive", "naive_combiner", "adaptive")
KILT_TASKS = len(inputs.KILT_TASKS)
# --quick: a toy shape for the test; every other flag keeps its meaning.
QUICK = dict(d_model=32, d_kv=8, heads=4, d_ff=64, layers=1, batch_size=16, steps=2, warmup=1,
             alone_tasks="2", matmul_sizes="128", matmul_repeats=1, combiner_repeats=1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gin_file", default="gin_configs/taco/demo.gin")
    p.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings (after the shape's)")
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--d_kv", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d_ff", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    p.add_argument("--batch_size", type=int, default=32, help="queries per step over all tasks")
    p.add_argument("--hard_negatives", type=int, default=2)
    p.add_argument("--tau", type=float, default=2.0)
    p.add_argument("--beta", type=float, default=0.999)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (interleaved)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant after the two checked ones")
    p.add_argument("--alone_tasks", default=f"4,{KILT_TASKS}",
                   help="task counts T at which the combiner alone is timed (the demo's 4, KILT's 8)")
    p.add_argument("--combiner_repeats", type=int, default=3, help="timed calls of each combiner measurement")
    p.add_argument("--matmul_sizes", default="1024,2048,4096", help="square fp32 matmuls timed for peak GFLOP/s")
    p.add_argument("--matmul_repeats", type=int, default=5)
    p.add_argument("--memory_budget_gib", type=float, default=24.0)
    p.add_argument("--quick", action="store_true", help=f"toy sizes for the test: {QUICK}")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        defaults = p.parse_args([])
        for name, value in QUICK.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    return args


def shape_bindings(args: argparse.Namespace) -> list[str]:
    """The model and batch shape as gin bindings, and a constant learning rate, so every step (the first
    included) updates the params and the checked updates compare real values."""
    return [f"T5Config.d_model = {args.d_model}", f"T5Config.d_kv = {args.d_kv}",
            f"T5Config.num_heads = {args.heads}", f"T5Config.d_ff = {args.d_ff}",
            f"T5Config.num_layers = {args.layers}", f"BATCH_SIZE = {args.batch_size}",
            f"TacoRetrieval.hard_negatives = {args.hard_negatives}",
            "learning_rate_schedule.warmup_fraction = None", "learning_rate_schedule.decay = 'constant'"]


# --------------------------------------------------------------------------------------------- FLOPs


def encdec_macs(config: T5Config, length: int) -> int:
    """Multiply-adds of one ST5-EncDec embedding of a `length`-token sequence: every encoder layer over all
    tokens (q, k, v, out; the MLP's 2 or 3 matrices; q k^T and probs v), and every decoder layer for its one
    position (self-attention's four projections and its single key, cross-attention's q and out for that
    position, its k and v over all encoder tokens, its scores and values, the MLP)."""
    d, inner, mlp = config.d_model, config.num_heads * config.d_kv, (3 if config.is_gated else 2) * config.d_ff
    encoder = config.num_layers * (length * (4 * d * inner + mlp * d) + 2 * length ** 2 * inner)
    decoder = config.decoder_layers * (6 * d * inner + 2 * length * d * inner + mlp * d + 2 * (length + 1) * inner)
    return encoder + decoder


def model_flops_per_step(method: TacoRetrieval, passage_length: int) -> float:
    """FLOPs of one forward + backward pass (6 per multiply-add) over every task's queries (at the task's
    query budget, as `task_loss` cuts them) and passages (at the batch's padded width, which the matmuls run
    over), plus the [B_k, B_k (1 + H)] score matmuls. Embedding gathers, norms, softmax, GELU and Adam are not
    counted."""
    group = 1 + method.hard_negatives
    config = method.model.config
    macs = 0
    for task, count in zip(method.data.tasks, method.batch_sizes):
        query_length = inputs.query_tokens(task.task, method.data.settings.prefix_mode)
        macs += count * encdec_macs(config, query_length) + count * group * encdec_macs(config, passage_length)
        macs += count * count * group * config.d_model
    return 6.0 * macs


# ------------------------------------------------------------------------------------------------ setup


def build(args: argparse.Namespace, model_dir: str) -> tuple[TacoRetrieval, dict[str, Trainer]]:
    """The configured method and one Trainer per variant; the adaptive one's burn-in is its first step."""
    gin.clear_config()
    gin.parse_config_files_and_bindings([args.gin_file], shape_bindings(args) + args.gin_bindings)
    method = TacoRetrieval()
    combiners: dict[str, Callable[..., Any] | None] = {
        "naive": None,
        "naive_combiner": functools.partial(naive_combiner, reduction="mean"),  # the same gradient as `naive`
        "adaptive": functools.partial(task_sensitivity_combiner, tau=args.tau, beta=args.beta, burn_in_steps=1),
    }
    steps = 2 + args.warmup + args.steps
    trainers = {name: Trainer(method, model_dir=model_dir, train_steps=steps, gradient_combiner=combiner)
                for name, combiner in combiners.items()}
    return method, trainers


def relative_difference(a: Any, b: Any) -> float:
    """The largest max|a - b| / max|b| over the float leaves of two like trees (0 for a leaf that is 0 in both,
    as the never-trained decoder self-attention q/k kernels' Adam moments are)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(y.dtype, jnp.floating):
            diff, scale = float(jnp.max(jnp.abs(x - y))), float(jnp.max(jnp.abs(y)))
            worst = max(worst, diff / scale if scale else (0.0 if diff == 0 else float("inf")))
    return worst


def check_step(states: dict[str, Any], metrics: dict[str, dict]) -> dict[str, Any]:
    """One step's loss and gradient norm per variant, and how far each variant's new params and Adam state
    (whose first moment is the clipped gradient times 1 - b1) are from the naive step's."""
    naive = states["naive"]
    return {"loss": {name: float(m["loss"]) for name, m in metrics.items()},
            "grad_norm": {name: float(m["grad_norm"]) for name, m in metrics.items()},
            "difference_from_naive": {
                name: {"params": relative_difference(s.params, naive.params),
                       "optimizer": relative_difference(s.opt_state, naive.opt_state)}
                for name, s in states.items() if name != "naive"}}


# ---------------------------------------------------------------------------------------------- timing


def combiner_alone(params: Any, num_tasks: int, args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds, on random [T, ...] gradients of the params' shapes, of the adaptive combiner's update
    (after burn-in), of its median alone, and of the mean over the task axis two ways: as `jnp.mean(axis=0)`
    (what the combiners' `_mean` and the naive combiner run) and as T - 1 elementwise adds of the task slices,
    which XLA:CPU runs as one fused loop instead of a reduction."""
    combiner = task_sensitivity_combiner(num_tasks=num_tasks, tau=args.tau, beta=args.beta, burn_in_steps=0)
    keys = jax.random.split(jax.random.PRNGKey(num_tasks), len(jax.tree.leaves(params)))
    leaves = [jax.random.normal(k, (num_tasks, *p.shape), jnp.float32)
              for k, p in zip(keys, jax.tree.leaves(params))]
    grads = jax.tree.unflatten(jax.tree.structure(params), leaves)
    state, losses = combiner.init(params), jnp.ones((num_tasks,))
    calls = {
        "update": (jax.jit(combiner.update), (grads, state, params, losses)),
        "median": (jax.jit(lambda g: lower_median(jax.tree.map(jnp.abs, g))), (grads,)),
        "mean_reduce": (jax.jit(lambda g: jax.tree.map(lambda x: jnp.mean(x, axis=0), g)), (grads,)),
        "mean_adds": (jax.jit(lambda g: jax.tree.map(lambda x: sum(x[k] for k in range(num_tasks)) / num_tasks, g)),
                      (grads,)),
    }
    results = {}
    for name, (fn, fn_args) in calls.items():
        jax.block_until_ready(fn(*fn_args))  # compile
        results[f"{name}_s"] = statistics.median(
            _timed(lambda: jax.block_until_ready(fn(*fn_args))) for _ in range(args.combiner_repeats))
    return {"num_tasks": num_tasks, **results, "state_bytes": tree_bytes(state.sensitivity)}


def flops_check(method: TacoRetrieval, params: Any, length: int) -> dict[str, float]:
    """`encdec_macs` against XLA's own count of one embedding forward (lowered, not compiled): the model
    FLOPs formula is right up to the element-wise work it leaves out."""
    ids = jax.ShapeDtypeStruct((8, length), jnp.int32)
    forward = jax.jit(lambda p, i: method.model.apply({"params": p}, i, jnp.ones_like(i)))
    xla = forward.lower(params, ids).cost_analysis()
    return {"length": length, "formula_flops": 2.0 * 8 * encdec_macs(method.model.config, length),
            "xla_flops": float(xla["flops"])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as model_dir:
        method, trainers = build(args, model_dir)
        naive = trainers["naive"]
        method.on_epoch_start(None, 0, jax.random.PRNGKey(0))  # hard negatives: random non-gold passages
        batch = naive.device_batch(naive.next_batch())
        tables = naive.device_tables()
    states = {name: t.initial_state(batch) for name, t in trainers.items()}
    compiled, compile_s, memory = {}, {}, {}
    for name, trainer in trainers.items():
        start = time.perf_counter()
        with partitioning.activate(trainer.mesh, trainer.rules):
            jitted = trainer.compile_step(jax.tree.map(lambda x: x.sharding, states[name]), batch, tables)
            compiled[name] = jitted.lower(states[name], batch, tables).compile()
        compile_s[name] = time.perf_counter() - start
        memory[name] = memory_report(compiled[name], args.memory_budget_gib)

    def step(name: str) -> dict:
        with partitioning.activate(trainers[name].mesh, trainers[name].rules):
            states[name], metrics = compiled[name](states[name], batch, tables)
        return jax.block_until_ready(metrics)

    checks = []
    for _ in range(2):  # the adaptive step in burn-in, then after it
        metrics = {name: step(name) for name in VARIANTS}
        checks.append(check_step(states, metrics))
    for _ in range(args.warmup):
        for name in VARIANTS:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for i in range(args.steps):
        for name in VARIANTS[i % 3:] + VARIANTS[:i % 3]:  # rotating order: none always runs first
            times[name].append(_timed(lambda: step(name)))

    params = states["naive"].params
    param_count = sum(int(x.size) for x in jax.tree.leaves(params))
    passage_length = batch["passage_input_ids"].shape[-1]
    flops = model_flops_per_step(method, passage_length)
    peak = matmul_peak([int(n) for n in args.matmul_sizes.split(",")], args.matmul_repeats)
    naive_median = statistics.median(times["naive"])
    steps = {name: {**_median_pair(t), "times": t, "compile_s": compile_s[name],
                    "ratio_to_naive": statistics.median(t) / naive_median,
                    "best_ratio_to_naive": min(t) / min(times["naive"]),
                    "gflops": flops / statistics.median(t) / 1e9,
                    "mfu": flops / statistics.median(t) / 1e9 / peak["best_gflops"],
                    "memory": memory[name]}
             for name, t in times.items()}
    return {
        "num_tasks": method.num_tasks, "batch_sizes": method.batch_sizes, "passage_length": passage_length,
        "query_lengths": [inputs.query_tokens(t.task, method.data.settings.prefix_mode) for t in method.data.tasks],
        "param_count": param_count, "param_bytes": tree_bytes(params),
        "combiner_state_bytes": tree_bytes(states["adaptive"].combiner_state.sensitivity),
        "model_flops_per_step": flops, "flops_check": flops_check(method, params, passage_length),
        "matmul_peak": peak,
        "steps": steps,
        "adaptive_over_naive": steps["adaptive"]["ratio_to_naive"],
        "naive_combiner_over_naive": steps["naive_combiner"]["ratio_to_naive"],
        "target_ratio": 1.3, "meets_target": steps["adaptive"]["ratio_to_naive"] <= 1.3,
        "checks": {"burn_in_step": checks[0], "adaptive_step": checks[1]},
        "combiner_alone": [combiner_alone(params, int(t), args) for t in args.alone_tasks.split(",")],
        "model_config": {k: v for k, v in vars(method.model.config).items() if k not in ("dtype", "param_dtype")},
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['num_tasks']} tasks, rows per task {r['batch_sizes']}, query lengths {r['query_lengths']}, passages "
          f"of {r['passage_length']} tokens; {r['param_count']:,} params ({r['param_bytes'] / 2 ** 20:.1f} MiB), "
          f"combiner state {r['combiner_state_bytes'] / 2 ** 20:.1f} MiB; model FLOPs/step "
          f"{r['model_flops_per_step'] / 1e9:.2f} G (one {r['flops_check']['length']}-token forward: formula "
          f"{r['flops_check']['formula_flops'] / 1e9:.3f} G, XLA {r['flops_check']['xla_flops'] / 1e9:.3f} G); best XLA "
          f"matmul {r['matmul_peak']['best_gflops']:.1f} GFLOP/s")
    for name, check in r["checks"].items():
        print(f"{name}: loss {check['loss']}, grad_norm {check['grad_norm']}, difference from naive "
              f"{check['difference_from_naive']}")
    print("\n| variant | step s median (min) | / naive median (best) | MFU | temp GiB | total GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in r["steps"].items():
        m = s["memory"]
        print(f"| {name} | {s['median_s']:.3f} ({s['min_s']:.3f}) | {s['ratio_to_naive']:.3f} "
              f"({s['best_ratio_to_naive']:.3f}) | {100 * s['mfu']:.1f} % | {m['temp_bytes'] / GIB:.3f} | "
              f"{m['total_gib']:.3f} |")
    for c in r["combiner_alone"]:
        print(f"combiner alone, T={c['num_tasks']}: update {1e3 * c['update_s']:.1f} ms, median alone "
              f"{1e3 * c['median_s']:.1f} ms; mean over tasks as a reduction {1e3 * c['mean_reduce_s']:.1f} ms, as "
              f"adds {1e3 * c['mean_adds_s']:.1f} ms; state {c['state_bytes'] / 2 ** 20:.1f} MiB")
    print(f"\nadaptive / naive: {r['adaptive_over_naive']:.3f}x (target <= {r['target_ratio']}x: "
          f"{'met' if r['meets_target'] else 'MISSED'}); naive combiner / naive: {r['naive_combiner_over_naive']:.3f}x")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints a markdown table, writes `--out`; returns the results dict."""
    args = parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = run(args)
    results.update(load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()])
    print_report(results)
    results.update(config=vars(args), platform=platform.platform(), cpu_count=os.cpu_count(),
                   threads=compute_threads(), devices=str(jax.devices()), jax_version=jax.__version__)
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
