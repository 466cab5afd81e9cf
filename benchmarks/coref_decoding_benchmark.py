"""Constrained beam search for seq2seq coreference: kipjax (one jitted function) against `transformers` `generate`.

Both frameworks decode with the same random-weight T5 (v1.0 style: ReLU MLP, LM head tied to the embedding;
created in kipjax, exported with `hf.save_pretrained` and loaded by `T5ForConditionalGeneration`) under the
same constraint: the full linearization of appendix E.1 with integer identities after the mention
(`<m> x_i .. x_j | l </m>`), `--actions copy` (the next source token takes `<c>`'s logit, `<c>` is masked) or
`token`.

- kipjax: encode + `prepare_cache` + `beam_search` with `FullLinearizationConstraint`, all in one `jax.jit`
  function: the masks are built inside the compiled `lax.while_loop`, with no Python per token.
- transformers: `generate(num_beams, max_new_tokens, length_penalty=1.0, early_stopping=False)` with
  `LinearizationLogitsProcessor`, a `LogitsProcessor` that implements the same rules the way such processors
  are usually written: it re-derives every row's state from `input_ids` at each call (vectorised over rows
  and positions in torch). `generate` hands processors log-probabilities, so `renormalize_logits=True` takes
  a log-softmax over the allowed tokens afterwards; then both frameworks search the same distribution and
  must return the same best sequence for every input (checked: `same_outputs`).

Throughput is tokens/s of one call over the batch (encoder included): tokens = the length of each input's best
sequence up to and including its end-of-sequence token, summed over the batch; time = the median call. The
ratio is kipjax tokens/s over transformers tokens/s. Each framework runs in fresh processes of its own,
alternating (`--rounds`), like `train_step_benchmark.py`.

Mask cost per step: a jitted `lax.fori_loop` that runs only `process_logits` + `update` for `max_length` steps
over batch x beams rows (fed gold linearizations of random annotations), at several vocabulary sizes, with a
line fitted through microseconds per step against the vocabulary size; the same for the torch processor's
call; and one decoder step of the model alone (a jitted `decode_step` with its cache donated, called step by
step; the transformers decoder with its KV cache), so the mask cost reads as a fraction of a step. Last, a
`jax.profiler` trace of one search splits kipjax's op time by kind (LM head, cache writes and copies, beam
reorder, top-k, constraint, ...).

  python benchmarks/coref_decoding_benchmark.py --out benchmarks/results/coref_decoding.json
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import linen as nn

from kipjax import decoding
from kipjax.methods.coref.constraints import FullLinearizationConstraint
from kipjax.methods.coref.linearize import Symbols, copy_actions, drop_crossing_mentions, linearize, parse_full
from kipjax.models import hf
from kipjax.models.t5 import T5, T5Config, is_cross_attention_cache
from kipjax.run_log import atomic_write_text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_train_step import STEPS as PROFILED_CALLS, op_times  # noqa: E402
from train_step_benchmark import _median_pair, _timed, compute_threads  # noqa: E402

# Token ids: T5's pad / decoder start (0) and eos (1); the seven other coreference symbols take the last ids of
# the vocabulary (where T5 keeps its sentinels); cluster numbers are written with ten "digit" ids, which may also
# occur in the source, as digits do in real text. Source documents are random ids from FIRST_WORD up.
START, EOS = 0, 1
NUM_SYMBOLS = 7
DIGIT_BASE = 100
FIRST_WORD = 3
NUM_DIGITS = 10


# Integer flags: the model (T5 v1.0 style, random weights), the decoding problem and the timing, with defaults.
INT_FLAGS = {
    "d_model": (256, None), "layers": (4, "encoder and decoder layers (generate needs them equal)"),
    "heads": (4, None), "d_ff": (1024, None), "vocab_size": (32128, "T5's vocabulary size"),
    "batch_size": (4, "documents decoded per call"), "beams": (4, None),
    "source_len": (64, "source tokens per document (no padding)"),
    "max_length": (None, "generated tokens at most; default 1.6 x source_len"),
    "repeats": (3, "timed calls per framework and process"),
    "warmup": (1, "untimed calls per process (after compilation and the scored call)"),
    "rounds": (2, "alternating fresh processes per framework"),
    "mask_repeats": (5, "timed loops per vocabulary size (constraint alone, decoder step)"),
    "seed": (0, None),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, (default, help_text) in INT_FLAGS.items():
        p.add_argument(f"--{name}", type=int, default=default, help=help_text)
    p.add_argument("--actions", choices=("copy", "token"), default="copy")
    p.add_argument("--mask_vocab_sizes", default="8192,32128,131072",
                   help="vocabulary sizes at which the constraint alone is timed")
    p.add_argument("--kipjax_xla_flags", default="", help="added to XLA_FLAGS in the kipjax processes only")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--worker", choices=("kipjax", "transformers"), help=argparse.SUPPRESS)
    p.add_argument("--worker_dir", help=argparse.SUPPRESS)
    p.add_argument("--worker_round", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.max_length is None:
        args.max_length = int(1.6 * args.source_len)
    if args.max_length <= args.source_len:
        p.error("--max_length must exceed --source_len: the whole source is copied, then end-of-sequence")
    return args


# ------------------------------------------------------------------------------- symbols, data, constraint

def _decode_digits(ids: Sequence[int]) -> int | None:
    if not ids or any(not DIGIT_BASE <= i < DIGIT_BASE + NUM_DIGITS for i in ids):
        return None
    return int("".join(str(i - DIGIT_BASE) for i in ids))


def _no_cluster_end(label: int) -> int:
    raise ValueError("the benchmark writes integer identities after the mention, never </m_l>")


def coref_symbols(vocab_size: int) -> Symbols[int]:
    """Integer symbols at the top of a `vocab_size` vocabulary (eos is T5's), digits at DIGIT_BASE."""
    top = vocab_size - NUM_SYMBOLS
    return Symbols(mention_start=top, mention_end=top + 1, separator=top + 2, copy=top + 3, new=top + 4,
                   sentence_start=top + 5, sentence_end=top + 6, eos=EOS, cluster_end=_no_cluster_end,
                   cluster_index=lambda token: None,
                   encode_int=lambda label: [DIGIT_BASE + int(d) for d in str(label)], decode_int=_decode_digits)


def make_constraint(vocab_size: int, actions: str) -> FullLinearizationConstraint:
    return FullLinearizationConstraint(coref_symbols(vocab_size), vocab_size,
                                       list(range(DIGIT_BASE, DIGIT_BASE + NUM_DIGITS)), identity="after",
                                       actions=actions)


def source_batch(args: argparse.Namespace, vocab_size: int, rows: int | None = None) -> np.ndarray:
    """[rows, source_len] random ordinary ids (no special symbol, no padding)."""
    rng = np.random.default_rng(args.seed)
    return rng.integers(FIRST_WORD, vocab_size - NUM_SYMBOLS, (rows or args.batch_size, args.source_len),
                        dtype=np.int32)


def random_annotation(rng: np.random.Generator, length: int, max_mentions: int) -> list[list[tuple[int, int]]]:
    """Up to `max_mentions` nested (never crossing) mentions of at most 4 tokens in at most 9 clusters, so
    every cluster number is one digit and every mention adds 4 tokens to the linearization."""
    spans = set()
    for _ in range(max_mentions):
        start = int(rng.integers(length))
        spans.add((start, min(length - 1, start + int(rng.integers(4)))))
    clusters: list[list[tuple[int, int]]] = [[] for _ in range(9)]
    for span in sorted(spans):
        clusters[int(rng.integers(9))].append(span)
    return drop_crossing_mentions([c for c in clusters if c])[0]


def gold_tokens(args: argparse.Namespace, symbols: Symbols[int], source: np.ndarray) -> np.ndarray:
    """[max_length, rows]: each row's gold linearization of a random annotation + eos, padded with eos."""
    rng = np.random.default_rng(args.seed + 1)
    max_mentions = (args.max_length - args.source_len - 1) // 4
    out = np.full((args.max_length, source.shape[0]), symbols.eos, np.int32)
    for row, tokens in enumerate(source.tolist()):
        target = linearize(tokens, random_annotation(rng, len(tokens), max_mentions), symbols)
        out[:len(target), row] = target
    return out


def until_eos(sequence: Sequence[int]) -> list[int]:
    """The sequence up to and including its first eos (all of it when there is none)."""
    sequence = list(sequence)
    return sequence[:sequence.index(EOS) + 1] if EOS in sequence else sequence


def check_linearization(sequence: Sequence[int], source: Sequence[int], symbols: Symbols[int]) -> dict[str, Any]:
    """Whether a decoded sequence is a complete linearization of `source`: it ends with eos, every `<m>` is
    closed by `| l </m>`, the copied tokens are the source, token for token; and its mentions (`parse_full`)."""
    body = until_eos(sequence)
    finished = body[-1:] == [symbols.eos]
    body = body[:-1] if finished else body
    content = [t for t, action in zip(body, copy_actions(body, symbols)) if action == symbols.copy]
    opened = body.count(symbols.mention_start)
    balanced = body.count(symbols.separator) == body.count(symbols.mention_end) == opened
    clusters = parse_full(body, symbols, "after", num_source_tokens=len(source))
    return {"valid": finished and balanced and content == list(source),
            "mentions": sum(len(c) for c in clusters), "clusters": len(clusters)}


# ------------------------------------------------------------------------------------------- kipjax side

def t5_config(args: argparse.Namespace) -> T5Config:
    return T5Config(vocab_size=args.vocab_size, d_model=args.d_model, d_kv=args.d_model // args.heads,
                    d_ff=args.d_ff, num_layers=args.layers, num_decoder_layers=args.layers, num_heads=args.heads,
                    dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True)


def save_random_t5(args: argparse.Namespace, path: str) -> None:
    """A random-weight kipjax T5, exported for both frameworks to load."""
    model = T5(t5_config(args))
    ids = jnp.ones((1, 4), jnp.int32)
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.PRNGKey(args.seed), ids, decoder_input_ids=ids)))()
    hf.save_pretrained(model, params["params"], path)


