"""Appendix E.1.2 constraint: gold partial linearizations with sentence markers are always allowed, and
constrained beam search over a random model only produces complete, parseable, sentence-aligned annotations."""
import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_coref_constraints import INTEGERS, SYMBOLS, V, WORDS

from kipjax import decoding
from kipjax.methods.coref.constraints import PartialLinearizationConstraint
from kipjax.methods.coref.linearize import drop_crossing_mentions, linearize_partial, mark_sentences, parse_partial

C = PartialLinearizationConstraint(SYMBOLS, V, INTEGERS)
SOURCE_WIDTH, BEAMS = 24, 4
M, END, SEP, S_OPEN, S_CLOSE, EOS = (SYMBOLS.mention_start, SYMBOLS.mention_end, SYMBOLS.separator,
                                     SYMBOLS.sentence_start, SYMBOLS.sentence_end, SYMBOLS.eos)


def random_document(rng):
    """Sentences of source ids, and clusters of non-crossing (possibly nested) mentions inside sentences; some
    sentences have no mention, and cluster numbers may need two digits."""
    sentences = [[rng.choice(WORDS) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 4))]
    spans, begin = set(), 0
    for sentence in sentences:
        for _ in range(rng.choice([0, 1, 3])):
            start = begin + rng.randrange(len(sentence))
            spans.add((start, rng.randint(start, begin + len(sentence) - 1)))
        begin += len(sentence)
    clusters = [[] for _ in range(rng.choice([1, 3, 12]))]
    for span in sorted(spans):
        rng.choice(clusters).append(span)
    clusters, _ = drop_crossing_mentions([c for c in clusters if c])
    return sentences, clusters


def padded_source(sentences, rows=1):
    source = mark_sentences(sentences, SYMBOLS)
    return jnp.asarray([source + [0] * (SOURCE_WIDTH - len(source))] * rows), jnp.full((rows,), len(source))


def allowed_ids(state):
    return set(np.flatnonzero(np.asarray(C.allowed(state))[0]).tolist())


def feed(state, tokens):
    for token in tokens:
        state = C.update(state, jnp.asarray([token]))
    return state


def test_gold_linearizations_are_always_allowed():
    rng = random.Random(0)
    allowed, update = jax.jit(C.allowed), jax.jit(C.update)
    for _ in range(30):
        sentences, clusters = random_document(rng)
        tokens = [token for sentence in sentences for token in sentence]
        target = linearize_partial(tokens, clusters, SYMBOLS, [len(s) for s in sentences]) + [EOS]
        for max_length in (len(target), len(target) + 5):
            state = C.init_state(*padded_source(sentences), max_length=max_length)
            for token in target:
                assert bool(allowed(state)[0, token]), (sentences, clusters, target, token, max_length)
                state = update(state, jnp.asarray([token]))


def test_random_walks_through_the_allowed_sets_finish_within_max_length():
    """Any path the masks allow, however greedy for `<m>`, ends with EOS within max_length and parses."""
    rng = random.Random(3)
    allowed, update = jax.jit(C.allowed), jax.jit(C.update)
    for walk in range(60):
        sentences, _ = random_document(rng)
        max_length = 2 * len(sentences) + 1 + walk % 12
        state, seq = C.init_state(*padded_source(sentences), max_length=max_length), []
        while not seq or seq[-1] != EOS:
            assert len(seq) < max_length, (sentences, seq)
            options = np.flatnonzero(np.asarray(allowed(state))[0]).tolist()
            token = M if M in options and rng.random() < 0.6 else rng.choice(options)
            seq.append(token)
            state = update(state, jnp.asarray([token]))
        check_output(seq, sentences)


@functools.partial(jax.jit, static_argnames="max_length")
def markov_search(table, source, source_length, max_length):
    """Beam search over a random model whose logits depend on the last token only."""
    return decoding.beam_search(lambda cache, prev: (table[prev], cache), jnp.zeros((BEAMS, 1)), batch_size=1,
                                beam_size=BEAMS, max_length=max_length, start_token=0, eos_token=EOS, constraint=C,
                                constraint_state=C.init_state(source, source_length, max_length))


def search(sentences, max_length, seed):
    table = jnp.asarray(np.random.default_rng(seed).normal(0, 3, (V, V)), jnp.float32)
    out = markov_search(table, *padded_source(sentences, BEAMS), max_length=max_length)
    return [list(map(int, seq)) for seq, score in zip(out.sequences[0], out.scores[0])
            if score > decoding.NEG_INF / 2]


