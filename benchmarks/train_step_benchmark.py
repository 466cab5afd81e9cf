"""Throughput of one dual-encoder NCE train step: kipjax (jit, fp32) against the same step in PyTorch.

One step: a mention encoder reads B mentions [B, L], an entity encoder reads their K candidates [B*K, L] (gold
+ K-1 negatives), each side keeps its first token, the [B, K] dot-product scores go through NCE (cross-entropy
with the gold in column 0), and Adam updates both encoders. kipjax runs `BiEncoder` + `nce_loss` + `optax.adam`
in one jitted function with the train state donated; PyTorch runs two `transformers.BertModel`s (same config,
loaded with the same weights, SDPA attention, no pooler) in eager mode with fused `torch.optim.Adam`. Both use
dropout as configured (train mode) and see the same token batch. Each framework is timed in fresh processes of
its own (`--rounds` alternations), since a kipjax step right after a PyTorch step in the same process runs
30-90 % slower; medians and best steps are reported.

Model FLOPs utilisation (MFU) = model FLOPs per step / step time / the best matmul throughput XLA reaches on
this machine in the same run (a jitted fp32 square matmul at several sizes, best GFLOP/s kept). Model FLOPs
count what the model needs, not what remat recomputes:

    S = B (1 + K) sequences of L tokens, P = non-embedding params of one encoder
      = layers (4 H^2 + 2 H I + 9 H + I)   (q, k, v, out and the two MLP matrices, their biases, two LayerNorms)
    FLOPs/step = 6 P S L                   (2 for the forward matmuls, 4 for the backward)
               + 12 layers L^2 H S         (q k^T and probs v: 2 x 2 L^2 H forward, twice that backward)

Embedding gathers, LayerNorm / softmax / GELU element-wise work, the score head and Adam are not counted.

`--memory_only` compiles the kipjax step without running it and prints XLA's buffer assignment (argument +
output + temp bytes) against a host-memory budget; its defaults are the BERT-base step (12 x 768, batch 4,
K=64, L=128, remat on), which would take minutes per step on a CPU:

  python benchmarks/train_step_benchmark.py --out train_step.json
  python benchmarks/train_step_benchmark.py --memory_only --out train_step_memory.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from kipjax.methods.hard_nce import BiEncoder
from kipjax.models import hf
from kipjax.models.bert import BertConfig, BertEncoder
from kipjax.retrieval import nce
from kipjax.run_log import atomic_write_text

# Shape defaults per mode: a BERT-shaped step (seq 128, K=64) at a width that takes seconds on 2 CPU cores,
# and the BERT-base step whose memory footprint `--memory_only` reports.
RUN_DEFAULTS = dict(layers=4, hidden=256, heads=4, intermediate=1024, batch_size=2, num_candidates=64, remat=False,
                    scan_layers=False)
MEMORY_DEFAULTS = dict(layers=12, hidden=768, heads=12, intermediate=3072, batch_size=4, num_candidates=64,
                       remat=True, scan_layers=True)
GIB = 2 ** 30
LEARNING_RATE = 1e-4


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags; shape flags left unset take RUN_DEFAULTS, or MEMORY_DEFAULTS under --memory_only."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--num_candidates", type=int, help="K: gold + K-1 negatives per mention")
    p.add_argument("--batch_size", type=int, help="mentions per step")
    p.add_argument("--vocab_size", type=int, default=30522)
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (train mode)")
    p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=None,
                   help="kipjax: recompute layer activations in the backward pass; PyTorch: gradient checkpointing")
    p.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=None,
                   help="kipjax: one lax.scan over the layers (remat then applies per loop iteration)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per framework (interleaved)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per framework after compilation")
    p.add_argument("--matmul_sizes", default="1024,2048,4096", help="square fp32 matmuls timed for peak GFLOP/s")
    p.add_argument("--matmul_repeats", type=int, default=5)
    p.add_argument("--memory_only", action="store_true", help="compile the kipjax step, report its memory, exit")
    p.add_argument("--memory_budget_gib", type=float, default=24.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2,
                   help="alternating fresh processes per framework, each running --warmup + --steps steps")
    p.add_argument("--kipjax_xla_flags", default="", help="added to XLA_FLAGS in the kipjax processes only")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--worker", choices=("kipjax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, value in (MEMORY_DEFAULTS if args.memory_only else RUN_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def bert_config(args: argparse.Namespace) -> BertConfig:
    return BertConfig(vocab_size=args.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, intermediate_size=args.intermediate,
                      hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
                      max_position_embeddings=max(512, args.seq_len), add_pooler=False, remat=args.remat,
                      scan_layers=args.scan_layers)


def non_embedding_params(config: BertConfig) -> int:
    """P of the module docstring: the per-token matmul weights (plus biases and LayerNorms) of one encoder."""
    h, i = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * h * h + 2 * h * i + 9 * h + i)


def model_flops_per_step(config: BertConfig, batch_size: int, num_candidates: int, seq_len: int) -> float:
    """FLOPs of one forward + backward pass over mentions and candidates (formula in the module docstring)."""
    sequences = batch_size * (1 + num_candidates)
    matmuls = 6 * non_embedding_params(config) * sequences * seq_len
    attention = 12 * config.num_hidden_layers * seq_len ** 2 * config.hidden_size * sequences
    return float(matmuls + attention)


def compute_threads() -> int:
    """XLA's CPU client sizes its intra-op pool to the cores this process may run on; PyTorch gets the same."""
    return len(os.sched_getaffinity(0))


