"""Constrained decoding of full linearizations (appendix E.1): a `kipjax.decoding.Constraint` in pure JAX.

Each beam row carries a small state: the position of the next source token, the stack of open mentions
(each one's first source position), whether a cluster identity is being written and how many of its tokens,
and (integer-free) how many clusters exist. The allowed set follows the appendix's three states:

- outside a mention: the next source token, `<m>`, or end-of-sequence once the whole source is copied;
- inside a mention: the next source token, `<m>`, and the mention's close (`|` with integer identities, one
  of `</m_0> .. </m_{l}>` when integer-free, l = clusters so far) once the innermost mention has a token;
- inside a cluster identity (integer identities only): integer tokens, then `</m>` after at least one.

Three refinements keep every output a complete annotation: `<m>` needs a source token left to cover,
mentions nest at most `max_depth` deep, and a row only opens a mention (or writes another digit of a cluster
number) while the steps left before the decoder's `max_length` still suffice to close everything and copy the
rest of the source; so no hypothesis is cut off half-written. With copy actions the model scores `<c>`, so the next source token takes `<c>`'s
logit and `<c>` itself is masked; integer-free, `</m_{l}>` (a new cluster) takes `<new>`'s logit likewise.
Masks are built with one pass over the vocabulary per step: linear in its size, no Python per token.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kipjax.decoding import NEG_INF
from kipjax.methods.coref.linearize import Symbols

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CorefState:
    source: Array  # [N, S] source token ids (padded)
    source_length: Array  # [N]
    position: Array  # [N] index of the next source token
    open_starts: Array  # [N, max_depth] first source position of each open mention, innermost at depth-1
    depth: Array  # [N]
    in_identity: Array  # [N] bool: between `|` and `</m>`
    identity_length: Array  # [N]
    num_clusters: Array  # [N] integer-free: clusters opened so far
    steps_left: Array  # [N] tokens the decoder may still emit (its max_length minus those emitted)


jax.tree_util.register_dataclass(CorefState, data_fields=[f.name for f in dataclasses.fields(CorefState)],
                                 meta_fields=[])


@dataclasses.dataclass(frozen=True)
class FullLinearizationConstraint:
    """Appendix E.1 for `identity` 'after' (integers after the mention, `| l </m>`) or 'free' (`</m_l>`), with
    'token' or 'copy' actions. `integer_tokens` are the ids cluster numbers are written with."""

    symbols: Symbols[int]
    vocab_size: int
    integer_tokens: Sequence[int] = ()
    identity: Literal["after", "free"] = "after"
    actions: Literal["token", "copy"] = "token"
    max_depth: int = 8
    max_identity_tokens: int = 4
    max_clusters: int = 0  # integer-free: how many </m_l> symbols the vocabulary has

    def __post_init__(self) -> None:
        if self.identity not in ("after", "free"):
            raise ValueError(f"identity must be 'after' or 'free' for full linearizations, got {self.identity!r}")
        if self.actions not in ("token", "copy"):
            raise ValueError(f"actions must be 'token' or 'copy', got {self.actions!r}")
        if self.identity == "after" and not self.integer_tokens:
            raise ValueError("integer identities need integer_tokens (the ids cluster numbers are written with)")
        if self.identity == "free" and self.max_clusters < 1:
            raise ValueError("integer-free decoding needs max_clusters >= 1 (the </m_l> symbols in the vocabulary)")

    def init_state(self, source: Array, source_length: Array, max_length: int) -> CorefState:
        """State of rows decoding `source` [N, S] (first `source_length` ids real) within `max_length` tokens."""
        rows = source.shape[0]
        zeros = jnp.zeros((rows,), jnp.int32)
        return CorefState(source=source.astype(jnp.int32), source_length=source_length.astype(jnp.int32),
                          position=zeros, open_starts=jnp.zeros((rows, self.max_depth), jnp.int32), depth=zeros,
                          in_identity=jnp.zeros((rows,), bool), identity_length=zeros, num_clusters=zeros,
                          steps_left=jnp.full((rows,), max_length, jnp.int32))

    def _close_cost(self) -> int:
        """Tokens that close an open mention: `| digit </m>`, or one `</m_l>`."""
        return 3 if self.identity == "after" else 1

    def _slack(self, state: CorefState) -> Array:
        """Steps left beyond the fewest that finish the row: copy the rest, close every mention, emit EOS."""
        identity_need = jnp.where(state.in_identity, jnp.where(state.identity_length > 0, 1, 2), 0)
        need = (state.source_length - state.position) + state.depth * self._close_cost() + identity_need + 1
        return state.steps_left - need

    def _cluster_end_ids(self) -> Array:
        return jnp.asarray([self.symbols.cluster_end(k) for k in range(self.max_clusters)], jnp.int32)

    def _next_source_token(self, state: CorefState) -> tuple[Array, Array]:
        remaining = state.position < state.source_length
        index = jnp.minimum(state.position, state.source.shape[1] - 1)
        return jnp.take_along_axis(state.source, index[:, None], axis=1)[:, 0], remaining

    def allowed(self, state: CorefState) -> Array:
        """[N, V] boolean mask of the tokens each row may produce next (copy / new redirection aside)."""
        rows = jnp.arange(state.position.shape[0])
        sym = self.symbols
        next_token, remaining = self._next_source_token(state)
        innermost = jnp.take_along_axis(state.open_starts, jnp.maximum(state.depth - 1, 0)[:, None], axis=1)[:, 0]
        inside = state.depth > 0
        can_close = inside & (state.position > innermost)
        writing = ~state.in_identity
        slack = self._slack(state)
        mask = jnp.zeros((rows.shape[0], self.vocab_size), bool)
        if self.identity == "after":
            integers = np.zeros(self.vocab_size, bool)
            integers[list(self.integer_tokens)] = True
            more_digits = (state.identity_length == 0) | ((state.identity_length < self.max_identity_tokens)
                                                          & (slack >= 1))
            mask = mask | (jnp.asarray(integers)[None] & (state.in_identity & more_digits)[:, None])
            mask = mask.at[rows, sym.mention_end].max(state.in_identity & (state.identity_length > 0))
            mask = mask.at[rows, sym.separator].max(writing & can_close)
        else:
            ends = self._cluster_end_ids()
            usable = jnp.arange(self.max_clusters)[None, :] <= state.num_clusters[:, None]
            mask = mask.at[rows[:, None], ends[None, :]].max(usable & can_close[:, None])
        mask = mask.at[rows, next_token].max(writing & remaining)
        mask = mask.at[rows, sym.mention_start].max(writing & remaining & (state.depth < self.max_depth)
                                                    & (slack >= 1 + self._close_cost()))
        return mask.at[rows, sym.eos].max(writing & ~remaining & ~inside)

    def process_logits(self, state: CorefState, logits: Array) -> Array:
        rows = jnp.arange(logits.shape[0])
        sym = self.symbols
        if self.actions == "copy":  # the next source token is scored as <c> (not where it is a cluster digit)
            next_token, remaining = self._next_source_token(state)
            redirect = remaining & ~state.in_identity
            logits = logits.at[rows, next_token].set(jnp.where(redirect, logits[:, sym.copy], logits[rows, next_token]))
            logits = logits.at[:, sym.copy].set(NEG_INF)
        if self.identity == "free":  # the next new cluster's </m_l> is scored as <new>
            new_end = self._cluster_end_ids()[jnp.minimum(state.num_clusters, self.max_clusters - 1)]
            redirect = state.num_clusters < self.max_clusters
            logits = logits.at[rows, new_end].set(jnp.where(redirect, logits[:, sym.new], logits[rows, new_end]))
            logits = logits.at[:, sym.new].set(NEG_INF)
        return jnp.where(self.allowed(state), logits, NEG_INF)

    def update(self, state: CorefState, tokens: Array) -> CorefState:
        sym = self.symbols
        rows = jnp.arange(tokens.shape[0])
        opens = (tokens == sym.mention_start) & ~state.in_identity
        if self.identity == "after":
            closes = (tokens == sym.separator) & ~state.in_identity
            identity_token = state.in_identity & (tokens != sym.mention_end)
            in_identity = jnp.where(closes, True, jnp.where(tokens == sym.mention_end, False, state.in_identity))
            identity_length = jnp.where(closes, 0, state.identity_length + identity_token.astype(jnp.int32))
            num_clusters = state.num_clusters
            special = opens | closes | state.in_identity
        else:
            ends = self._cluster_end_ids()
            is_end = tokens[:, None] == ends[None, :]
            closes = jnp.any(is_end, axis=1)
            num_clusters = jnp.where(closes, jnp.maximum(state.num_clusters, jnp.argmax(is_end, axis=1) + 1),
                                     state.num_clusters)
            in_identity, identity_length = state.in_identity, state.identity_length
            special = opens | closes
        copied = ~special & (tokens != sym.eos)
        slot = jnp.minimum(state.depth, self.max_depth - 1)
        open_starts = state.open_starts.at[rows, slot].set(jnp.where(opens, state.position,
                                                                     state.open_starts[rows, slot]))
        depth = state.depth + opens.astype(jnp.int32) - closes.astype(jnp.int32)
        return dataclasses.replace(state, position=state.position + copied.astype(jnp.int32), open_starts=open_starts,
                                   depth=depth, in_identity=in_identity, identity_length=identity_length,
                                   num_clusters=num_clusters, steps_left=state.steps_left - 1)