def check_output(seq, sentences):
    """`seq` is a complete partial linearization of `sentences`; returns the mentions it parses to."""
    assert EOS in seq, "a finished hypothesis ends with EOS"
    seq = seq[:seq.index(EOS)]
    groups = []
    for token in seq:
        if token == S_OPEN:
            groups.append([])
        elif token != S_CLOSE:
            groups[-1].append(token)
    assert seq == [t for group in groups for t in (S_OPEN, *group, S_CLOSE)], "sentence groups are closed in order"
    assert len(groups) == len(sentences)
    for group, sentence in zip(groups, sentences):
        assert group.count(M) == group.count(SEP) == group.count(END), "every mention is closed with an identity"
        depth, identity = 0, None  # identity: the digits of the number being written
        for token in group:
            if identity is not None and token != END:
                identity.append(token)
                assert token in INTEGERS and len(identity) <= C.max_identity_tokens
                continue
            identity = [] if token == SEP else None
            depth += (token == M) - (token == SEP)
            assert depth <= C.max_depth
            if token not in (M, SEP, END):
                assert token in sentence, "a mention token comes from the sentence being written"
    lengths = [len(s) for s in sentences]
    spans = [span for cluster in parse_partial(seq, [t for s in sentences for t in s], SYMBOLS, lengths)
             for span in cluster]
    ends = np.cumsum(lengths)
    assert all(np.searchsorted(ends, start, side="right") == np.searchsorted(ends, end, side="right")
               for start, end in spans), "mentions lie inside one sentence"
    return spans


def test_constrained_search_emits_only_complete_annotations():
    rng = random.Random(1)
    checked, mentions = 0, 0
    for trial in range(8):
        sentences, _ = random_document(rng)
        for seq in search(sentences, max_length=40, seed=trial):
            mentions += len(check_output(seq, sentences))
            checked += 1
    assert checked >= 16 and mentions > 0


@pytest.mark.parametrize("slack", [0, 3])
def test_tight_length_still_finishes_every_sentence(slack):
    sentences = [[30, 31], [32], [10, 33, 11]]
    for seq in search(sentences, max_length=2 * len(sentences) + 1 + slack, seed=2):
        check_output(seq, sentences)
        if slack == 0:
            assert seq == [S_OPEN, S_CLOSE] * len(sentences) + [EOS]


def test_allowed_sets_by_hand():
    digits = set(INTEGERS)
    state = C.init_state(*padded_source([[30, 31], [32]]), max_length=30)
    assert allowed_ids(state) == {S_OPEN}
    state = feed(state, [S_OPEN])
    assert allowed_ids(state) == {30, 31, M, S_CLOSE}
    state = feed(state, [M])
    assert allowed_ids(state) == {30, 31, M}  # the mention needs a token before `|`; no `</sentence>`
    state = feed(state, [31])
    assert allowed_ids(state) == {30, 31, M, SEP}
    state = feed(state, [SEP])
    assert allowed_ids(state) == digits
    state = feed(state, [INTEGERS[1]])
    assert allowed_ids(state) == digits | {END}
    state = feed(state, [END])
    assert allowed_ids(state) == {30, 31, M, S_CLOSE}
    state = feed(state, [S_CLOSE])
    assert allowed_ids(state) == {S_OPEN}
    state = feed(state, [S_OPEN])
    assert allowed_ids(state) == {32, M, S_CLOSE}
    assert allowed_ids(feed(state, [S_CLOSE])) == {EOS}


def test_mentions_nest_at_most_max_depth():
    state = feed(C.init_state(*padded_source([[30, 31]]), max_length=60), [S_OPEN] + [M] * (C.max_depth - 1))
    assert M in allowed_ids(state)
    assert allowed_ids(feed(state, [M])) == {30, 31}


def test_allowed_sets_at_the_length_budget():
    state = C.init_state(*padded_source([[30, 31], [32]]), max_length=9)
    state = feed(state, [S_OPEN])  # 8 steps left, 4 needed: `</sentence> <sentence> </sentence> EOS`
    assert allowed_ids(state) == {30, 31, S_CLOSE}  # `<m>` would need 5 more: a token and `| digit </m>`
    assert allowed_ids(feed(state, [30])) == {30, 31, S_CLOSE}
    assert allowed_ids(feed(state, [30, 31, 30])) == {30, 31, S_CLOSE}
    assert allowed_ids(feed(state, [30, 31, 30, 31])) == {S_CLOSE}
    state = C.init_state(*padded_source([[30, 31], [32]]), max_length=10)
    state = feed(state, [S_OPEN, M])  # 8 left, exactly enough for `token | digit </m> </sentence> ...`
    assert allowed_ids(state) == {30, 31}
    state = feed(state, [30, SEP, INTEGERS[0]])
    assert allowed_ids(state) == {END}  # no room for a second digit


def test_process_logits_masks_only_disallowed_tokens():
    state = feed(C.init_state(*padded_source([[30, 31], [32]]), max_length=30), [S_OPEN, M, 30])
    logits = jax.random.normal(jax.random.PRNGKey(0), (1, V))
    processed = np.asarray(C.process_logits(state, logits))
    allowed = np.asarray(C.allowed(state))
    np.testing.assert_array_equal(processed[allowed], np.asarray(logits)[allowed])
    assert (processed[~allowed] == decoding.NEG_INF).all() and allowed.sum() == 4


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="integer_tokens"):
        PartialLinearizationConstraint(SYMBOLS, V, ())
