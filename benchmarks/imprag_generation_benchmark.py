"""ImpRAG against RA-IT: time and memory per generated token, and the share of time spent retrieving.

Both methods answer the same questions with one random-weight Llama (the same params) from the same k retrieved
passages of l_max tokens each, greedily, with the key/value cache:

- ImpRAG (`kipjax.methods.imprag.model.ImpragModel`, as `Imprag.retrieve` / `Imprag.answer` run it): the query
  embedding (layers 0..b over the question), an exact top-k search over the corpus embeddings
  (`kipjax.retrieval.index.chunked_topk`), the k passages' tokens looked up and encoded by layers 0..t
  (`passage_states`), then `generate`: only the middle layers b..t attend to the passages' keys / values; the
  self cache covers the question and the new tokens only.
- RA-IT (retrieve, then generate): the k passages' tokens are put before the question in the prompt and the
  plain model decodes it (`generate(..., passages=None)`, the decoding `InContextRag` runs), so every layer
  attends to them and the cache holds them in all N layers. RA-IT's retriever is a separate model (Contriever) in the chapter; here its cost is
  taken to be ImpRAG's own (the same query encoding by layers 0..b, the same search over the same corpus), so
  that both spend the same time retrieving and differ only in how they read.

The corpus embeddings are random (`--corpus_size` rows of h_k * d_h floats) and corpus row i reads the tokens of
passage row i mod `--passage_rows`: with random weights, which passages are read changes nothing that is timed.
EOS is an id no token has, so every row decodes all `--new_tokens` tokens.

The phases, each compiled ahead of time and timed to `jax.block_until_ready`: the query embedding, the search
(top-k on the device, the passages' tokens gathered on the host and put on the device), ImpRAG's passage states
or RA-IT's prompt (the passages' tokens before the question's), the prefill and the decoding. The last two are
`ImpragModel.generate` cut in two (`split_generate`): the cache prepared and filled with the prompt but its
last token, then the greedy search loop of n = `--new_tokens` steps, the first of which feeds the prompt's last
token; together they give `generate`'s tokens (checked). Timed apart, decoding per token is not drowned by the
noise of a prefill that, for RA-IT, costs more than the whole decoding. Each phase is timed `--repeats` times
after one untimed call, in rounds that run every phase of both methods in turn (so that background load hits
them alike); the median counts. End to end is the sum of a method's phases, its retrieval share that of the
embedding and the search.

Memory is what each method keeps while it generates each token: the byte sizes of the arrays of the cache that
`Llama.prepare_cache` builds and, for ImpRAG, of the passage states L_M reads at every step. One decoding step
is also compiled alone (the cache donated, as the search loop updates it in place) for XLA's memory analysis
(arguments, the params among them, + outputs + temporaries), and timed alone (`--step_repeats` steps). XLA's
analysis of the whole of `generate` (prefill and search loop) and of ImpRAG's `passage_states` is recorded too:
their temporaries are each method's peak beyond what it keeps.

  python benchmarks/imprag_generation_benchmark.py --out benchmarks/results/imprag_generation.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from kipjax import decoding
from kipjax.checkpoints import tree_bytes
from kipjax.methods.imprag.model import ImpragModel, LayerGroups
from kipjax.models.llama import ExtraKV, Llama, LlamaConfig
from kipjax.retrieval.index import chunked_topk, dot_product_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_benchmark import _median_pair, _timed, compute_threads, memory_report  # noqa: E402

Params = Any
METHODS = ("imprag", "ra_it")
NO_TOKEN = -1  # the EOS id: no token has it, so every row decodes the whole budget
MACHINE_GIB = 24  # the development machine's memory: the budget `memory_report` checks against

# Integer flags: the model (random weights), the problem and the timing, with defaults.
INT_FLAGS = {
    "layers": (8, "N"), "hidden": (512, None), "heads": (8, None), "kv_heads": (2, "key/value heads (GQA)"),
    "mlp": (1408, "SwiGLU hidden size"), "vocab_size": (8192, None),
    "bottom_end": (3, "b: the last layer of L_B (the query embedding's layer), the first of L_M"),
    "middle_end": (5, "t: the last layer of L_M, which reads the passages"),
    "top_k": (10, "k: passages read per question"), "passage_tokens": (128, "l_max: tokens per passage"),
    "prompt_tokens": (32, "question tokens"), "new_tokens": (32, "tokens generated per question"),
    "batch_size": (4, "questions answered together"),
    "corpus_size": (1_000_000, "passage embeddings searched exactly"),
    "search_chunk": (65536, "corpus rows scored per scan step of the exact search"),
    "passage_rows": (1024, "distinct passage token rows (corpus row i reads row i mod this)"),
    "repeats": (5, "timed rounds of every phase"), "step_repeats": (10, "timed calls of one decoding step alone"),
    "seed": (0, None),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, (default, help_text) in INT_FLAGS.items():
        p.add_argument(f"--{name}", type=int, default=default, help=help_text)
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(worker=None)  # `benchmark_main`'s worker mode is for two-framework runs: one process here
    args = p.parse_args(argv)
    if not 0 <= args.bottom_end <= args.middle_end < args.layers:
        p.error("need 0 <= --bottom_end <= --middle_end < --layers")
    if args.new_tokens < 1:
        p.error("--new_tokens must be at least 1")
    if args.top_k > args.corpus_size:
        p.error("--top_k exceeds --corpus_size")
    return args


def llama_config(args: argparse.Namespace) -> LlamaConfig:
    longest = args.top_k * args.passage_tokens + args.prompt_tokens + args.new_tokens  # RA-IT's cache
    return LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden, intermediate_size=args.mlp,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=max(2048, longest))


class Setup(NamedTuple):
    """The model, its params and the data both methods share."""

    model: ImpragModel
    params: Params
    questions: jax.Array  # (batch, prompt_tokens), no padding
    question_mask: jax.Array
    corpus: jax.Array  # (corpus_size, h_k * d_h) float32, on the device
    passage_table: np.ndarray  # (passage_rows, l_max) int32 token ids, on the host


def make_setup(args: argparse.Namespace) -> Setup:
    llama = Llama(llama_config(args))
    model = ImpragModel(llama, LayerGroups(args.bottom_end, args.middle_end))
    rng = np.random.default_rng(args.seed)
    questions = rng.integers(3, args.vocab_size, (args.batch_size, args.prompt_tokens), dtype=np.int32)
    # The model's own initializers, drawing rbg bits: XLA:CPU takes about 9 s to compile threefry's draws for
    # every param, even of a toy Llama, and about 3 s for rbg's.
    key = jax.random.key(args.seed, impl="rbg")
    params = nn.unbox(jax.jit(llama.init)(key, jnp.asarray(questions[:1]))["params"])
    corpus = rng.standard_normal((args.corpus_size, model.embedding_size), dtype=np.float32)
    table = rng.integers(3, args.vocab_size, (args.passage_rows, args.passage_tokens), dtype=np.int32)
    return Setup(model, params, jnp.asarray(questions), jnp.ones(questions.shape, jnp.int32), jnp.asarray(corpus),
                 table)


# ------------------------------------------------------------------------------------------ the methods

def compiled(fn: Callable, *args: Any, static: Mapping[str, Any] | None = None,
             donate_argnums: tuple[int, ...] = ()) -> tuple[Any, float]:
    """`fn` compiled ahead of time for `args` (keyword `static` arguments baked in), and the compile seconds."""
    start = time.perf_counter()
    out = jax.jit(fn, static_argnames=tuple(static or ()), donate_argnums=donate_argnums).lower(
        *args, **(static or {})).compile()
    return out, time.perf_counter() - start


def decoding_step(llama: Llama) -> Callable:
    """One greedy decoding step as `ImpragModel.generate`'s search runs it: the logits of every row's next token,
    reading and extending the cache, L_M reading `passages` (None: no passages)."""
    def step(params: Params, cache: Any, tokens: jax.Array, passages: Mapping[int, ExtraKV] | None
             ) -> tuple[jax.Array, Any]:
        out, new = llama.apply({"params": params, "cache": cache}, tokens[:, None], extra_kv=passages,
                               method=Llama.decode_step, mutable=["cache"])
        return out.logits[:, 0], new["cache"]
    return step


def split_generate(model: ImpragModel, max_new_tokens: int, passage_slots: int) -> tuple[Callable, Callable]:
    """`ImpragModel.generate` (greedy, one beam, EOS no token) as (prefill, decode), to time them apart:
    prefill(params, prompt, mask, passages) -> the cache; decode(params, cache, last_tokens, passages) -> the
    (batch, max_new_tokens) tokens."""
    llama = model.llama

    def prefill(params: Params, prompt: jax.Array, mask: jax.Array, passages: Mapping[int, ExtraKV] | None) -> Any:
        cache = empty_cache(llama, params, prompt.shape[0], prompt.shape[1] + max_new_tokens)
        positions = model.query_positions(mask, passage_slots if passages is not None else 0)
        _, state = llama.apply({"params": params, "cache": cache}, prompt[:, :-1], mask[:, :-1], positions[:, :-1],
                               extra_kv=passages, method=Llama.decode_step, mutable=["cache"])
        return state["cache"]

    def decode(params: Params, cache: Any, last_tokens: jax.Array, passages: Mapping[int, ExtraKV] | None
               ) -> jax.Array:
        step = decoding_step(llama)
        result = decoding.beam_search(lambda c, tokens: step(params, c, tokens, passages), cache,
                                      batch_size=last_tokens.shape[0], beam_size=1, max_length=max_new_tokens,
                                      start_token=last_tokens, eos_token=NO_TOKEN, length_penalty=0.0)
        return result.sequences[:, 0]

    return prefill, decode


def empty_cache(llama: Llama, params: Params, batch: int, length: int) -> Any:
    """The cache `Llama.prepare_cache` builds for `batch` rows of `length` positions (zeros)."""
    _, state = llama.apply({"params": params}, batch, length, method=Llama.prepare_cache, mutable=["cache"])
    return state["cache"]


def cache_bytes(cache: Any) -> dict[str, int]:
    """Bytes of a cache's key/value arrays, and of its slot bookkeeping (`DecodeSlots`: key mask, positions)."""
    names = ("['cached_key']", "['cached_value']")
    kv = sum(tree_bytes(x) for path, x in jax.tree_util.tree_leaves_with_path(cache)
             if jax.tree_util.keystr(path[-1:]) in names)
    return {"kv_bytes": kv, "bookkeeping_bytes": tree_bytes(cache) - kv}


