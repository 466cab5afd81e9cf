"""Appendix E.1 constraints: gold linearizations are always allowed, and constrained beam search over a random
model only ever produces valid annotations of the source document."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax import decoding
from kipjax.methods.coref.constraints import FullLinearizationConstraint
from kipjax.methods.coref.linearize import (Symbols, drop_crossing_mentions, linearize,
                                            parse_full)

V, DIGITS, ENDS, MAX_CLUSTERS = 64, 10, 20, 8
WORDS = [10, 11, 30, 31, 32, 33]  # source ids 10 and 11 are also the digits 0 and 1


def _decode_digits(ids):
    if not ids or any(not DIGITS <= i < DIGITS + 10 for i in ids):
        return None
    return int("".join(str(i - DIGITS) for i in ids))  # leading zeros read as a tokenizer's decode + int() would


SYMBOLS = Symbols(mention_start=2, mention_end=3, separator=4, copy=5, new=6, sentence_start=7, sentence_end=8,
                  eos=1, cluster_end=lambda label: ENDS + label,
                  cluster_index=lambda t: t - ENDS if ENDS <= t < ENDS + MAX_CLUSTERS else None,
                  encode_int=lambda label: [DIGITS + int(d) for d in str(label)], decode_int=_decode_digits)
INTEGERS = list(range(DIGITS, DIGITS + 10))
CONFIGS = [("after", "token"), ("after", "copy"), ("free", "token"), ("free", "copy")]


def constraint(identity, actions):
    return FullLinearizationConstraint(SYMBOLS, V, INTEGERS, identity=identity, actions=actions,
                                       max_clusters=MAX_CLUSTERS)


def random_document(rng):
    length = rng.randint(1, 12)
    tokens = [rng.choice(WORDS) for _ in range(length)]
    spans = {(s, rng.randint(s, min(length - 1, s + 3))) for s in (rng.randrange(length) for _ in range(4))}
    clusters = [[] for _ in range(rng.randint(1, 4))]
    for span in sorted(spans):
        rng.choice(clusters).append(span)
    clusters, _ = drop_crossing_mentions([c for c in clusters if c])
    return tokens, clusters


@pytest.mark.parametrize("identity,actions", CONFIGS)
def test_gold_linearizations_are_always_allowed(identity, actions):
    rng = random.Random(0)
    c = constraint(identity, actions)
    allowed, update = jax.jit(c.allowed), jax.jit(c.update)
    for _ in range(40):
        tokens, clusters = random_document(rng)
        target = linearize(tokens, clusters, SYMBOLS, identity) + [SYMBOLS.eos]
        state = c.init_state(jnp.asarray([tokens]), jnp.asarray([len(tokens)]), max_length=len(target))
        for token in target:
            assert bool(allowed(state)[0, token]), (tokens, clusters, target, token)
            state = update(state, jnp.asarray([token]))


def random_markov_search(c, tokens, beam_size=4, max_length=48, seed=0):
    table = jnp.asarray(np.random.default_rng(seed).normal(0, 3, (V, V)), jnp.float32)
    rows = beam_size
    state = c.init_state(jnp.asarray([tokens] * rows), jnp.full((rows,), len(tokens)), max_length)
    out = jax.jit(lambda: decoding.beam_search(
        lambda cache, prev: (table[prev], cache), jnp.zeros((rows, 1)), batch_size=1, beam_size=beam_size,
        max_length=max_length, start_token=0, eos_token=SYMBOLS.eos, constraint=c, constraint_state=state))()
    return [list(map(int, seq)) for seq, score in zip(out.sequences[0], out.scores[0])
            if score > decoding.NEG_INF / 2]


@pytest.mark.parametrize("identity,actions", CONFIGS)
def test_constrained_search_emits_only_valid_annotations(identity, actions):
    rng = random.Random(1)
    c = constraint(identity, actions)
    checked = 0
    for trial in range(6):
        tokens, _ = random_document(rng)
        for seq in random_markov_search(c, tokens, seed=trial):
            assert SYMBOLS.eos in seq, "a finished hypothesis ends with EOS"
            seq = seq[:seq.index(SYMBOLS.eos)]
            assert SYMBOLS.copy not in seq and SYMBOLS.new not in seq, "actions are turned into their tokens"
            # Every opened mention is closed with a cluster identity.
            opened = seq.count(SYMBOLS.mention_start)
            if identity == "after":
                assert seq.count(SYMBOLS.separator) == seq.count(SYMBOLS.mention_end) == opened
            else:
                assert sum(ENDS <= t < ENDS + MAX_CLUSTERS for t in seq) == opened
            clusters = parse_full(seq, SYMBOLS, identity, num_source_tokens=len(tokens))
            spans = [span for cluster in clusters for span in cluster]
            assert len(spans) <= opened and (opened == 0 or spans)
            assert all(0 <= start <= end < len(tokens) for start, end in spans)
            # The source comes back token for token once the annotation is removed.
            assert _source_of(seq, identity) == tokens
            if identity == "free":  # clusters are introduced in order: </m_l> only after </m_{l-1}>
                labels = [t - ENDS for t in seq if ENDS <= t < ENDS + MAX_CLUSTERS]
                assert all(label <= max([-1] + labels[:i]) + 1 for i, label in enumerate(labels))
            checked += 1
    assert checked >= 12


def _source_of(seq, identity):
    out, in_identity = [], False
    for t in seq:
        if identity == "after" and t == SYMBOLS.separator:
            in_identity = True
        elif identity == "after" and t == SYMBOLS.mention_end:
            in_identity = False
        elif not in_identity and t != SYMBOLS.mention_start and not (ENDS <= t < ENDS + MAX_CLUSTERS):
            out.append(t)
    return out


def test_copy_and_new_take_the_scores_of_their_actions():
    c = constraint("free", "copy")
    tokens = [31, 32]
    state = c.init_state(jnp.asarray([tokens]), jnp.asarray([2]), max_length=20)
    for token in (SYMBOLS.mention_start, 31):
        state = c.update(state, jnp.asarray([token]))
    logits = jnp.zeros((1, V)).at[0, SYMBOLS.copy].set(5.0).at[0, SYMBOLS.new].set(3.0)
    processed = np.asarray(c.process_logits(state, logits))[0]
    assert processed[32] == 5.0 and processed[ENDS + 0] == 3.0  # next source token <- <c>, </m_0> <- <new>
    assert processed[SYMBOLS.copy] == decoding.NEG_INF and processed[SYMBOLS.new] == decoding.NEG_INF
    assert processed[ENDS + 1] == decoding.NEG_INF  # cluster 1 cannot come before cluster 0
    assert processed[SYMBOLS.eos] == decoding.NEG_INF  # a mention is open and a token is left


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="integer_tokens"):
        FullLinearizationConstraint(SYMBOLS, V, identity="after")
    with pytest.raises(ValueError, match="max_clusters"):
        FullLinearizationConstraint(SYMBOLS, V, identity="free")
