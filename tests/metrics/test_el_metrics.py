"""Entity-linking metrics on hand-computed cases (arithmetic in the comments) and the CLI."""
import json

import numpy as np
import pytest

from kipjax.metrics.el import inkb_micro_prf, main, score_inkb_files, score_zeshel_files, zeshel_accuracy


def test_zeshel_accuracy_macro_over_domains():
    # domain A: 4 mentions, gold found for m0, m1, m2; correct m0, m1 (m3 not found, predicted wrong)
    #   unnormalized 2/4 = 0.5, normalized 2/3
    # domain B: 2 mentions, both found; correct m4 -> unnormalized 1/2, normalized 1/2
    # macro: unnormalized (0.5 + 0.5) / 2 = 0.5; normalized (2/3 + 1/2) / 2 = 7/12
    # (the micro averages would differ: 3/6 and 3/5)
    predictions = np.array([10, 11, 99, 99, 20, 98])
    gold = np.array([10, 11, 12, 13, 20, 21])
    domains = np.array(["A", "A", "A", "A", "B", "B"])
    found = np.array([True, True, True, False, True, True])
    result = zeshel_accuracy(predictions, gold, domains, found)
    assert result["unnormalized_accuracy"] == pytest.approx(0.5)
    assert result["normalized_accuracy"] == pytest.approx(7 / 12)
    assert result["per_domain"]["A"] == {"num_mentions": 4, "num_gold_in_candidates": 3,
                                         "unnormalized_accuracy": 0.5, "normalized_accuracy": pytest.approx(2 / 3)}


def test_zeshel_domain_without_found_gold_is_left_out_of_normalized():
    # A: 1/1 correct (found). B: gold never found -> normalized None, unnormalized 0/1.
    # normalized = mean over A only = 1.0; unnormalized = (1 + 0) / 2 = 0.5
    result = zeshel_accuracy(np.array([1, 5]), np.array([1, 2]), np.array([0, 1]), np.array([True, False]))
    assert result["normalized_accuracy"] == 1.0
    assert result["unnormalized_accuracy"] == 0.5
    assert result["per_domain"][1]["normalized_accuracy"] is None


def test_zeshel_shape_mismatch():
    with pytest.raises(ValueError, match="one length"):
        zeshel_accuracy(np.array([1, 2]), np.array([1]), np.array([0, 0]))


def test_inkb_micro_prf():
    gold = [("d1", (0, 5), "Paris"), ("d1", (10, 14), "France"), ("d2", (3, 7), "Obama"),
            ("d2", (9, 12), "--NME--")]  # NIL gold: ignored
    predicted = [("d1", (0, 5), "Paris"),          # TP
                 ("d1", (10, 14), "Frankfurt"),    # FP (wrong entity) + FN for France
                 ("d2", (3, 8), "Obama"),          # FP (span off by one) + FN for (3, 7)
                 ("d2", (20, 25), "NIL"),          # NIL prediction: ignored
                 ("d1", (0, 5), "Paris")]          # duplicate: counts once
    # TP = 1, FP = 2, FN = 2 -> P = 1/3, R = 1/3, F1 = 1/3
    result = inkb_micro_prf(gold, predicted)
    assert (result["true_positives"], result["false_positives"], result["false_negatives"]) == (1, 2, 2)
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx(1 / 3)


def test_inkb_micro_pools_documents():
    # d1: 2 gold, 2 correct predictions; d2: 2 gold, 0 predictions.
    # micro: TP = 2, FP = 0, FN = 2 -> P = 1, R = 0.5, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    gold = [("d1", (0, 1), "a"), ("d1", (2, 3), "b"), ("d2", (0, 1), "c"), ("d2", (2, 3), "d")]
    result = inkb_micro_prf(gold, gold[:2])
    assert (result["precision"], result["recall"]) == (1.0, 0.5)
    assert result["f1"] == pytest.approx(2 / 3)


def test_inkb_empty_cases_follow_gerbil():
    # Nothing to find and nothing found: 1/1/1. Something wrong and nothing right: 0/0/0.
    assert inkb_micro_prf([], [])["f1"] == 1.0
    assert inkb_micro_prf([("d", (0, 1), "NIL")], [])["f1"] == 1.0
    assert inkb_micro_prf([], [("d", (0, 1), "x")]) == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "true_positives": 0, "false_positives": 1, "false_negatives": 0}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_zeshel_files(tmp_path):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [
        {"id": "m1", "gold": 5, "domain": "lego", "candidates": [5, 6]},
        {"id": "m2", "gold": 7, "domain": "lego", "candidates": [6]},
        {"id": "m3", "gold": "9", "domain": "yugioh"}])   # no candidates: counts as found
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": "m1", "pred": "5"}, {"id": "m2", "pred": 6}])
    # lego: m1 right, m2 wrong & not found: unnormalized 1/2, normalized 1/1
    # yugioh: m3 missing prediction -> wrong: unnormalized 0/1, normalized 0/1
    # macro: unnormalized (0.5 + 0) / 2 = 0.25; normalized (1 + 0) / 2 = 0.5
    result = score_zeshel_files(gold, pred)
    assert result["unnormalized_accuracy"] == 0.25
    assert result["normalized_accuracy"] == 0.5
    assert result["num_missing_predictions"] == 1


def test_inkb_files_and_cli(tmp_path, capsys):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [{"id": "d1", "links": [[0, 5, "Paris"], [7, 9, "Seine"]]}])
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": "d1", "links": [[0, 5, "Paris"]]}])
    # TP = 1, FP = 0, FN = 1 -> P = 1, R = 0.5
    assert score_inkb_files(gold, pred)["recall"] == 0.5
    main(["inkb", "--gold", gold, "--pred", pred, "--json"])
    assert json.loads(capsys.readouterr().out)["precision"] == 1.0


def test_file_errors_name_file_and_line(tmp_path):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [{"id": "d1", "links": [[0, 5, "Paris"]]}])
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": "d1", "links": [[0, 5]]}])
    with pytest.raises(ValueError, match=r"pred.jsonl:1: 'links' must be a list of \[start, end, entity\]"):
        score_inkb_files(gold, pred)
    zgold = _write_jsonl(tmp_path / "z.jsonl", [{"id": 1, "gold": 3, "domain": "a"}, {"id": 2, "gold": 3}])
    with pytest.raises(ValueError, match=r"z.jsonl:2: missing field\(s\) \['domain'\]"):
        score_zeshel_files(zgold, pred)
