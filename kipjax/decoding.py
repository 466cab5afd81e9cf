"""Beam search in one jit-compiled `lax.while_loop`; with one beam and length_penalty 0 it is greedy search.

The model is a step function `(cache, tokens [N]) -> (logits [N, V], cache)` over N = batch x beams rows;
every non-scalar cache leaf must carry those rows on axis 0, so beams can be reordered by a gather, except
leaves named beam-invariant (`beam_invariant_cache`), which are never reordered and may hold one row per batch
item (a prompt's keys/values that all its beams read: `llama.share_prompt_cache`). A
`Constraint` turns the decoder into a constrained one without any Python work per token: its state is an
array pytree with the same rows, `process_logits` masks (or redirects) the logits of each row, and `update`
advances the state by the chosen tokens. Both run inside the compiled loop. Masks should use the finite
`NEG_INF` and leave at least one token allowed per row.

Scores follow Hugging Face's beam search: a hypothesis' score is its summed log-probability divided by
(generated length, end-of-sequence included) ** length_penalty; each step takes the best 2 x beams
continuations, those ending in EOS among the first `beams` become finished hypotheses, and the best `beams`
others stay alive. Hypotheses still alive at `max_length` are finalised as they are. The loop stops early
once no alive beam can beat the worst finished one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from kipjax import topk

Array = jax.Array
StepFn = Callable[[Any, Array], tuple[Array, Any]]
NEG_INF = -1.0e9  # finite, so sums of masked scores stay ordered and never produce NaN


class Constraint(Protocol):
    """Per-row decoding constraint (see the module docstring)."""

    def process_logits(self, state: Any, logits: Array) -> Array:
        ...

    def update(self, state: Any, tokens: Array) -> Any:
        ...


def constraint_state(cls: type) -> type:
    """Class decorator registering a (frozen) dataclass of arrays as a pytree, so beam search can carry a
    constraint's state through its loop and reorder its rows with `gather_rows`."""
    jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in dataclasses.fields(cls)], meta_fields=[])
    return cls


class BeamSearchOutput(NamedTuple):
    sequences: Array  # [batch, beams, max_length] generated tokens (no start token), pad after EOS
    scores: Array  # [batch, beams] length-penalised log-probabilities, best first


def repeat_for_beams(tree: Any, beam_size: int) -> Any:
    """Repeats every non-scalar leaf's rows `beam_size` times (row b -> rows b*beams ... b*beams+beams-1)."""
    return jax.tree_util.tree_map(lambda x: jnp.repeat(x, beam_size, axis=0) if jnp.ndim(x) else x, tree)


def gather_rows(tree: Any, rows: Array, keep: Callable[[tuple], bool] | None = None) -> Any:
    """`x[rows]` for every non-scalar leaf: reorders caches and constraint states after beam selection. Leaves
    whose key path `keep` accepts stay as they are (caches equal across one item's beams, e.g. T5's
    cross-attention keys, since beams are only ever reordered within their item)."""
    def take(path: tuple, x: Any) -> Any:
        if not jnp.ndim(x) or (keep is not None and keep(path)):
            return x
        return x.at[rows].get(mode="promise_in_bounds")  # rows come from top-k: no bounds select needed
    return jax.tree_util.tree_map_with_path(take, tree)


def _length_penalised(log_probs: Array, length: Array | int, length_penalty: float) -> Array:
    return log_probs / jnp.asarray(length, jnp.float32) ** length_penalty


