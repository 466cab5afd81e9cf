"""NCE gradient bias (sec. 3.5.4): Theorem 3.3.1 on enumerable cases, Figure 3.1's trends, and the CLI."""
import dataclasses
import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from kipjax.methods import nce_bias
from kipjax.methods.nce_bias import BiasConfig, ScoreNet, cross_entropy, gradient_bias, make_population, score_bias

# Enumerable case: 3 inputs, 6 labels, K = 3 candidates.
NUM_INPUTS, NUM_LABELS, NUM_CANDIDATES = 3, 6, 3
REDUCED = dataclasses.replace(BiasConfig(), num_labels=200, num_inputs=16, feature_dim=16, hidden_dim=64, steps=100,
                              log_every=25, seed=0)


@functools.lru_cache(maxsize=None)
def _tiny_case() -> tuple[ScoreNet, dict, nce_bias.Population]:
    model = ScoreNet(hidden_dim=8, num_labels=NUM_LABELS)

    @jax.jit
    def build() -> tuple[dict, nce_bias.Population]:
        pop = make_population(jax.random.PRNGKey(3), NUM_INPUTS, 4, NUM_LABELS, peakiness=1.5)
        params = model.init(jax.random.PRNGKey(4), pop.features)
        # Scale the output layer up so that p_theta is neither near uniform nor pop.
        return jax.tree_util.tree_map_with_path(
            lambda path, v: v * 4.0 if "Dense_1" in jax.tree_util.keystr(path) else v, params), pop

    return (model, *build())


def _tiny_bias(seed: int, num_candidates: int, num_simulations: int, kind: str) -> tuple[jax.Array, ...]:
    """`gradient_bias` on the tiny case, compiled as a whole (op-by-op dispatch is slow on a busy CPU)."""
    model, params, pop = _tiny_case()
    run = jax.jit(lambda key: gradient_bias(key, model.apply, params, pop, num_candidates, num_simulations, kind))
    return run(jax.random.PRNGKey(seed))


Enumeration = tuple[np.ndarray, np.ndarray, np.ndarray]  # input index [R], candidates [R, K], probability [R]


def _enumerate(scores: np.ndarray, log_pop: np.ndarray, num_candidates: int, kind: str) -> Enumeration:
    """Every (x, y_1, y_{2:K}) with its probability pop(x) pop(y_1|x) h(y_{2:K}|x, y_1)."""
    num_inputs, num_labels = scores.shape
    scores = scores.astype(np.float64)  # so each (x, y_1)'s negative probabilities sum to 1 to float32 precision
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    inputs, candidates, weights = [], [], []
    for x, gold in itertools.product(range(num_inputs), range(num_labels)):
        others = [y for y in range(num_labels) if y != gold]
        if kind == "hard":  # without replacement, proportional to p_theta, gold excluded (eq. 3.9)
            sequences = itertools.permutations(others, num_candidates - 1)
        else:  # iid uniform over the labels minus the gold
            sequences = itertools.product(others, repeat=num_candidates - 1)
        for negatives in sequences:
            if kind == "hard":
                left, prob = 1.0 - p[x, gold], 1.0
                for y in negatives:
                    prob *= p[x, y] / left
                    left -= p[x, y]
            else:
                prob = (1.0 / len(others)) ** len(negatives)
            inputs.append(x)
            candidates.append((gold,) + negatives)
            weights.append(np.exp(log_pop[x, gold]) * prob / num_inputs)
    return np.array(inputs), np.array(candidates), np.array(weights)


@jax.jit
def _exact_j_nce(scores: jax.Array, enumeration: Enumeration) -> jax.Array:
    """J_NCE as the exact sum over the enumeration; the negatives' probabilities are constants of the gradient."""
    inputs, candidates, weights = enumeration
    candidate_scores = scores[inputs[:, None], candidates]
    return jnp.sum(weights * (jax.nn.logsumexp(candidate_scores, axis=-1) - candidate_scores[:, 0]))


@jax.jit
def _theorem_score_bias(scores: jax.Array, enumeration: Enumeration) -> jax.Array:
    """Theorem 3.3.1 in score space: pop(x) (p_theta(y|x) - gamma_theta(y|x)), gamma from (3.7) by enumeration."""
    inputs, candidates, weights = enumeration
    selected = jax.nn.softmax(scores[inputs[:, None], candidates], axis=-1)  # pi_theta(k|x, y_{1:K})
    gamma = jnp.zeros(scores.shape).at[inputs[:, None], candidates].add(weights[:, None] * selected)
    return jax.nn.softmax(scores, axis=-1) / scores.shape[0] - gamma