def matmul_peak(sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    """Best fp32 GFLOP/s of a jitted n x n x n matmul over `sizes` (best of `repeats` each): the MFU denominator."""
    matmul = jax.jit(jnp.matmul)
    per_size = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(n), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(n + 1), (n, n), jnp.float32)
        matmul(a, b).block_until_ready()
        best = min(_timed(lambda: matmul(a, b).block_until_ready()) for _ in range(repeats))
        per_size[str(n)] = 2 * n ** 3 / best / 1e9
    return {"gflops_per_size": per_size, "best_gflops": max(per_size.values())}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def token_batch(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Random non-special token ids, no padding (every token is real work, as the FLOP count assumes)."""
    rng = np.random.default_rng(args.seed)
    b, k, length = args.batch_size, args.num_candidates, args.seq_len
    mention_ids = rng.integers(1000, args.vocab_size, (b, length), dtype=np.int32)
    cand_ids = rng.integers(1000, args.vocab_size, (b, k, length), dtype=np.int32)
    return {"mention_ids": mention_ids, "mention_mask": np.ones_like(mention_ids),
            "cand_ids": cand_ids, "cand_mask": np.ones_like(cand_ids)}


# ------------------------------------------------------------------------------------------------- kipjax

def kipjax_train_step(model: BiEncoder, optimizer: optax.GradientTransformation) -> Callable:
    """(params, opt_state, rng), batch -> (new state, loss): forward, backward and Adam in one function."""

    def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
        scores = model.apply({"params": params}, batch["mention_ids"], batch["mention_mask"], batch["cand_ids"],
                             batch["cand_mask"], deterministic=False, rngs={"dropout": rng})
        return nce.nce_loss(scores)

    def step(state: tuple, batch: dict[str, jax.Array]) -> tuple[tuple, jax.Array]:
        params, opt_state, rng = state
        rng, dropout_rng = jax.random.split(rng)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, dropout_rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, rng), loss

    return step


def kipjax_init(model: BiEncoder, optimizer: optax.GradientTransformation, seed: int, seq_len: int) -> tuple:
    """Unboxed params, Adam state and the dropout key (a traceable function, so eval_shape can run it)."""
    ids = jnp.ones((1, seq_len), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(seed), ids, ids, ids[None], ids[None])["params"])
    return params, optimizer.init(params), jax.random.PRNGKey(seed + 1)


def memory_report(compiled: Any, budget_gib: float) -> dict[str, Any]:
    """XLA's buffer assignment of a compiled step: arguments + outputs + temporaries against a budget."""
    stats = compiled.memory_analysis()
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return {"argument_bytes": stats.argument_size_in_bytes, "output_bytes": stats.output_size_in_bytes,
            "temp_bytes": stats.temp_size_in_bytes, "alias_bytes": stats.alias_size_in_bytes,
            "total_bytes": total, "total_gib": total / GIB,
            # Donated state: outputs reuse the argument buffers, so the live peak is lower by alias_bytes.
            "total_minus_alias_gib": (total - stats.alias_size_in_bytes) / GIB,
            "budget_gib": budget_gib, "fits": total <= budget_gib * GIB}


# ------------------------------------------------------------------------------------------------ PyTorch

class TorchDualEncoder:
    """Two `transformers.BertModel`s and fused Adam running the same step as `kipjax_train_step`."""

    def __init__(self, config: BertConfig, params: Any, threads: int, learning_rate: float):
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.torch = torch
        self.encoders = []
        with tempfile.TemporaryDirectory() as tmp:  # exported kipjax weights: both frameworks start equal
            for name in ("mention_encoder", "entity_encoder"):
                path = hf.save_pretrained(BertEncoder(config), params[name], os.path.join(tmp, name))
                encoder = transformers.BertModel.from_pretrained(path, add_pooling_layer=False,
                                                                 attn_implementation="sdpa")
                if config.remat:
                    encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                self.encoders.append(encoder)
        self.optimizer = torch.optim.Adam([w for e in self.encoders for w in e.parameters()], lr=learning_rate,
                                          fused=True)

    def loss(self, batch: dict[str, Any]) -> Any:
        b, k, length = batch["cand_ids"].shape
        mention = self.encoders[0](input_ids=batch["mention_ids"],
                                   attention_mask=batch["mention_mask"]).last_hidden_state[:, 0]
        cands = self.encoders[1](input_ids=batch["cand_ids"].view(b * k, length),
                                 attention_mask=batch["cand_mask"].view(b * k, length)).last_hidden_state[:, 0]
        scores = self.torch.einsum("bh,bkh->bk", mention, cands.view(b, k, -1))
        return self.torch.nn.functional.cross_entropy(scores, self.torch.zeros(b, dtype=self.torch.long))

    def eval_loss(self, batch: dict[str, Any]) -> float:
        """Loss without dropout or gradients: checks that both frameworks compute the same function."""
        for e in self.encoders:
            e.eval()
        with self.torch.no_grad():
            loss = float(self.loss(batch))
        for e in self.encoders:
            e.train()
        return loss

    def step(self, batch: dict[str, Any]) -> float:
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


# --------------------------------------------------------------------------------------------------- main

def _median_pair(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def run_memory_only(args: argparse.Namespace, config: BertConfig) -> dict[str, Any]:
    """Lowers and compiles the step on abstract shapes only: nothing of the model's size is allocated."""
    model = BiEncoder(config)
    optimizer = optax.adam(1e-4)
    state = jax.eval_shape(lambda: kipjax_init(model, optimizer, args.seed, args.seq_len))
    batch = {k: jax.ShapeDtypeStruct(v.shape, jnp.int32) for k, v in token_batch(args).items()}
    start = time.perf_counter()
    compiled = jax.jit(kipjax_train_step(model, optimizer), donate_argnums=0).lower(state, batch).compile()
    memory = memory_report(compiled, args.memory_budget_gib)
    memory["compile_s"] = time.perf_counter() - start
    memory["param_count"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state[0]))
    return {"memory": memory}


def kipjax_setup(args: argparse.Namespace, config: BertConfig) -> tuple[BiEncoder, optax.GradientTransformation,
                                                                         tuple]:
    """The model, Adam and the initial (params, opt_state, rng): the same weights in every process of a run."""
    model = BiEncoder(config)
    optimizer = optax.adam(LEARNING_RATE)
    return model, optimizer, jax.jit(lambda: kipjax_init(model, optimizer, args.seed, args.seq_len))()


def time_kipjax(args: argparse.Namespace, config: BertConfig) -> dict[str, Any]:
    """Compiles the kipjax step, times it, then measures XLA's matmul peak (the MFU denominator) here too."""
    model, optimizer, state = kipjax_setup(args, config)
    batch = {k: jnp.asarray(v) for k, v in token_batch(args).items()}
    start = time.perf_counter()
    compiled = jax.jit(kipjax_train_step(model, optimizer), donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    def step() -> None:
        nonlocal state
        state, loss = compiled(state, batch)
        jax.block_until_ready((state, loss))

    for _ in range(args.warmup):
        step()
    times = [_timed(step) for _ in range(args.steps)]
    return {"times": times, "compile_s": compile_s, "memory": memory_report(compiled, args.memory_budget_gib),
            "matmul_peak": matmul_peak([int(n) for n in args.matmul_sizes.split(",")], args.matmul_repeats)}


def time_torch(args: argparse.Namespace, config: BertConfig) -> dict[str, Any]:
    """Times the PyTorch step, built from the same initial weights as the kipjax one."""
    import torch

    # XLA flushes subnormal floats to zero; PyTorch on CPU computes with them, and once Adam's moments decay into
    # the subnormal range its steps slow down step after step (measured here: 1.7 s -> 37 s within 8 steps).
    torch.set_flush_denormal(True)
    params = kipjax_setup(args, config)[2][0]
    model = TorchDualEncoder(config, params, compute_threads(), LEARNING_RATE)
    batch = {k: torch.from_numpy(v.astype(np.int64)) for k, v in token_batch(args).items()}
    for _ in range(args.warmup):
        model.step(batch)
    return {"times": [_timed(lambda: model.step(batch)) for _ in range(args.steps)]}


def run_worker(framework: str, argv: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Runs `time_<framework>` in a fresh interpreter and returns its JSON result.

    Each framework gets a process of its own: in one process, a kipjax step that follows a PyTorch step was
    measured 30-90 % slower than one that follows a kipjax step (3.2 s -> 4.1-6.2 s), even with a 2 s pause
    between them, which made the kipjax column of earlier interleaved runs a measure of the interference.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "worker.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--worker={framework}",
                        f"--worker_out={out}"], env=env, check=True)
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def same_weights_losses(args: argparse.Namespace, config: BertConfig) -> dict[str, float]:
    """Eval-mode losses of both frameworks on the batch from the same weights: they compute the same function."""
    import torch

    model, _, (params, _, _) = kipjax_setup(args, config)
    host_batch = token_batch(args)
    batch = {k: jnp.asarray(v) for k, v in host_batch.items()}
    kipjax_loss = nce.nce_loss(model.apply({"params": params}, batch["mention_ids"], batch["mention_mask"],
                                           batch["cand_ids"], batch["cand_mask"]))
    torch_model = TorchDualEncoder(config, params, compute_threads(), LEARNING_RATE)
    torch_batch = {k: torch.from_numpy(v.astype(np.int64)) for k, v in host_batch.items()}
    return {"kipjax_eval_loss": float(kipjax_loss), "torch_eval_loss": torch_model.eval_loss(torch_batch)}


def run_throughput(args: argparse.Namespace, config: BertConfig, argv: Sequence[str]) -> dict[str, Any]:
    """Checks both frameworks compute the same loss, then times them in alternating fresh processes.

    `--rounds` alternations (kipjax, PyTorch, kipjax, ...) spread slow drifts in machine load over both. The
    kipjax process gets `--kipjax_xla_flags` in XLA_FLAGS; PyTorch gets the environment as it is.
    """
    import torch

    losses = same_weights_losses(args, config)
    kipjax_env = dict(os.environ)
    kipjax_env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), args.kipjax_xla_flags]))
    kipjax_runs, torch_runs = [], []
    for _ in range(args.rounds):
        kipjax_runs.append(run_worker("kipjax", argv, kipjax_env))
        torch_runs.append(run_worker("torch", argv, dict(os.environ)))
    kipjax_times = [t for r in kipjax_runs for t in r["times"]]
    torch_times = [t for r in torch_runs for t in r["times"]]
    # The best matmul over all kipjax processes: MFU against the highest throughput XLA showed in this run.
    peak = max((r["matmul_peak"] for r in kipjax_runs), key=lambda p: p["best_gflops"])
    flops = model_flops_per_step(config, args.batch_size, args.num_candidates, args.seq_len)

    def summary(times: list[float]) -> dict[str, float]:
        median = statistics.median(times)
        return {**_median_pair(times), "examples_per_s": args.batch_size / median, "gflops": flops / median / 1e9,
                "mfu": flops / median / 1e9 / peak["best_gflops"]}

    return {
        "threads": {"jax_intra_op": compute_threads(), "torch": torch.get_num_threads()},
        "model_flops_per_step": flops,
        "non_embedding_params_per_encoder": non_embedding_params(config),
        "matmul_peak": peak,
        "kipjax": {**summary(kipjax_times), "compile_s": kipjax_runs[0]["compile_s"],
                   "xla_flags": kipjax_env["XLA_FLAGS"]},
        "torch": summary(torch_times),
        "speedup_kipjax_over_torch": statistics.median(torch_times) / statistics.median(kipjax_times),
        "speedup_best_step": min(torch_times) / min(kipjax_times),
        "memory": kipjax_runs[0]["memory"],
        **losses,
    }