def passage_bytes(passages: Mapping[int, ExtraKV]) -> dict[str, int]:
    """Bytes of the passage keys / values of every middle layer, and of their slot masks (the compiled
    `passage_states` returns one mask array per layer)."""
    return {"kv_bytes": sum(tree_bytes((k, v)) for k, v, _ in passages.values()),
            "mask_bytes": sum(tree_bytes(m) for _, _, m in passages.values())}


class MethodRun(NamedTuple):
    """One method after retrieval: its compiled functions, their inputs, checks and memory."""

    phases: dict[str, Callable[[], Any]]  # name -> a call that runs the phase to completion
    generated: jax.Array  # (batch, new_tokens): `generate`'s tokens
    split_equals_generate: bool  # decode(prefill(...)) gave `generate`'s tokens
    memory: dict[str, Any]
    step: Any  # one decoding step, compiled, the cache donated
    cache_length: int  # positions of the cache `step` reads and extends
    passages: Mapping[int, ExtraKV] | None  # what L_M reads (ImpRAG) or None (RA-IT)
    generate: Any  # `generate` compiled for the whole budget
    states: Any  # `passage_states` compiled (ImpRAG) or None
    compile_s: dict[str, float]


def retrieval_phases(args: argparse.Namespace, s: Setup) -> tuple[dict[str, Callable[[], Any]], dict[str, float],
                                                                  Callable[[], np.ndarray]]:
    """Both methods' retrieval: the query embedding and the search; their compile seconds; and a function that
    returns one search's (batch, k, l_max) passage tokens."""
    embed, embed_s = compiled(s.model.query_embeddings, s.params, s.questions, s.question_mask)
    queries = embed(s.params, s.questions, s.question_mask)

    def topk(q: jax.Array, corpus: jax.Array) -> tuple[jax.Array, jax.Array]:
        return chunked_topk(dot_product_score, q, corpus, args.top_k, chunk_size=args.search_chunk)

    search, search_s = compiled(topk, queries, s.corpus)

    def retrieved_tokens() -> np.ndarray:
        ids = np.asarray(search(queries, s.corpus)[1])
        return s.passage_table[ids % len(s.passage_table)]

    phases = {"embed": lambda: jax.block_until_ready(embed(s.params, s.questions, s.question_mask)),
              "search": lambda: jax.block_until_ready(jnp.asarray(retrieved_tokens()))}
    return phases, {"embed": embed_s, "search": search_s}, retrieved_tokens


