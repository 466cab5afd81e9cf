"""Is the SeqIO input pipeline a bottleneck? Time per step of the feed against the train step it feeds.

Builds the run a gin file describes (the quickstart by default), then times, in one process:

- input: `trainer.device_batch(trainer.next_batch())`, i.e. the SeqIO feed's next host batch (shards,
  shuffling, padding, batching in tf.data), the method's `batch_from_features`, and the transfer to the mesh;
- step: the compiled train step on a fixed batch (state donated, blocked until ready).

and reports `input_fraction = input / step` (target: < 5 %). The input is timed back to back, without the
step in between, so tf.data's prefetching hides nothing that the training loop would not also hide.

  python benchmarks/input_pipeline_benchmark.py --out benchmarks/results/input_pipeline.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from typing import Any, Sequence

import gin
import jax

from kipjax import partitioning, runner  # noqa: F401  (runner: the configurables the gin files bind)
from kipjax.methods.base import Method
from kipjax.trainer import Trainer


@gin.configurable("input_pipeline_benchmark")
def configured_method(method: Method = gin.REQUIRED) -> Method:
    return method


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gin_file", default="gin_configs/quickstart.gin")
    p.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
    p.add_argument("--steps", type=int, default=30, help="timed steps (and as many timed input batches)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def time_calls(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    gin.clear_config()
    gin.parse_config_files_and_bindings([args.gin_file],
                                        args.gin_bindings + ["input_pipeline_benchmark.method = %METHOD"])
    method = configured_method()
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(method, model_dir=model_dir, train_steps=args.steps + args.warmup)
        next_input = lambda: trainer.device_batch(trainer.next_batch())  # noqa: E731
        batch = next_input()
        state = trainer.initial_state(batch)
        tables = trainer.device_tables()
        step_fn = trainer.compile_step(jax.tree.map(lambda x: x.sharding, state), batch, tables)

        def step() -> Any:
            nonlocal state
            with partitioning.activate(trainer.mesh, trainer.rules):
                state, metrics = step_fn(state, batch, tables)
            return metrics

        time_calls(next_input, args.warmup)
        time_calls(step, args.warmup)
        input_s, step_s = time_calls(next_input, args.steps), time_calls(step, args.steps)
    result = {
        "gin_file": args.gin_file, "gin_bindings": args.gin_bindings, "batch_size": trainer.batch_size,
        "task": trainer.feed.name, "steps": args.steps,
        "input": {"median_s": statistics.median(input_s), "min_s": min(input_s)},
        "step": {"median_s": statistics.median(step_s), "min_s": min(step_s)},
        "machine": {"processor": platform.processor(), "cpus": jax.device_count(), "jax": jax.__version__},
    }
    result["input_fraction"] = result["input"]["median_s"] / result["step"]["median_s"]
    print(f"input {1e3 * result['input']['median_s']:.2f} ms / step {1e3 * result['step']['median_s']:.1f} ms "
          f"per step (medians): input is {100 * result['input_fraction']:.2f} % of the step", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
