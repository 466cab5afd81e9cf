"""DocRED relation extraction metrics (P/R/F1, Ign F1, evidence F1) on hand-computed cases (arithmetic in the
comments), against a step-by-step re-derivation of the official evaluation on random submissions, and through
the CLI."""
import json
import random
import subprocess
import sys
import warnings

import pytest

from kipjax.data.docred import Prediction, parse_document, parse_prediction
from kipjax.metrics.docre import deduplicate_predictions, docre_scores, main, train_facts


def mention(name, sent_id=0):
    return {"name": name, "sent_id": sent_id, "pos": [0, 1], "type": "MISC"}


def document(title, entity_names, labels, num_sents=3):
    """A document of `num_sents` one-token sentences; entity i has mentions named entity_names[i]."""
    return {"title": title, "sents": [["w"]] * num_sents,
            "vertexSet": [[mention(name) for name in names] for names in entity_names],
            "labels": [{"h": h, "t": t, "r": r, "evidence": evidence} for h, t, r, evidence in labels]}


GOLD = [
    document("Alpha", [["Paris", "the city"], ["France"], ["Seine"], ["1900"]],
             [(0, 1, "P17", [0, 1]), (2, 1, "P17", [2]), (0, 3, "P571", [2])]),
    # The same label twice: one gold fact whose evidence is the last label's {1}, but 2 + 1 gold evidence entries.
    document("Beta", [["Bob"], ["Acme", "the firm"]], [(0, 1, "P108", [0, 1]), (0, 1, "P108", [1])], num_sents=2),
]
TRAIN = [
    # Triples (Paris, France|French Republic, P17), (Seine, France|French Republic, P131) and
    # (France|French Republic, Seine, P17): every mention pair of each label.
    document("Train", [["Paris"], ["France", "French Republic"], ["Seine"]],
             [(0, 1, "P17", [0]), (2, 1, "P131", [1]), (1, 2, "P17", [2])]),
]
PREDICTIONS = [
    {"title": "Alpha", "h_idx": 0, "t_idx": 1, "r": "P17", "evidence": [0]},     # 1 correct, in train (Paris, France)
    {"title": "Alpha", "h_idx": 0, "t_idx": 1, "r": "P17", "evidence": [2]},     # 2 duplicate of 1: dropped
    {"title": "Alpha", "h_idx": 2, "t_idx": 1, "r": "P17", "evidence": [2, 0]},  # 3 correct; train has the names
    #                                      only with P131 or in the other direction, so not in train
    {"title": "Alpha", "h_idx": 1, "t_idx": 0, "r": "P17"},                      # 4 wrong (reversed), no evidence
    {"title": "Alpha", "h_idx": 0, "t_idx": 3, "r": "P17", "evidence": [1]},     # 5 wrong relation
    {"title": "Beta", "h_idx": 0, "t_idx": 1, "r": "P108", "evidence": [0, 1]},  # 6 correct, not in train
    {"title": "Gamma", "h_idx": 0, "t_idx": 1, "r": "P17", "evidence": [0]},     # 7 title not in gold: wrong
]
# After deduplication 6 predictions (1, 3, 4, 5, 6, 7); correct 1, 3, 6 = 3; gold facts 3 + 1 = 4; in train: 1.
#   P = 3/6 = 0.5, R = 3/4, F1 = 2 * 0.5 * 0.75 / 1.25 = 0.6
#   Ign P = (3 - 1) / (6 - 1) = 0.4, Ign F1 = 2 * 0.4 * 0.75 / (0.4 + 0.75) = 0.6 / 1.15 = 12/23
# Evidence: predicted entries of gold titles 1 + 2 + 0 + 1 + 2 = 6 (Gamma's not counted); correct
#   |{0} & {0,1}| + |{2,0} & {2}| + |{0,1} & {1}| = 1 + 1 + 1 = 3; gold entries 2 + 1 + 1 + 2 + 1 = 7.
#   P = 3/6, R = 3/7, F1 = 2 * (1/2) * (3/7) / (1/2 + 3/7) = 6/13
EXPECTED = {"precision": 0.5, "recall": 0.75, "f1": 0.6, "ign_precision": 0.4, "ign_f1": 12 / 23,
            "evidence_precision": 0.5, "evidence_recall": 3 / 7, "evidence_f1": 6 / 13,
            "num_predictions": 6, "num_gold": 4, "num_correct": 3, "num_correct_in_train": 1}