def method_run(args: argparse.Namespace, s: Setup, name: str, retrieved: np.ndarray) -> MethodRun:
    """Compiles one method's phases after retrieval, for the (batch, k, l_max) `retrieved` tokens, and checks
    that its prefill and decoding give `generate`'s tokens."""
    llama, batch = s.model.llama, args.batch_size
    compile_s: dict[str, float] = {}
    phases: dict[str, Callable[[], Any]] = {}
    if name == "imprag":
        tokens = jnp.asarray(retrieved)
        states, compile_s["passage_states"] = compiled(s.model.passage_states, s.params, tokens, jnp.ones_like(tokens))
        phases["passage_states"] = lambda: jax.block_until_ready(states(s.params, tokens, jnp.ones_like(tokens)))
        passages = states(s.params, tokens, jnp.ones_like(tokens))
        prompt, mask, slots = s.questions, s.question_mask, args.top_k * args.passage_tokens
        memory: dict[str, Any] = {"passages": passage_bytes(passages),
                                  "passage_states_xla": memory_report(states, MACHINE_GIB)}
    else:
        questions = np.asarray(s.questions)

        def prompt_tokens() -> jax.Array:  # the passages before the question, on the device
            return jnp.asarray(np.concatenate([retrieved.reshape(batch, -1), questions], axis=1))

        phases["prompt"] = lambda: jax.block_until_ready(prompt_tokens())
        states, passages, slots, memory = None, None, 0, {}
        prompt = prompt_tokens()
        mask = jnp.ones_like(prompt)
    generate, compile_s["generate"] = compiled(s.model.generate, s.params, prompt, mask, passages, static=dict(
        passage_slots=slots, max_new_tokens=args.new_tokens, eos_token=NO_TOKEN))
    generated = generate(s.params, prompt, mask, passages)
    prefill_fn, decode_fn = split_generate(s.model, args.new_tokens, slots)
    prefill, compile_s["prefill"] = compiled(prefill_fn, s.params, prompt, mask, passages)
    cache = prefill(s.params, prompt, mask, passages)
    decode, compile_s["decode"] = compiled(decode_fn, s.params, cache, prompt[:, -1], passages)
    split_equals_generate = bool((decode(s.params, cache, prompt[:, -1], passages) == generated).all())
    phases["prefill"] = lambda: jax.block_until_ready(prefill(s.params, prompt, mask, passages))
    phases["decode"] = lambda: jax.block_until_ready(decode(s.params, cache, prompt[:, -1], passages))

    length = prompt.shape[1] + args.new_tokens
    memory["self_cache"] = {**cache_bytes(cache), "length": length}
    memory["kv_bytes"] = memory["self_cache"]["kv_bytes"] + memory.get("passages", {}).get("kv_bytes", 0)
    memory["generate_xla"] = memory_report(generate, MACHINE_GIB)
    step, compile_s["step"] = compiled(decoding_step(llama), s.params, empty_cache(llama, s.params, batch, length),
                                       prompt[:, -1], passages, donate_argnums=(1,))
    memory["step_xla"] = memory_report(step, MACHINE_GIB)
    return MethodRun(phases, generated, split_equals_generate, memory, step, length, passages, generate, states,
                     compile_s)