def beam_search(step_fn: StepFn, cache: Any, *, batch_size: int, beam_size: int, max_length: int,
                start_token: int | Array, eos_token: int, pad_token: int = 0, length_penalty: float = 1.0,
                constraint: Constraint | None = None, constraint_state: Any = None,
                beam_invariant_cache: Callable[[tuple], bool] | None = None) -> BeamSearchOutput:
    """Beam search over `step_fn`; `cache` and `constraint_state` already have batch x beams rows.
    `beam_invariant_cache(path)` names cache leaves equal across one item's beams, which are never reordered.

    `start_token` is one token for every row or a (batch_size,) array, one per batch item (e.g. the last token
    of each prompt when prompts end differently).

    Traceable: call it inside `jax.jit` (with `step_fn` closing over the params) to compile the whole search.
    """
    b, k, n = batch_size, beam_size, batch_size * beam_size
    starts = jnp.broadcast_to(jnp.asarray(start_token, jnp.int32).reshape(-1, 1), (b, k))
    seqs = jnp.full((b, k, max_length + 1), pad_token, jnp.int32).at[:, :, 0].set(starts)
    alive_scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))  # one live beam at first
    finished_seqs = jnp.full((b, k, max_length + 1), pad_token, jnp.int32)
    finished_scores = jnp.full((b, k), NEG_INF, jnp.float32)
    batch_rows = jnp.arange(b)[:, None]

    def merge_finished(finished_seqs, finished_scores, new_seqs, new_scores):
        all_seqs = jnp.concatenate([finished_seqs, new_seqs], axis=1)
        all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        top_scores, top = jax.lax.top_k(all_scores, k)
        return all_seqs[batch_rows, top], top_scores

    def step(carry):
        i, seqs, alive_scores, finished_seqs, finished_scores, cache, cstate, _ = carry
        logits, cache = step_fn(cache, seqs[:, :, i].reshape(n))
        logits = logits.astype(jnp.float32)
        if constraint is not None:
            logits = constraint.process_logits(cstate, logits)
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits).reshape(b, k, vocab) + alive_scores[:, :, None]
        top_scores, top = topk.top_k(log_probs.reshape(b, k * vocab), 2 * k)
        origin, tokens = top // vocab, (top % vocab).astype(jnp.int32)
        candidates = seqs[batch_rows, origin].at[:, :, i + 1].set(tokens)
        is_eos = tokens == eos_token
        valid = top_scores > NEG_INF / 2  # not a continuation of an empty beam slot or of a masked token
        length = i + 1  # generated tokens including this one

        # Candidates ending in EOS among the best `k` finish; the best `k` others stay alive.
        just_finished = is_eos & valid & (jnp.arange(2 * k) < k)[None, :]
        finished_seqs, finished_scores = merge_finished(
            finished_seqs, finished_scores, candidates,
            jnp.where(just_finished, _length_penalised(top_scores, length, length_penalty), NEG_INF))
        alive_top_scores, alive_pick = jax.lax.top_k(jnp.where(is_eos | ~valid, NEG_INF, top_scores), k)
        seqs = candidates[batch_rows, alive_pick]
        alive_scores = alive_top_scores
        if k > 1:  # one beam only ever continues itself: no reordering (a whole-cache copy a step)
            rows = (jnp.arange(b)[:, None] * k + origin[batch_rows, alive_pick]).reshape(n)
            cache = gather_rows(cache, rows, beam_invariant_cache)
            cstate = gather_rows(cstate, rows)
        if constraint is not None:
            cstate = constraint.update(cstate, seqs[:, :, i + 1].reshape(n))

        # Done when every batch item has k finished hypotheses and no alive beam can still beat the worst.
        best_possible = _length_penalised(alive_scores[:, 0], max_length if length_penalty > 0 else length,
                                          length_penalty)
        done = jnp.all((finished_scores[:, -1] > NEG_INF / 2) & (best_possible <= finished_scores[:, -1]))
        return i + 1, seqs, alive_scores, finished_seqs, finished_scores, cache, cstate, done

    def not_done(carry):
        return (carry[0] < max_length) & ~carry[-1]

    carry = (jnp.array(0, jnp.int32), seqs, alive_scores, finished_seqs, finished_scores, cache, constraint_state,
             jnp.array(False))
    i, seqs, alive_scores, finished_seqs, finished_scores, *_ = jax.lax.while_loop(not_done, step, carry)
    # Beams alive when the length ran out are finalised as they are (they only enter if they rank).
    still_alive = jnp.where(alive_scores > NEG_INF / 2, _length_penalised(alive_scores, i, length_penalty), NEG_INF)
    still_alive = jnp.where(i >= max_length, still_alive, NEG_INF)
    finished_seqs, finished_scores = merge_finished(finished_seqs, finished_scores, seqs, still_alive)
    return BeamSearchOutput(sequences=finished_seqs[:, :, 1:], scores=finished_scores)
