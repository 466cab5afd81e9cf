"""EntQA-style error analysis (MD-only score, entity-set score, error categories) on hand-computed cases."""
import json

import pytest

from kipjax.metrics.el import (entity_set_prf, error_categories, inkb_micro_prf, main, md_micro_prf,
                               score_analysis_files)


def _counts(result):
    return result["true_positives"], result["false_positives"], result["false_negatives"]


def test_md_counts_right_spans_with_wrong_entities():
    gold = [("d1", (0, 5), "Paris"), ("d1", (10, 14), "France")]
    predicted = [("d1", (0, 5), "Paris"), ("d1", (10, 14), "Frankfurt")]
    # InKB: TP = 1, FP = 1, FN = 1 -> P = R = F1 = 0.5. MD: both spans right -> TP = 2 -> P = R = F1 = 1.
    assert inkb_micro_prf(gold, predicted)["f1"] == 0.5
    assert md_micro_prf(gold, predicted) == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                             "true_positives": 2, "false_positives": 0, "false_negatives": 0}


def test_md_drops_nil_annotations():
    gold = [("d", (0, 5), "Paris"),
            ("d", (20, 25), "--NME--"),    # NIL gold: ignored, though predicted as NIL below
            ("d", (40, 45), "NIL")]        # NIL gold span: an in-KB entity predicted there is an MD false positive
    predicted = [("d", (0, 5), "Paris"), ("d", (20, 25), "NIL"), ("d", (30, 33), None), ("d", (40, 45), "Seine")]
    # gold spans {(0, 5)}; predicted spans {(0, 5), (40, 45)} -> TP = 1, FP = 1, FN = 0
    # P = 1/2, R = 1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    result = md_micro_prf(gold, predicted)
    assert _counts(result) == (1, 1, 0)
    assert (result["precision"], result["recall"]) == (0.5, 1.0)
    assert result["f1"] == pytest.approx(2 / 3)


def test_md_duplicates_and_documents():
    gold = [("d1", (0, 5), "Paris"), ("d1", (7, 9), "Seine")]
    predicted = [("d1", (0, 5), "Paris"), ("d1", (0, 5), "Paris"),   # exact duplicate
                 ("d1", (0, 5), "France"),                           # same span, second entity: one MD span
                 ("d2", (7, 9), "Seine")]                            # right span in the wrong document
    # MD: predicted spans {(d1, (0, 5)), (d2, (7, 9))}: TP = 1, FP = 1, FN = 1 -> P = R = F1 = 1/2
    # InKB: predicted triples {Paris, France, d2 Seine}: TP = 1, FP = 2, FN = 1 -> P = 1/3, R = 1/2, F1 = 2/5
    md = md_micro_prf(gold, predicted)
    assert _counts(md) == (1, 1, 1)
    assert (md["precision"], md["recall"], md["f1"]) == (0.5, 0.5, 0.5)
    inkb = inkb_micro_prf(gold, predicted)
    assert _counts(inkb) == (1, 2, 1)
    assert inkb["f1"] == pytest.approx(2 / 5)


def test_md_empty_cases_follow_inkb():
    assert md_micro_prf([], [])["f1"] == 1.0
    assert md_micro_prf([("d", (0, 1), "NIL")], [("d", (0, 1), None)])["f1"] == 1.0
    assert md_micro_prf([], [("d", (0, 1), "x")]) == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0,
        "true_positives": 0, "false_positives": 1, "false_negatives": 0}


def test_entity_sets_passage_vs_document_level():
    # One document D of two passages.
    gold_passages = {"p1": {"A", "B"}, "p2": {"B", "C"}}
    pred_passages = {"p1": {"A", "NIL"}, "p2": {"B", "A"}}   # NIL: dropped
    # passages: gold pairs (p1 A) (p1 B) (p2 B) (p2 C); predicted (p1 A) (p2 B) (p2 A)
    #   TP = 2, FP = 1, FN = 2 -> P = 2/3, R = 1/2, F1 = 2 * (2/3) * (1/2) / (7/6) = 4/7
    passage = entity_set_prf(gold_passages, pred_passages)
    assert _counts(passage) == (2, 1, 2)
    assert passage["precision"] == pytest.approx(2 / 3)
    assert passage["recall"] == 0.5
    assert passage["f1"] == pytest.approx(4 / 7)
    # document: union over passages, gold {A, B, C}, predicted {A, B}: the misplaced A is no longer an error
    #   TP = 2, FP = 0, FN = 1 -> P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 4/5
    document = entity_set_prf({"D": set().union(*gold_passages.values())},
                              {"D": set().union(*pred_passages.values())})
    assert _counts(document) == (2, 0, 1)
    assert document["recall"] == pytest.approx(2 / 3)
    assert document["f1"] == pytest.approx(4 / 5)


def test_entity_sets_missing_keys_and_duplicates():
    # a key without predictions loses its gold entities; a key only predicted contributes false positives
    assert _counts(entity_set_prf({"a": {"x"}}, {})) == (0, 0, 1)
    assert _counts(entity_set_prf({"a": set()}, {"b": {"x"}})) == (0, 1, 0)
    # pairs are (key, entity): the same entity under another key does not match; repeats count once
    assert _counts(entity_set_prf({"a": ["x", "x"]}, {"a": ["x"], "b": ["x", None]})) == (1, 1, 0)
    assert entity_set_prf({}, {})["f1"] == 1.0