@pytest.mark.parametrize("kind", ["hard", "random"])
def test_theorem_3_3_1_holds_for_the_enumerated_losses(kind):
    model, params, pop = _tiny_case()
    scores = model.apply(params, pop.features)
    enumeration = _enumerate(np.asarray(scores), np.asarray(pop.log_probs), NUM_CANDIDATES, kind)
    np.testing.assert_allclose(enumeration[2].sum(), 1.0, rtol=1e-5)
    direct = jax.jit(jax.grad(cross_entropy))(scores, pop.log_probs) - jax.grad(_exact_j_nce)(scores, enumeration)
    np.testing.assert_allclose(direct, _theorem_score_bias(scores, enumeration), atol=1e-6)


@pytest.mark.parametrize("kind", ["hard", "random"])
def test_monte_carlo_bias_approaches_the_theorem(kind):
    model, params, pop = _tiny_case()
    scores = model.apply(params, pop.features)
    enumeration = _enumerate(np.asarray(scores), np.asarray(pop.log_probs), NUM_CANDIDATES, kind)
    epsilon = jax.lax.stop_gradient(_theorem_score_bias(scores, enumeration))
    # b_i = E_x sum_y eps(y|x) ds(x, y)/dtheta_i, the pullback of eps through the network.
    exact_bias = ravel_pytree(jax.grad(lambda p: jnp.sum(epsilon * model.apply(p, pop.features)))(params))[0]

    ce, nce, estimate = _tiny_bias(5, NUM_CANDIDATES, 20_000, kind)
    assert float(jnp.linalg.norm(exact_bias)) > 0.05  # the case is not trivially unbiased
    assert float(jnp.linalg.norm(estimate - exact_bias)) < 0.05 * float(jnp.linalg.norm(exact_bias))
    np.testing.assert_allclose(nce, _exact_j_nce(scores, enumeration), rtol=5e-3)
    np.testing.assert_allclose(ce, cross_entropy(scores, pop.log_probs), rtol=1e-6)


def test_hard_bias_vanishes_when_every_label_is_a_candidate():
    # K = |Y|: sampling without replacement puts every label in the candidate set, so J_HARD = J_CE exactly.
    ce, nce, bias = _tiny_bias(6, NUM_LABELS, 1, "hard")
    np.testing.assert_allclose(nce, ce, rtol=1e-5)
    np.testing.assert_allclose(bias, 0.0, atol=1e-6)
    # Random negatives (iid, duplicates allowed) do not cover Y, so the bias stays.
    _, _, random_bias = _tiny_bias(6, NUM_LABELS, 100, "random")
    assert float(jnp.linalg.norm(random_bias)) > 0.01


def test_unknown_negative_kind_is_rejected():
    with pytest.raises(ValueError, match="negatives must be one of"):
        score_bias(jax.random.PRNGKey(0), jnp.zeros((2, 5)), jnp.zeros((2, 5)), 3, 1, "mixed")


@pytest.fixture(scope="module")
def reduced_curves() -> dict[str, list[float]]:
    return nce_bias.run(REDUCED)


def test_hard_bias_shrinks_and_random_bias_does_not(reduced_curves):
    curves = reduced_curves
    assert curves["updates"] == [0, 25, 50, 75, 100]
    hard, random = curves["hard_bias"], curves["random_bias"]
    assert hard[-1] < 0.5 * hard[0], hard
    assert hard[-1] < 0.5 * random[-1], (hard, random)
    # Random NCE's own gradient is ~0 once it saturates, so its bias is about ||grad J_CE||.
    np.testing.assert_allclose(random[-1], curves["ce_grad"][-1], rtol=0.25)


def test_hard_nce_tracks_cross_entropy_and_random_nce_collapses(reduced_curves):
    ce, hard, random = (reduced_curves[k][-1] for k in ("ce", "hard_nce", "random_nce"))
    assert reduced_curves["entropy"] < ce < 2 * reduced_curves["entropy"]  # trained close to the population
    assert abs(hard - ce) < 0.1 * ce, (hard, ce)
    assert random < 0.1 * ce, (random, ce)


def test_cli_writes_png_and_json(tmp_path):
    nce_bias.main(["--out", str(tmp_path), "--steps", "3", "--seed", "1"])
    assert (tmp_path / "nce_bias.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = json.loads((tmp_path / "nce_bias.json").read_text())
    expected = {"config", "updates", "ce", "hard_nce", "random_nce", "hard_bias", "random_bias", "ce_grad", "entropy"}
    assert set(curves) == expected
    assert curves["updates"] == [0, 3] and curves["config"]["steps"] == 3 and curves["config"]["seed"] == 1
    assert all(len(curves[k]) == 2 and np.all(np.isfinite(curves[k])) for k in expected - {"config", "entropy"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nce_bias.json", "nce_bias.png"]  # no temp files left