def prepare_decoder(model: T5, params: Any, source: jax.Array, beams: int, max_length: int) -> tuple[Any, jax.Array]:
    """(cache, encoder mask) over batch x beams rows: encoder states and their keys/values, computed once."""
    mask = jnp.ones_like(source)
    encoded = decoding.repeat_for_beams(model.apply({"params": params}, source, mask, method=T5.encode), beams)
    beam_mask = decoding.repeat_for_beams(mask, beams)
    _, state = model.apply({"params": params}, encoded, beam_mask, max_length, method=T5.prepare_cache,
                           mutable=["cache"])
    return state["cache"], beam_mask


def decoder_step(model: T5, params: Any, beam_mask: jax.Array, max_length: int, cache: Any, tokens: jax.Array
                 ) -> tuple[jax.Array, Any]:
    """One cached decoder step: tokens [N] -> (logits [N, V], the cache extended by one position)."""
    logits, state = model.apply({"params": params, "cache": cache}, tokens[:, None], beam_mask, max_length,
                                method=T5.decode_step, mutable=["cache"])
    return logits[:, 0], state["cache"]


class ScopedConstraint:
    """The constraint under the name scope "constraint", so a profile of the search can tell its ops apart."""

    def __init__(self, inner: FullLinearizationConstraint):
        self.inner = inner

    def process_logits(self, state: Any, logits: jax.Array) -> jax.Array:
        with jax.named_scope("constraint"):
            return self.inner.process_logits(state, logits)

    def update(self, state: Any, tokens: jax.Array) -> Any:
        with jax.named_scope("constraint"):
            return self.inner.update(state, tokens)