def print_report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    shape = (f"{args.layers} layers x {args.hidden} hidden ({args.heads} heads, {args.intermediate} MLP), "
             f"batch {args.batch_size}, K={args.num_candidates}, L={args.seq_len}, remat={args.remat}, "
             f"dropout={args.dropout}")
    print(f"{shape}; {os.cpu_count()} CPU cores, load average before/after {r['load_before']} / {r['load_after']}")
    m = r["memory"]
    print(f"XLA memory analysis: arguments {m['argument_bytes'] / GIB:.3f} GiB + outputs {m['output_bytes'] / GIB:.3f}"
          f" GiB + temp {m['temp_bytes'] / GIB:.3f} GiB = {m['total_gib']:.3f} GiB (aliased by donation "
          f"{m['alias_bytes'] / GIB:.3f} GiB); budget {m['budget_gib']:g} GiB: {'fits' if m['fits'] else 'DOES NOT FIT'}")
    if args.memory_only:
        print(f"compiled in {m['compile_s']:.0f} s; {m['param_count']:,} params")
        return
    print(f"threads: JAX intra-op {r['threads']['jax_intra_op']}, torch {r['threads']['torch']}; "
          f"eval loss kipjax {r['kipjax_eval_loss']:.6f} vs PyTorch {r['torch_eval_loss']:.6f}")
    peak = r["matmul_peak"]
    sizes = ", ".join(f"{n}: {g:.0f}" for n, g in peak["gflops_per_size"].items())
    print(f"best XLA fp32 matmul: {peak['best_gflops']:.1f} GFLOP/s ({sizes}); "
          f"model FLOPs/step {r['model_flops_per_step'] / 1e9:.2f} G\n")
    print("| framework | step s (median) | min..max s | mentions/s | GFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, key in (("kipjax (XLA jit)", "kipjax"), ("PyTorch (eager)", "torch")):
        x = r[key]
        print(f"| {name} | {x['median_s']:.3f} | {x['min_s']:.3f}..{x['max_s']:.3f} | {x['examples_per_s']:.2f} | "
              f"{x['gflops']:.1f} | {100 * x['mfu']:.1f}% |")
    print(f"\nkipjax / PyTorch throughput: {r['speedup_kipjax_over_torch']:.2f}x (median step), "
          f"{r['speedup_best_step']:.2f}x (best step)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints a markdown table, writes `--out`; returns the results dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    config = bert_config(args)
    if args.worker:  # a child of run_throughput: time one framework, hand the result back, nothing else
        result = (time_kipjax if args.worker == "kipjax" else time_torch)(args, config)
        atomic_write_text(args.worker_out, json.dumps(result))
        return result
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = run_memory_only(args, config) if args.memory_only else run_throughput(args, config, argv)
    results.update(load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()])
    print_report(args, results)
    results.update(config=vars(args), platform=platform.platform(), cpu_count=os.cpu_count(),
                   jax_version=jax.__version__, kipjax_config=dataclasses.asdict(config) | {"dtype": "float32",
                                                                                              "param_dtype": "float32"})
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