def time_step(args: argparse.Namespace, s: Setup, run: MethodRun) -> float:
    """Median seconds of one decoding step alone, the cache fed back (donated) from step to step."""
    cache, tokens = empty_cache(s.model.llama, s.params, args.batch_size, run.cache_length), s.questions[:, -1]
    times = []
    for i in range(1 + args.step_repeats):  # the first call is untimed
        start = time.perf_counter()
        logits, cache = run.step(s.params, cache, tokens, run.passages)
        jax.block_until_ready(logits)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def blind_reading_check(args: argparse.Namespace, s: Setup, imprag: MethodRun, retrieved: np.ndarray
                        ) -> dict[str, Any]:
    """ImpRAG reading k passages that are all padding (mask 0) against plain decoding of the question alone
    (`generate(..., passages=None)`): they should give the same tokens. Not to the bit in every case: ImpRAG
    shifts the question's positions past the k * l_max slots, and RoPE makes attention depend on position
    differences only in exact arithmetic, not in float32, so a near-tie of two logits may go either way."""
    tokens = jnp.asarray(retrieved)
    blind = imprag.generate(s.params, s.questions, s.question_mask,
                            imprag.states(s.params, tokens, jnp.zeros_like(tokens)))
    plain_generate, _ = compiled(s.model.generate, s.params, s.questions, s.question_mask, None, static=dict(
        passage_slots=0, max_new_tokens=args.new_tokens, eos_token=NO_TOKEN))
    plain = plain_generate(s.params, s.questions, s.question_mask, None)
    return {"blind_tokens": np.asarray(blind).tolist(), "plain_tokens": np.asarray(plain).tolist(),
            "same_tokens": bool((blind == plain).all()), "same_token_share": float((blind == plain).mean())}