def kipjax_search(model: T5, constraint: FullLinearizationConstraint, beams: int, max_length: int) -> Callable:
    """params, source [B, S] -> BeamSearchOutput: encoder, cache and constrained beam search in one function."""

    def search(params: Any, source: jax.Array) -> decoding.BeamSearchOutput:
        cache, beam_mask = prepare_decoder(model, params, source, beams, max_length)
        step = functools.partial(decoder_step, model, params, beam_mask, max_length)
        rows = decoding.repeat_for_beams(source, beams)
        state = constraint.init_state(rows, jnp.full((rows.shape[0],), source.shape[1]), max_length)
        return decoding.beam_search(step, cache, batch_size=source.shape[0], beam_size=beams,
                                    max_length=max_length, start_token=START, eos_token=EOS,
                                    length_penalty=1.0, constraint=ScopedConstraint(constraint),
                                    constraint_state=state, beam_invariant_cache=is_cross_attention_cache)

    return jax.jit(search)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `repeats` calls, after one untimed call (compilation, warm caches)."""
    fn()
    return statistics.median(_timed(fn) for _ in range(repeats))


def kipjax_mask_cost(args: argparse.Namespace, vocab_size: int) -> float:
    """Seconds per step of `process_logits` + `update` alone, in a jitted loop over batch x beams rows."""
    constraint = make_constraint(vocab_size, args.actions)
    source = source_batch(args, vocab_size, args.batch_size * args.beams)
    tokens = jnp.asarray(gold_tokens(args, constraint.symbols, source))
    state = constraint.init_state(jnp.asarray(source), jnp.full((source.shape[0],), args.source_len),
                                  args.max_length)
    logits = jax.random.normal(jax.random.PRNGKey(0), (source.shape[0], vocab_size))

    @jax.jit
    def loop(state: Any, logits: jax.Array) -> tuple[Any, jax.Array]:
        def body(t: jax.Array, carry: tuple) -> tuple:
            state, logits = carry  # the masked logits are carried, so no step's mask is dead code
            return constraint.update(state, tokens[t]), constraint.process_logits(state, logits)

        return jax.lax.fori_loop(0, tokens.shape[0], body, (state, logits))

    return median_time(lambda: jax.block_until_ready(loop(state, logits)), args.mask_repeats) / tokens.shape[0]


def kipjax_decoder_step(args: argparse.Namespace, model: T5, params: Any, source: jax.Array) -> float:
    """Seconds per cached decoder step (batch x beams rows, full-vocabulary logits): a jitted step called
    `max_length` times with its cache donated, waiting for each step's logits."""
    tokens = jnp.asarray(gold_tokens(args, coref_symbols(args.vocab_size), np.repeat(np.asarray(source),
                                                                                   args.beams, axis=0)))
    prepare = jax.jit(lambda params: prepare_decoder(model, params, source, args.beams, args.max_length))
    step = jax.jit(functools.partial(decoder_step, model), static_argnums=2, donate_argnums=3)

    def steps() -> float:
        cache, beam_mask = jax.block_until_ready(prepare(params))
        start = time.perf_counter()
        for t in range(tokens.shape[0]):
            logits, cache = step(params, beam_mask, args.max_length, cache, tokens[t])
            logits.block_until_ready()
        return (time.perf_counter() - start) / tokens.shape[0]

    steps()  # compilation
    return statistics.median(steps() for _ in range(args.mask_repeats))