def parse_all(gold=GOLD, predictions=PREDICTIONS, train=TRAIN):
    return ([parse_document(d, "gold") for d in gold], [parse_prediction(p, "pred") for p in predictions],
            None if train is None else [parse_document(d, "train") for d in train])


def test_hand_computed_scores():
    with pytest.warns(UserWarning, match=r"1 predicted title\(s\) are not gold titles, e\.g\. \['Gamma'\]"):
        scores = docre_scores(*parse_all())
    assert scores == pytest.approx(EXPECTED, abs=1e-12)


def test_without_train_ign_equals_plain():
    with pytest.warns(UserWarning):
        scores = docre_scores(*parse_all(train=None))
    assert scores["num_correct_in_train"] == 0
    assert scores["ign_precision"] == scores["precision"] == 0.5
    assert scores["ign_f1"] == scores["f1"] == 0.6


def test_helpers():
    assert train_facts(parse_all()[2]) == {
        ("Paris", "France", "P17"), ("Paris", "French Republic", "P17"), ("Seine", "France", "P131"),
        ("Seine", "French Republic", "P131"), ("France", "Seine", "P17"), ("French Republic", "Seine", "P17")}
    kept = deduplicate_predictions(parse_all()[1])
    assert len(kept) == 6 and kept[0].evidence == (0,)  # the first of the duplicates, with its evidence


def test_empty_predictions_and_zero_denominators():
    # The script divides by len(submission) (and crashes on an empty one); every ratio is 0 here.
    gold, _, train = parse_all()
    scores = docre_scores(gold, [], train)
    assert scores == {**{k: 0.0 for k in EXPECTED if not k.startswith("num_")},
                      "num_predictions": 0, "num_gold": 4, "num_correct": 0, "num_correct_in_train": 0}
    # Every prediction correct and in train: Ign P = 0 / 0 (a crash in the script) is 0, so Ign F1 is 0.
    only_in_train = [Prediction("Alpha", 0, 1, "P17")]
    scores = docre_scores(gold, only_in_train, train)
    assert (scores["precision"], scores["recall"], scores["ign_precision"], scores["ign_f1"]) == (1.0, 0.25, 0.0, 0.0)
    # No gold evidence (evidence recall 0 / 0) and no predicted evidence (precision 0 / 0, 0 in the script).
    no_evidence = [parse_document(document("Alpha", [["a"], ["b"]], [(0, 1, "P17", [])]), "gold")]
    scores = docre_scores(no_evidence, only_in_train)
    evidence = (scores["evidence_precision"], scores["evidence_recall"], scores["evidence_f1"])
    assert scores["f1"] == 1.0 and evidence == (0.0, 0.0, 0.0)


def official_steps(gold, submission, train):
    """The official evaluation's steps, in its order, on the raw JSON (zero denominators give 0)."""
    seen = {(m1["name"], m2["name"], label["r"]) for doc in train for label in doc["labels"]
            for m1 in doc["vertexSet"][label["h"]] for m2 in doc["vertexSet"][label["t"]]}
    vertex_sets, gold_evidence, total_evidence = {}, {}, 0
    for doc in gold:
        vertex_sets[doc["title"]] = doc["vertexSet"]
        for label in doc["labels"]:
            gold_evidence[(doc["title"], label["r"], label["h"], label["t"])] = set(label["evidence"])
            total_evidence += len(label["evidence"])
    ordered = sorted(submission, key=lambda x: (x["title"], x["h_idx"], x["t_idx"], x["r"]))
    kept = [x for i, x in enumerate(ordered) if i == 0 or [x[k] for k in ("title", "h_idx", "t_idx", "r")]
            != [ordered[i - 1][k] for k in ("title", "h_idx", "t_idx", "r")]]
    correct = in_train = correct_evidence = predicted_evidence = 0
    for x in kept:
        if x["title"] not in vertex_sets:
            continue
        evidence = set(x.get("evidence", []))
        predicted_evidence += len(evidence)
        key = (x["title"], x["r"], x["h_idx"], x["t_idx"])
        if key in gold_evidence:
            correct += 1
            correct_evidence += len(gold_evidence[key] & evidence)
            vertex_set = vertex_sets[x["title"]]
            in_train += any((m1["name"], m2["name"], x["r"]) in seen
                            for m1 in vertex_set[x["h_idx"]] for m2 in vertex_set[x["t_idx"]])

    def divide(a, b):
        return a / b if b else 0.0

    def f1(p, r):
        return 2.0 * p * r / (p + r) if p + r else 0.0

    p, r = divide(correct, len(kept)), divide(correct, len(gold_evidence))
    ign_p = divide(correct - in_train, len(kept) - in_train)
    evi_p, evi_r = divide(correct_evidence, predicted_evidence), divide(correct_evidence, total_evidence)
    return {"precision": p, "recall": r, "f1": f1(p, r), "ign_precision": ign_p, "ign_f1": f1(ign_p, r),
            "evidence_precision": evi_p, "evidence_recall": evi_r, "evidence_f1": f1(evi_p, evi_r)}


