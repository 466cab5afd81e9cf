import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax import topk


@pytest.mark.parametrize("length, k", [(128512, 8), (32001, 8), (5000, 10), (100, 3), (7, 7)])
def test_equals_lax_top_k_including_ties(length, k):
    rng = np.random.default_rng(length)
    # Few distinct values, so that many entries tie, some -inf as masked tokens are.
    scores = rng.integers(0, 20, (3, length)).astype(np.float32)
    scores[:, rng.random(length) < 0.3] = -np.inf
    scores[1] = -np.inf  # a fully masked row
    ours = jax.jit(topk.top_k, static_argnums=1)(jnp.asarray(scores), k)
    theirs = jax.lax.top_k(jnp.asarray(scores), k)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_group_size_divides_and_leaves_a_small_shortlist():
    assert topk.group_size(128512, 8) == 256
    assert topk.group_size(1000, 8) == 8  # 4 * 8 * 8 <= 1000 < 4 * 8 * 16
    assert topk.group_size(1001, 8) == 1  # odd: no power-of-two group divides it
    assert topk.group_size(1001, 8, divides=False) == 16  # padded to 1008