# Where the compiled search spends its op time: the first category whose marker is in an op's source name
# (XLA's op_name metadata). Ops with no source name are copies XLA inserted: here, mostly the KV caches
# transposed into the layout attention reads, and reordered caches copied back into their loop buffers.
SEARCH_OP_CATEGORIES = (
    ("LM head (tied-embedding matmul)", "shared.attend"),
    ("self-attention cache write", "_update_self_cache"),
    ("rest of the decoder step", "T5.decode_step"),
    ("encoder and cache preparation", "T5.encode"),
    ("encoder and cache preparation", "T5.prepare_cache"),
    ("constraint (process_logits + update)", "/constraint/"),
    ("beam reorder (gather of caches and states)", "_take"),
    ("top-k", "top_k"),
    ("other search work (log-softmax, scores, sequences)", "/while/"),
)
_CONTROL_FLOW = ("while", "conditional", "call")


def op_categories(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> SEARCH_OP_CATEGORIES category, for every op that is not control flow."""
    ops = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (?:\([^)]*\)|\S+) ([\w\-]+)\(", line)
        if not match or match.group(2) in _CONTROL_FLOW:
            continue
        source = re.search(r'op_name="([^"]*)"', line)
        source_name = source.group(1) if source else ""
        ops[match.group(1)] = next((category for category, marker in SEARCH_OP_CATEGORIES if marker in source_name),
                                   "KV-cache layout copies (inserted by XLA)" if not source else "other")
    return ops


def profile_search(compiled: Any, params: Any, source: jax.Array) -> dict[str, float]:
    """Summed op seconds per search call, by category, from a `jax.profiler` trace (`profile_train_step`'s
    reader). XLA runs independent ops side by side on the two cores, so the sum exceeds the wall time."""
    categories = op_categories(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(PROFILED_CALLS):
                jax.block_until_ready(compiled(params, source))
        seconds = op_times(trace_dir)
    totals: collections.Counter = collections.Counter()
    for op, category in categories.items():
        totals[category] += seconds.get(op, 0.0)
    return dict(totals.most_common())


def time_kipjax(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    model, params = hf.load_pretrained(os.path.join(workdir, "model"))
    source = jnp.asarray(source_batch(args, args.vocab_size))
    search = kipjax_search(model, make_constraint(args.vocab_size, args.actions), args.beams, args.max_length)
    compiled: list[Any] = []
    compile_s = _timed(lambda: compiled.append(search.lower(params, source).compile()))

    def call() -> decoding.BeamSearchOutput:
        return jax.block_until_ready(compiled[0](params, source))

    out = call()
    for _ in range(args.warmup):
        out = call()
    result = {"times": [_timed(call) for _ in range(args.repeats)], "compile_s": compile_s,
              "sequences": np.asarray(out.sequences[:, 0]).tolist(), "scores": np.asarray(out.scores[:, 0]).tolist()}
    if args.worker_round == 0:
        result["mask_s_per_step"] = {str(v): kipjax_mask_cost(args, v) for v in mask_vocab_sizes(args)}
        result["decoder_step_s"] = kipjax_decoder_step(args, model, params, source)
        result["search_op_s"] = profile_search(compiled[0], params, source)
    return result


# ------------------------------------------------------------------------------------- transformers side

class LinearizationLogitsProcessor(transformers.LogitsProcessor):
    """The rules of `FullLinearizationConstraint` (identity 'after') as a `transformers` logits processor.

    Each call re-derives every row's state from its `input_ids` (decoder start first), as coreference
    processors for `generate` are usually written: the next source position, the open mentions and the
    innermost one's first source position, whether a cluster number is being written and how many of its
    tokens, and the length budget. Rows are `batch x beams`, beams of one input next to each other.
    """

    def __init__(self, constraint: FullLinearizationConstraint, source: torch.Tensor, beams: int, max_length: int):
        if constraint.identity != "after":
            raise ValueError("LinearizationLogitsProcessor implements integer identities after the mention only")
        sym = constraint.symbols
        self.c = constraint
        self.source = source.long().repeat_interleave(beams, dim=0)
        self.max_length = max_length
        self.index = torch.arange(max_length + 1)  # input_ids columns
        self.rows = torch.arange(self.source.shape[0])
        # The only columns a row can allow besides its next source token: digits, `</m>`, `|`, `<m>`, eos.
        self.digits = len(constraint.integer_tokens)
        self.columns = torch.tensor([*constraint.integer_tokens, sym.mention_end, sym.separator, sym.mention_start,
                                     sym.eos])

    def state(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each row's constraint state after its prefix (the fields of `CorefState`)."""
        sym, c = self.c.symbols, self.c
        n, length = input_ids.shape
        index = self.index[:length].expand(n, length)
        generated = index > 0  # column 0 is the decoder start
        is_separator, is_end = input_ids == sym.separator, input_ids == sym.mention_end
        # in a cluster number after a token: its last `|` comes after its last `</m>`
        last_separator = torch.where(is_separator, index, -1).cummax(1).values
        in_identity_after = last_separator > torch.where(is_end, index, -1).cummax(1).values
        in_identity = torch.nn.functional.pad(in_identity_after[:, :-1], (1, 0))  # before each token
        opens = (input_ids == sym.mention_start) & ~in_identity
        closes = is_separator & ~in_identity
        copied = ~(opens | closes | in_identity) & (input_ids != sym.eos) & generated
        position_after = copied.cumsum(1)
        change = opens.long() - closes.long()
        depth_after = change.cumsum(1)
        depth = depth_after[:, -1]
        # the innermost open mention is the last one opened at its depth; its first source position:
        slot = (depth_after - change).clamp(max=c.max_depth - 1)
        last_open = torch.where(opens & (slot == (depth - 1).clamp(min=0)[:, None]), index, -1).max(1).values
        innermost = torch.where(last_open >= 0, (position_after - copied.long()).gather(
            1, last_open.clamp(min=0)[:, None])[:, 0], 0)
        in_identity = in_identity_after[:, -1]
        last_close = torch.where(closes, index, -1).max(1).values
        return {"position": position_after[:, -1], "depth": depth, "innermost": innermost,
                "in_identity": in_identity, "identity_length": torch.where(in_identity, length - 1 - last_close, 0),
                "steps_left": torch.full((n,), self.max_length - (length - 1))}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        c = self.c
        s = self.state(input_ids)
        position, depth, in_identity, identity_length = (s["position"], s["depth"], s["in_identity"],
                                                         s["identity_length"])
        source = self.source[:input_ids.shape[0]]
        remaining = position < source.shape[1]
        next_token = source.gather(1, position.clamp(max=source.shape[1] - 1)[:, None])[:, 0]
        writing = ~in_identity
        copying = writing & remaining
        identity_need = torch.where(in_identity, torch.where(identity_length > 0, 1, 2), 0)
        slack = s["steps_left"] - ((source.shape[1] - position) + depth * 3 + identity_need + 1)
        more_digits = (identity_length == 0) | ((identity_length < c.max_identity_tokens) & (slack >= 1))
        allowed = torch.stack([
            in_identity & (identity_length > 0),  # </m>
            writing & (depth > 0) & (position > s["innermost"]),  # |
            copying & (depth < c.max_depth) & (slack >= 4),  # <m>: room for `x | l </m>` and the rest
            writing & ~remaining & (depth == 0)], dim=1)  # eos
        allowed = torch.cat([(in_identity & more_digits)[:, None].expand(-1, self.digits), allowed], dim=1)
        out = torch.full_like(scores, decoding.NEG_INF)
        out[:, self.columns] = torch.where(allowed, scores[:, self.columns], decoding.NEG_INF)
        rows = self.rows[:scores.shape[0]]
        # the next source token, scored as <c> with copy actions (<c> itself is never allowed)
        copy_score = scores[:, c.symbols.copy] if c.actions == "copy" else scores[rows, next_token]
        out[rows, next_token] = torch.where(copying, copy_score, out[rows, next_token])
        return out


def setup_torch() -> None:
    # XLA flushes subnormal floats to zero, PyTorch on CPU does not by default (see train_step_benchmark.py).
    torch.set_flush_denormal(True)
    torch.set_num_threads(compute_threads())


def transformers_mask_cost(args: argparse.Namespace, vocab_size: int) -> float:
    """Seconds per call of the processor along gold linearizations (the prefix growing one token a call)."""
    constraint = make_constraint(vocab_size, args.actions)
    source = source_batch(args, vocab_size, args.batch_size * args.beams)
    tokens = torch.from_numpy(gold_tokens(args, constraint.symbols, source).T).long()
    input_ids = torch.cat([torch.full((tokens.shape[0], 1), START), tokens], dim=1)
    processor = LinearizationLogitsProcessor(constraint, torch.from_numpy(source), 1, args.max_length)
    logits = torch.randn(tokens.shape[0], vocab_size)

    def loop() -> None:
        scores = logits
        for t in range(tokens.shape[1]):
            scores = processor(input_ids[:, :t + 1], scores)

    return median_time(loop, args.mask_repeats) / tokens.shape[1]


def transformers_decoder_step(args: argparse.Namespace, model: Any, source: torch.Tensor) -> float:
    """Seconds per cached decoder step of the transformers model (batch x beams rows)."""
    rows = source.repeat_interleave(args.beams, dim=0)
    tokens = torch.from_numpy(gold_tokens(args, coref_symbols(args.vocab_size), rows.numpy()).T).long()
    mask = torch.ones_like(rows)
    encoded = model.get_encoder()(input_ids=rows, attention_mask=mask)

    def loop() -> None:
        past = None
        for t in range(tokens.shape[1]):
            past = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=tokens[:, t:t + 1],
                         past_key_values=past, use_cache=True).past_key_values

    with torch.inference_mode():
        return median_time(loop, args.mask_repeats) / tokens.shape[1]


