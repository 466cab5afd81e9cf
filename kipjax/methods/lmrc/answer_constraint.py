"""Constrained decoding of LMRC answers: a `kipjax.decoding.Constraint` in pure JAX under which every decoded
answer is well formed for its row's pair list (the format of `kipjax.methods.lmrc.prompts`):

  for each listed pair i in order, one or more triples  `( head_i |` RELATION `| tail_i )`,  then EOS,

where the `( head |` prefix and `| tail )` suffix tokens are forced (copied from the row's pair list) and
RELATION is exactly one of the relation names' token sequences or `none`, read from a token trie shared by all
rows. A pair may get several relations, each at most once, or `none` alone: after `)` the row may start
another triple for the same pair (unless its relation was `none` or every relation is used) or the first
triple of the next pair; after the last pair's triple it may also end with EOS, and EOS is allowed nowhere
else.

The two continuations after `)` usually share tokens (consecutive pairs often share the head, so even the
relation slot can be shared), so a triple is tracked as two candidates, SAME (another triple for the current
pair) and NEXT (the next pair), each with its own phase (prefix, relation, suffix), position in the forced
tokens and trie state; the allowed set is the union of the live candidates' tokens, and a token keeps alive
the candidates that allow it. When a candidate writes its `)` the triple is committed to it (SAME first, as
`prompts.parse_answer` prefers the earliest pair at or after the current one when names coincide).

Length budget: a token is allowed only if the fewest tokens that then finish the answer still fit in the steps
left before `max_length`: the rest of the current triple with the shortest relation still allowed for it, one
triple with the shortest relation name per remaining pair, and EOS. So with `max_length >=
minimal_length(...)` every hypothesis ends with EOS within `max_length`. (Shorter limits leave a row with
nothing allowed, where EOS is allowed so that no row is ever fully masked.)

Masks are built by scattering each row's few options (one forced token, the trie branches, the end of the
relation) into the vocabulary: linear in its size, no Python per token.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kipjax.data.docred import DocredDocument
from kipjax.decoding import NEG_INF, constraint_state
from kipjax.methods.lmrc.prompts import (NONE_NAME, Pair, answer_triples, check_relation_names, entity_name,
                                         triple_prefix, triple_suffix)

Array = jax.Array
SAME, NEXT = 0, 1  # candidates of the triple being written
PREFIX, RELATION, SUFFIX, FINISHED = 0, 1, 2, 3  # a candidate's phase
_FAR = 1 << 20  # length of a relation that cannot be reached


@dataclasses.dataclass(frozen=True)
class RelationTrie:
    """Token trie of the relation slot's sequences (the relation names, then `none` last) as padded arrays."""

    tokens: np.ndarray  # [S, B] token of each branch of each state, -1 padding; state 0 is the root
    next_state: np.ndarray  # [S, B] state each branch leads to
    remaining: np.ndarray  # [S, R+1] tokens from the state to the end of sequence r (_FAR where r is not below)
    terminal: np.ndarray  # [S] sequence ending at the state, -1 if none


def build_relation_trie(sequences: Sequence[Sequence[int]]) -> RelationTrie:
    """The trie of `sequences` (non-empty, distinct token-id lists; one may be a prefix of another)."""
    children: list[dict[int, int]] = [{}]
    paths = []
    for r, sequence in enumerate(sequences):
        if not sequence:
            raise ValueError(f"relation sequence {r} is empty")
        node, path = 0, []
        for token in sequence:
            if int(token) not in children[node]:
                children[node][int(token)] = len(children)
                children.append({})
            node = children[node][int(token)]
            path.append(node)
        paths.append(path)
    width = max(len(branches) for branches in children)
    tokens = np.full((len(children), width), -1, np.int32)
    next_state = np.zeros((len(children), width), np.int32)
    for state, branches in enumerate(children):
        tokens[state, :len(branches)] = list(branches)
        next_state[state, :len(branches)] = list(branches.values())
    remaining = np.full((len(children), len(sequences)), _FAR, np.int32)
    terminal = np.full((len(children),), -1, np.int32)
    for r, path in enumerate(paths):
        if terminal[path[-1]] >= 0:
            raise ValueError(f"relation sequences {terminal[path[-1]]} and {r} are the same tokens")
        terminal[path[-1]] = r
        remaining[0, r] = len(path)
        remaining[path, r] = np.arange(len(path) - 1, -1, -1)
    return RelationTrie(tokens, next_state, remaining, terminal)


