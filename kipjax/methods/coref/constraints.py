"""Constrained decoding of linearizations (appendix E.1): `kipjax.decoding.Constraint`s in pure JAX.

`FullLinearizationConstraint` (E.1.1, E.1.3): each beam row carries a small state: the position of the next
source token, the stack of open mentions (each one's first source position), whether a cluster identity is
being written and how many of its tokens, and (integer-free) how many clusters exist. The allowed set follows
the appendix's three states:

- outside a mention: the next source token, `<m>`, or end-of-sequence once the whole source is copied;
- inside a mention: the next source token, `<m>`, and the mention's close (`|` with integer identities, one
  of `</m_0> .. </m_{l}>` when integer-free, l = clusters so far) once the innermost mention has a token;
- inside a cluster identity (integer identities only): integer tokens, then `</m>` after at least one.

Three refinements keep every output a complete annotation: `<m>` needs a source token left to cover,
mentions nest at most `max_depth` deep, and a row only opens a mention (or writes another digit of a cluster
number) while the steps left before the decoder's `max_length` still suffice to close everything and copy the
rest of the source; so no hypothesis is cut off half-written. With copy actions the model scores `<c>`, so the next source token takes `<c>`'s
logit and `<c>` itself is masked; integer-free, `</m_{l}>` (a new cluster) takes `<new>`'s logit likewise.

`PartialLinearizationConstraint` (E.1.2) does the same for partial linearizations with sentence markers,
where the source position is unknown and only the current sentence's tokens can be enforced (its docstring).

Masks are built with one pass over the vocabulary per step: linear in its size, no Python per token.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kipjax.decoding import NEG_INF, constraint_state
from kipjax.methods.coref.linearize import Symbols

Array = jax.Array
_INTEGER_CLOSE_COST = 3  # `| digit </m>`: the fewest tokens that close a mention with an integer identity


@constraint_state
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


@constraint_state
@dataclasses.dataclass(frozen=True)
class PartialCorefState:
    sentence_of: Array  # [N, S] sentence index of each source token, -1 at sentence markers and padding
    source: Array  # [N, S] source token ids, sentence markers included (padded)
    num_sentences: Array  # [N] sentences in the source
    sentence: Array  # [N] `<sentence>` emitted so far: the current (or last closed) sentence is sentence - 1
    in_sentence: Array  # [N] bool: between `<sentence>` and `</sentence>`
    depth: Array  # [N] open mentions whose `|` is still to come
    just_opened: Array  # [N] bool: the last token was `<m>`, so the innermost mention has no token yet
    in_identity: Array  # [N] bool: between `|` and `</m>`
    identity_length: Array  # [N]
    steps_left: Array  # [N] tokens the decoder may still emit (its max_length minus those emitted)


def _identity_need(state: CorefState | PartialCorefState) -> Array:
    """Fewest tokens that finish a cluster identity being written: a digit (if none yet) and `</m>`."""
    return jnp.where(state.in_identity, jnp.where(state.identity_length > 0, 1, 2), 0)


def _allow_identity(mask: Array, state: CorefState | PartialCorefState, slack: Array, symbols: Symbols[int],
                    integer_tokens: Sequence[int], max_identity_tokens: int) -> Array:
    """Inside a cluster identity: integer tokens (a second or later one only while slack and the cap allow it,
    so a number never runs past `max_length`), and `</m>` after at least one."""
    integers = np.zeros(mask.shape[1], bool)
    integers[list(integer_tokens)] = True
    more_digits = (state.identity_length == 0) | ((state.identity_length < max_identity_tokens) & (slack >= 1))
    mask = mask | (jnp.asarray(integers)[None] & (state.in_identity & more_digits)[:, None])
    rows = jnp.arange(mask.shape[0])
    return mask.at[rows, symbols.mention_end].max(state.in_identity & (state.identity_length > 0))


def _advance_identity(state: CorefState | PartialCorefState, tokens: Array,
                      symbols: Symbols[int]) -> tuple[Array, Array, Array]:
    """(closes, in_identity, identity_length) after `tokens`: `|` starts an identity, `</m>` ends it, and any
    other token in between is one of its digits."""
    closes = (tokens == symbols.separator) & ~state.in_identity
    identity_token = state.in_identity & (tokens != symbols.mention_end)
    in_identity = jnp.where(closes, True, jnp.where(tokens == symbols.mention_end, False, state.in_identity))
    identity_length = jnp.where(closes, 0, state.identity_length + identity_token.astype(jnp.int32))
    return closes, in_identity, identity_length


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
        return _INTEGER_CLOSE_COST if self.identity == "after" else 1

    def _slack(self, state: CorefState) -> Array:
        """Steps left beyond the fewest that finish the row: copy the rest, close every mention, emit EOS."""
        need = (state.source_length - state.position) + state.depth * self._close_cost() + _identity_need(state) + 1
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
            mask = _allow_identity(mask, state, slack, sym, self.integer_tokens, self.max_identity_tokens)
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
            closes, in_identity, identity_length = _advance_identity(state, tokens, sym)
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


@dataclasses.dataclass(frozen=True)
class PartialLinearizationConstraint:
    """Appendix E.1.2: partial linearization with sentence markers, integer identities after the mention and
    token actions (copy actions cannot skip the gaps between mentions).

    The source is `mark_sentences(sentences)`, the output `<sentence> (mentions of sentence i) </sentence>` for
    every sentence i, then EOS. Allowed next tokens:

    - between sentences: `<sentence>` while source sentences remain, EOS after the last;
    - inside sentence i, outside a mention: any token of source sentence i, `<m>` and `</sentence>`;
    - inside a mention: tokens of sentence i, `<m>`, and `|` once the innermost mention has a token;
    - inside a cluster identity: integer tokens, then `</m>` after at least one.

    Deviations from the appendix's text, so that every output parses as an annotation: `</sentence>` is not
    allowed inside a mention or an identity (the sentence would end with a mention left open, which the parser
    drops), nor are sentence tokens inside an identity (they would be read as its digits); `<m>` needs a
    non-empty sentence, and EOS comes only after the last sentence. As in the full constraint, mentions nest
    at most `max_depth` deep, a number has at most `max_identity_tokens` tokens, and the optional tokens (a
    sentence token that no open mention needs, `<m>`, a further digit) are allowed only while the steps left
    still suffice to close every mention and sentence, and write the remaining empty sentences and EOS. So
    with `max_length >= 2 * sentences + 1`, every hypothesis ends with EOS within `max_length`, one sentence
    group per source sentence, each mention closed with an identity inside its sentence.
    """

    symbols: Symbols[int]
    vocab_size: int
    integer_tokens: Sequence[int]
    max_depth: int = 8
    max_identity_tokens: int = 4

    def __post_init__(self) -> None:
        if not self.integer_tokens:
            raise ValueError("integer identities need integer_tokens (the ids cluster numbers are written with)")

    def init_state(self, source: Array, source_length: Array, max_length: int) -> PartialCorefState:
        """State of rows decoding `source` [N, S] (sentence-marked, first `source_length` ids real) within
        `max_length` tokens; each source token's sentence is its count of `<sentence>` markers so far."""
        rows, width = source.shape
        source = source.astype(jnp.int32)
        real = jnp.arange(width)[None, :] < source_length[:, None]
        starts = real & (source == self.symbols.sentence_start)
        opened = jnp.cumsum(starts, axis=1)
        closed = jnp.cumsum(real & (source == self.symbols.sentence_end), axis=1)
        content = real & ~starts & (opened > closed)
        zeros = jnp.zeros((rows,), jnp.int32)
        return PartialCorefState(sentence_of=jnp.where(content, opened - 1, -1).astype(jnp.int32), source=source,
                                 num_sentences=opened[:, -1].astype(jnp.int32), sentence=zeros,
                                 in_sentence=jnp.zeros((rows,), bool), depth=zeros,
                                 just_opened=jnp.zeros((rows,), bool), in_identity=jnp.zeros((rows,), bool),
                                 identity_length=zeros, steps_left=jnp.full((rows,), max_length, jnp.int32))

    def _slack(self, state: PartialCorefState) -> Array:
        """Steps left beyond the fewest that finish the row: a token for a mention just opened, close every
        mention and the current sentence, write each remaining sentence empty, emit EOS."""
        need = (state.just_opened.astype(jnp.int32) + state.depth * _INTEGER_CLOSE_COST + _identity_need(state)
                + state.in_sentence.astype(jnp.int32) + 2 * (state.num_sentences - state.sentence) + 1)
        return state.steps_left - need

    def allowed(self, state: PartialCorefState) -> Array:
        """[N, V] boolean mask of the tokens each row may produce next."""
        rows = jnp.arange(state.sentence.shape[0])
        sym = self.symbols
        slack = self._slack(state)
        just_opened = state.just_opened.astype(jnp.int32)
        writing = state.in_sentence & ~state.in_identity
        in_current = state.sentence_of == (state.sentence - 1)[:, None]  # [N, S] tokens of the current sentence
        mask = jnp.zeros((rows.shape[0], self.vocab_size), bool)
        mask = _allow_identity(mask, state, slack, sym, self.integer_tokens, self.max_identity_tokens)
        # A sentence token is optional unless a mention was just opened; `<m>` needs itself, a token and its close.
        content = writing & (slack + just_opened >= 1)
        mask = mask.at[rows[:, None], state.source].max(in_current & content[:, None])
        mask = mask.at[rows, sym.mention_start].max(
            writing & jnp.any(in_current, axis=1) & (state.depth < self.max_depth)
            & (slack + just_opened >= 2 + _INTEGER_CLOSE_COST))
        mask = mask.at[rows, sym.separator].max(writing & (state.depth > 0) & ~state.just_opened)
        mask = mask.at[rows, sym.sentence_end].max(writing & (state.depth == 0))
        remaining = state.sentence < state.num_sentences
        mask = mask.at[rows, sym.sentence_start].max(~state.in_sentence & remaining)
        return mask.at[rows, sym.eos].max(~state.in_sentence & ~remaining)

    def process_logits(self, state: PartialCorefState, logits: Array) -> Array:
        return jnp.where(self.allowed(state), logits, NEG_INF)

    def update(self, state: PartialCorefState, tokens: Array) -> PartialCorefState:
        sym = self.symbols
        closes, in_identity, identity_length = _advance_identity(state, tokens, sym)
        opens = (tokens == sym.mention_start) & ~state.in_identity
        starts = (tokens == sym.sentence_start) & ~state.in_sentence
        ends = (tokens == sym.sentence_end) & state.in_sentence & ~state.in_identity
        depth = state.depth + opens.astype(jnp.int32) - closes.astype(jnp.int32)
        return dataclasses.replace(state, sentence=state.sentence + starts.astype(jnp.int32),
                                   in_sentence=(state.in_sentence | starts) & ~ends, depth=depth, just_opened=opens,
                                   in_identity=in_identity, identity_length=identity_length,
                                   steps_left=state.steps_left - 1)
