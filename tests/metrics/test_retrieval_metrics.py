"""Ranking metrics on hand-computed cases (arithmetic in the comments) and the CLI over JSON-lines files."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from kipjax.metrics.retrieval import (evaluate_rankings, evidence_recall_at_k, main, mrr, ndcg_at_k,
                                      r_precision, recall_at_k, score_files)

# Three queries, single gold each; -1 is padding from top-k with too few admissible entities.
RANKED = np.array([[5, 3, 9, -1],
                   [1, 2, 3, 4],
                   [7, 8, 6, 0]])
GOLD = np.array([3, 4, 2])


def test_recall_at_k_single_gold():
    # gold ranks: q0 -> 2, q1 -> 4, q2 -> absent
    assert recall_at_k(RANKED, GOLD, 1) == 0.0          # none at rank 1
    assert recall_at_k(RANKED, GOLD, 2) == pytest.approx(1 / 3)  # q0
    assert recall_at_k(RANKED, GOLD, 4) == pytest.approx(2 / 3)  # q0, q1


def test_recall_at_k_any_of_several_golds():
    # q0 golds {9, 3}: 3 at rank 2 -> hit@2; q1 golds {7}: absent
    assert recall_at_k([[5, 3, 9], [1, 2, 3]], [[9, 3], [7]], 2) == 0.5


def test_mrr():
    # (1/2 + 1/4 + 0) / 3 = 0.75 / 3 = 0.25
    assert mrr(RANKED, GOLD) == pytest.approx(0.25)
    # cut at 3: q1's gold (rank 4) no longer counts: (1/2 + 0 + 0) / 3 = 1/6
    assert mrr(RANKED, GOLD, k=3) == pytest.approx(1 / 6)


def test_ndcg_at_k():
    # q0: gold {3, 9} at ranks 2 and 3. DCG@3 = 1/log2(3) + 1/log2(4) = 0.63093 + 0.5 = 1.13093
    #     IDCG@3 (2 relevant) = 1/log2(2) + 1/log2(3) = 1 + 0.63093 = 1.63093 -> 0.69342
    # q1: gold {4} at rank 4 > k: 0
    # q2: gold {8} at ranks 1 and 2 -> counted once (rank 1): DCG = 1, IDCG = 1 -> 1
    ranked = [[5, 3, 9, 1], [1, 2, 3, 4], [8, 8, 0, 1]]
    want = ((1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3)) + 0.0 + 1.0) / 3
    assert ndcg_at_k(ranked, [[3, 9], [4], [8]], 3) == pytest.approx(want)
    # gold appearing twice in a ranking is not counted twice: DCG = 1 (rank 1 only), IDCG = 1
    assert ndcg_at_k([[8, 8]], [[8]], 2) == 1.0


def test_evidence_recall_singletons_is_fraction_of_golds():
    # golds {1, 2, 3} as alternative singletons; top-2 = [2, 7] holds 1 of 3 -> 1/3; top-4 holds 2, 1 -> 2/3
    ranked, gold = [[2, 7, 9, 1]], [[1, 2, 3]]
    assert evidence_recall_at_k(ranked, gold, 2) == pytest.approx(1 / 3)
    assert evidence_recall_at_k(ranked, gold, 4) == pytest.approx(2 / 3)


def test_evidence_recall_counts_a_set_where_its_last_member_appears():
    # One evidence set {a, b} (multi-hop). Predictions [a, x, b, y]: KILT rank after each step:
    #   a -> [partial], x -> [partial, False], b -> partial removed, set complete -> [False, True], y -> [F, T, F]
    # so the set sits at position 2: recall@1 = 0, recall@2 = 1.
    ranked, gold = [["a", "x", "b", "y"]], [[["a", "b"]]]
    assert evidence_recall_at_k(ranked, gold, 1) == 0.0
    assert evidence_recall_at_k(ranked, gold, 2) == 1.0
    # Two sets {a, b} and {c}: preds [c, a, z]: rank [True, partial, False]: recall@3 = 1 complete / 2 sets
    assert evidence_recall_at_k([["c", "a", "z"]], [[["a", "b"], "c"]], 3) == 0.5


def test_r_precision_as_in_kilt():
    # Set {a, b} (R = 2): first 2 distinct predictions [a, x] -> 1/2.
    # Duplicates are dropped before cutting: [a, a, b] -> distinct [a, b] -> 2/2.
    assert r_precision([["a", "x", "b"]], [[["a", "b"]]]) == 0.5
    assert r_precision([["a", "a", "b"]], [[["a", "b"]]]) == 1.0
    # Alternative sets {a, b} and {c}: best of (first 2: [c, a] -> 1/2) and (first 1: [c] -> 1/1) = 1
    assert r_precision([["c", "a"]], [[["a", "b"], ["c"]]]) == 1.0
    # Averaged over queries: (1/2 + 0) / 2
    assert r_precision([["a", "x"], ["y"]], [[["a", "b"]], ["z"]]) == 0.25


def test_empty_predictions_and_gold_score_zero():
    assert evaluate_rankings([[]], [[1]], ks=(1,)) == {
        "mrr": 0.0, "r_precision": 0.0, "recall@1": 0.0, "evidence_recall@1": 0.0, "ndcg@1": 0.0}
    assert recall_at_k([[1]], [[]], 1) == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 ranked lists but 1 gold"):
        recall_at_k([[1], [2]], [1], 1)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_score_files(tmp_path):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [{"id": 1, "gold": [3]}, {"id": "q2", "gold": ["7", 8]},
                                                  {"id": 3, "gold": [1]}])
    # ids match as strings: "1" == 1 and 7 == "7"; query 3 has no prediction -> scores 0
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": "1", "ranked": [5, 3]}, {"id": "q2", "ranked": [7, 1]}])
    metrics = score_files(gold, pred, ks=[1, 2])
    assert metrics["recall@1"] == pytest.approx(1 / 3)  # q2 only
    assert metrics["recall@2"] == pytest.approx(2 / 3)  # q1, q2
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1) / 3)
    assert metrics["num_missing_predictions"] == 1


def test_file_errors_name_file_and_line(tmp_path):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [{"id": 1, "gold": [3]}])
    bad = tmp_path / "pred.jsonl"
    bad.write_text('{"id": 1, "ranked": [3]}\n\n{"id": 2 "ranked": []}\n')
    with pytest.raises(ValueError, match=r"pred.jsonl:3: invalid JSON"):
        score_files(gold, str(bad), ks=[1])
    bad.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match=r"pred.jsonl:1: missing field\(s\) \['ranked'\]"):
        score_files(gold, str(bad), ks=[1])
    bad.write_text('{"id": 9, "ranked": [1]}\n')
    with pytest.raises(ValueError, match=r"pred.jsonl:1: id 9 is not in the gold file"):
        score_files(gold, str(bad), ks=[1])
    bad.write_text('{"id": 1, "ranked": [1]}\n{"id": 1, "ranked": [2]}\n')
    with pytest.raises(ValueError, match=r"pred.jsonl:2: duplicate id 1"):
        score_files(gold, str(bad), ks=[1])


def test_cli_json(tmp_path, capsys):
    gold = _write_jsonl(tmp_path / "g.jsonl", [{"id": 1, "gold": [3]}, {"id": 2, "gold": [4]}])
    pred = _write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "ranked": [3, 4]}, {"id": 2, "ranked": [3, 4]}])
    main(["--gold", gold, "--pred", pred, "--ks", "1,2", "--json"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["recall@1"] == 0.5 and metrics["recall@2"] == 1.0 and metrics["mrr"] == 0.75


def test_cli_module_entry_point_reports_errors(tmp_path):
    gold = _write_jsonl(tmp_path / "g.jsonl", [{"id": 1, "gold": [3]}])
    result = subprocess.run([sys.executable, "-m", "kipjax.metrics.retrieval", "--gold", gold,
                             "--pred", str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert result.returncode != 0 and "missing.jsonl" in result.stderr