@constraint_state
@dataclasses.dataclass(frozen=True)
class AnswerState:
    prefix: Array  # [N, P, Lh] token ids of each pair's `( head |` (padded)
    prefix_length: Array  # [N, P]
    suffix: Array  # [N, P, Lt] token ids of each pair's `| tail )` (padded)
    suffix_length: Array  # [N, P]
    num_pairs: Array  # [N]
    rest: Array  # [N, P] fewest tokens of one triple per pair after each pair
    pair: Array  # [N] the last pair with a finished triple (-1 before the first)
    used: Array  # [N, R+1] bool: relations written for `pair` (index R: none)
    alive: Array  # [N, 2] bool: candidates SAME / NEXT of the triple being (or about to be) written
    phase: Array  # [N, 2] PREFIX / RELATION / SUFFIX
    position: Array  # [N, 2] next token's index in the prefix or suffix
    node: Array  # [N, 2] trie state in the relation slot
    relation: Array  # [N, 2] relation written (from the suffix on)
    in_triple: Array  # [N] bool: a triple has been opened and not closed
    steps_left: Array  # [N] tokens the decoder may still emit (its max_length minus those emitted)


def _triple_minimum(prefix_length: Array, suffix_length: Array, num_pairs: Array, shortest: Array) -> Array:
    """[N, P] fewest tokens of a triple for each listed pair (0 past `num_pairs`)."""
    listed = jnp.arange(prefix_length.shape[1])[None, :] < num_pairs[:, None]
    return jnp.where(listed, prefix_length + shortest + suffix_length, 0)


def _take(values: Array, index: Array) -> Array:
    """values[n, index[n, c]] for values [N, P] and index [N, C]."""
    return jnp.take_along_axis(values, index, axis=1)