def token_check(args: argparse.Namespace, tokens: jax.Array) -> bool:
    """Generated tokens are integer ids of the right shape: the method generated from the params."""
    values = np.asarray(tokens)
    return (values.shape == (args.batch_size, args.new_tokens) and np.issubdtype(values.dtype, np.integer)
            and bool(((values >= 0) & (values < args.vocab_size)).all()))


# ---------------------------------------------------------------------------------------------- the run

def summary(args: argparse.Namespace, times: dict[str, list[float]], run: MethodRun, step_s: float,
            retrieval: Sequence[str]) -> dict[str, Any]:
    """One method's phase times and what follows from them (per token, per query, retrieval share)."""
    phases = {name: _median_pair(t) for name, t in times.items()}
    median = {name: p["median_s"] for name, p in phases.items()}
    end_to_end = sum(median.values())
    retrieving = sum(median[name] for name in retrieval)
    return {"phases_s": phases, "decode_ms_per_token": 1e3 * median["decode"] / args.new_tokens,
            "prefill_ms": 1e3 * median["prefill"], "step_alone_ms": 1e3 * step_s,
            "end_to_end_ms_per_batch": 1e3 * end_to_end, "end_to_end_ms_per_query": 1e3 * end_to_end / args.batch_size,
            "retrieval_ms_per_batch": 1e3 * retrieving, "retrieval_share": retrieving / end_to_end,
            "memory": {**run.memory, "kv_bytes_per_query": run.memory["kv_bytes"] / args.batch_size},
            "compile_s": run.compile_s}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Both methods on one setup: checks, then interleaved timed rounds; the results dict (no machine facts)."""
    s = make_setup(args)
    retrieval, retrieval_compile_s, retrieved_tokens = retrieval_phases(args, s)
    retrieved = retrieved_tokens()
    runs = {name: method_run(args, s, name, retrieved) for name in METHODS}
    checks: dict[str, Any] = {}
    for name, run in runs.items():
        run.compile_s.update(retrieval_compile_s)
        checks.update({f"{name}_tokens_ok": token_check(args, run.generated),
                       f"{name}_split_equals_generate": run.split_equals_generate})
    checks["blind_imprag_against_plain"] = blind_reading_check(args, s, runs["imprag"], retrieved)
    phases = {**{f"retrieval/{n}": f for n, f in retrieval.items()},
              **{f"{m}/{n}": f for m, run in runs.items() for n, f in run.phases.items()}}
    for fn in phases.values():  # one untimed call each
        fn()
    times: dict[str, list[float]] = {name: [] for name in phases}
    for _ in range(args.repeats):
        for name, fn in phases.items():
            times[name].append(_timed(fn))
    results: dict[str, Any] = {"checks": checks}
    for name, run in runs.items():
        own = {n.split("/")[1]: t for n, t in times.items() if n.startswith(("retrieval/", f"{name}/"))}
        results[name] = summary(args, own, run, time_step(args, s, run), retrieval)
    imprag, ra_it = results["imprag"], results["ra_it"]
    results["ratios_ra_it_over_imprag"] = {
        **{key: ra_it[key] / imprag[key] for key in ("decode_ms_per_token", "step_alone_ms", "prefill_ms",
                                                      "end_to_end_ms_per_query")},
        "kv_bytes": ra_it["memory"]["kv_bytes"] / imprag["memory"]["kv_bytes"],
        **{f"step_xla_{key}": ra_it["memory"]["step_xla"][key] / imprag["memory"]["step_xla"][key]
           for key in ("total_bytes", "temp_bytes")}}
    results.update(param_bytes=tree_bytes(s.params), threads=compute_threads(), devices=str(jax.devices()),
                   ra_it_prompt_tokens=args.top_k * args.passage_tokens + args.prompt_tokens,
                   middle_layers=len(s.model.groups.middle), embedding_size=s.model.embedding_size)
    return results


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    del argv  # one process: nothing to hand to workers
    return measure(args)


def print_report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    mib = 2 ** 20
    print(f"Llama {args.layers} layers x {args.hidden} ({args.heads} heads, {args.kv_heads} kv heads, {args.mlp} "
          f"MLP), vocab {args.vocab_size}; b = {args.bottom_end}, t = {args.middle_end} ({r['middle_layers']} "
          f"layers read); batch {args.batch_size}, k = {args.top_k} passages x {args.passage_tokens} tokens, "
          f"question {args.prompt_tokens}, {args.new_tokens} new tokens; corpus {args.corpus_size} x "
          f"{r['embedding_size']}; {os.cpu_count()} CPU cores")
    checks = r["checks"]
    blind = checks["blind_imprag_against_plain"]
    print(f"tokens of the right shape: ImpRAG {checks['imprag_tokens_ok']}, RA-IT {checks['ra_it_tokens_ok']}; "
          f"prefill + decoding = generate: ImpRAG {checks['imprag_split_equals_generate']}, RA-IT "
          f"{checks['ra_it_split_equals_generate']}; ImpRAG reading padding only = plain decoding: "
          f"{blind['same_tokens']} ({100 * blind['same_token_share']:.0f}% of the tokens)\n")
    print("| method | decode ms / token | step alone ms | prefill ms | end to end ms / query | retrieval share | "
          "KV kept MiB | XLA step: args + out + temp MiB (temp) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, label in (("imprag", "ImpRAG"), ("ra_it", "RA-IT")):
        x = r[name]
        step = x["memory"]["step_xla"]
        print(f"| {label} | {x['decode_ms_per_token']:.2f} | {x['step_alone_ms']:.2f} | {x['prefill_ms']:.1f} | "
              f"{x['end_to_end_ms_per_query']:.1f} | {100 * x['retrieval_share']:.1f}% | "
              f"{x['memory']['kv_bytes'] / mib:.2f} | {step['total_bytes'] / mib:.1f} "
              f"({step['temp_bytes'] / mib:.1f}) |")
    print("\nRA-IT / ImpRAG: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios_ra_it_over_imprag"].items()))
    names = list(dict.fromkeys([*r["imprag"]["phases_s"], *r["ra_it"]["phases_s"]]))
    print("\n| ms per batch (median) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for name, label in (("imprag", "ImpRAG"), ("ra_it", "RA-IT")):
        phases = r[name]["phases_s"]
        print(f"| {label} | " + " | ".join(f"{1e3 * phases[p]['median_s']:.1f}" if p in phases else "-"
                                           for p in names) + " |")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    # Imported here: that module brings torch and transformers, which `measure` does not need.
    from coref_decoding_benchmark import benchmark_main
    return benchmark_main(argv, parse_args, None, None, run, print_report)


if __name__ == "__main__":
    main()
