"""Constrained Llama decoding of LMRC answers: kipjax (one jitted function) against `transformers` `generate`.

Both frameworks decode with the same random-weight Llama (GQA, untied LM head; created in kipjax, exported
with `hf.save_pretrained` and loaded by `LlamaForCausalLM`) under the same constraint: LMRC stage 2's answer
grammar (`kipjax.methods.lmrc.answer_constraint`), for each listed pair one or more `( head | relation |
tail )` triples with a relation name from a token trie or `none`, then EOS, within a length budget.

The prompts are real stage-2 prompts (`prompts.build_prompt`: the relation names, a document, the pairs, the
`Answer :` cue) over synthetic DocRED-like documents (random words, entities named by 1-3 words, facts with
zero to three relations per pair), written with DocRED's 96 relation names and tokenized by a word-level
tokenizer built here (`demo_docred.save_llama_tokenizer`, filled with filler words to the vocabulary size).
Prompts differ in length and are left-padded, as `RelationClassification` batches them (to the longest
prompt here, where it rounds the width up to a multiple of 32 to share compilations: both frameworks see the
same width).

- kipjax: exactly `RelationClassification._decode`: `prefill_shared_prompt` over the left-padded prompt
  without its cue (prefilled once, its keys/values shared by the beams), then `beam_search` from the cue under
  `AnswerConstraint`, all in one `jax.jit` function; the budget is `RelationClassification.decode_budget`.
- transformers: `generate(num_beams, max_new_tokens=budget, length_penalty, early_stopping, renormalize_logits=
  True)` with `AnswerLogitsProcessor`, a `LogitsProcessor` that implements the same rules the way such
  processors are usually written: at every call it re-derives each row's state by parsing its generated
  tokens from the start (in Python, per row), then masks the logits in one indexing op. `generate` hands
  processors log-probabilities, so `renormalize_logits=True` takes a log-softmax over the allowed tokens
  afterwards; then both frameworks search the same distribution and must return the same best sequence for
  every prompt (checked: `same_outputs`).

`--early_stopping never` (the default) is the stopping rule kipjax's `beam_search` implements for a positive
length penalty: stop when no alive beam, at the most favourable length (the budget), can beat the worst
finished one. `generate`'s `early_stopping=False` estimates that bound at the current length instead, so it
may stop before kipjax would and return a different best sequence; the flag lets one see it.

Throughput is tokens/s of one call over the batch (prefill included): tokens = the length of each prompt's best
answer up to and including EOS, summed over the batch; time = the median call. The ratio is kipjax tokens/s
over transformers tokens/s. Each framework runs in fresh processes of its own, alternating (`--rounds`), as in
`coref_decoding_benchmark.py`. Where a call's time goes, per framework (first process): the prefill alone, one
decoder step alone (batch x beams rows, full-vocabulary logits, KV cache), and the constraint alone
(`process_logits` + `update` in a jitted loop, or the processor's call, along gold answers), the latter at
several vocabulary sizes.

  python benchmarks/lmrc_decoding_benchmark.py --out benchmarks/results/lmrc_decoding.json
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import linen as nn

from kipjax import decoding
from kipjax.data.demo_docred import PROMPT_WORDS, save_llama_tokenizer
from kipjax.data.docred import DocredDocument, Entity, Fact, Mention
from kipjax.data.padding import pad_rows
from kipjax.methods.lmrc import answer_constraint as ac
from kipjax.methods.lmrc.prompts import Pair, parse_answer
from kipjax.methods.lmrc.rc import RelationClassification
from kipjax.methods.lmrc.rc_features import all_pairs, encode_prompt
from kipjax.models import hf
from kipjax.models.llama import Llama, LlamaConfig, is_shared_prompt, prefill_shared_prompt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from coref_decoding_benchmark import (  # noqa: E402
    benchmark_main, mask_summary, mask_vocab_sizes, median_time, print_mask_cost, run_worker, setup_torch)
from train_step_benchmark import _median_pair, _timed, compute_threads  # noqa: E402

# DocRED's relations (rel_info.json), in property-id order.
DOCRED_RELATIONS = {
    "P6": "head of government", "P17": "country", "P19": "place of birth", "P20": "place of death",
    "P22": "father", "P25": "mother", "P26": "spouse", "P27": "country of citizenship", "P30": "continent",
    "P31": "instance of", "P35": "head of state", "P36": "capital", "P37": "official language",
    "P39": "position held", "P40": "child", "P50": "author", "P54": "member of sports team", "P57": "director",
    "P58": "screenwriter", "P69": "educated at", "P86": "composer", "P102": "member of political party",
    "P108": "employer", "P112": "founded by", "P118": "league", "P123": "publisher", "P127": "owned by",
    "P131": "located in the administrative territorial entity", "P136": "genre", "P137": "operator",
    "P140": "religion", "P150": "contains administrative territorial entity", "P155": "follows",
    "P156": "followed by", "P159": "headquarters location", "P161": "cast member", "P162": "producer",
    "P166": "award received", "P170": "creator", "P171": "parent taxon", "P172": "ethnic group",
    "P175": "performer", "P176": "manufacturer", "P178": "developer", "P179": "series", "P190": "sister city",
    "P194": "legislative body", "P205": "basin country", "P206": "located in or next to body of water",
    "P241": "military branch", "P264": "record label", "P272": "production company", "P276": "location",
    "P279": "subclass of", "P355": "subsidiary", "P361": "part of", "P364": "original language of work",
    "P400": "platform", "P403": "mouth of the watercourse", "P449": "original network", "P463": "member of",
    "P488": "chairperson", "P495": "country of origin", "P527": "has part", "P551": "residence",
    "P569": "date of birth", "P570": "date of death", "P571": "inception",
    "P576": "dissolved, abolished or demolished", "P577": "publication date", "P580": "start time",
    "P582": "end time", "P585": "point in time", "P607": "conflict", "P674": "characters", "P676": "lyrics by",
    "P706": "located on terrain feature", "P710": "participant", "P737": "influenced by",
    "P740": "location of formation", "P749": "parent organization", "P800": "notable work",
    "P807": "separated from", "P840": "narrative location", "P937": "work location",
    "P1001": "applies to jurisdiction", "P1056": "product or material produced", "P1198": "unemployment rate",
    "P1336": "territory claimed by", "P1344": "participant of", "P1365": "replaces", "P1366": "replaced by",
    "P1376": "capital of", "P1412": "languages spoken, written or signed", "P1441": "present in work",
    "P3373": "sibling"}
ENTITY_TYPES = ("PER", "ORG", "LOC", "TIME", "NUM", "MISC")
NAME_WORDS = 1000  # entity names use the first filler words only, so answers fit the smallest masked vocabulary
RELATIONS_PER_PAIR = (0.55, 0.3, 0.1, 0.05)  # probability of 0 (`none`), 1, 2 and 3 gold relations

# Integer flags: the model (random weights), the decoding problem and the timing, with defaults.
INT_FLAGS = {
    "layers": (4, None), "hidden": (256, None), "heads": (4, None), "kv_heads": (2, "key/value heads (GQA)"),
    "mlp": (1024, "SwiGLU hidden size"), "vocab_size": (32000, "Llama 2's; the tokenizer is filled to it"),
    "relations": (96, "relation names: the first N of DocRED's 96"),
    "batch_size": (4, "prompts decoded per call"), "beams": (4, None),
    "doc_words": (200, "words of the longest document (DocRED's average); the others are up to a quarter "
                       "shorter, so their prompts are left-padded"),
    "pairs": (8, "candidate pairs per prompt (the paper groups 18)"), "entities": (6, "entities per document"),
    "extra_triples": (4, "triples beyond one per pair in the budget (RelationClassification.decode_budget)"),
    "repeats": (3, "timed calls per framework and process"),
    "warmup": (1, "untimed calls per process (after compilation and the scored call)"),
    "rounds": (2, "alternating fresh processes per framework"),
    "mask_repeats": (2, "timed loops (constraint alone, decoder step, prefill)"),
    "seed": (0, None),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, (default, help_text) in INT_FLAGS.items():
        p.add_argument(f"--{name}", type=int, default=default, help=help_text)
    p.add_argument("--length_penalty", type=float, default=1.0, help="RelationClassification's default")
    p.add_argument("--early_stopping", choices=("never", "False"), default="never",
                   help="generate's stopping rule; 'never' is the one kipjax's beam_search implements")
    p.add_argument("--mask_vocab_sizes", default="8192,32000,131072",
                   help="vocabulary sizes at which the constraint alone is timed")
    p.add_argument("--kipjax_xla_flags", default="", help="added to XLA_FLAGS in the kipjax processes only")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--worker", choices=("kipjax", "transformers"), help=argparse.SUPPRESS)
    p.add_argument("--worker_dir", help=argparse.SUPPRESS)
    p.add_argument("--worker_round", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.relations <= len(DOCRED_RELATIONS):
        p.error(f"--relations must be 1..{len(DOCRED_RELATIONS)}")
    if args.pairs > args.entities * (args.entities - 1):
        p.error("--pairs exceeds the ordered entity pairs of a document")
    return args


# ---------------------------------------------------------------------------------- tokenizer and prompts

def relation_names(args: argparse.Namespace) -> dict[str, str]:
    return dict(list(DOCRED_RELATIONS.items())[:args.relations])


def base_words() -> list[str]:
    """The prompt words and the relation names' words (punctuation apart, as the tokenizer splits it)."""
    return list(dict.fromkeys([*PROMPT_WORDS, *(w for name in DOCRED_RELATIONS.values()
                                                for w in re.findall(r"\w+|[^\w\s]", name))]))