@dataclasses.dataclass(frozen=True)
class AnswerConstraint:
    """The answer grammar of the module docstring over `trie` (relation names, then `none`)."""

    trie: RelationTrie
    vocab_size: int
    eos_token: int

    @property
    def num_relations(self) -> int:
        """Relation names in the trie, `none` excluded."""
        return self.trie.remaining.shape[1] - 1

    def _shortest(self) -> int:
        return int(self.trie.remaining[0].min())

    def minimal_length(self, prefix_length: Array, suffix_length: Array, num_pairs: Array) -> Array:
        """[N] the fewest tokens (EOS included) of a complete answer: the `max_length` every row needs."""
        minimum = _triple_minimum(jnp.asarray(prefix_length), jnp.asarray(suffix_length), jnp.asarray(num_pairs),
                                  self._shortest())
        return minimum.sum(axis=1) + 1

    def init_state(self, prefix: Array, prefix_length: Array, suffix: Array, suffix_length: Array,
                   num_pairs: Array, max_length: int | Array) -> AnswerState:
        """State of rows answering for their pair lists (prefix [N, P, Lh], suffix [N, P, Lt], the first
        `num_pairs` pairs real, each affix at least one token) within `max_length` tokens (one for all rows
        or one per row)."""
        prefix_length, suffix_length = jnp.asarray(prefix_length, jnp.int32), jnp.asarray(suffix_length, jnp.int32)
        num_pairs = jnp.asarray(num_pairs, jnp.int32)
        minimum = _triple_minimum(prefix_length, suffix_length, num_pairs, self._shortest())
        rest = jnp.cumsum(minimum[:, ::-1], axis=1)[:, ::-1] - minimum  # sum over the later pairs
        rows = num_pairs.shape[0]
        zeros = jnp.zeros((rows, 2), jnp.int32)
        return AnswerState(prefix=jnp.asarray(prefix, jnp.int32), prefix_length=prefix_length,
                           suffix=jnp.asarray(suffix, jnp.int32), suffix_length=suffix_length, num_pairs=num_pairs,
                           rest=rest, pair=jnp.full((rows,), -1, jnp.int32),
                           used=jnp.zeros((rows, self.num_relations + 1), bool),
                           alive=jnp.stack([jnp.zeros((rows,), bool), num_pairs > 0], axis=1), phase=zeros,
                           position=zeros, node=zeros, relation=zeros, in_triple=jnp.zeros((rows,), bool),
                           steps_left=jnp.broadcast_to(jnp.asarray(max_length, jnp.int32), (rows,)))

    def _blocked(self, used: Array) -> Array:
        """[N, 2, R+1] relations each candidate may not write: SAME neither a used one nor `none`."""
        same = used.at[:, self.num_relations].set(True)
        return jnp.stack([same, jnp.zeros_like(used)], axis=1)

    def _shortest_below(self, nodes: Array, blocked: Array) -> Array:
        """Fewest tokens from trie `nodes` [N, 2, ...] to the end of a relation not `blocked` [N, 2, R+1]."""
        remaining = jnp.asarray(self.trie.remaining)[nodes]  # [N, 2, ..., R+1]
        blocked = blocked.reshape(blocked.shape[:2] + (1,) * (nodes.ndim - 2) + blocked.shape[-1:])
        return jnp.min(jnp.where(blocked, _FAR, remaining), axis=-1)

    def _options(self, state: AnswerState) -> dict[str, Array]:
        """Each candidate's possible next tokens [N, 2, K] (K = 1 forced + B branches + 1 relation end) with
        whether each is allowed and the candidate's phase, position, node and relation after it."""
        pair = jnp.stack([state.pair, state.pair + 1], axis=1)  # [N, 2]
        listed = (pair >= 0) & (pair < state.num_pairs[:, None])
        j = jnp.clip(pair, 0, state.prefix.shape[1] - 1)
        head_length, tail_length = _take(state.prefix_length, j), _take(state.suffix_length, j)
        after = _take(state.rest, j) + 1  # tokens after this triple: the later pairs' and EOS
        blocked = self._blocked(state.used)
        in_relation = state.phase == RELATION
        in_suffix = state.phase == SUFFIX

        # Option 0: the next forced token of the prefix or the suffix.
        forced_length = jnp.where(in_suffix, tail_length, head_length)
        rows = jnp.arange(pair.shape[0])[:, None]
        index = jnp.clip(state.position, 0, None)
        prefix_token = state.prefix[rows, j, jnp.minimum(index, state.prefix.shape[2] - 1)]
        suffix_token = state.suffix[rows, j, jnp.minimum(index, state.suffix.shape[2] - 1)]
        forced = jnp.where(in_suffix, suffix_token, prefix_token)
        shortest_root = self._shortest_below(jnp.zeros_like(pair), blocked)
        last = state.position + 1 == forced_length
        forced_need = jnp.where(in_suffix, tail_length - state.position - 1 + after,
                                head_length - state.position - 1 + shortest_root + tail_length + after)
        forced_ok = ~in_relation & (shortest_root < _FAR)
        forced_phase = jnp.where(in_suffix, jnp.where(last, FINISHED, SUFFIX), jnp.where(last, RELATION, PREFIX))

        # Options 1..B: a branch of the trie.
        branch_token = jnp.asarray(self.trie.tokens)[state.node]  # [N, 2, B]
        branch_node = jnp.asarray(self.trie.next_state)[state.node]
        below = self._shortest_below(branch_node, blocked)
        branch_need = below + (tail_length + after)[..., None]
        branch_ok = in_relation[..., None] & (branch_token >= 0) & (below < _FAR)

        # Option B+1: the relation ends here; the suffix's first token.
        ended = jnp.asarray(self.trie.terminal)[state.node]  # [N, 2]
        end_ok = in_relation & (ended >= 0) & ~jnp.take_along_axis(blocked, jnp.maximum(ended, 0)[..., None],
                                                                   axis=2)[..., 0]
        end_token = state.suffix[rows, j, 0]

        def stack(first: Array, branches: Array, end: Array) -> Array:
            return jnp.concatenate([first[..., None], branches, end[..., None]], axis=2)

        need = stack(forced_need, branch_need, tail_length - 1 + after)
        ok = stack(forced_ok, branch_ok, end_ok)
        ok = ok & (state.alive & listed)[..., None] & (need <= state.steps_left[:, None, None] - 1)
        zeros = jnp.zeros_like(pair)
        return {"token": stack(forced, branch_token, end_token), "ok": ok,
                "phase": stack(forced_phase, jnp.full_like(branch_token, RELATION),
                               jnp.where(tail_length == 1, FINISHED, SUFFIX)),
                "position": stack(jnp.where(last, 0, state.position + 1), jnp.zeros_like(branch_token), zeros + 1),
                "node": stack(zeros, branch_node, zeros),
                "relation": stack(state.relation, jnp.zeros_like(branch_token), jnp.maximum(ended, 0))}

    def _at_end(self, state: AnswerState) -> Array:
        return ~state.in_triple & (state.pair == state.num_pairs - 1)

    def allowed(self, state: AnswerState) -> Array:
        """[N, V] boolean mask of the tokens each row may produce next."""
        options = self._options(state)
        n = state.pair.shape[0]
        rows = jnp.arange(n)[:, None]
        mask = jnp.zeros((n, self.vocab_size), bool)
        mask = mask.at[rows, jnp.maximum(options["token"], 0).reshape(n, -1)].max(options["ok"].reshape(n, -1))
        return mask.at[:, self.eos_token].max(self._at_end(state) | ~jnp.any(mask, axis=1))

    def process_logits(self, state: AnswerState, logits: Array) -> Array:
        return jnp.where(self.allowed(state), logits, NEG_INF)

    def update(self, state: AnswerState, tokens: Array) -> AnswerState:
        options = self._options(state)
        rows = jnp.arange(tokens.shape[0])
        matched = options["ok"] & (options["token"] == tokens[:, None, None])  # [N, 2, K]
        survives = jnp.any(matched, axis=2)
        pick = jnp.argmax(matched, axis=2)[..., None]
        chosen = {name: jnp.take_along_axis(options[name], pick, axis=2)[..., 0]
                  for name in ("phase", "position", "node", "relation")}
        finished = survives & (chosen["phase"] == FINISHED)
        closes = jnp.any(finished, axis=1)
        candidate = jnp.where(finished[:, SAME], SAME, NEXT)
        written = jax.nn.one_hot(chosen["relation"][rows, candidate], self.num_relations + 1, dtype=bool)
        pair = jnp.where(closes & (candidate == NEXT), state.pair + 1, state.pair)
        used = jnp.where(closes[:, None], jnp.where((candidate == NEXT)[:, None], written, state.used | written),
                         state.used)
        can_repeat = (pair >= 0) & ~used[:, self.num_relations] & jnp.any(~used[:, :self.num_relations], axis=1)
        reset = jnp.stack([can_repeat, pair + 1 < state.num_pairs], axis=1)
        closes2 = closes[:, None]
        advanced = dataclasses.replace(
            state, pair=pair, used=used, alive=jnp.where(closes2, reset, survives),
            phase=jnp.where(closes2, PREFIX, chosen["phase"]), position=jnp.where(closes2, 0, chosen["position"]),
            node=jnp.where(closes2, 0, chosen["node"]), relation=jnp.where(closes2, 0, chosen["relation"]),
            in_triple=~closes)
        is_eos = tokens == self.eos_token
        kept = jax.tree_util.tree_map(
            lambda old, new: jnp.where(is_eos.reshape((-1,) + (1,) * (old.ndim - 1)), old, new), state, advanced)
        return dataclasses.replace(kept, steps_left=state.steps_left - 1)


