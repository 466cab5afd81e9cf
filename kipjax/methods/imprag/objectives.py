"""ImpRAG's training objective J = J_gen + lambda * J_ret (5.2) and its two retrieval losses (5.3-5.6).

- J_gen: the causal LM loss over response tokens, the query reading its candidate passages C.
- Warmup J_ret (5.3): multi-label NCE. Each query's pseudo-positives P(q) (a teacher's top 5) are normalised
  against its hard negatives N_h(q) (teacher ranks 10-50) and the other queries' candidates in the (global)
  batch, the random negatives N_r(q): -sum_{p in P} log(e^s(q,p) / (e^s(q,p) + sum_{p' in N} e^s(q,p'))).
  An in-batch candidate that is the same passage as one of the query's own candidates is left out of N_r(q):
  it is not a negative (it may even be a positive).
- Self-distillation J_ret (5.4-5.6): KL(P_T || P_R) over C, P_T = softmax of log P_LM(r | p, q) / tau_T with
  log P_LM the mean log-probability of the response tokens (as Atlas's perplexity distillation, no gradient),
  P_R = softmax of s(q, p) / tau_R; the in-batch negatives are in P_R's normaliser with no teacher mass (see
  `self_distillation_loss`).
Rows of tasks that do not retrieve (instruction tuning, plain text) have no candidates and add nothing to
J_ret, which is averaged over the rows that retrieve.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from kipjax.retrieval.nce import masked_logsumexp, multilabel_nce_loss

Array = jax.Array


def response_log_likelihood(logits: Array, targets: Array, loss_mask: Array) -> Array:
    """(rows,) mean log-probability of the target tokens where `loss_mask` is 1 (0 for rows without any)."""
    log_probs = -optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    mask = loss_mask.astype(jnp.float32)
    return (log_probs * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def generation_loss(logits: Array, targets: Array, loss_mask: Array) -> Array:
    """J_gen: mean cross-entropy over every response token of the batch."""
    mask = loss_mask.astype(jnp.float32)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return (token_loss * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _mean_over_retrieving(row_loss_mean: Array, retrieving: Array) -> Array:
    """A batch mean over all B rows (rows without candidates contributing 0) as a mean over retrieving rows."""
    rows = retrieving.shape[0]
    return row_loss_mean * rows / jnp.maximum(retrieving.astype(jnp.float32).sum(), 1.0)


def _batch_columns(candidate_ids: Array, candidate_valid: Array) -> tuple[Array, Array]:
    """For queries (B) against every candidate of the batch (B * C columns, row j's candidates in block j):
    (is_own, valid), valid leaving out padding, rows that do not retrieve, and another row's candidate that is
    the same passage as one of the query's own (it is no negative; it may even be a positive)."""
    batch, count = candidate_ids.shape
    own = jnp.eye(batch, dtype=bool)[:, :, None]
    flat_ids, flat_valid = candidate_ids.reshape(-1), candidate_valid.reshape(-1).astype(bool)
    own_ids = jnp.where(candidate_valid, candidate_ids, -1)
    shared = jnp.any(flat_ids[None, None, :] == own_ids[:, :, None], axis=1)  # (B, B*C): one of my passages
    is_own = jnp.broadcast_to(own, (batch, batch, count)).reshape(batch, batch * count)
    retrieving = jnp.any(candidate_valid, axis=1)
    return is_own, flat_valid[None, :] & (is_own | ~shared) & retrieving[:, None]


def _batch_scores(query_embeddings: Array, candidate_embeddings: Array) -> Array:
    batch, count, dim = candidate_embeddings.shape
    return query_embeddings.astype(jnp.float32) @ candidate_embeddings.reshape(batch * count, dim).T.astype(
        jnp.float32)


def in_batch_nce_loss(query_embeddings: Array, candidate_embeddings: Array, candidate_ids: Array,
                      candidate_valid: Array, positive: Array) -> Array:
    """Warmup J_ret (5.3) over a batch: queries (B, D) against every candidate (B, C, D) of the batch.

    `candidate_ids` (B, C) name the passages (for leaving a query's own passages out of its random negatives),
    `candidate_valid` (B, C) marks real candidates (a row that does not retrieve has none), `positive` (B, C)
    the pseudo-positives. Mean over the rows that retrieve.
    """
    is_own, valid = _batch_columns(candidate_ids, candidate_valid)
    batch = candidate_ids.shape[0]
    gold = is_own & jnp.tile(positive.astype(bool), (1, batch)) & valid
    scores = _batch_scores(query_embeddings, candidate_embeddings)
    return _mean_over_retrieving(multilabel_nce_loss(scores, gold, valid), jnp.any(candidate_valid, axis=1))


def self_distillation_loss(query_embeddings: Array, candidate_embeddings: Array, candidate_ids: Array,
                           candidate_valid: Array, log_likelihoods: Array, teacher_temperature: float,
                           retriever_temperature: float, in_batch: bool = True) -> Array:
    """Self-distillation J_ret (5.6): KL(P_T || P_R), P_T the softmax over a row's own candidates of the (B, C)
    response log-likelihoods / tau_T (gradient stopped), P_R the softmax of the retrieval scores / tau_R.

    With `in_batch`, P_R normalises over the other rows' candidates too, as C holds the in-batch negatives
    N_r(q) in both phases (5.3.2.1), and they get no teacher mass: their likelihoods are not computed (B times
    the cost), a random passage being taken as no help to the response. Without in-batch candidates a reader
    that cannot yet tell its candidates apart gives a flat P_T, which the retriever matches by flattening its
    scores, and the whole corpus's ranking collapses (seen on the demo). Mean over retrieving rows."""
    own_valid = candidate_valid.astype(bool)
    retrieving = jnp.any(own_valid, axis=1)
    teacher = jax.lax.stop_gradient(log_likelihoods.astype(jnp.float32)) / teacher_temperature
    teacher_norm = jnp.where(retrieving, masked_logsumexp(teacher, own_valid), 0.0)
    log_p_teacher = jnp.where(own_valid, teacher - teacher_norm[:, None], 0.0)
    own_scores = jnp.einsum("bd,bcd->bc", query_embeddings.astype(jnp.float32),
                            candidate_embeddings.astype(jnp.float32)) / retriever_temperature
    if in_batch:
        _, valid = _batch_columns(candidate_ids, candidate_valid)
        normaliser = masked_logsumexp(_batch_scores(query_embeddings, candidate_embeddings) / retriever_temperature,
                                      valid)
    else:
        normaliser = masked_logsumexp(own_scores, own_valid)
    log_p_retriever = own_scores - jnp.where(retrieving, normaliser, 0.0)[:, None]
    terms = jnp.exp(log_p_teacher) * (log_p_teacher - log_p_retriever)
    per_row = jnp.sum(jnp.where(own_valid, terms, 0.0), axis=-1)
    return jnp.sum(per_row) / jnp.maximum(retrieving.astype(jnp.float32).sum(), 1.0)
