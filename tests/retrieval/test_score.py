"""ScoreHead / pairwise / candidate scores against the chapter-3 formulas written directly in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax.retrieval.score import ScoreHead, candidate_scores, general_score, pairwise_scores

B, C, T, T_ENT, H = 3, 4, 6, 7, 8
M = 3  # multi / genpoly entity vectors
CODES = 4
KINDS = ("dual", "multi", "som", "poly", "genpoly")


def _head(kind: str) -> ScoreHead:
    return ScoreHead(kind=kind, num_vectors=CODES if kind == "poly" else M, num_codes=CODES)


def _lengths_mask(rng: np.random.Generator, shape: tuple[int, ...], length: int) -> np.ndarray:
    lengths = rng.integers(1, length + 1, size=shape)
    return np.arange(length) < lengths[..., None]


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    mention = rng.normal(size=(B, T, H)).astype(np.float32)
    mention_mask = _lengths_mask(rng, (B,), T)
    cands = rng.normal(size=(B, C, T_ENT, H)).astype(np.float32)
    cand_mask = _lengths_mask(rng, (B, C), T_ENT)
    cand_mask[0, 0, :2] = [True, False]  # an entity shorter than M
    return mention, mention_mask, cands, cand_mask


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _codes_reduce(E: np.ndarray, mask: np.ndarray, O: np.ndarray) -> np.ndarray:
    """K = E Soft(E^T O) with E [T, H] (rows = tokens); softmax over valid tokens; returns [codes, H]."""
    Ev = E[mask]
    return np.stack([_softmax(Ev @ o) @ Ev for o in O])


def _reference(kind: str, E, e_mask, F, f_mask, O) -> float:
    """One (mention, entity) score from the chapter's formulas; E [T, H], F [T', H] with rows = tokens."""
    E = E.astype(np.float64)
    F = F.astype(np.float64)
    if kind == "dual":
        return float(E[0] @ F[0])
    if kind == "multi":
        return float(max(E[0] @ F[t] for t in range(M) if f_mask[t]))
    if kind == "som":
        Ev, Fv = E[e_mask], F[f_mask]
        return float(sum(max(e @ f for f in Fv) for e in Ev))
    K = _codes_reduce(E, e_mask, O.astype(np.float64))
    queries = [F[0]] if kind == "poly" else [F[t] for t in range(M) if f_mask[t]]
    # POLY: F_1^T C(x, y), C = K Soft(K^T F_1); GENPOLY sums that over the m leftmost entity vectors.
    return float(sum(q @ (_softmax(K @ q) @ K) for q in queries))


def _apply(kind: str, mention, mention_mask, cands, cand_mask):
    head = _head(kind)
    params = head.init(jax.random.key(0), mention, mention_mask, cands, cand_mask)
    return params, head.apply(params, mention, mention_mask, cands, cand_mask)


@pytest.mark.parametrize("kind", KINDS)
def test_score_head_matches_chapter_formula(kind):
    mention, mention_mask, cands, cand_mask = _inputs()
    params, scores = _apply(kind, mention, mention_mask, cands, cand_mask)
    assert scores.shape == (B, C) and scores.dtype == jnp.float32
    O = np.asarray(nn.unbox(params["params"]["codes"])) if kind in ("poly", "genpoly") else None
    expected = np.array([[_reference(kind, mention[b], mention_mask[b], cands[b, c], cand_mask[b, c], O)
                          for c in range(C)] for b in range(B)])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["hard", "soft"])
def test_general_score_is_eq_3_10_read_literally(attention):
    """1_m^T Q^T K Attn(K^T Q), aggregating each query column's own score: sum of the diagonal."""
    rng = np.random.default_rng(1)
    Q, K = rng.normal(size=(H, 3)), rng.normal(size=(H, 5))  # columns are vectors, as in the chapter
    A = K.T @ Q
    if attention == "soft":
        attn = np.exp(A - A.max(0)) / np.exp(A - A.max(0)).sum(0)
    else:
        attn = (A == A.max(0)).astype(float)
    expected = np.trace(Q.T @ K @ attn)
    got = general_score(jnp.asarray(Q.T, jnp.float32), jnp.ones(3, bool), jnp.asarray(K.T, jnp.float32),
                        jnp.ones(5, bool), attention)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_agrees_with_candidates(kind):
    """Scoring a cached entity table pairwise gives the same numbers as per-example candidate scoring."""
    mention, mention_mask, cands, cand_mask = _inputs(2)
    head = _head(kind)
    params = head.init(jax.random.key(0), mention, mention_mask, cands, cand_mask)
    table, table_mask = cands.reshape(B * C, T_ENT, H), cand_mask.reshape(B * C, T_ENT)
    ent_vecs, ent_mask = head.apply(params, table, table_mask, method=ScoreHead.reduce_entity)
    men_vecs, men_mask = head.apply(params, mention, mention_mask, method=ScoreHead.reduce_mention)
    pairwise = jax.jit(pairwise_scores, static_argnums=0)(kind, men_vecs, men_mask, ent_vecs, ent_mask)
    assert pairwise.shape == (B, B * C)
    ids = np.random.default_rng(3).integers(0, B * C, size=(B, C))
    cand = candidate_scores(kind, men_vecs, men_mask, ent_vecs[ids], ent_mask[ids])
    np.testing.assert_allclose(cand, np.take_along_axis(np.asarray(pairwise), ids, axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(head.apply(params, mention, mention_mask, cands, cand_mask),
                               np.asarray(pairwise).reshape(B, B, C)[np.arange(B), np.arange(B)], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_changes_nothing(kind):
    mention, mention_mask, cands, cand_mask = _inputs(4)
    params, scores = _apply(kind, mention, mention_mask, cands, cand_mask)
    rng = np.random.default_rng(5)
    noisy_mention = np.where(mention_mask[..., None], mention, 100 * rng.normal(size=mention.shape))
    noisy_cands = np.where(cand_mask[..., None], cands, 100 * rng.normal(size=cands.shape))
    noisy = _head(kind).apply(params, noisy_mention.astype(np.float32), mention_mask,
                              noisy_cands.astype(np.float32), cand_mask)
    np.testing.assert_allclose(noisy, scores, rtol=1e-6, atol=1e-6)


def test_all_padding_entity_scores_zero_with_finite_gradient():
    """An all-padding row of a chunked table must not produce NaN scores or gradients."""
    mention, mention_mask, cands, cand_mask = _inputs(6)
    ent = jnp.asarray(cands[0])
    ent_mask = jnp.asarray(cand_mask[0]).at[1].set(False)
    for kind in KINDS:
        head = _head(kind)
        params = head.init(jax.random.key(0), mention, mention_mask, cands, cand_mask)
        men_vecs, men_mask = head.apply(params, mention, mention_mask, method=ScoreHead.reduce_mention)
        ent_vecs, ent_vmask = head.apply(params, ent, ent_mask, method=ScoreHead.reduce_entity)

        def total(e):
            return jnp.sum(pairwise_scores(kind, men_vecs, men_mask, e, ent_vmask))

        np.testing.assert_array_equal(pairwise_scores(kind, men_vecs, men_mask, ent_vecs, ent_vmask)[:, 1], 0.0)
        assert np.all(np.isfinite(jax.grad(total)(ent_vecs)))


def test_codes_are_a_partitioned_parameter_and_entity_side_has_none():
    mention, mention_mask, cands, cand_mask = _inputs()
    head = ScoreHead(kind="genpoly", num_vectors=M, num_codes=CODES, param_dtype=jnp.bfloat16)
    params = head.init(jax.random.key(0), mention, mention_mask, method=ScoreHead.reduce_mention)
    assert nn.get_partition_spec(params)["params"]["codes"] == jax.sharding.PartitionSpec("codes", "embed")
    codes = nn.unbox(params["params"]["codes"])
    assert codes.shape == (CODES, H) and codes.dtype == jnp.bfloat16
    vecs, mask = head.apply(params, cands[:, 0], cand_mask[:, 0], method=ScoreHead.reduce_entity)
    assert vecs.shape == (B, M, H) and mask.shape == (B, M)
    assert jax.tree.leaves(ScoreHead(kind="som").init(jax.random.key(0), mention, mention_mask, cands,
                                                      cand_mask)) == []


def test_reduced_shapes():
    mention, mention_mask, cands, cand_mask = _inputs()
    expected = {"dual": (1, 1), "multi": (1, M), "som": (T, T_ENT), "poly": (CODES, 1), "genpoly": (CODES, M)}
    for kind, (mx, my) in expected.items():
        head = _head(kind)
        params = head.init(jax.random.key(0), mention, mention_mask, cands, cand_mask)
        men, men_mask = head.apply(params, mention, mention_mask, method=ScoreHead.reduce_mention)
        ent, ent_mask = head.apply(params, cands[:, 0], cand_mask[:, 0], method=ScoreHead.reduce_entity)
        assert men.shape == (B, mx, H) and men_mask.shape == (B, mx), kind
        assert ent.shape == (B, my, H) and ent_mask.shape == (B, my), kind


def test_unknown_kind_and_attention_are_rejected():
    with pytest.raises(ValueError, match="unknown score kind"):
        pairwise_scores("colbert", jnp.ones((1, 1, 2)), jnp.ones((1, 1), bool), jnp.ones((1, 1, 2)),
                        jnp.ones((1, 1), bool))
    with pytest.raises(ValueError, match="unknown attention"):
        general_score(jnp.ones((1, 2)), jnp.ones(1, bool), jnp.ones((1, 2)), jnp.ones(1, bool), "sparse")