def time_transformers(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    setup_torch()
    model = transformers.T5ForConditionalGeneration.from_pretrained(os.path.join(workdir, "model")).eval()
    source = torch.from_numpy(source_batch(args, args.vocab_size)).long()
    processor = LinearizationLogitsProcessor(make_constraint(args.vocab_size, args.actions), source, args.beams,
                                             args.max_length)

    def call(output_scores: bool = False) -> Any:
        return model.generate(input_ids=source, attention_mask=torch.ones_like(source), num_beams=args.beams,
                              max_new_tokens=args.max_length, length_penalty=1.0, early_stopping=False,
                              do_sample=False, logits_processor=transformers.LogitsProcessorList([processor]),
                              renormalize_logits=True, return_dict_in_generate=True, output_scores=output_scores)

    out = call(output_scores=True)  # untimed: keeping every step's scores costs a copy per step
    for _ in range(args.warmup):
        call()
    outputs: list[Any] = []
    times = [_timed(lambda: outputs.append(call())) for _ in range(args.repeats)]
    result = {"times": times, "sequences": outputs[-1].sequences[:, 1:].tolist(),
              "scores": out.sequences_scores.tolist(), "steps": outputs[-1].sequences.shape[1] - 1}
    if args.worker_round == 0:
        result["mask_s_per_step"] = {str(v): transformers_mask_cost(args, v) for v in mask_vocab_sizes(args)}
        result["decoder_step_s"] = transformers_decoder_step(args, model, source)
    return result


# --------------------------------------------------------------------------------------------------- main

def mask_vocab_sizes(args: argparse.Namespace) -> list[int]:
    """The sizes of --mask_vocab_sizes, with the model's own vocabulary among them."""
    return sorted({int(v) for v in args.mask_vocab_sizes.split(",")} | {args.vocab_size})


def run_worker(framework: str, argv: Sequence[str], workdir: str, round_index: int, xla_flags: str,
               script: str = __file__) -> dict[str, Any]:
    """`time_<framework>` of benchmark `script` in a fresh interpreter: a framework's timing never follows the
    other's work."""
    env = dict(os.environ)
    if framework == "kipjax":
        env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), xla_flags]))
    subprocess.run([sys.executable, os.path.abspath(script), *argv, f"--worker={framework}",
                    f"--worker_dir={workdir}", f"--worker_round={round_index}"], env=env, check=True)
    with open(os.path.join(workdir, f"{framework}-{round_index}.json"), encoding="utf-8") as f:
        return json.load(f)


