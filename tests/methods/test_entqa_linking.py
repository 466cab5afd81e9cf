"""EntQA's linking step: kept spans to document characters, merging across passages, the threshold, the
overlap option, and appendix D.1's calibration against a brute-force threshold sweep."""
import itertools
import math

import numpy as np
import pytest

from kipjax.methods.entqa.data import PassageExample
from kipjax.methods.entqa.linking import (ScoredLink, calibrate, final_links, link_metrics, merge_passages,
                                          passage_links)
from kipjax.methods.entqa.passages import Passage
from kipjax.metrics import el as el_metrics

TEXT = "Varn beat Tolbek at Varn River"
# the document's pieces: Varn | beat | Tol | ##bek | at | Varn | River, with their characters
SPANS = ((0, 4), (5, 9), (10, 13), (13, 16), (17, 19), (20, 24), (25, 30))


def passage(offset, count):
    return Passage("d1", offset, tuple(range(offset, offset + count)), SPANS[offset:offset + count], ())


def example(p):
    return PassageExample(p, (), (), ())


def test_kept_spans_become_document_characters_with_their_probability():
    p = passage(2, 5)  # Tol ##bek at Varn River
    candidates = np.array([7, 3])
    starts = np.array([[1, 4, 0], [4, 0, 0]])  # pair positions: the passage's piece i is at i + 1
    ends = np.array([[2, 5, 0], [4, 0, 0]])
    log_probs = np.log(np.array([[0.5, 0.2, 0.1], [0.3, 0.2, 0.05]]))
    keep = np.array([[True, True, False], [True, False, False]])
    titles = [f"E{i}" for i in range(10)]
    links = passage_links(p, candidates, keep, log_probs, starts, ends, titles)
    assert [link[:3] for link in links] == [(10, 16, "E7"), (20, 30, "E7"), (20, 24, "E3")]
    assert [TEXT[s:e] for s, e, *_ in links] == ["Tolbek", "Varn River", "Varn"]
    assert [link.score for link in links] == pytest.approx([0.5, 0.2, 0.3])


def test_overlapping_passages_propose_a_link_once_with_its_best_score():
    first, second = example(passage(0, 4)), example(passage(2, 5))
    other = PassageExample(Passage("d2", 0, (), (), ()), (), (), ())
    merged = merge_passages([first, second, other], [
        [ScoredLink(10, 16, "Tolbek", 0.4), ScoredLink(0, 4, "Varn", 0.9)],
        [ScoredLink(10, 16, "Tolbek", 0.7), ScoredLink(10, 16, "Tolbek FC", 0.2)],
        []])
    assert merged == {"d1": [ScoredLink(0, 4, "Varn", 0.9), ScoredLink(10, 16, "Tolbek", 0.7),
                             ScoredLink(10, 16, "Tolbek FC", 0.2)], "d2": []}


def test_the_threshold_and_the_overlap_option():
    links = [ScoredLink(0, 4, "Varn", 0.3), ScoredLink(20, 24, "Varn", 0.6), ScoredLink(20, 30, "Varn River", 0.5),
             ScoredLink(25, 30, "River", 0.05), ScoredLink(10, 16, "Tolbek", 0.6)]
    assert final_links(links, 0.05) == links[:3] + [links[4]]  # strictly above gamma; nested ones stay
    # best-first: Tolbek (0.6) and Varn@20 (0.6, ties in text order) are kept, Varn River overlaps Varn@20
    assert final_links(links, 0.0, "best") == [links[0], links[4], links[1], links[3]]
    with pytest.raises(ValueError, match="overlaps must be one of"):
        final_links(links, 0.0, "drop")


def brute_force_best(scored, records, overlaps):
    gold = {(r["id"], (s, e), t) for r in records for s, e, t in r["links"]}
    results = []
    for threshold in sorted({0.0, *(l.score for ls in scored.values() for l in ls)}, reverse=True):
        pred = {(doc, (l.start, l.end), l.entity) for doc, ls in scored.items()
                for l in final_links(ls, threshold, overlaps)}
        results.append((el_metrics.inkb_micro_prf(gold, pred)["f1"], threshold))
    best = max(f for f, _ in results)
    return best, max(t for f, t in results if f == best)


@pytest.mark.parametrize("overlaps", ["keep", "best"])
def test_calibration_finds_the_best_threshold_of_a_brute_force_sweep(overlaps):
    rng = np.random.default_rng(0)
    records, scored = [], {}
    for d in range(6):
        spans = [(5 * i, 5 * i + 3) for i in range(5)]
        gold = [(s, e, f"E{rng.integers(4)}") for s, e in spans[:3]] + [(30, 34, None)]
        records.append({"id": f"d{d}", "text": "x" * 40, "links": [list(g) for g in gold]})
        links = []
        for (s, e), entity in itertools.product(spans + [(5, 12)], ["E0", "E1", "E2", "E3"]):
            if rng.random() < 0.3:
                links.append(ScoredLink(s, e, entity, float(np.round(rng.random(), 2))))
        scored[f"d{d}"] = sorted(set(links))
    found = calibrate(scored, records, overlaps)
    best_f1, best_threshold = brute_force_best(scored, records, overlaps)
    assert found["f1"] == pytest.approx(best_f1)
    assert found["threshold"] == pytest.approx(best_threshold)  # every distinct score is tried
    assert 0.0 < found["f1"] < 1.0


def test_link_metrics_score_inkb_md_and_entity_sets_by_hand():
    records = [{"id": "d1", "text": TEXT, "links": [[0, 4, "Varn"], [10, 16, "Tolbek"], [20, 30, None]]}]
    scored = {"d1": [ScoredLink(0, 4, "Varn", 0.9), ScoredLink(10, 16, "Tolbek FC", 0.6),
                     ScoredLink(20, 24, "Varn", 0.02)]}
    metrics = link_metrics(scored, records, threshold=0.05,
                           passage_entities=({"p0": {"Varn"}, "p1": {"Tolbek"}}, {"p0": {"Varn", "Tolbek FC"}}))
    # kept: Varn right, Tolbek FC a right span with a wrong entity; gold in KB: Varn, Tolbek
    assert metrics["f1"] == pytest.approx(0.5) and metrics["md_f1"] == pytest.approx(1.0)
    assert metrics["document_entities_f1"] == pytest.approx(0.5)
    assert metrics["passage_entities_f1"] == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))
    # the best threshold keeps only Varn: precision 1, recall 1/2
    assert metrics["calibrated_f1"] == pytest.approx(2 / 3) and metrics["calibrated_threshold"] == 0.6
    assert math.isclose(metrics["precision"], 0.5) and math.isclose(metrics["recall"], 0.5)