def filler_words(args: argparse.Namespace) -> list[str]:
    """`w0`, `w1`, ...: the documents' and entity names' words, filling the tokenizer (4 specials, then
    `base_words`) to `--vocab_size` tokens."""
    count = args.vocab_size - 4 - len(base_words())
    if count < 2 * args.entities:
        raise ValueError(f"--vocab_size {args.vocab_size} leaves too few filler words for the documents")
    return [f"w{i}" for i in range(count)]


def save_tokenizer(args: argparse.Namespace, path: str) -> Any:
    return save_llama_tokenizer(base_words() + filler_words(args), Path(path))


def synthetic_row(args: argparse.Namespace, rng: np.random.Generator, fillers: list[str], words: int,
                  relations: Mapping[str, str]) -> tuple[DocredDocument, list[Pair]]:
    """A document of `words` random filler words plus `--entities` entity names (one mention each), and its
    `--pairs` candidate pairs, sorted (so consecutive pairs often share the head), with random gold facts."""
    names = [[str(w) for w in rng.choice(fillers[:NAME_WORDS], int(rng.integers(1, 4)))]
             for _ in range(args.entities)]

    def document(words: int, facts: list[Fact]) -> DocredDocument:
        gaps = np.bincount(rng.integers(0, args.entities + 1, words), minlength=args.entities + 1)
        tokens: list[str] = []
        mentions = []
        for e, name in enumerate(names):
            tokens += [str(w) for w in rng.choice(fillers, gaps[e])]
            mentions.append(Mention(" ".join(name), 0, (len(tokens), len(tokens) + len(name)),
                                    ENTITY_TYPES[int(rng.integers(len(ENTITY_TYPES)))]))
            tokens += name
        tokens += [str(w) for w in rng.choice(fillers, gaps[-1])]
        return DocredDocument(f"synthetic {len(tokens)}", [tokens], [Entity((m,)) for m in mentions], facts)

    candidates = all_pairs(document(0, []))
    pairs = sorted(candidates[i] for i in rng.choice(len(candidates), args.pairs, replace=False))
    facts = [Fact(h, t, str(r)) for h, t in pairs
             for r in rng.choice(list(relations), rng.choice(4, p=RELATIONS_PER_PAIR), replace=False)]
    return document(words, facts), pairs