def fit_line(sizes: Sequence[int], seconds: Sequence[float]) -> dict[str, float]:
    """Least-squares microseconds per step = slope x (vocab / 1000) + intercept."""
    slope, intercept = np.polyfit(np.asarray(sizes) / 1000, np.asarray(seconds) * 1e6, 1)
    return {"slope_us_per_1k_vocab": float(slope), "intercept_us": float(intercept)}


def mask_summary(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    summary = {}
    for name, run in runs.items():
        per_vocab = run["mask_s_per_step"]
        sizes = [int(v) for v in per_vocab]
        us = {v: s * 1e6 for v, s in per_vocab.items()}
        step_us = run["decoder_step_s"] * 1e6
        summary[name] = {"us_per_step": us, **fit_line(sizes, list(per_vocab.values())),
                         "decoder_step_us": step_us,
                         "fraction_of_decoder_step": us[str(args.vocab_size)] / step_us}
    return summary


def framework_summary(runs: list[dict[str, Any]], sequences: list[list[int]], steps: int, vocab_size: int
                      ) -> dict[str, Any]:
    """Throughput over every process's timed calls, and where a step's time goes (first process's timings)."""
    times = [t for r in runs for t in r["times"]]
    tokens = sum(len(until_eos(s)) for s in sequences)
    median = statistics.median(times)
    step_ms = 1e3 * median / steps
    decoder_ms, constraint_ms = 1e3 * runs[0]["decoder_step_s"], 1e3 * runs[0]["mask_s_per_step"][str(vocab_size)]
    return {**_median_pair(times), "tokens": tokens, "tokens_per_s": tokens / median, "times": times,
            "per_step_ms": {"search_step": step_ms, "decoder_step": decoder_ms, "constraint": constraint_ms,
                            "rest": step_ms - decoder_ms - constraint_ms}}


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        save_random_t5(args, os.path.join(workdir, "model"))
        runs: dict[str, list[dict[str, Any]]] = {"kipjax": [], "transformers": []}
        for r in range(args.rounds):
            for framework in runs:
                runs[framework].append(run_worker(framework, argv, workdir, r, args.kipjax_xla_flags))
    symbols = coref_symbols(args.vocab_size)
    source = source_batch(args, args.vocab_size).tolist()
    kipjax_seqs = [until_eos(s) for s in runs["kipjax"][0]["sequences"]]
    torch_seqs = [until_eos(s) for s in runs["transformers"][0]["sequences"]]
    checks = [check_linearization(s, src, symbols) for s, src in zip(kipjax_seqs, source)]
    steps = runs["transformers"][0]["steps"]  # both stop on the same criterion; generate reports its count
    kipjax = framework_summary(runs["kipjax"], kipjax_seqs, steps, args.vocab_size)
    torch_side = framework_summary(runs["transformers"], torch_seqs, steps, args.vocab_size)
    return {
        "same_outputs": kipjax_seqs == torch_seqs and all(
            r["sequences"] == runs["kipjax"][0]["sequences"] for r in runs["kipjax"]),
        "valid_linearizations": all(c["valid"] for c in checks),
        "mentions_per_document": [c["mentions"] for c in checks],
        "best_scores": {"kipjax": runs["kipjax"][0]["scores"], "transformers": runs["transformers"][0]["scores"]},
        "steps": steps,
        "kipjax": {**kipjax, "compile_s": runs["kipjax"][0]["compile_s"]},
        "transformers": torch_side,
        "throughput_ratio_kipjax_over_transformers": kipjax["tokens_per_s"] / torch_side["tokens_per_s"],
        "mask_cost": mask_summary({k: v[0] for k, v in runs.items()}, args),
        "kipjax_search_ops": {category: {"ms_per_step": 1e3 * seconds / steps,
                                         "share": seconds / sum(runs["kipjax"][0]["search_op_s"].values())}
                              for category, seconds in runs["kipjax"][0]["search_op_s"].items()},
        "threads": {"jax": compute_threads(), "torch": compute_threads()},
        "sequences": {"kipjax": kipjax_seqs, "transformers": torch_seqs},
    }


def print_report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    print(f"T5 {args.layers}+{args.layers} layers x {args.d_model} ({args.heads} heads, {args.d_ff} MLP), vocab "
          f"{args.vocab_size}; batch {args.batch_size} x {args.beams} beams, source {args.source_len}, max_length "
          f"{args.max_length}, actions={args.actions}; {os.cpu_count()} CPU cores")
    print(f"same best sequences: {r['same_outputs']}; valid linearizations: {r['valid_linearizations']} "
          f"(mentions per document {r['mentions_per_document']}); {r['steps']} decoding steps\n")
    print("| framework | call s (median) | min..max s | tokens | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name in ("kipjax", "transformers"):
        x = r[name]
        print(f"| {name} | {x['median_s']:.3f} | {x['min_s']:.3f}..{x['max_s']:.3f} | {x['tokens']} | "
              f"{x['tokens_per_s']:.1f} |")
    print(f"\nkipjax / transformers tokens/s: {r['throughput_ratio_kipjax_over_transformers']:.2f}x "
          f"(kipjax compile {r['kipjax']['compile_s']:.1f} s, not timed)\n")
    print("| ms per step | search step | decoder step alone | constraint alone | rest |\n|---|---:|---:|---:|---:|")
    for name in ("kipjax", "transformers"):
        x = r[name]["per_step_ms"]
        print(f"| {name} | {x['search_step']:.2f} | {x['decoder_step']:.2f} | {x['constraint']:.3f} | "
              f"{x['rest']:.2f} |")
    print_mask_cost(args, r)
    print("\n| kipjax search, summed op time by kind | ms / step | share |\n|---|---:|---:|")
    for category, x in r["kipjax_search_ops"].items():
        print(f"| {category} | {x['ms_per_step']:.2f} | {100 * x['share']:.1f}% |")


def print_mask_cost(args: argparse.Namespace, r: dict[str, Any]) -> None:
    """The table of the constraint's cost per step against the vocabulary size, per framework."""
    sizes = mask_vocab_sizes(args)
    print("\n| constraint per step | " + " | ".join(f"V={v} us" for v in sizes)
          + f" | us per 1k vocab | share of a decoder step at V={args.vocab_size} |")
    print("|---|" + "---:|" * (len(sizes) + 2))
    for name, m in r["mask_cost"].items():
        print(f"| {name} | " + " | ".join(f"{m['us_per_step'][str(v)]:.1f}" for v in sizes)
              + f" | {m['slope_us_per_1k_vocab']:.2f} | {100 * m['fraction_of_decoder_step']:.1f}% |")


def benchmark_main(argv: Sequence[str] | None, parse_args: Callable, time_kipjax: Callable,
                   time_transformers: Callable, run: Callable, print_report: Callable) -> dict[str, Any]:
    """A decoding benchmark's main: as a worker, times one framework; else runs the rounds, prints markdown
    tables, writes `--out`; returns the results dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:  # a child of `run`: time one framework, hand the result back, nothing else
        result = (time_kipjax if args.worker == "kipjax" else time_transformers)(args, args.worker_dir)
        atomic_write_text(os.path.join(args.worker_dir, f"{args.worker}-{args.worker_round}.json"),
                          json.dumps(result))
        return result
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = run(args, argv)
    results.update(load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()])
    print_report(args, results)
    results.update(config=vars(args), platform=platform.platform(), cpu_count=os.cpu_count(),
                   versions={"jax": jax.__version__, "torch": torch.__version__,
                             "transformers": transformers.__version__})
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return benchmark_main(argv, parse_args, time_kipjax, time_transformers, run, print_report)


if __name__ == "__main__":
    main()
