"""Negative sampling: exactness of the hard-negative distribution, exclusion, uniformity, mixing."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kipjax.retrieval.negatives import (gumbel_perturb, mix_negatives, sample_from_pool, sample_hard_negatives,
                                        sample_random_negatives, topk_negatives)

# Hard-negative sampling test case: index 3 (the best) is excluded, so draws come from {0, 1, 2, 4}.
SCORES = np.array([1.0, 0.0, -0.5, 2.0, 0.3])
EXCLUDED = 3
NUM_SAMPLES = 20_000


def _exact_ordered_pair_probs() -> dict[tuple[int, int], float]:
    """Plackett-Luce: P(i then j) = p_i p_j / (1 - p_i), p proportional to exp(score) over allowed labels."""
    allowed = [i for i in range(len(SCORES)) if i != EXCLUDED]
    p = np.exp(SCORES[allowed]) / np.exp(SCORES[allowed]).sum()
    prob = dict(zip(allowed, p))
    return {(i, j): prob[i] * prob[j] / (1 - prob[i]) for i, j in itertools.permutations(allowed, 2)}


def _assert_matches_plackett_luce(samples: np.ndarray) -> None:
    exact = _exact_ordered_pair_probs()
    pairs = [tuple(row) for row in samples.tolist()]
    counts = {pair: 0 for pair in exact}
    for pair in pairs:
        assert pair in counts, f"sampled {pair}: excluded or repeated label"
        counts[pair] += 1
    for pair, prob in exact.items():
        sd = np.sqrt(prob * (1 - prob) / NUM_SAMPLES)
        assert abs(counts[pair] / NUM_SAMPLES - prob) < 4.5 * sd, (pair, counts[pair] / NUM_SAMPLES, prob)
    observed = np.array([counts[p] for p in exact])
    expected = NUM_SAMPLES * np.array(list(exact.values()))
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def _tiled_case():
    scores = jnp.tile(jnp.asarray(SCORES, jnp.float32), (NUM_SAMPLES, 1))
    exclude = jnp.zeros(scores.shape, bool).at[:, EXCLUDED].set(True)
    return scores, exclude


def test_hard_negatives_follow_sampling_without_replacement():
    scores, exclude = _tiled_case()
    samples = jax.jit(sample_hard_negatives, static_argnums=3)(jax.random.key(0), scores, exclude, 2)
    assert samples.dtype == jnp.int32
    _assert_matches_plackett_luce(np.asarray(samples))


def test_chunked_gumbel_top_k_samples_the_same_distribution():
    """Perturb each chunk with its own key, keep per-chunk top-k, merge: the streaming recipe in the docstring."""
    scores, exclude = _tiled_case()
    rng = jax.random.key(1)
    values, indices = [], []
    for chunk, (start, stop) in enumerate([(0, 2), (2, 5)]):
        perturbed = gumbel_perturb(jax.random.fold_in(rng, chunk), scores[:, start:stop])
        v, i = jax.lax.top_k(jnp.where(exclude[:, start:stop], -jnp.inf, perturbed), 2)
        values.append(v)
        indices.append(i + start)
    values, indices = jnp.concatenate(values, axis=1), jnp.concatenate(indices, axis=1)
    _, best = jax.lax.top_k(values, 2)
    _assert_matches_plackett_luce(np.asarray(jnp.take_along_axis(indices, best, axis=1)))


def test_hard_negatives_are_distinct_and_never_excluded():
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.normal(size=(64, 30)) * 3, jnp.float32)
    exclude = rng.random((64, 30)) < 0.5
    exclude[:, :8] = False  # at least 8 allowed per row
    samples = np.asarray(sample_hard_negatives(jax.random.key(2), scores, jnp.asarray(exclude), 8))
    assert samples.shape == (64, 8)
    assert np.all(np.diff(np.sort(samples, axis=1), axis=1) > 0)
    assert not np.any(np.take_along_axis(exclude, samples, axis=1))


def test_topk_negatives_by_hand():
    scores = jnp.array([[0.1, 0.9, 0.5, 0.7], [3.0, 2.0, 1.0, 0.0]])
    exclude = jnp.array([[False, True, False, False], [False, False, False, False]])
    np.testing.assert_array_equal(topk_negatives(scores, exclude, 2), [[3, 2], [0, 1]])


def test_too_many_negatives_requested():
    scores = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="num <= 4"):
        sample_hard_negatives(jax.random.key(0), scores, jnp.zeros((2, 4), bool), 5)
    exclude = jnp.array([[True, True, False, False], [False] * 4])
    with pytest.raises(ValueError, match="only 2 candidates"):
        topk_negatives(scores, exclude, 3)
    # Traced masks cannot be checked up front: short rows are padded with -1 instead.
    out = jax.jit(topk_negatives, static_argnums=2)(scores, exclude, 3)
    np.testing.assert_array_equal(np.sort(np.asarray(out[0])), [-1, 2, 3])


def test_random_negatives_uniform_over_non_golds():
    num_entities = 10
    gold = jnp.array([[2, 7, -1, 7]])  # padding and a duplicate gold
    samples = np.asarray(jax.jit(sample_random_negatives, static_argnums=(2, 3))(
        jax.random.key(3), gold, num_entities, NUM_SAMPLES))
    assert samples.shape == (1, NUM_SAMPLES) and samples.dtype == np.int32
    counts = np.bincount(samples.ravel(), minlength=num_entities)
    assert counts[2] == 0 and counts[7] == 0 and counts.sum() == NUM_SAMPLES
    non_gold = np.delete(counts, [2, 7])
    assert stats.chisquare(non_gold).pvalue > 1e-3


def test_random_negatives_never_hit_golds():
    rng = np.random.default_rng(4)
    num_entities = 12
    gold = rng.integers(0, num_entities, size=(500, 3))
    gold[rng.random((500, 3)) < 0.3] = -1
    samples = np.asarray(sample_random_negatives(jax.random.key(5), jnp.asarray(gold), num_entities, 16))
    assert samples.min() >= 0 and samples.max() < num_entities
    assert not np.any(samples[:, :, None] == gold[:, None, :])
    # Every id is a non-gold in most rows, so every id gets drawn somewhere.
    assert set(np.unique(samples)) == set(range(num_entities))

    single = np.asarray(sample_random_negatives(jax.random.key(6), jnp.asarray(gold[:, 0].clip(0)), num_entities, 4))
    assert single.shape == (500, 4) and not np.any(single == gold[:, :1].clip(0))


def test_random_negatives_reject_impossible_requests():
    with pytest.raises(ValueError, match="num_entities"):
        sample_random_negatives(jax.random.key(0), jnp.array([[0, 1]]), 2, 3)


@pytest.mark.parametrize("p, num_hard", [(0.0, 0), (0.5, 3), (1 / 3, 2), (1.0, 6)])
def test_mix_keeps_leading_hard_ones(p, num_hard):
    hard = jnp.tile(jnp.arange(100, 106), (3, 1))
    random = jnp.tile(jnp.arange(6), (3, 1))
    mixed = np.asarray(mix_negatives(hard, random, p))
    assert mixed.shape == (3, 6)
    np.testing.assert_array_equal(mixed[:, :num_hard], np.asarray(hard)[:, :num_hard])
    np.testing.assert_array_equal(mixed[:, num_hard:], np.asarray(random)[:, :6 - num_hard])


def test_mix_avoids_collisions():
    hard = jnp.array([[10, 11, 12, 13, 14, 15]])
    random = jnp.array([[10, 1, 1, 2, 3, 4]])  # one repeats a kept hard negative, one repeats itself
    np.testing.assert_array_equal(mix_negatives(hard, random, 0.5), [[10, 11, 12, 1, 2, 3]])
    with pytest.raises(ValueError, match="p must be"):
        mix_negatives(hard, random, 1.5)


def test_pool_draws_are_uniform_without_replacement_and_topped_up():
    pool = jnp.array([[4, 9, 2, 7, -1, -1], [5, -1, -1, -1, -1, -1]])
    fallback = jnp.array([[100, 101, 102], [200, 201, 202]])
    counts = np.zeros(10)
    draws = np.asarray(jax.vmap(lambda key: sample_from_pool(key, pool, 3, fallback))(
        jax.random.split(jax.random.key(0), 400)))
    for drawn in draws:
        assert len(set(drawn[0])) == 3 and set(drawn[0]) <= {4, 9, 2, 7}  # distinct, from the pool
        assert drawn[1].tolist() == [5, 201, 202]  # one entry, then the fallback's slots
        counts[drawn[0]] += 1
    # each of the 4 entries is in a draw of 3 with probability 3/4: 300 of 400 expected
    assert np.all(np.abs(counts[[2, 4, 7, 9]] - 300) < 40)
    short = np.asarray(sample_from_pool(jax.random.key(0), pool[:, :2], 3, fallback))  # a narrower pool
    assert short[0, 2] == 102 and set(short[0, :2]) == {4, 9}
