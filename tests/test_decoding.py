"""Beam search against exhaustive search, greedy against an argmax loop, constraints, and T5 vs HF generate."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax import decoding

V, EOS, START = 5, 1, 0


def markov_step(table: np.ndarray):
    """A 'model' whose next-token logits depend on the previous token only; its cache is unused."""
    table = jnp.asarray(table, jnp.float32)

    def step(cache, tokens):
        return table[tokens], cache
    return step


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def exhaustive_best(table: np.ndarray, max_length: int, length_penalty: float, allowed=lambda prev, tok: True):
    """Every hypothesis: a sequence ending in EOS within max_length, or any max_length sequence without EOS."""
    lp = log_softmax(np.where(np.array([[allowed(p, t) for t in range(V)] for p in range(V)]), table,
                              decoding.NEG_INF))
    best = []
    for length in range(1, max_length + 1):
        for seq in itertools.product(range(V), repeat=length):
            if EOS in seq[:-1] or (length < max_length and seq[-1] != EOS):
                continue
            prev, total = START, 0.0
            for tok in seq:
                total += lp[prev, tok]
                prev = tok
            if total > decoding.NEG_INF / 2:
                best.append((total / length ** length_penalty, seq))
    return sorted(best, reverse=True)


def run(table, beam_size, max_length, length_penalty=1.0, constraint=None, state=None):
    out = jax.jit(lambda: decoding.beam_search(
        markov_step(table), jnp.zeros((beam_size, 1)), batch_size=1, beam_size=beam_size, max_length=max_length,
        start_token=START, eos_token=EOS, length_penalty=length_penalty, constraint=constraint,
        constraint_state=state))()
    return np.asarray(out.sequences[0]), np.asarray(out.scores[0])


def strip(seq):
    seq = list(seq)
    return tuple(seq[:seq.index(EOS) + 1]) if EOS in seq else tuple(seq)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_finds_the_exhaustive_ranking(seed, length_penalty):
    table = np.random.default_rng(seed).normal(0, 2, (V, V))
    max_length = 4
    expected = exhaustive_best(table, max_length, length_penalty)
    seqs, scores = run(table, beam_size=V ** max_length, max_length=max_length, length_penalty=length_penalty)
    for rank in range(3):  # the three best hypotheses, in order, with their scores
        assert strip(seqs[rank]) == expected[rank][1]
        assert scores[rank] == pytest.approx(expected[rank][0], abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_beam_of_one_without_length_penalty_is_greedy(seed):
    """(With a length penalty, a longer beam may still overtake a finished one, as in HF beam search.)"""
    table = np.random.default_rng(seed).normal(0, 2, (V, V))
    prev, expected = START, []
    for _ in range(6):
        prev = int(np.argmax(table[prev]))
        expected.append(prev)
        if prev == EOS:
            break
    seqs, _ = run(table, beam_size=1, max_length=6, length_penalty=0.0)
    assert strip(seqs[0]) == tuple(expected)


class NoTwoAfterThree:
    """Forbids token 2 right after token 3: the state is each row's previous token."""

    def process_logits(self, state, logits):
        return jnp.where((state[:, None] == 3) & (jnp.arange(V)[None, :] == 2), decoding.NEG_INF, logits)

    def update(self, state, tokens):
        return tokens


def test_constrained_search_matches_constrained_exhaustive_search():
    rng = np.random.default_rng(7)
    table = rng.normal(0, 1, (V, V))
    table[3, 2] = table[0, 3] = 8.0  # the unconstrained optimum starts 3 2
    unconstrained, _ = run(table, beam_size=2, max_length=4)
    assert strip(unconstrained[0])[:2] == (3, 2)
    beam = V ** 4
    seqs, scores = run(table, beam_size=beam, max_length=4, constraint=NoTwoAfterThree(),
                       state=jnp.full((beam,), START, jnp.int32))
    expected = exhaustive_best(table, 4, 1.0, allowed=lambda prev, tok: not (prev == 3 and tok == 2))
    assert strip(seqs[0]) == expected[0][1]
    assert scores[0] == pytest.approx(expected[0][0], abs=1e-4)
    for seq in seqs[scores > decoding.NEG_INF / 2]:
        pairs = list(zip((START, *strip(seq)), strip(seq)))
        assert (3, 2) not in pairs


def test_rows_are_reordered_with_their_beams():
    tree = {"k": jnp.arange(6)[:, None] * jnp.ones((1, 2)), "index": jnp.array(3)}
    out = decoding.gather_rows(decoding.repeat_for_beams(tree, 2), jnp.array([1, 0, 5, 5]))
    np.testing.assert_array_equal(out["k"][:, 0], [0, 0, 2, 2])
    assert int(out["index"]) == 3
