"""The EntQA reader's training objective (eq. 6.2) and its span inference (sec. 6.2.3), on device.

Shapes: B passages, K candidates each, L input positions ([CLS] at 0, the passage's pieces at 1..n, then
the topic and the entity). `answer_mask` [B, K, L] marks the positions a span may start or end at: [CLS] and
the passage's pieces. A candidate absent from the passage has the [CLS] span (0, 0) as its only gold span.

Loss. The authors' code (`--type_span_loss sum_log --type_rank_loss sum_log`), the default `reduction='code'`:
for every candidate, the mean over its gold start positions of log p_start, likewise for the ends; for every
passage the mean over its gold candidates of log p_rerank; the three negated sums over candidates (and
passages) divided by 3. `reduction='chapter'` is eq. 6.2 as written: the plain sums of log p_start(s) +
log p_end(t) over the gold spans and of log p_rerank over the gold candidates. A passage without any gold
candidate in the KB adds no rerank term (the code divides 0 by 0 there). Both are averaged over the passages
(the code sums them; with Adam the scale does not matter).

Inference. p(s, t, k) = p_rerank(k) p_start(s) p_end(t) for 1 <= s <= t < s + max_answer_len, and the [CLS]
span (0, 0); per candidate, the spans more probable than (0, 0), best first, at most `top_p` of them (spans
starting at [CLS] but longer are not mentions and are never returned; the authors' code could return them).
`drop_nested` skips a span containing, or contained in, one already kept (the authors' `--filter_span`);
by default nested and overlapping mentions are kept.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kipjax.retrieval.nce import masked_logsumexp

REDUCTIONS = ("code", "chapter")


def _log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    logits = logits.astype(jnp.float32)
    return jnp.where(mask, logits - masked_logsumexp(logits, mask)[..., None], -jnp.inf)


def _gold_term(log_probs: jax.Array, gold: jax.Array, average: bool) -> jax.Array:
    """Per row (last axis): the sum, or the mean, of log_probs over its gold positions (0 for no gold)."""
    total = jnp.sum(jnp.where(gold, log_probs, 0.0), axis=-1)
    if not average:
        return total
    return total / jnp.maximum(jnp.sum(gold, axis=-1), 1)


def reader_loss(start_logits: jax.Array, end_logits: jax.Array, rerank_logits: jax.Array, answer_mask: jax.Array,
                gold_starts: jax.Array, gold_ends: jax.Array, gold_candidates: jax.Array,
                candidate_mask: jax.Array, reduction: str = "code") -> jax.Array:
    """The reader's loss (module docstring). start/end logits and the gold start/end masks [B, K, L]; rerank
    logits, gold candidates and valid candidates [B, K]."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reader loss reduction must be one of {REDUCTIONS}, got {reduction!r}")
    average = reduction == "code"
    answer_mask = answer_mask.astype(bool) & candidate_mask.astype(bool)[..., None]
    valid = candidate_mask.astype(bool)
    start = _gold_term(_log_softmax(start_logits, answer_mask), gold_starts.astype(bool) & answer_mask, average)
    end = _gold_term(_log_softmax(end_logits, answer_mask), gold_ends.astype(bool) & answer_mask, average)
    rerank = _gold_term(_log_softmax(rerank_logits, valid), gold_candidates.astype(bool) & valid, average)
    per_passage = -(jnp.sum(jnp.where(valid, start + end, 0.0), axis=-1) + rerank)
    return jnp.mean(per_passage / 3 if average else per_passage)


def span_log_probs(start_logits: jax.Array, end_logits: jax.Array, rerank_logits: jax.Array, answer_mask: jax.Array,
                   candidate_mask: jax.Array, max_answer_len: int = 10) -> jax.Array:
    """[B, K, L, L]: log p(s, t, k) (module docstring), -inf where (s, t) is not an admissible span."""
    answer_mask = answer_mask.astype(bool) & candidate_mask.astype(bool)[..., None]
    start = _log_softmax(start_logits, answer_mask)
    end = _log_softmax(end_logits, answer_mask)
    rerank = _log_softmax(rerank_logits, candidate_mask.astype(bool))
    length = start.shape[-1]
    s, t = np.arange(length)[:, None], np.arange(length)[None, :]
    admissible = ((s >= 1) & (s <= t) & (t < s + max_answer_len)) | ((s == 0) & (t == 0))
    scores = rerank[..., None, None] + start[..., :, None] + end[..., None, :]
    return jnp.where(jnp.asarray(admissible), scores, -jnp.inf)


def top_spans(log_probs: jax.Array, count: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The `count` most probable spans of every candidate: (log p, start, end), each [B, K, count], best first
    (ties to the lower flat index)."""
    length = log_probs.shape[-1]
    best, flat = jax.lax.top_k(log_probs.reshape(*log_probs.shape[:-2], length * length), count)
    return best, flat // length, flat % length


def select_spans(log_probs: np.ndarray, starts: np.ndarray, ends: np.ndarray, top_p: int = 3,
                 drop_nested: bool = False) -> np.ndarray:
    """Which of `top_spans`' ranked spans ([B, K, count]) are kept: those ranked above (0, 0), at most `top_p`
    per candidate, optionally without nested ones (bool [B, K, count]). Ask `top_spans` for top_p + 1 spans
    (more with `drop_nested`, which may skip some)."""
    stop = ((starts == 0) & (ends == 0)) | ~np.isfinite(log_probs)
    before = np.cumsum(stop, axis=-1) == 0
    if not drop_nested:
        return before & (np.cumsum(before, axis=-1) <= top_p)
    keep = np.zeros_like(before)
    for b, k in zip(*np.nonzero(before.sum(-1) > 0)):  # only candidates with a span before (0, 0)
        kept: list[tuple[int, int]] = []
        for i in np.flatnonzero(before[b, k]):
            s, t = starts[b, k, i], ends[b, k, i]
            if len(kept) == top_p:
                break
            if not any(s <= a <= c <= t or a <= s <= t <= c for a, c in kept):
                kept.append((s, t))
                keep[b, k, i] = True
    return keep