class Problem(NamedTuple):
    """The decoding problem both frameworks solve: left-padded prompts (cue last) and their pair lists."""

    rows: list[tuple[DocredDocument, list[Pair]]]
    prompts: np.ndarray  # [B, W] left-padded with 0, each row's last token the cue
    mask: np.ndarray  # [B, W]
    affixes: dict[str, np.ndarray]  # encode_pair_lists: the inputs of AnswerConstraint.init_state
    gold: list[list[int]]  # each row's gold answer (encode_answer, EOS included)
    budget: int  # new tokens at most
    cue: int


def build_problem(args: argparse.Namespace, tokenizer: Any, constraint: ac.AnswerConstraint) -> Problem:
    rng = np.random.default_rng(args.seed)
    relations = relation_names(args)
    fillers = filler_words(args)
    words = [args.doc_words] + [int(rng.integers(args.doc_words * 3 // 4, args.doc_words + 1))
                                for _ in range(args.batch_size - 1)]
    rows = [synthetic_row(args, rng, fillers, n, relations) for n in words]
    prompts = [encode_prompt(tokenizer, doc, pairs, relations) for doc, pairs in rows]
    affixes = ac.encode_pair_lists(tokenizer, rows, max_pairs=args.pairs)
    # RelationClassification.decode_budget reads only these two attributes of the method
    budget = RelationClassification.decode_budget(
        types.SimpleNamespace(constraint=constraint, extra_triples=args.extra_triples), affixes)
    width = max(map(len, prompts))
    return Problem(rows=rows, prompts=pad_rows(prompts, width, left=True),
                   mask=pad_rows([[1] * len(p) for p in prompts], width, left=True), affixes=affixes,
                   gold=[ac.encode_answer(tokenizer, doc, pairs, relations) for doc, pairs in rows],
                   budget=budget, cue=prompts[0][-1])


def setup(args: argparse.Namespace, workdir: str) -> tuple[Any, ac.AnswerConstraint, Problem]:
    """The tokenizer saved in `workdir`, the constraint over the model's vocabulary, and the problem."""
    tokenizer = hf.load_tokenizer(os.path.join(workdir, "tokenizer"))
    constraint = ac.answer_constraint_from_tokenizer(tokenizer, relation_names(args), args.vocab_size)
    return tokenizer, constraint, build_problem(args, tokenizer, constraint)


def until_eos(sequence: Sequence[int], eos: int) -> list[int]:
    """The sequence up to and including its first EOS (all of it when there is none)."""
    sequence = list(sequence)
    return sequence[:sequence.index(eos) + 1] if eos in sequence else sequence


def gold_walk(problem: Problem, beams: int, eos: int) -> np.ndarray:
    """[budget, B x beams]: each row's gold answer, padded with EOS to the budget, for the beams of its prompt."""
    out = np.full((problem.budget, len(problem.gold) * beams), eos, np.int32)
    for row, tokens in enumerate(problem.gold):
        out[:len(tokens), row * beams:(row + 1) * beams] = np.asarray(tokens)[:, None]
    return out


def check_vocab(problem: Problem, vocab_size: int) -> None:
    """The gold answers' tokens must be ids of a `vocab_size` vocabulary for the constraint to be timed on it."""
    largest = max(max(g) for g in problem.gold)
    if largest >= vocab_size:
        raise ValueError(f"--mask_vocab_sizes {vocab_size} is smaller than the answers' largest token id {largest}")


# ------------------------------------------------------------------------------------------- kipjax side

def llama_config(args: argparse.Namespace) -> LlamaConfig:
    return LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden, intermediate_size=args.mlp,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)


def save_random_llama(args: argparse.Namespace, path: str) -> None:
    """A random-weight kipjax Llama, exported for both frameworks to load."""
    model = Llama(llama_config(args))
    ids = jnp.ones((1, 4), jnp.int32)
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.PRNGKey(args.seed), ids, jnp.ones_like(ids))))()
    hf.save_pretrained(model, params["params"], path)


