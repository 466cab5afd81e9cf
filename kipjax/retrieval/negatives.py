"""Negative examples for NCE (chapter 3, sec. 3.5.3): hard, random and mixed-p.

Hard negatives are drawn from eq. 3.9: K-1 distinct non-gold labels, without replacement, with probability
proportional to exp(score). Perturbing every score with iid Gumbel(0, 1) noise and taking the top-k gives
exactly that sequential (Plackett-Luce) sample, and it decomposes over chunks: a streaming top-k over a huge
entity table perturbs each chunk with `gumbel_perturb` (a fresh key per chunk, e.g. `jax.random.fold_in(rng,
chunk)`), keeps each chunk's top-k and merges, which samples the same distribution as one `sample_hard_negatives`
call over the whole table. Greedy top-k (`topk_negatives`) is the Gillick et al. variant.

Shapes are static, so what can be checked up front is: `num` against the table size, and, when the exclusion
mask is concrete (not traced), against each row's number of allowed candidates. Under jit a row with fewer
than `num` allowed candidates is padded with -1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _check_num(num: int, exclude: Array) -> None:
    num_candidates = exclude.shape[-1]
    if not 0 < num <= num_candidates:
        raise ValueError(f"need 0 < num <= {num_candidates} candidates per row, got num={num}")
    if isinstance(exclude, jax.core.Tracer):
        return
    fewest_allowed = int(np.min(np.sum(~np.asarray(exclude, bool), axis=-1)))
    if fewest_allowed < num:
        raise ValueError(f"num={num} negatives requested, but some row has only {fewest_allowed} candidates "
                         f"that are not excluded")


def gumbel_perturb(rng: Array, scores: Array) -> Array:
    """scores + iid Gumbel(0, 1) noise (float32); the top-k of the result is a sample without replacement."""
    return scores.astype(jnp.float32) + jax.random.gumbel(rng, scores.shape, jnp.float32)


def topk_negatives(scores: Array, exclude: Array, num: int) -> Array:
    """The `num` highest-scoring non-excluded candidates per row, best first: scores [B, N], exclude bool [B, N]
    -> int32 [B, num]. Entries that would have to be excluded candidates are -1 (only possible under jit)."""
    _check_num(num, exclude)
    masked = jnp.where(exclude, -jnp.inf, scores.astype(jnp.float32))
    values, indices = jax.lax.top_k(masked, num)
    return jnp.where(values == -jnp.inf, -1, indices).astype(jnp.int32)


def sample_hard_negatives(rng: Array, scores: Array, exclude: Array, num: int) -> Array:
    """`num` distinct non-excluded candidates per row drawn without replacement with probability proportional to
    exp(score) (eq. 3.9, Gumbel top-k), in draw order: scores [B, N], exclude bool [B, N] -> int32 [B, num]."""
    return topk_negatives(gumbel_perturb(rng, scores), exclude, num)


def sample_random_negatives(rng: Array, gold: Array, num_entities: int, num: int) -> Array:
    """`num` iid uniform draws per row from the KB minus that row's golds, without materialising [B, N].

    gold: int [B] or [B, G] with -1 padding (duplicates allowed). Each row draws r uniformly from
    [0, N - G_b), G_b its number of distinct golds, and maps r to the r-th non-gold id: r plus the number of
    sorted golds g_(i) with g_(i) - i <= r (g_(i) - i counts the non-golds below g_(i)). -> int32 [B, num].
    """
    gold = jnp.asarray(gold, jnp.int32)
    if gold.ndim == 1:
        gold = gold[:, None]
    if num <= 0 or num_entities <= gold.shape[1]:
        raise ValueError(f"need num > 0 and num_entities > gold slots per row; got num={num}, "
                         f"num_entities={num_entities}, {gold.shape[1]} gold slots")
    in_range = (gold >= 0) & (gold < num_entities)
    ordered = jnp.sort(jnp.where(in_range, gold, num_entities), axis=-1)  # padding sorts last
    first = jnp.concatenate([jnp.ones_like(ordered[:, :1], bool), ordered[:, 1:] != ordered[:, :-1]], axis=-1)
    distinct = first & (ordered < num_entities)
    rank = jnp.cumsum(distinct, axis=-1) - 1  # i of g_(i) among distinct golds
    num_golds = jnp.sum(distinct, axis=-1, keepdims=True)
    r = jax.random.randint(rng, (gold.shape[0], num), 0, num_entities - num_golds, dtype=jnp.int32)
    below = distinct[:, None, :] & ((ordered - rank)[:, None, :] <= r[:, :, None])
    return (r + jnp.sum(below, axis=-1)).astype(jnp.int32)


def mix_negatives(hard: Array, random: Array, p: float) -> Array:
    """Mixed-p negatives [B, K-1]: the leading round(p (K-1)) hard ones, then random ones.

    Random negatives that repeat a kept hard one, or an earlier random one, are moved behind the others, so
    collisions only remain when `random` has too few distinct non-colliding entries (it has enough whenever its
    own K-1 entries are distinct, since at most round(p (K-1)) of them can collide with the kept hard ones).
    """
    if hard.shape != random.shape:
        raise ValueError(f"hard and random negatives must have one shape, got {hard.shape} and {random.shape}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    num = hard.shape[-1]
    num_hard = int(round(p * num))
    kept_hard = hard[:, :num_hard]
    in_hard = jnp.any(random[:, :, None] == kept_hard[:, None, :], axis=-1)
    earlier = jnp.tril(jnp.ones((num, num), bool), k=-1)
    repeated = jnp.any((random[:, :, None] == random[:, None, :]) & earlier, axis=-1)
    order = jnp.argsort(in_hard | repeated, axis=-1, stable=True)
    kept_random = jnp.take_along_axis(random, order, axis=-1)[:, :num - num_hard]
    return jnp.concatenate([kept_hard, kept_random], axis=-1).astype(jnp.int32)


def sample_from_pool(rng: Array, pool: Array, num: int, fallback: Array) -> Array:
    """`num` entries per row drawn uniformly without replacement from `pool` [B, P] (-1 = empty slot): the
    pool's entries in the order of iid uniform keys. Rows with fewer than `num` entries are topped up from
    `fallback` [B, num] (e.g. random negatives). -> int32 [B, num]."""
    keys = jnp.where(pool >= 0, jax.random.uniform(rng, pool.shape), -1.0)
    order = jnp.argsort(-keys, axis=-1)[:, :num]
    drawn = jnp.take_along_axis(pool, order, axis=-1)
    if drawn.shape[1] < num:
        drawn = jnp.pad(drawn, ((0, 0), (0, num - drawn.shape[1])), constant_values=-1)
    return jnp.where(drawn >= 0, drawn, fallback).astype(jnp.int32)


def gold_slots_then(golds: Array, drawn: Array) -> tuple[Array, Array, Array]:
    """Candidate rows [B, G + N]: the gold slots ([B, G], -1 padded), then the negatives `drawn` [B, N]; with
    the gold mask and the valid mask (padded gold slots are invalid, their row 0 a placeholder)."""
    present = golds >= 0
    rows = jnp.concatenate([jnp.maximum(golds, 0), drawn], axis=1)
    gold = jnp.concatenate([present, jnp.zeros_like(drawn, bool)], axis=1)
    return rows, gold, jnp.concatenate([present, jnp.ones_like(drawn, bool)], axis=1)