# ------------------------------------------------------------------------------------- tokenizer glue

def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_answer(tokenizer: Any, doc: DocredDocument, pairs: Sequence[Pair],
                  relation_names: Mapping[str, str]) -> list[int]:
    """The gold answer's token ids, then EOS, assembled from the very pieces the constraint forces and reads
    (each triple's `( head |`, relation and `| tail )` encoded on their own), so that training targets and
    constrained decoding agree for any tokenizer, including BPE ones where a piece's tokens depend on what
    precedes it in a longer string."""
    ids: list[int] = []
    for head, relation, tail in answer_triples(doc, pairs, relation_names):
        ids += _encode(tokenizer, triple_prefix(head)) + _encode(tokenizer, relation)
        ids += _encode(tokenizer, triple_suffix(tail))
    return ids + [tokenizer.eos_token_id]


def answer_constraint_from_tokenizer(tokenizer: Any, relation_names: Mapping[str, str],
                                     vocab_size: int | None = None) -> AnswerConstraint:
    """The constraint over `tokenizer`'s encoding of the relation names (then `none`), masking logits of
    `vocab_size` entries (default the tokenizer's size; a model's embedding table is often padded larger)."""
    check_relation_names(relation_names)
    sequences = [_encode(tokenizer, " ".join(name.split())) for name in relation_names.values()]
    trie = build_relation_trie(sequences + [_encode(tokenizer, NONE_NAME)])
    return AnswerConstraint(trie=trie, vocab_size=vocab_size or len(tokenizer), eos_token=tokenizer.eos_token_id)


def encode_pair_lists(tokenizer: Any, rows: Sequence[tuple[DocredDocument, Sequence[Pair]]],
                      max_pairs: int | None = None) -> dict[str, np.ndarray]:
    """Per row (a document and its pair list): `prefix` [N, P, Lh] / `suffix` [N, P, Lt] token ids of each
    pair's `( head |` and `| tail )` (0-padded), `prefix_length` / `suffix_length` [N, P] and `num_pairs` [N],
    the inputs of `AnswerConstraint.init_state`."""
    encoded = [[(_encode(tokenizer, triple_prefix(entity_name(doc.entities[h]))),
                 _encode(tokenizer, triple_suffix(entity_name(doc.entities[t])))) for h, t in pairs]
               for doc, pairs in rows]
    width = max([max_pairs or 1] + [len(row) for row in encoded])
    if max_pairs is not None and width > max_pairs:
        raise ValueError(f"a row lists {width} pairs; max_pairs is {max_pairs}")
    out: dict[str, np.ndarray] = {"num_pairs": np.array([len(row) for row in encoded], np.int32)}
    for k, name in enumerate(("prefix", "suffix")):
        length = max([1] + [len(affixes[k]) for row in encoded for affixes in row])
        out[name] = np.zeros((len(rows), width, length), np.int32)
        out[f"{name}_length"] = np.ones((len(rows), width), np.int32)
        for i, row in enumerate(encoded):
            for p, affixes in enumerate(row):
                out[name][i, p, :len(affixes[k])] = affixes[k]
                out[f"{name}_length"][i, p] = len(affixes[k])
    return out