def decoder_step(model: Llama, params: Any, cache: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
    """One cached step: tokens [N] -> (logits [N, V], the cache extended by one position)."""
    out, state = model.apply({"params": params, "cache": cache}, tokens[:, None], method=Llama.decode_step,
                             mutable=["cache"])
    return out.logits[:, 0], state["cache"]


class CountedSteps:
    """The constraint, counting its `update` calls (one per search step) on the host; for the scored call only,
    as the callback costs a host round trip per step."""

    def __init__(self, inner: ac.AnswerConstraint):
        self.inner, self.steps = inner, 0

    def _count(self) -> None:
        self.steps += 1

    def init_state(self, *args: Any, **kwargs: Any) -> ac.AnswerState:
        return self.inner.init_state(*args, **kwargs)

    def process_logits(self, state: ac.AnswerState, logits: jax.Array) -> jax.Array:
        return self.inner.process_logits(state, logits)

    def update(self, state: ac.AnswerState, tokens: jax.Array) -> ac.AnswerState:
        jax.debug.callback(self._count)
        return self.inner.update(state, tokens)


def kipjax_search(model: Llama, constraint: Any, args: argparse.Namespace, budget: int, cue: int, eos: int
                  ) -> Callable:
    """(params, prompts [B, W-1], mask, affixes) -> BeamSearchOutput: `RelationClassification._decode` (prefill,
    then constrained beam search from the cue) in one jitted function, returning the scores too."""

    def search(params: Any, prompts: jax.Array, mask: jax.Array, affixes: Mapping[str, jax.Array]
               ) -> decoding.BeamSearchOutput:
        cache = prefill_shared_prompt(model, params, prompts, mask, args.beams, budget)  # as _decode does
        state = decoding.repeat_for_beams(constraint.init_state(**affixes, max_length=budget), args.beams)
        return decoding.beam_search(functools.partial(decoder_step, model, params), cache,
                                    batch_size=prompts.shape[0], beam_size=args.beams, max_length=budget,
                                    start_token=cue, eos_token=eos, length_penalty=args.length_penalty,
                                    constraint=constraint, constraint_state=state,
                                    beam_invariant_cache=is_shared_prompt)

    return jax.jit(search)


def kipjax_mask_cost(args: argparse.Namespace, constraint: ac.AnswerConstraint, problem: Problem, eos: int,
                     vocab_size: int) -> float:
    """Seconds per step of `process_logits` + `update` alone, in a jitted loop over batch x beams rows fed the
    gold answers (then EOS) for the whole budget."""
    check_vocab(problem, vocab_size)
    constraint = dataclasses.replace(constraint, vocab_size=vocab_size)
    tokens = jnp.asarray(gold_walk(problem, args.beams, eos))
    state = decoding.repeat_for_beams(constraint.init_state(**problem.affixes, max_length=problem.budget),
                                      args.beams)
    logits = jax.random.normal(jax.random.PRNGKey(0), (tokens.shape[1], vocab_size))

    @jax.jit
    def loop(state: ac.AnswerState, logits: jax.Array) -> tuple[ac.AnswerState, jax.Array]:
        def body(t: jax.Array, carry: tuple) -> tuple:
            state, logits = carry  # the masked logits are carried, so no step's mask is dead code
            return constraint.update(state, tokens[t]), constraint.process_logits(state, logits)

        return jax.lax.fori_loop(0, tokens.shape[0], body, (state, logits))

    return median_time(lambda: jax.block_until_ready(loop(state, logits)), args.mask_repeats) / tokens.shape[0]


def kipjax_parts(args: argparse.Namespace, model: Llama, params: Any, problem: Problem, eos: int
                 ) -> dict[str, float]:
    """Seconds of the prefill alone (jitted) and per decoder step alone: a jitted `decode_step` with its cache
    donated, called step by step along the gold answers for the whole budget, waiting for each step's logits."""
    prompts, mask = jnp.asarray(problem.prompts[:, :-1]), jnp.asarray(problem.mask[:, :-1])
    fill = jax.jit(lambda params: prefill_shared_prompt(model, params, prompts, mask, args.beams, problem.budget))
    step = jax.jit(functools.partial(decoder_step, model), donate_argnums=1)
    tokens = jnp.asarray(gold_walk(problem, args.beams, eos))

    def steps() -> float:
        cache = jax.block_until_ready(fill(params))
        start = time.perf_counter()
        for t in range(tokens.shape[0]):
            logits, cache = step(params, cache, tokens[t])
            logits.block_until_ready()
        return (time.perf_counter() - start) / tokens.shape[0]

    steps()  # compilation
    return {"prefill_s": median_time(lambda: jax.block_until_ready(fill(params)), args.mask_repeats),
            "decoder_step_s": statistics.median(steps() for _ in range(args.mask_repeats))}


def time_kipjax(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    _, constraint, problem = setup(args, workdir)
    eos = constraint.eos_token
    model, params = hf.load_pretrained(os.path.join(workdir, "model"))
    inputs = (jnp.asarray(problem.prompts[:, :-1]), jnp.asarray(problem.mask[:, :-1]),
              {k: jnp.asarray(v) for k, v in problem.affixes.items()})
    search = kipjax_search(model, constraint, args, problem.budget, problem.cue, eos)
    compiled: list[Any] = []
    compile_s = _timed(lambda: compiled.append(search.lower(params, *inputs).compile()))

    def call() -> decoding.BeamSearchOutput:
        return jax.block_until_ready(compiled[0](params, *inputs))

    counted = CountedSteps(constraint)
    # untimed; in the first process, a second compilation whose callback counts the steps
    scored = jax.block_until_ready(kipjax_search(model, counted, args, problem.budget, problem.cue, eos)(
        params, *inputs)) if args.worker_round == 0 else call()
    for _ in range(args.warmup):
        call()
    outputs: list[Any] = []
    times = [_timed(lambda: outputs.append(call())) for _ in range(args.repeats)]
    result = {"times": times, "compile_s": compile_s, "steps": counted.steps,
              "sequences": np.asarray(outputs[-1].sequences[:, 0]).tolist(),
              "scored_sequences": np.asarray(scored.sequences[:, 0]).tolist(),
              "scores": np.asarray(scored.scores[:, 0]).tolist()}
    if args.worker_round == 0:
        result["mask_s_per_step"] = {str(v): kipjax_mask_cost(args, constraint, problem, eos, v)
                                     for v in mask_vocab_sizes(args)}
        result.update(kipjax_parts(args, model, params, problem, eos))
    return result


# ------------------------------------------------------------------------------------- transformers side

PREFIX, RELATION, SUFFIX, FINISHED = ac.PREFIX, ac.RELATION, ac.SUFFIX, ac.FINISHED
SAME, NEXT = ac.SAME, ac.NEXT
Candidate = tuple[int, int, int, int, int]  # (SAME or NEXT, phase, position in the affix, trie node, relation)
RowState = tuple[int, frozenset, bool, tuple[Candidate, ...]]  # (pair, used relations, in a triple, candidates)


class _PairList(NamedTuple):
    prefixes: list[list[int]]  # each listed pair's `( head |` tokens
    suffixes: list[list[int]]  # each listed pair's `| tail )` tokens
    rest: list[int]  # fewest tokens of one triple for each later pair


class AnswerLogitsProcessor(transformers.LogitsProcessor):
    """The rules of `AnswerConstraint` as a `transformers` logits processor, written as such processors usually
    are: each call parses every row's generated tokens from the start, in Python, into its state (the last
    pair answered and its relations, and the live candidates of the triple being written: another triple for
    the same pair or the first for the next, each with its phase, position and relation-trie node), then
    allows the tokens the state allows within the steps left, and masks the scores in one indexing op.

    It shares only the relation trie (`build_relation_trie`'s arrays, read into Python lists) and the pair
    lists' token ids (`encode_pair_lists`) with the JAX constraint; rows are `batch x beams`, the beams of one
    prompt next to each other, and `input_ids` hold the `prompt_width` prompt columns first.
    """

    def __init__(self, constraint: ac.AnswerConstraint, affixes: Mapping[str, np.ndarray], beams: int,
                 prompt_width: int, max_length: int):
        trie = constraint.trie
        self.eos, self.none = constraint.eos_token, constraint.num_relations
        self.beams, self.prompt_width, self.max_length = beams, prompt_width, max_length
        self.children = [[(int(t), int(s)) for t, s in zip(tokens, states) if t >= 0]
                         for tokens, states in zip(trie.tokens, trie.next_state)]
        self.terminal = trie.terminal.tolist()
        self.below = [self._relations_below(node) for node in range(len(self.children))]
        shortest = self.below[0][0][0]
        self.rows = []
        for i, count in enumerate(affixes["num_pairs"].tolist()):
            prefixes = [affixes["prefix"][i, p, :affixes["prefix_length"][i, p]].tolist() for p in range(count)]
            suffixes = [affixes["suffix"][i, p, :affixes["suffix_length"][i, p]].tolist() for p in range(count)]
            minimum = [len(h) + shortest + len(t) for h, t in zip(prefixes, suffixes)]
            self.rows.append(_PairList(prefixes, suffixes, [sum(minimum[p + 1:]) for p in range(count)]))
        self.calls = 0

    def _relations_below(self, node: int) -> list[tuple[int, int]]:
        """(tokens from `node` to the end of relation r, r) for each relation whose tokens pass `node`, shortest
        first."""
        out, frontier, depth = [], [node], 0
        while frontier:
            out += [(depth, self.terminal[s]) for s in frontier if self.terminal[s] >= 0]
            frontier = [child for s in frontier for _, child in self.children[s]]
            depth += 1
        return sorted(out)

    def _shortest(self, node: int, kind: int, used: frozenset) -> float:
        """Fewest tokens from `node` to the end of a relation the candidate may write (SAME: no used relation,
        no `none`); infinity if there is none."""
        for length, r in self.below[node]:
            if kind == NEXT or (r != self.none and r not in used):
                return length
        return math.inf

    def _options(self, pairs: _PairList, pair: int, used: frozenset, candidate: Candidate, steps_left: int
                 ) -> list[tuple[int, Candidate]]:
        """The tokens the candidate allows next with its state after each, in the JAX constraint's order."""
        kind, phase, position, node, relation = candidate
        j = pair + kind  # SAME (0) writes for the last answered pair again, NEXT (1) for the one after
        if not 0 <= j < len(pairs.prefixes):
            return []
        head, tail = pairs.prefixes[j], pairs.suffixes[j]
        room = steps_left - 2 - pairs.rest[j]  # tokens that may follow this one within the triple
        if phase == RELATION:
            out = [(token, (kind, RELATION, 0, child, 0)) for token, child in self.children[node]
                   if self._shortest(child, kind, used) + len(tail) <= room]
            r = self.terminal[node]
            if r >= 0 and (kind == NEXT or (r != self.none and r not in used)) and len(tail) - 1 <= room:
                out.append((tail[0], (kind, FINISHED if len(tail) == 1 else SUFFIX, 1, 0, r)))
            return out
        shortest = self._shortest(0, kind, used)
        if shortest == math.inf:  # as in the JAX constraint, a candidate with no relation left allows nothing
            return []
        if phase == SUFFIX:
            last = position + 1 == len(tail)
            need, token = len(tail) - position - 1, tail[position]
            after = (kind, FINISHED, 0, 0, relation) if last else (kind, SUFFIX, position + 1, 0, relation)
        else:
            last = position + 1 == len(head)
            need, token = len(head) - position - 1 + shortest + len(tail), head[position]
            after = (kind, RELATION, 0, 0, relation) if last else (kind, PREFIX, position + 1, 0, relation)
        return [(token, after)] if need <= room else []

    def _initial(self, pairs: _PairList) -> RowState:
        return -1, frozenset(), False, ((NEXT, PREFIX, 0, 0, 0),) if pairs.prefixes else ()

    def _advance(self, pairs: _PairList, state: RowState, token: int, steps_left: int) -> RowState:
        if token == self.eos:
            return state
        pair, used, _, candidates = state
        survivors = []
        for candidate in candidates:
            survivors += [after for option, after in self._options(pairs, pair, used, candidate, steps_left)
                          if option == token][:1]
        finished = [c for c in survivors if c[1] == FINISHED]
        if not finished:
            return pair, used, True, tuple(survivors)
        kind, relation = finished[0][0], finished[0][4]  # SAME first, as parse_answer prefers
        pair, used = (pair + 1, frozenset([relation])) if kind == NEXT else (pair, used | {relation})
        can_repeat = pair >= 0 and self.none not in used and len(used) < self.none
        starts = [(SAME, PREFIX, 0, 0, 0)] * can_repeat + [(NEXT, PREFIX, 0, 0, 0)] * (pair + 1 < len(pairs.prefixes))
        return pair, used, False, tuple(starts)

    def allowed_after(self, row: int, generated: Sequence[int]) -> list[int]:
        """The tokens a row of prompt `row` may produce after `generated`, its state derived from scratch."""
        pairs = self.rows[row]
        state = self._initial(pairs)
        for t, token in enumerate(generated):
            state = self._advance(pairs, state, token, self.max_length - t)
        pair, used, in_triple, candidates = state
        steps_left = self.max_length - len(generated)
        allowed = {token for c in candidates for token, _ in self._options(pairs, pair, used, c, steps_left)}
        if not allowed or (not in_triple and pair == len(pairs.prefixes) - 1):
            allowed.add(self.eos)
        return sorted(allowed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.calls += 1
        rows, columns = [], []
        for n, generated in enumerate(input_ids[:, self.prompt_width:].tolist()):
            allowed = self.allowed_after(n // self.beams, generated)
            rows += [n] * len(allowed)
            columns += allowed
        rows, columns = torch.tensor(rows), torch.tensor(columns)
        out = torch.full_like(scores, decoding.NEG_INF)
        out[rows, columns] = scores[rows, columns]
        return out


def transformers_mask_cost(args: argparse.Namespace, constraint: ac.AnswerConstraint, problem: Problem,
                           vocab_size: int) -> float:
    """Seconds per call of the processor along the gold answers (then EOS) for the whole budget, the prefix
    growing one token a call, over batch x beams rows."""
    check_vocab(problem, vocab_size)
    tokens = torch.from_numpy(gold_walk(problem, args.beams, constraint.eos_token).T).long()
    prompts = torch.from_numpy(problem.prompts).long().repeat_interleave(args.beams, dim=0)
    input_ids = torch.cat([prompts, tokens], dim=1)
    processor = AnswerLogitsProcessor(constraint, problem.affixes, args.beams, prompts.shape[1], problem.budget)
    logits = torch.randn(tokens.shape[0], vocab_size)

    def loop() -> None:
        for t in range(tokens.shape[1]):
            processor(input_ids[:, :prompts.shape[1] + t], logits)

    return median_time(loop, args.mask_repeats) / tokens.shape[1]


def transformers_parts(args: argparse.Namespace, model: Any, problem: Problem, eos: int) -> dict[str, float]:
    """Seconds of the prefill alone (the prompts with their cue, batch x beams rows, last position's logits as
    `generate` asks) and per decoder step alone along the gold answers, with the KV cache."""
    prompts = torch.from_numpy(problem.prompts).long().repeat_interleave(args.beams, dim=0)
    mask = torch.from_numpy(problem.mask).long().repeat_interleave(args.beams, dim=0)
    tokens = torch.from_numpy(gold_walk(problem, args.beams, eos).T).long()

    def fill() -> Any:
        return model(input_ids=prompts, attention_mask=mask, use_cache=True, logits_to_keep=1).past_key_values

    def steps() -> float:
        past, step_mask = fill(), mask
        start = time.perf_counter()
        for t in range(tokens.shape[1]):
            step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)
            past = model(input_ids=tokens[:, t:t + 1], attention_mask=step_mask, past_key_values=past,
                         use_cache=True).past_key_values
        return (time.perf_counter() - start) / tokens.shape[1]

    with torch.inference_mode():
        prefill_s = median_time(fill, args.mask_repeats)
        steps()
        return {"prefill_s": prefill_s, "decoder_step_s": statistics.median(steps() for _ in range(args.mask_repeats))}


def time_transformers(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    setup_torch()
    _, constraint, problem = setup(args, workdir)
    model = transformers.LlamaForCausalLM.from_pretrained(os.path.join(workdir, "model")).eval()
    prompts, mask = torch.from_numpy(problem.prompts).long(), torch.from_numpy(problem.mask).long()
    processor = AnswerLogitsProcessor(constraint, problem.affixes, args.beams, prompts.shape[1], problem.budget)

    def call(output_scores: bool = False) -> Any:
        processor.calls = 0
        return model.generate(input_ids=prompts, attention_mask=mask, num_beams=args.beams,
                              max_new_tokens=problem.budget, length_penalty=args.length_penalty,
                              early_stopping="never" if args.early_stopping == "never" else False,
                              do_sample=False, logits_processor=transformers.LogitsProcessorList([processor]),
                              renormalize_logits=True, return_dict_in_generate=True, output_scores=output_scores,
                              pad_token_id=0, bos_token_id=1, eos_token_id=constraint.eos_token)

    scored = call(output_scores=True)  # untimed: keeping every step's scores costs a copy per step
    steps = processor.calls
    for _ in range(args.warmup):
        call()
    outputs: list[Any] = []
    times = [_timed(lambda: outputs.append(call())) for _ in range(args.repeats)]
    width = prompts.shape[1]
    result = {"times": times, "steps": steps, "sequences": outputs[-1].sequences[:, width:].tolist(),
              "scored_sequences": scored.sequences[:, width:].tolist(), "scores": scored.sequences_scores.tolist()}
    if args.worker_round == 0:
        result["mask_s_per_step"] = {str(v): transformers_mask_cost(args, constraint, problem, v)
                                     for v in mask_vocab_sizes(args)}
        result.update(transformers_parts(args, model, problem, constraint.eos_token))
    return result


# --------------------------------------------------------------------------------------------------- main

def framework_summary(runs: list[dict[str, Any]], sequences: list[list[int]], vocab_size: int) -> dict[str, Any]:
    """Throughput over every process's timed calls, and where a call's time goes (first process's timings)."""
    times = [t for r in runs for t in r["times"]]
    tokens = sum(map(len, sequences))
    median = statistics.median(times)
    first = runs[0]
    step_ms = 1e3 * (median - first["prefill_s"]) / first["steps"]
    decoder_ms, constraint_ms = 1e3 * first["decoder_step_s"], 1e3 * first["mask_s_per_step"][str(vocab_size)]
    return {**_median_pair(times), "tokens": tokens, "tokens_per_s": tokens / median, "times": times,
            "steps": first["steps"], "prefill_ms": 1e3 * first["prefill_s"],
            "per_step_ms": {"search_step": step_ms, "decoder_step": decoder_ms, "constraint": constraint_ms,
                            "rest": step_ms - decoder_ms - constraint_ms}}


def processor_free_ratio(kipjax: Mapping[str, Any], torch_side: Mapping[str, Any]) -> float:
    """An estimate of the ratio had the Python processor cost what the JAX constraint costs per step: how much of
    the ratio the processor's per-call parsing accounts for (the constraints alone, timed along gold answers)."""
    gap_ms = torch_side["per_step_ms"]["constraint"] - kipjax["per_step_ms"]["constraint"]
    extra_s = torch_side["steps"] * 1e-3 * gap_ms
    return kipjax["tokens_per_s"] / (torch_side["tokens"] / (torch_side["median_s"] - extra_s))


def differences(tokenizer: Any, sequences: Mapping[str, list[list[int]]], scores: Mapping[str, list[float]]
                ) -> list[dict[str, Any]]:
    """For each prompt whose best answers differ: where, both texts and scores, and which search did better."""
    out = []
    for i, (ours, theirs) in enumerate(zip(sequences["kipjax"], sequences["transformers"])):
        if ours == theirs:
            continue
        position = next((t for t, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        ours_score, theirs_score = scores["kipjax"][i], scores["transformers"][i]
        if abs(ours_score - theirs_score) <= 1e-4:
            why = "a near tie: both best scores agree within 1e-4, float rounding picks the winner"
        elif ours_score > theirs_score:
            why = "kipjax's answer scores higher: generate stopped or pruned before reaching it"
        else:
            why = "generate's answer scores higher: kipjax's search stopped or pruned before reaching it"
        out.append({"prompt": i, "first_difference": position, "why": why,
                    "kipjax": tokenizer.decode(ours), "transformers": tokenizer.decode(theirs),
                    "kipjax_score": ours_score, "transformers_score": theirs_score})
    return out


def answer_checks(tokenizer: Any, problem: Problem, sequences: list[list[int]], relations: Mapping[str, str]
                  ) -> dict[str, Any]:
    """Whether every answer ends with EOS and parses with no malformed part, and its facts per answer. Answers
    are parsed against the relation names as the word-level tokenizer decodes them (`spoken , written` for
    DocRED's `spoken, written`), which `parse_answer` otherwise counts as malformed."""
    eos = tokenizer.eos_token_id
    spelled = {r: tokenizer.decode(tokenizer(name, add_special_tokens=False)["input_ids"])
               for r, name in relations.items()}
    parsed = [parse_answer(tokenizer.decode(s[:-1]), doc, pairs, spelled)
              for s, (doc, pairs) in zip(sequences, problem.rows)]
    return {"valid": all(s[-1:] == [eos] and p.malformed == 0 for s, p in zip(sequences, parsed)),
            "facts_per_answer": [len(p.facts) for p in parsed]}


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = save_tokenizer(args, os.path.join(workdir, "tokenizer"))
        save_random_llama(args, os.path.join(workdir, "model"))
        runs: dict[str, list[dict[str, Any]]] = {"kipjax": [], "transformers": []}
        for r in range(args.rounds):
            for framework in runs:
                runs[framework].append(run_worker(framework, argv, workdir, r, args.kipjax_xla_flags, __file__))
        _, constraint, problem = setup(args, workdir)
    eos = constraint.eos_token
    best = {name: [until_eos(s, eos) for s in r[0]["scored_sequences"]] for name, r in runs.items()}
    scores = {name: r[0]["scores"] for name, r in runs.items()}
    # every call of every process (timed and scored) returned the same best answers
    repeatable = all(until_eos(s, eos) == b for name, framework_runs in runs.items() for r in framework_runs
                     for key in ("sequences", "scored_sequences") for s, b in zip(r[key], best[name]))
    diffs = differences(tokenizer, best, scores)
    for d in diffs:
        print(f"prompt {d['prompt']}: best answers differ from token {d['first_difference']} on ({d['why']})\n"
              f"  kipjax       {d['kipjax_score']:.6f}  {d['kipjax']}\n"
              f"  transformers {d['transformers_score']:.6f}  {d['transformers']}")
    kipjax = framework_summary(runs["kipjax"], best["kipjax"], args.vocab_size)
    torch_side = framework_summary(runs["transformers"], best["transformers"], args.vocab_size)
    checks = answer_checks(tokenizer, problem, best["kipjax"], relation_names(args))
    return {
        "same_outputs": not diffs, "repeatable": repeatable, "differences": diffs,
        "valid_answers": checks["valid"], "facts_per_answer": checks["facts_per_answer"],
        "best_scores": scores,
        "max_score_difference": max(abs(a - b) for a, b in zip(scores["kipjax"], scores["transformers"])),
        "budget": problem.budget, "prompt_lengths": problem.mask.sum(axis=1).tolist(),
        "gold_answer_lengths": [len(g) for g in problem.gold],
        "kipjax": {**kipjax, "compile_s": runs["kipjax"][0]["compile_s"]}, "transformers": torch_side,
        "throughput_ratio_kipjax_over_transformers": kipjax["tokens_per_s"] / torch_side["tokens_per_s"],
        "ratio_estimate_processor_at_jax_constraint_cost": processor_free_ratio(kipjax, torch_side),
        "mask_cost": mask_summary({k: v[0] for k, v in runs.items()}, args),
        "threads": {"jax": compute_threads(), "torch": compute_threads()},
        "sequences": best,
    }


def print_report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    print(f"Llama {args.layers} layers x {args.hidden} ({args.heads} heads, {args.kv_heads} KV heads, {args.mlp} "
          f"MLP), vocab {args.vocab_size}; {args.relations} relations; batch {args.batch_size} x {args.beams} beams, "
          f"prompts of {min(r['prompt_lengths'])}..{max(r['prompt_lengths'])} tokens, {args.pairs} pairs each, "
          f"budget {r['budget']} tokens, length_penalty {args.length_penalty}, early_stopping "
          f"{args.early_stopping}; {os.cpu_count()} CPU cores")
    print(f"same best answers: {r['same_outputs']} (max score difference {r['max_score_difference']:.2g}; "
          f"repeatable {r['repeatable']}); valid answers: {r['valid_answers']} (facts per answer "
          f"{r['facts_per_answer']}); steps: kipjax {r['kipjax']['steps']}, transformers "
          f"{r['transformers']['steps']}\n")
    print("| framework | call s (median) | min..max s | tokens | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name in ("kipjax", "transformers"):
        x = r[name]
        print(f"| {name} | {x['median_s']:.3f} | {x['min_s']:.3f}..{x['max_s']:.3f} | {x['tokens']} | "
              f"{x['tokens_per_s']:.1f} |")
    print(f"\nkipjax / transformers tokens/s: {r['throughput_ratio_kipjax_over_transformers']:.2f}x "
          f"(kipjax compile {r['kipjax']['compile_s']:.1f} s, not timed); about "
          f"{r['ratio_estimate_processor_at_jax_constraint_cost']:.2f}x had the processor cost what the JAX "
          f"constraint costs per step\n")
    print("| framework | prefill ms | ms per step: search step | decoder step alone | constraint alone | rest |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("kipjax", "transformers"):
        x = r[name]["per_step_ms"]
        print(f"| {name} | {r[name]['prefill_ms']:.1f} | {x['search_step']:.2f} | {x['decoder_step']:.2f} | "
              f"{x['constraint']:.3f} | {x['rest']:.2f} |")
    print_mask_cost(args, r)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return benchmark_main(argv, parse_args, time_kipjax, time_transformers, run, print_report)


if __name__ == "__main__":
    main()