def test_error_categories():
    A, B, C = ((0, 1), "A"), ((2, 3), "B"), ((5, 6), "C")
    gold = {
        "correct": {A},
        "over": {A},
        "under": {A, B},
        "wrong_entity": {A},
        "wrong_span": {A, C},
        "empty": set(),
        "nil": {A, ((8, 9), "--NME--")},   # NIL annotations are dropped on both sides
        "no_prediction": {A},
    }
    pred = {
        "correct": {A},
        "over": {A, B},                    # gold strict subset of predicted
        "under": {A},                      # predicted strict subset of gold
        "wrong_entity": {((0, 1), "A2")},  # same span, other entity: neither
        "wrong_span": {((0, 2), "A"), C, B},   # shares C, misses A, adds two: neither
        "empty": [],
        "nil": [A, ((9, 10), "NIL"), ((11, 12), None)],
        "only_predicted": {B},             # no gold: over
    }
    result = error_categories(gold, pred)
    assert {k: result[k] for k in ("correct", "over", "under", "neither")} == {
        "correct": 3, "over": 2, "under": 2, "neither": 2}
    assert result["keys"] == {
        "correct": ["correct", "empty", "nil"],
        "over": ["over", "only_predicted"],          # gold's keys in order, then keys only predicted
        "under": ["under", "no_prediction"],
        "neither": ["wrong_entity", "wrong_span"],
    }


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def link_files(tmp_path):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [
        {"id": "d1", "links": [[0, 5, "Paris"], [10, 14, "France"], [20, 25, "--NME--"]]},
        {"id": "d2", "links": [[0, 4, "Obama"], [9, 15, "Hawaii"]]},
        {"id": "d3", "links": [[0, 6, "London"]]},
        {"id": "d4", "links": [[0, 3, "Rome"]]},
        {"id": "d5", "links": []}])
    pred = _write_jsonl(tmp_path / "pred.jsonl", [
        {"id": "d1", "links": [[0, 5, "Paris"], [10, 14, "Frankfurt"], [30, 35, "France"]]},   # neither
        {"id": "d2", "links": [[0, 4, "Obama"]]},                                              # under
        {"id": "d3", "links": [[0, 6, "London"], [8, 12, "Thames"], [20, 26, "London"]]},      # over
        {"id": "d4", "links": [[0, 3, "Rome"], [5, 8, "NIL"]]}])                               # correct
    return gold, pred                                                                # d5: nothing, correct


# Expected analysis of link_files (6 in-KB gold annotations, 8 predicted):
#   InKB: TP = 4 (Paris, Obama, London 0-6, Rome), FP = 4 (Frankfurt, France 30-35, Thames, London 20-26),
#         FN = 2 (France 10-14, Hawaii) -> P = 1/2, R = 2/3, F1 = 8 / (8 + 4 + 2) = 4/7
#   MD:   TP = 5 (d1 0-5, d1 10-14, d2 0-4, d3 0-6, d4 0-3), FP = 3 (d1 30-35, d3 8-12, d3 20-26),
#         FN = 1 (d2 9-15) -> P = 5/8, R = 5/6, F1 = 10 / (10 + 3 + 1) = 5/7
#   document entity sets: gold d1 {Paris, France} d2 {Obama, Hawaii} d3 {London} d4 {Rome};
#         predicted d1 {Paris, Frankfurt, France} d2 {Obama} d3 {London, Thames} d4 {Rome}
#         TP = 5, FP = 2 (Frankfurt, Thames), FN = 1 (Hawaii) -> P = 5/7, R = 5/6, F1 = 10 / 13
EXPECTED = {
    "num_documents": 5,
    "inkb_precision": 1 / 2, "inkb_recall": 2 / 3, "inkb_f1": 4 / 7,
    "inkb_true_positives": 4, "inkb_false_positives": 4, "inkb_false_negatives": 2,
    "md_precision": 5 / 8, "md_recall": 5 / 6, "md_f1": 5 / 7,
    "md_true_positives": 5, "md_false_positives": 3, "md_false_negatives": 1,
    "document_entities_precision": 5 / 7, "document_entities_recall": 5 / 6, "document_entities_f1": 10 / 13,
    "document_entities_true_positives": 5, "document_entities_false_positives": 2,
    "document_entities_false_negatives": 1,
    "num_correct_documents": 2, "num_over_documents": 1, "num_under_documents": 1, "num_neither_documents": 1,
}
EXPECTED_DOCUMENTS = {"correct": ["d4", "d5"], "over": ["d3"], "under": ["d2"], "neither": ["d1"]}


def _check_analysis(result):
    assert result.pop("documents_by_category") == EXPECTED_DOCUMENTS
    assert result == pytest.approx(EXPECTED)


def test_analysis_files_and_cli_json(link_files, capsys):
    gold, pred = link_files
    _check_analysis(score_analysis_files(gold, pred))
    main(["analysis", "--gold", gold, "--pred", pred, "--json"])
    _check_analysis(json.loads(capsys.readouterr().out))


def test_analysis_cli_table(link_files, capsys):
    gold, pred = link_files
    main(["analysis", "--gold", gold, "--pred", pred])
    lines = capsys.readouterr().out.splitlines()
    width = len("document_entities_false_negatives")
    assert f"{'md_f1':{width}s} 0.7143" in lines             # 5/7
    assert f"{'num_over_documents':{width}s} 1" in lines
    assert "  neither: d1" in lines and "  correct: d4, d5" in lines
    # the inkb table keeps its 24-character name column
    main(["inkb", "--gold", gold, "--pred", pred])
    assert f"{'f1':24s} 0.5714" in capsys.readouterr().out.splitlines()   # 4/7


def test_analysis_rejects_unknown_documents(tmp_path):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [{"id": "d1", "links": []}])
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": "d9", "links": [[0, 1, "x"]]}])
    with pytest.raises(SystemExit, match=r"document id\(s\) \['d9'\] are not in the gold file"):
        main(["analysis", "--gold", gold, "--pred", pred])
