"""The general score function of chapter 3 (eq. 3.10) and the architectures it generates.

    s(x, y) = 1_m^T Q_m^T K_m' Attn(K_m'^T Q_m)

Q_m (m query vectors, which double as values) and K_m' (m' keys) come from the mention encoding E(x) and the
entity encoding F(y); the *direction* says which side is the query. Attn is column-wise over the keys:
Soft (softmax) or Hard (one-hot argmax). Read per query column t, the score is

    s(x, y) = sum_t sum_j Attn(A_t)_j A_jt,   A = K_m'^T Q_m,

so it depends on the encodings only through the similarity matrix A; `general_score` computes exactly that,
with padding masks (a masked query column contributes 0, a masked key is never attended to or maxed over).

Each side is *reduced* independently (`ScoreHead.reduce_mention` / `ScoreHead.reduce_entity`), so entity-side
vectors can be computed once for the whole KB, cached, and scored against any mention with `pairwise_scores`.

Instances (`kind`):
    dual     x->y, m = m' = 1 (leftmost)                     E_1^T F_1
    multi    x->y, m = 1, m' = num_vectors leftmost, Hard     max_t' E_1^T F_t'
    som      x->y, all tokens on both sides, Hard             sum_t max_t' E_t^T F_t'
    poly     y->x, query F_1, keys = codes, Soft              F_1^T C(x, y)
    genpoly  y->x, query F_1..F_m (m = num_vectors), keys = codes, Soft   1_m^T F_1:m^T C_m(x, y)  (app. A.2)
where the code reduction is K = E Soft(E^T O) with learned codes O (one column per code) and
C(x, y) = K Soft(K^T F) is the code-attended mention summary.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array

ATTENTIONS = ("hard", "soft")


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """The design choices of eq. 3.10 that define one architecture.

    query_side: 'mention' (direction x->y) or 'entity' (direction y->x).
    attention: 'hard' or 'soft'.
    mention_reduction / entity_reduction: 'first' (leftmost vector), 'leftmost' (num_vectors leftmost vectors),
        'all' (every token) or 'codes' (K = E Soft(E^T O), mention side only).
    """

    query_side: str
    attention: str
    mention_reduction: str
    entity_reduction: str


SCORE_SPECS: dict[str, ScoreSpec] = {
    "dual": ScoreSpec("mention", "hard", "first", "first"),
    "multi": ScoreSpec("mention", "hard", "first", "leftmost"),
    "som": ScoreSpec("mention", "hard", "all", "all"),
    "poly": ScoreSpec("entity", "soft", "codes", "first"),
    "genpoly": ScoreSpec("entity", "soft", "codes", "leftmost"),
}


def score_spec(kind: str) -> ScoreSpec:
    """The spec of a named architecture; a clear error for an unknown name."""
    if kind not in SCORE_SPECS:
        raise ValueError(f"unknown score kind {kind!r}; expected one of {sorted(SCORE_SPECS)}")
    return SCORE_SPECS[kind]


def general_score(query: Array, query_mask: Array, keys: Array, key_mask: Array, attention: str) -> Array:
    """Eq. 3.10 for one (query, key) pair: query [m, H], keys [m', H], masks bool [m], [m'] -> float32 scalar.

    Similarities are accumulated in float32 so a bf16 encoder does not lose ranking precision. A query column
    with no valid key contributes 0 (e.g. an all-padding row of a chunked entity table).
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTIONS}")
    sim = jnp.einsum("th,sh->ts", query, keys, preferred_element_type=jnp.float32)  # A^T: [m, m']
    key_mask = jnp.broadcast_to(key_mask[None, :], sim.shape)
    masked = jnp.where(key_mask, sim, jnp.finfo(sim.dtype).min)
    if attention == "hard":
        per_query = jnp.max(masked, axis=-1)
    else:
        weights = jax.nn.softmax(masked, axis=-1)
        per_query = jnp.sum(weights * jnp.where(key_mask, sim, 0.0), axis=-1)
    per_query = jnp.where(jnp.any(key_mask, axis=-1) & query_mask, per_query, 0.0)
    return jnp.sum(per_query)


def _oriented_pair_score(spec: ScoreSpec) -> Callable[[Array, Array, Array, Array], Array]:
    """(mention_vecs, mention_mask, entity_vecs, entity_mask) -> scalar, with query/key chosen by direction."""

    def pair_score(mention_vecs: Array, mention_mask: Array, entity_vecs: Array, entity_mask: Array) -> Array:
        if spec.query_side == "mention":
            return general_score(mention_vecs, mention_mask, entity_vecs, entity_mask, spec.attention)
        return general_score(entity_vecs, entity_mask, mention_vecs, mention_mask, spec.attention)

    return pair_score