def random_document(rng, title, names, relations):
    num_sents = rng.randint(1, 4)
    entities = [[rng.choice(names) for _ in range(rng.randint(1, 2))] for _ in range(rng.randint(2, 4))]
    labels = [(rng.randrange(len(entities)), rng.randrange(len(entities)), rng.choice(relations),
               [rng.randrange(num_sents) for _ in range(rng.randint(0, 3))]) for _ in range(rng.randint(0, 5))]
    return document(title, entities, labels, num_sents)


def test_matches_official_steps_on_random_submissions():
    rng = random.Random(0)
    names, relations, titles = ["a", "b", "c", "d"], ["P1", "P2"], ["T0", "T1", "T2", "T3"]
    for _ in range(300):
        gold = [random_document(rng, title, names, relations) for title in titles[:rng.randint(1, 3)]]
        train = [random_document(rng, f"train{i}", names, relations) for i in range(3)]
        submission = []
        for _ in range(rng.randint(1, 12)):  # titles T0..T3, some not in gold; indices up to 3; duplicates likely
            prediction = {"title": rng.choice(titles), "h_idx": rng.randrange(4), "t_idx": rng.randrange(4),
                          "r": rng.choice(relations)}
            if rng.random() < 0.7:
                prediction["evidence"] = [rng.randrange(4) for _ in range(rng.randint(0, 3))]
            submission.append(prediction)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = docre_scores(*parse_all(gold, submission, train))
        expected = official_steps(gold, submission, train)
        assert {k: scores[k] for k in expected} == expected  # bit for bit, same operations


def write_json(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


def test_cli_json_and_table(tmp_path, capsys):
    gold, pred, train = (write_json(tmp_path, "dev.json", GOLD), write_json(tmp_path, "result.json", PREDICTIONS),
                         write_json(tmp_path, "train_annotated.json", TRAIN))
    with pytest.warns(UserWarning):
        main(["--gold", gold, "--pred", pred, "--train", train, "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["precision", "recall", "f1", "ign_f1"]
    assert printed == pytest.approx({k: EXPECTED[k] for k in printed}, abs=1e-12)
    with pytest.warns(UserWarning):
        main(["--gold", gold, "--pred", pred])
    table = capsys.readouterr().out
    assert "relation     50.00    75.00    60.00" in table and "ign          50.00    75.00    60.00" in table
    assert "evidence     50.00    42.86    46.15" in table and "3 correct of 6 predictions (0 in train)" in table


def test_cli_errors(tmp_path):
    pred = write_json(tmp_path, "result.json", PREDICTIONS)
    unlabeled = write_json(tmp_path, "test.json", [{k: v for k, v in d.items() if k != "labels"} for d in GOLD])
    with pytest.raises(SystemExit, match=r"error: .*test\.json: document 0 \('Alpha'\) has no 'labels'"):
        main(["--gold", unlabeled, "--pred", pred])
    bad = write_json(tmp_path, "bad.json", [{"title": "Alpha", "h_idx": 0, "t_idx": 1}])
    with pytest.raises(SystemExit, match=r"error: .*bad\.json: prediction 0: missing field 'r'"):
        main(["--gold", write_json(tmp_path, "dev.json", GOLD), "--pred", bad])


def test_module_entry_point(tmp_path):
    gold = write_json(tmp_path, "dev.json", GOLD)
    pred = write_json(tmp_path, "result.json", PREDICTIONS[:1])
    result = subprocess.run([sys.executable, "-m", "kipjax.metrics.docre", "--gold", gold, "--pred", pred, "--json"],
                            capture_output=True, text=True, check=True)
    # 1 correct of 1 prediction, 4 gold facts: P 1, R 0.25, F1 = 2 * 0.25 / 1.25 = 0.4; no train, so Ign F1 = F1.
    assert json.loads(result.stdout) == {"precision": 1.0, "recall": 0.25, "f1": 0.4, "ign_f1": 0.4}
