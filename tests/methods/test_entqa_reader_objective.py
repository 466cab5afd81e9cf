"""EntQA's reader objective (eq. 6.2, as the authors' code reduces it) and its span inference rule."""
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax.methods.entqa import reader_objective as ro


def log_softmax(x, mask):
    x = np.where(mask, x, -np.inf)
    return x - np.log(np.sum(np.exp(x[mask] - x[mask].max()))) - x[mask].max()


@pytest.fixture
def case():
    """One passage, three candidates (the third padding), 5 positions ([CLS], 3 pieces, 1 entity token)."""
    rng = np.random.default_rng(0)
    start, end = rng.normal(size=(1, 3, 5)), rng.normal(size=(1, 3, 5))
    rerank = rng.normal(size=(1, 3))
    answer = np.array([[[1, 1, 1, 1, 0]] * 3], bool)
    gold_starts = np.zeros((1, 3, 5), bool)
    gold_ends = np.zeros((1, 3, 5), bool)
    gold_starts[0, 0, [1, 3]] = True  # candidate 0: mentions (1, 2) and (3, 3)
    gold_ends[0, 0, [2, 3]] = True
    gold_starts[0, 1, 0] = gold_ends[0, 1, 0] = True  # candidate 1: not in the passage, the [CLS] span
    gold_candidates = np.array([[True, False, False]])
    candidates = np.array([[True, True, False]])
    return start, end, rerank, answer, gold_starts, gold_ends, gold_candidates, candidates


def test_the_loss_reduces_as_the_authors_code_and_as_the_chapter(case):
    start, end, rerank, answer, gs, ge, gc, cm = case
    lp_s = [log_softmax(start[0, k], answer[0, k]) for k in range(2)]
    lp_e = [log_softmax(end[0, k], answer[0, k]) for k in range(2)]
    lp_r = log_softmax(rerank[0], cm[0])
    # the code: means over gold positions, the three negated sums divided by 3
    code = -((lp_s[0][1] + lp_s[0][3]) / 2 + lp_s[1][0] + (lp_e[0][2] + lp_e[0][3]) / 2 + lp_e[1][0] + lp_r[0]) / 3
    # eq. 6.2: log p_rerank of the gold + log p_span of every gold span (the [CLS] span for candidate 1)
    chapter = -(lp_r[0] + (lp_s[0][1] + lp_e[0][2]) + (lp_s[0][3] + lp_e[0][3]) + (lp_s[1][0] + lp_e[1][0]))
    args = [jnp.asarray(x) for x in case]
    assert float(ro.reader_loss(*args)) == pytest.approx(code, rel=1e-5)
    assert float(ro.reader_loss(*args, reduction="chapter")) == pytest.approx(chapter, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        ro.reader_loss(*args, reduction="mean")


def test_a_passage_without_gold_candidates_adds_no_rerank_term(case):
    start, end, rerank, answer, gs, ge, gc, cm = case
    gs, ge = gs.copy(), ge.copy()
    gs[0, 0] = ge[0, 0] = False
    gs[0, 0, 0] = ge[0, 0, 0] = True  # both candidates absent: [CLS] spans only
    none = np.zeros_like(gc)
    loss = float(ro.reader_loss(*[jnp.asarray(x) for x in (start, end, rerank, answer, gs, ge, none, cm)]))
    expected = -sum(log_softmax(start[0, k], answer[0, k])[0] + log_softmax(end[0, k], answer[0, k])[0]
                    for k in range(2)) / 3
    assert np.isfinite(loss) and loss == pytest.approx(expected, rel=1e-5)


def reference_spans(start, end, rerank, answer, candidates, max_answer_len, top_p, drop_nested):
    """A direct transcription of the rule (the authors' get_top_spans over p_rerank p_start p_end, with spans
    that start at [CLS] but are longer left out): every admissible span sorted by probability, stop at (0, 0)."""
    out = {}
    lp_r = log_softmax(rerank, candidates)
    for k in np.flatnonzero(candidates):
        lp_s, lp_e = log_softmax(start[k], answer[k]), log_softmax(end[k], answer[k])
        spans = [(s, t) for s in range(len(lp_s)) for t in range(len(lp_s))
                 if (s == t == 0) or (1 <= s <= t < s + max_answer_len)]
        spans = [(s, t, np.exp(lp_r[k] + lp_s[s] + lp_e[t])) for s, t in spans if answer[k, s] and answer[k, t]]
        kept = []
        for s, t, p in sorted(spans, key=lambda x: -x[2]):
            if (s, t) == (0, 0) or len(kept) == top_p:
                break
            if drop_nested and any(s <= a <= c <= t or a <= s <= t <= c for a, c, _ in kept):
                continue
            kept.append((s, t, p))
        out[k] = kept
    return out


@pytest.mark.parametrize("drop_nested", [False, True])
def test_inference_keeps_the_spans_more_probable_than_cls(drop_nested):
    rng = np.random.default_rng(3)
    b, k, length = 3, 6, 12
    start, end = rng.normal(size=(b, k, length)) * 2, rng.normal(size=(b, k, length)) * 2
    start[:, :, 0] += rng.normal(size=(b, k)) * 2  # some candidates reject (their [CLS] span wins)
    rerank = rng.normal(size=(b, k))
    answer = np.arange(length)[None, None, :] < rng.integers(4, length, (b, k, 1))
    candidates = np.ones((b, k), bool)
    candidates[2, 4:] = False
    log_probs = ro.span_log_probs(*(jnp.asarray(x) for x in (start, end, rerank, answer, candidates)),
                                  max_answer_len=4)
    best, starts, ends = (np.asarray(x) for x in ro.top_spans(log_probs, 30))
    keep = ro.select_spans(best, starts, ends, top_p=3, drop_nested=drop_nested)
    rejected = 0
    for i in range(b):
        expected = reference_spans(start[i], end[i], rerank[i], answer[i], candidates[i], 4, 3, drop_nested)
        for j in range(k):
            got = [(starts[i, j, n], ends[i, j, n], np.exp(best[i, j, n])) for n in np.flatnonzero(keep[i, j])]
            want = expected.get(j, [])
            assert [(s, t) for s, t, _ in got] == [(s, t) for s, t, _ in want]
            np.testing.assert_allclose([p for *_, p in got], [p for *_, p in want], rtol=1e-4)
            rejected += not want and candidates[i, j]
    assert rejected > 0 and keep.sum() > 5  # both outcomes occur
