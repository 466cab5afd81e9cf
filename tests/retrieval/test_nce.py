"""Contrastive losses against values worked out by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax.retrieval.nce import (all_golds_nce_loss, bias_corrected_nce_loss, kl_distillation_loss,
                                  marginal_nce_loss, masked_logsumexp, multilabel_nce_loss, nce_loss)

LN = math.log


def test_nce_loss_by_hand():
    # Row 1: exp(s) = 2, 1, 5 -> -log(2 / 8) = ln 4.  Row 2: exp(s) = 1, 1, 1 -> ln 3.
    scores = jnp.array([[LN(2), 0.0, LN(5)], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(nce_loss(scores), (LN(4) + LN(3)) / 2, rtol=1e-6)


def test_nce_loss_valid_mask_drops_padding():
    # Row 1 keeps all: ln 4.  Row 2 drops the huge padded score: exp(s) = 1, 1 -> ln 2.
    scores = jnp.array([[LN(2), 0.0, LN(5)], [0.0, 0.0, 1e4]])
    valid = jnp.array([[True, True, True], [True, True, False]])
    np.testing.assert_allclose(nce_loss(scores, valid), (LN(4) + LN(2)) / 2, rtol=1e-6)


def test_nce_loss_is_stable_for_large_scores():
    # Shifting every score by 1e4 changes nothing: still ln 4 and ln 3.
    scores = jnp.array([[LN(2), 0.0, LN(5)], [0.0, 0.0, 0.0]]) + 1e4
    np.testing.assert_allclose(nce_loss(scores), (LN(4) + LN(3)) / 2, rtol=1e-3)


def test_multilabel_by_hand():
    # Row 1: golds at exp(s) = 1 and 3, non-golds exp(s) = 2 + 4 = 6.
    #   gold 1: -log(1 / (1 + 6)) = ln 7;  gold 3: -log(3 / (3 + 6)) = ln 3;  sum = ln 21.
    # Row 2: no gold -> contributes 0, but counts in the batch mean.
    scores = jnp.array([[0.0, LN(2), LN(3), LN(4)], [1.0, 2.0, 3.0, 4.0]])
    gold = jnp.array([[True, False, True, False], [False] * 4])
    np.testing.assert_allclose(multilabel_nce_loss(scores, gold), LN(21) / 2, rtol=1e-6)


def test_entqa_ablation_variants_by_hand():
    # exp(s) = 1, 2, 3, 4, golds 1 and 3 (total 10).  All golds in the normaliser: -log(1/10) - log(3/10)
    # = ln(100 / 3).  Marginal: -log((1 + 3) / 10) = ln(10 / 4).  Row 2 (no gold) adds 0 to both means.
    scores = jnp.array([[0.0, LN(2), LN(3), LN(4)], [1.0, 2.0, 3.0, 4.0]])
    gold = jnp.array([[True, False, True, False], [False] * 4])
    np.testing.assert_allclose(all_golds_nce_loss(scores, gold), LN(100 / 3) / 2, rtol=1e-6)
    np.testing.assert_allclose(marginal_nce_loss(scores, gold), LN(10 / 4) / 2, rtol=1e-6)
    # with one gold per example, all three are plain NCE
    one = jnp.array([[True, False, False, False]] * 2)
    for loss in (all_golds_nce_loss, marginal_nce_loss, multilabel_nce_loss):
        np.testing.assert_allclose(loss(scores, one), nce_loss(scores), rtol=1e-6)


def test_multilabel_valid_mask():
    # The padded non-gold exp(s) = 4 is dropped: gold 1: ln(1 + 2) = ln 3; gold 3: -log(3 / 5) = ln(5/3).
    scores = jnp.array([[0.0, LN(2), LN(3), LN(4)]])
    gold = jnp.array([[True, False, True, False]])
    valid = jnp.array([[True, True, True, False]])
    np.testing.assert_allclose(multilabel_nce_loss(scores, gold, valid), LN(3) + LN(5 / 3), rtol=1e-6)


def test_multilabel_with_one_gold_equals_nce():
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.normal(size=(6, 5)) * 3, jnp.float32)
    gold_col = rng.integers(0, 5, size=6)
    gold = jnp.asarray(np.arange(5) == gold_col[:, None])
    # Move each row's gold to column 0 for nce_loss.
    order = np.argsort(~np.asarray(gold), axis=1, kind="stable")
    np.testing.assert_allclose(multilabel_nce_loss(scores, gold),
                               nce_loss(jnp.take_along_axis(scores, jnp.asarray(order), axis=1)), rtol=1e-6)


def test_multilabel_without_negatives_is_zero_with_finite_gradient():
    scores = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    gold = jnp.array([[True, True], [False, False]])
    loss, grad = jax.value_and_grad(multilabel_nce_loss)(scores, gold)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_bias_corrected_by_hand():
    # K = 3, nu = 1/4, 1/2 for the two negatives, so (K-1) nu = 1/2, 1 and the shifts are +ln 2, 0:
    #   exp of shifted scores: e, 2 e^2, e^3 -> loss = ln(e + 2e^2 + e^3) - 1 = ln((1 + e)^2) = 2 ln(1 + e).
    scores = jnp.array([[1.0, 2.0, 3.0]])
    neg_log_q = jnp.array([[LN(4), LN(2)]])
    np.testing.assert_allclose(bias_corrected_nce_loss(scores, neg_log_q), 2 * LN(1 + math.e), rtol=1e-6)


def test_bias_corrected_counts_only_valid_negatives():
    # Last negative padded: K-1 = 1, nu = 1/2 -> shift +ln 2: exp = e, 2e^2 -> ln(e + 2e^2) - 1 = ln(1 + 2e).
    scores = jnp.array([[1.0, 2.0, 50.0]])
    neg_log_q = jnp.array([[LN(2), jnp.inf]])
    valid = jnp.array([[True, True, False]])
    loss, grad = jax.value_and_grad(bias_corrected_nce_loss)(scores, neg_log_q, valid)
    np.testing.assert_allclose(loss, LN(1 + 2 * math.e), rtol=1e-6)
    assert np.all(np.isfinite(grad)) and grad[0, 2] == 0.0


def test_kl_distillation_by_hand():
    # Row 1: p_teacher = (1/4, 3/4), p_student = (1/2, 1/2):
    #   KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2.  Row 2: identical distributions -> 0.
    student = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    teacher = jnp.array([[0.0, LN(3)], [1.0, 2.0]])
    np.testing.assert_allclose(kl_distillation_loss(student, teacher), (0.75 * LN(3) - LN(2)) / 2, rtol=1e-6)


def test_kl_gradient_reaches_only_the_student():
    student = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    teacher = jnp.array([[0.0, LN(3)], [0.5, -1.0]])
    g_student, g_teacher = jax.grad(kl_distillation_loss, argnums=(0, 1))(student, teacher)
    np.testing.assert_array_equal(g_teacher, 0.0)
    # d KL / d student = (softmax(student) - softmax(teacher)) / B.
    expected = (jax.nn.softmax(student) - jax.nn.softmax(teacher)) / 2
    np.testing.assert_allclose(g_student, expected, rtol=1e-6, atol=1e-7)

    # With shared parameters, only the student path carries gradient: d/dw KL(softmax(w b) || softmax(w a)).
    a, b = jnp.array([[1.0, -1.0, 0.5]]), jnp.array([[0.2, 0.3, -2.0]])
    g_w = jax.grad(lambda w: kl_distillation_loss(w * a, w * b))(1.0)
    np.testing.assert_allclose(g_w, jnp.sum((jax.nn.softmax(a) - jax.nn.softmax(b)) * a), rtol=1e-5)


def test_kl_valid_mask():
    # Padded third column ignored: same as row 1 of the hand-computed case.
    student = jnp.array([[0.0, 0.0, 9.0]])
    teacher = jnp.array([[0.0, LN(3), -9.0]])
    valid = jnp.array([[True, True, False]])
    np.testing.assert_allclose(kl_distillation_loss(student, teacher, valid), 0.75 * LN(3) - LN(2), rtol=1e-6)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_padding_cannot_poison_losses_or_gradients(bad):
    scores = jnp.array([[1.0, 0.5, bad], [0.0, bad, 2.0]])
    valid = jnp.isfinite(scores)
    gold = jnp.array([[True, False, False], [True, False, False]])
    losses = {
        "nce": lambda s: nce_loss(s, valid),
        "multilabel": lambda s: multilabel_nce_loss(s, gold, valid),
        "bias": lambda s: bias_corrected_nce_loss(s, jnp.zeros((2, 2)), valid),
        "kl": lambda s: kl_distillation_loss(s, s * 0.5, valid),
    }
    for name, loss in losses.items():
        value, grad = jax.value_and_grad(loss)(scores)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), name
        np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(valid)], 0.0, err_msg=name)


def test_losses_under_jit_match_eager():
    rng = np.random.default_rng(1)
    scores = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    other = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    gold = jnp.asarray(rng.random((4, 6)) < 0.3)
    valid = jnp.asarray(rng.random((4, 6)) < 0.8).at[:, 0].set(True)
    cases = [(nce_loss, (scores, valid)), (multilabel_nce_loss, (scores, gold, valid)),
             (bias_corrected_nce_loss, (scores, other[:, 1:], valid)), (kl_distillation_loss, (scores, other, valid))]
    for fn, args in cases:
        np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6)


def test_masked_logsumexp_empty_row():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    mask = jnp.array([[True, False], [False, False]])
    out = masked_logsumexp(x, mask)
    assert out[0] == 1.0 and out[1] == -jnp.inf
