"""ImpRAG's losses against hand computation: the in-batch multi-label NCE of eq. 5.3 (own positives against own
hard negatives and the other rows' candidates, a shared passage left out), the self-distillation KL of eq. 5.6
with both temperatures, over own candidates and with the in-batch ones in P_R, response log-likelihoods and the rows that do not retrieve."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from kipjax.methods.imprag.objectives import (generation_loss, in_batch_nce_loss, response_log_likelihood,
                                              self_distillation_loss)

# Two retrieving rows and one instruction-tuning row (no candidates); embeddings in 2-D so scores are easy.
QUERIES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
CANDIDATES = np.array([[[2.0, 0.0], [1.0, 0.5], [0.0, 1.0]],      # row 0: passages 10, 11, 12
                       [[0.5, 1.0], [0.0, 3.0], [1.0, 1.0]],      # row 1: passages 20, 12 (shared with row 0), 21
                       [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]])     # row 2: padding
IDS = np.array([[10, 11, 12], [20, 12, 21], [0, 0, 0]])
VALID = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], bool)
POSITIVE = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)


def nll(positive_score, negative_scores):
    return -math.log(math.exp(positive_score) / (math.exp(positive_score) + sum(math.exp(s) for s in negative_scores)))


def test_in_batch_nce_is_eq_5_3_by_hand():
    got = in_batch_nce_loss(jnp.asarray(QUERIES), jnp.asarray(CANDIDATES), jnp.asarray(IDS), jnp.asarray(VALID),
                            jnp.asarray(POSITIVE))
    # Row 0 (q = [1, 0]): own scores 2, 1, 0 (positives 10, 11; hard negative 12); row 1's candidates score
    # 0.5 (20), 0 (12: row 0's own passage, left out) and 1 (21).
    row0 = nll(2.0, [0.0, 0.5, 1.0]) + nll(1.0, [0.0, 0.5, 1.0])
    # Row 1 (q = [0, 1]): own scores 1 (positive 20), 3 (12), 1 (21); row 0's candidates 0 (10), 0.5 (11) and
    # 1 (12: row 1's own passage too, left out of row 1's random negatives).
    row1 = nll(1.0, [3.0, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(float(got), (row0 + row1) / 2, rtol=1e-6)


def test_padding_rows_do_not_change_the_nce_or_get_gradients():
    args = [jnp.asarray(x) for x in (QUERIES, CANDIDATES, IDS, VALID, POSITIVE)]
    two_rows = in_batch_nce_loss(*(a[:2] for a in args))
    np.testing.assert_allclose(float(in_batch_nce_loss(*args)), float(two_rows), rtol=1e-6)
    grads = jax.grad(lambda q, c: in_batch_nce_loss(q, c, *args[2:]), argnums=(0, 1))(args[0], args[1])
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    np.testing.assert_array_equal(np.asarray(grads[0][2]), 0.0)
    np.testing.assert_array_equal(np.asarray(grads[1][2]), 0.0)


def softmax(x):
    e = np.exp(np.asarray(x) - np.max(x))
    return e / e.sum()


def test_self_distillation_is_eq_5_6_by_hand():
    log_likelihoods = np.array([[-1.0, -2.0, -4.0], [-0.5, -0.5, -3.0], [0.0, 0.0, 0.0]])
    tau_t, tau_r = 0.5, 2.0
    def loss(queries=jnp.asarray(QUERIES), ll=jnp.asarray(log_likelihoods), in_batch=False):
        return self_distillation_loss(queries, jnp.asarray(CANDIDATES), jnp.asarray(IDS), jnp.asarray(VALID), ll,
                                      tau_t, tau_r, in_batch)

    own, batch = [], []
    # The other rows' candidates each row's P_R also normalises over with in_batch (row 0 leaves out row 1's
    # passage 12, its own; row 1 leaves out row 0's 12): scores against q.
    others = {0: [CANDIDATES[1, 0] @ QUERIES[0], CANDIDATES[1, 2] @ QUERIES[0]],
              1: [CANDIDATES[0, 0] @ QUERIES[1], CANDIDATES[0, 1] @ QUERIES[1]]}
    for row in range(2):
        scores = CANDIDATES[row] @ QUERIES[row] / tau_r
        p_t = softmax(log_likelihoods[row] / tau_t)
        own.append(float(np.sum(p_t * np.log(p_t / softmax(scores)))))
        log_norm = np.log(np.exp(scores).sum() + np.exp(np.array(others[row]) / tau_r).sum())
        batch.append(float(np.sum(p_t * (np.log(p_t) - (scores - log_norm)))))
    np.testing.assert_allclose(float(loss()), np.mean(own), rtol=1e-5)
    np.testing.assert_allclose(float(loss(in_batch=True)), np.mean(batch), rtol=1e-5)
    assert float(loss(in_batch=True)) > float(loss())  # in-batch mass is what P_T says is missing
    for in_batch in (False, True):
        # The target is fixed: no gradient reaches the log-likelihoods, and the padding row gets none.
        grad_ll = jax.grad(lambda ll: loss(ll=ll, in_batch=in_batch))(jnp.asarray(log_likelihoods))
        np.testing.assert_array_equal(np.asarray(grad_ll), 0.0)
        grad_q = jax.grad(lambda q: loss(queries=q, in_batch=in_batch))(jnp.asarray(QUERIES))
        assert np.isfinite(np.asarray(grad_q)).all() and np.all(np.asarray(grad_q)[2] == 0)


def test_response_log_likelihood_and_generation_loss_by_hand():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
                              [[0.3, 0.3, 0.4], [0.6, 0.2, 0.2], [0.25, 0.5, 0.25]]]))
    targets = np.array([[0, 1, 2], [2, 0, 1]])
    mask = np.array([[0, 1, 1], [1, 0, 0]])
    got = np.asarray(response_log_likelihood(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)))
    np.testing.assert_allclose(got, [(math.log(0.8) + math.log(0.6)) / 2, math.log(0.4)], rtol=1e-5)
    loss = float(generation_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)))
    np.testing.assert_allclose(loss, -(math.log(0.8) + math.log(0.6) + math.log(0.4)) / 3, rtol=1e-5)