def pairwise_scores(kind: str, mention_vecs: Array, mention_mask: Array, entity_vecs: Array,
                    entity_mask: Array) -> Array:
    """Every mention against every entity: [B, mx, H], [B, mx], [N, my, H], [N, my] -> float32 [B, N].

    Meant for (chunks of) a cached entity table; memory is O(B * N * mx * my).
    """
    pair = _oriented_pair_score(score_spec(kind))
    over_entities = jax.vmap(pair, in_axes=(None, None, 0, 0))
    return jax.vmap(over_entities, in_axes=(0, 0, None, None))(mention_vecs, mention_mask, entity_vecs,
                                                                entity_mask)


def candidate_scores(kind: str, mention_vecs: Array, mention_mask: Array, cand_vecs: Array,
                     cand_mask: Array) -> Array:
    """Each mention against its own candidates: [B, mx, H], [B, mx], [B, C, my, H], [B, C, my] -> float32 [B, C]."""
    pair = _oriented_pair_score(score_spec(kind))
    over_candidates = jax.vmap(pair, in_axes=(None, None, 0, 0))
    return jax.vmap(over_candidates)(mention_vecs, mention_mask, cand_vecs, cand_mask)


class ScoreHead(nn.Module):
    """Reduces mention / entity encodings to the vectors an architecture scores, and scores candidates.

    Attributes:
        kind: 'dual' | 'poly' | 'multi' | 'som' | 'genpoly' (see the module docstring).
        num_vectors: multi / genpoly: how many leftmost entity vectors (fewer if the sequence is shorter);
            poly: the number of codes. Unused by dual and som.
        num_codes: number of codes for poly / genpoly; defaults to num_vectors.
        dtype: compute dtype of the code reduction.
        param_dtype: dtype of the codes O.
        codes_init: initializer of the codes, shape [num_codes, H].
    """

    kind: str = "dual"
    num_vectors: int = 1
    num_codes: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    codes_init: Callable[..., Array] = nn.initializers.normal(stddev=0.02)

    @property
    def spec(self) -> ScoreSpec:
        return score_spec(self.kind)

    def _leftmost(self, states: Array, mask: Array, reduction: str) -> tuple[Array, Array]:
        if reduction == "first":
            return states[:, :1], mask[:, :1]
        if reduction == "leftmost":
            return states[:, :self.num_vectors], mask[:, :self.num_vectors]
        return states, mask

    @nn.compact
    def reduce_mention(self, states: Array, mask: Array) -> tuple[Array, Array]:
        """Mention encodings [B, T, H], mask [B, T] -> (vectors [B, mx, H], mask [B, mx])."""
        mask = mask.astype(bool)
        if self.spec.mention_reduction != "codes":
            return self._leftmost(states, mask, self.spec.mention_reduction)
        num_codes = self.num_codes if self.num_codes is not None else self.num_vectors
        codes = self.param("codes", nn.with_logical_partitioning(self.codes_init, ("codes", "embed")),
                           (num_codes, states.shape[-1]), self.param_dtype)
        states = states.astype(self.dtype)
        logits = jnp.einsum("bth,ch->bct", states, codes.astype(self.dtype), preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, :], logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # Soft(E^T O), per code over tokens
        vecs = jnp.einsum("bct,bth->bch", weights, states)
        # An all-padding mention has no summary; its keys are masked so it scores 0.
        code_mask = jnp.broadcast_to(jnp.any(mask, axis=-1, keepdims=True), vecs.shape[:2])
        return vecs, code_mask

    def reduce_entity(self, states: Array, mask: Array) -> tuple[Array, Array]:
        """Entity encodings [N, T', H], mask [N, T'] -> (vectors [N, my, H], mask [N, my]); no parameters, cacheable."""
        return self._leftmost(states, mask.astype(bool), self.spec.entity_reduction)

    def __call__(self, mention_states: Array, mention_mask: Array, cand_states: Array, cand_mask: Array) -> Array:
        """Training scores: mentions [B, T, H] / [B, T] against candidates [B, C, T', H] / [B, C, T'] -> [B, C]."""
        mention_vecs, mention_vmask = self.reduce_mention(mention_states, mention_mask)
        batch, num_cands = cand_states.shape[:2]
        cand_vecs, cand_vmask = self.reduce_entity(cand_states.reshape(batch * num_cands, *cand_states.shape[2:]),
                                                   cand_mask.reshape(batch * num_cands, -1))
        return candidate_scores(self.kind, mention_vecs, mention_vmask,
                                cand_vecs.reshape(batch, num_cands, *cand_vecs.shape[1:]),
                                cand_vmask.reshape(batch, num_cands, -1))
