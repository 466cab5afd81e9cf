"""Contrastive losses over candidate scores (chapter 3): NCE (eq. 3.11), multi-label NCE (eq. 6.1, and the
all-golds and marginal variants of its ablation), bias-corrected NCE (eq. 3.5) and KL distillation from a
teacher.

Every loss takes scores [B, C] (float, any dtype; computed in float32), returns the mean over the batch, is
jit-compatible, and uses masked log-sum-exp so padded candidates (`valid` False) neither overflow nor leak into
a normaliser. Hard-negative NCE (eq. 3.6) is `nce_loss` applied to candidates whose negatives came from
`kipjax.retrieval.negatives`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _prepare(scores: Array, valid: Array | None) -> tuple[Array, Array]:
    """float32 scores with padded entries zeroed (so inf/NaN padding cannot poison gradients) and a bool mask."""
    scores = scores.astype(jnp.float32)
    if valid is None:
        return scores, jnp.ones(scores.shape, bool)
    valid = jnp.broadcast_to(valid.astype(bool), scores.shape)
    return jnp.where(valid, scores, 0.0), valid


def masked_logsumexp(x: Array, mask: Array, axis: int = -1) -> Array:
    """log sum_{mask} exp(x) along `axis`; -inf (with zero, not NaN, gradients) where the mask is empty."""
    finite = jnp.where(mask, x, -jnp.inf)
    shift = jax.lax.stop_gradient(jnp.max(finite, axis=axis, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    total = jnp.sum(jnp.where(mask, jnp.exp(finite - shift), 0.0), axis=axis)
    empty = ~jnp.any(mask, axis=axis)
    return jnp.where(empty, -jnp.inf, jnp.log(jnp.where(empty, 1.0, total)) + jnp.squeeze(shift, axis))


def nce_loss(scores: Array, valid: Array | None = None) -> Array:
    """Eq. 3.11: mean over the batch of -log softmax(scores)[0]; the gold is column 0 of scores [B, K].

    `valid` [B, K] bool drops padded candidates from the normaliser; column 0 must be valid.
    """
    scores, valid = _prepare(scores, valid)
    return jnp.mean(masked_logsumexp(scores, valid) - scores[:, 0])


def multilabel_nce_loss(scores: Array, gold_mask: Array, valid: Array | None = None) -> Array:
    """NCE with several golds per example, each normalised against the non-golds only.

    For each gold g of an example: -log(exp(s_g) / (exp(s_g) + sum_{non-gold valid c} exp(s_c))); the other
    golds are left out of g's normaliser so golds do not compete with one another. Summed over the example's
    golds, then averaged over the batch. An example with no gold contributes 0 (it still counts in the mean's
    denominator B). With one gold per example this is `nce_loss` with that gold moved to column 0.
    """
    scores, valid = _prepare(scores, valid)
    gold = gold_mask.astype(bool) & valid
    negatives_lse = masked_logsumexp(scores, valid & ~gold)[:, None]
    # -log(e^s / (e^s + e^n)) = softplus(n - s); n = -inf (no negatives) gives exactly 0.
    per_gold = jax.nn.softplus(negatives_lse - scores)
    return jnp.mean(jnp.sum(jnp.where(gold, per_gold, 0.0), axis=-1))


def all_golds_nce_loss(scores: Array, gold_mask: Array, valid: Array | None = None) -> Array:
    """Multi-label NCE with every candidate, the other golds included, in each gold's normaliser: the sum over
    an example's golds of -log softmax(scores)[g] (EntQA's "naive NCE" ablation of eq. 6.1)."""
    scores, valid = _prepare(scores, valid)
    gold = gold_mask.astype(bool) & valid
    per_gold = masked_logsumexp(scores, valid)[:, None] - scores
    return jnp.mean(jnp.sum(jnp.where(gold, per_gold, 0.0), axis=-1))


def marginal_nce_loss(scores: Array, gold_mask: Array, valid: Array | None = None) -> Array:
    """-log of the total softmax probability of an example's golds (marginal log-likelihood; EntQA's ablation
    of eq. 6.1); an example with no gold contributes 0."""
    scores, valid = _prepare(scores, valid)
    gold = gold_mask.astype(bool) & valid
    loss = masked_logsumexp(scores, valid) - masked_logsumexp(scores, gold)
    return jnp.mean(jnp.where(jnp.any(gold, axis=-1), loss, 0.0))


def bias_corrected_nce_loss(scores: Array, neg_log_q: Array, valid: Array | None = None) -> Array:
    """Eq. 3.5: NCE whose negative scores are shifted to s(x, y) - log((K-1) nu(y|x, y_1)).

    scores [B, K] (gold in column 0), neg_log_q [B, K-1] = -log nu(y_k|x, y_1) of the negatives under the
    distribution they were drawn from (iid). With a `valid` mask, K-1 is each example's number of valid
    negatives, i.e. the number actually drawn.
    """
    scores, valid = _prepare(scores, valid)
    num_negatives = jnp.maximum(jnp.sum(valid[:, 1:], axis=-1, keepdims=True), 1).astype(jnp.float32)
    shifted = scores[:, 1:] + neg_log_q.astype(jnp.float32) - jnp.log(num_negatives)
    return nce_loss(jnp.concatenate([scores[:, :1], shifted], axis=-1), valid)


def kl_distillation_loss(student_scores: Array, teacher_scores: Array, valid: Array | None = None) -> Array:
    """KL(softmax(teacher) || softmax(student)) over candidates [B, C], mean over the batch.

    The teacher is a fixed target: it is wrapped in `jax.lax.stop_gradient`, so only the student learns even
    when both share parameters.
    """
    student, valid = _prepare(student_scores, valid)
    teacher, _ = _prepare(jax.lax.stop_gradient(teacher_scores), valid)
    log_p_teacher = teacher - masked_logsumexp(teacher, valid)[:, None]
    log_p_student = student - masked_logsumexp(student, valid)[:, None]
    terms = jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student)
    return jnp.mean(jnp.sum(jnp.where(valid, terms, 0.0), axis=-1))
