"""Document-level relation extraction metrics of DocRED's official evaluation (thunlp/DocRED code/evaluation.py,
the version that deduplicates submissions): relation precision / recall / F1, Ign F1, and evidence P / R / F1.

A fact is (title, h, t, r): head and tail entity indices into the gold document's vertexSet and the relation's
property id (the `r` strings of the files, e.g. "P17"; rel2id's `Na` = 0 is no fact). As in the script:
  - Predictions are deduplicated on (title, h_idx, t_idx, r), keeping the first occurrence (and its evidence).
  - Gold facts are the distinct (title, r, h, t) of the gold labels; a repeated label counts once (its LAST
    evidence is the one compared) but the evidence of every label counts in the evidence recall denominator.
  - A prediction is correct when its fact is a gold fact; any other one (`Na`, an entity index out of range,
    ...) is wrong, not an error. Predictions whose title is not a gold title count in the precision
    denominator (as wrong) but add no evidence; with repeated gold titles their facts are pooled and the last
    document's vertexSet is the one used for the names below.
  - precision = correct / predictions, recall = correct / gold facts, F1 = 2PR / (P + R).
  - Ign F1 ignores facts already seen in training: a correct prediction is "in train" when (name of a mention
    of h, name of a mention of t, r) is one of the (head mention name, tail mention name, r) triples of the
    train annotated file's labels. ign_precision = (correct - in train) / (predictions - in train) and
    Ign F1 = 2 * ign_precision * recall / (ign_precision + recall): the plain recall, as in the script.
    Without train documents nothing is in train and Ign F1 equals F1.
  - Evidence: evidence_precision = sum over correct predictions of |predicted ∩ gold evidence sentences| over
    the number of predicted evidence sentences of ALL predictions (of gold titles); evidence_recall divides
    the same by the number of gold evidence entries.
No smoothing epsilon is added (some copies of the script add 1e-5 to the Ign precision denominator). Where the
script divides by zero and crashes (no predictions, no gold facts, no gold evidence, or every prediction
correct and in train) the ratio is 0 here; an F1 whose P + R is 0 is 0, as in the script.

CLI:
  python -m kipjax.metrics.docre --gold dev.json --pred result.json [--train train_annotated.json] [--json]
  --gold: a labeled DocRED / Re-DocRED file; --pred: a submission ({"title", "h_idx", "t_idx", "r"[,
  "evidence"]} list); --train: the documents whose facts Ign F1 ignores. --json prints
  {"precision", "recall", "f1", "ign_f1"} in [0, 1]; otherwise a table in percent.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import warnings
from typing import Iterable, Sequence

from kipjax.data.docred import DocredDocument, Prediction, read_docred, read_predictions
from kipjax.metrics.ratios import prf

NameTriple = tuple[str, str, str]  # (head mention name, tail mention name, relation)
JSON_KEYS = ("precision", "recall", "f1", "ign_f1")


def train_facts(train_docs: Iterable[DocredDocument]) -> set[NameTriple]:
    """(head mention name, tail mention name, r) for every mention pair of every labeled fact."""
    return {(head.name, tail.name, fact.r)
            for doc in train_docs for fact in doc.facts
            for head in doc.entities[fact.h].mentions for tail in doc.entities[fact.t].mentions}


def deduplicate_predictions(predictions: Iterable[Prediction]) -> list[Prediction]:
    """The predictions with each (title, h_idx, t_idx, r) kept only where it first occurs."""
    first: dict[tuple[str, int, int, str], Prediction] = {}
    for prediction in predictions:
        first.setdefault(prediction.key, prediction)
    return list(first.values())


def docre_scores(gold_docs: Sequence[DocredDocument], predictions: Iterable[Prediction],
                 train_docs: Iterable[DocredDocument] | None = None) -> dict[str, float]:
    """DocRED's official scores (see the module docstring) and the counts behind them:
    {"precision", "recall", "f1", "ign_precision", "ign_f1", "evidence_precision", "evidence_recall",
    "evidence_f1", "num_predictions", "num_gold", "num_correct", "num_correct_in_train"}."""
    entities_of = {}
    gold_evidence: dict[tuple[str, str, int, int], set[int]] = {}
    num_gold_evidence = 0
    for doc in gold_docs:
        entities_of[doc.title] = doc.entities
        for fact in doc.facts:
            gold_evidence[doc.title, fact.r, fact.h, fact.t] = set(fact.evidence)
            num_gold_evidence += len(fact.evidence)
    repeated = [title for title, n in collections.Counter(d.title for d in gold_docs).items() if n > 1]
    if repeated:
        warnings.warn(f"gold title(s) {repeated[:5]} occur more than once; their facts are pooled and the last "
                      f"document's entities are used, as in DocRED's evaluation")
    seen_in_train = train_facts(train_docs) if train_docs is not None else set()

    submission = deduplicate_predictions(predictions)
    correct = correct_in_train = correct_evidence = num_predicted_evidence = 0
    unknown_titles = set()
    for prediction in submission:
        if prediction.title not in entities_of:
            unknown_titles.add(prediction.title)
            continue
        evidence = set(prediction.evidence or ())
        num_predicted_evidence += len(evidence)
        gold = gold_evidence.get((prediction.title, prediction.r, prediction.h_idx, prediction.t_idx))
        if gold is None:
            continue
        correct += 1
        correct_evidence += len(gold & evidence)
        entities = entities_of[prediction.title]
        if any((head.name, tail.name, prediction.r) in seen_in_train
               for head in entities[prediction.h_idx].mentions for tail in entities[prediction.t_idx].mentions):
            correct_in_train += 1
    if unknown_titles:
        warnings.warn(f"{len(unknown_titles)} predicted title(s) are not gold titles, e.g. "
                      f"{sorted(unknown_titles)[:3]}; their predictions count as wrong")

    relation = prf(correct, len(gold_evidence), correct, len(submission))
    ignoring_train = prf(correct, len(gold_evidence), correct - correct_in_train, len(submission) - correct_in_train)
    evidence_scores = prf(correct_evidence, num_gold_evidence, correct_evidence, num_predicted_evidence)
    return {"precision": relation["precision"], "recall": relation["recall"], "f1": relation["f1"],
            "ign_precision": ignoring_train["precision"], "ign_f1": ignoring_train["f1"],
            "evidence_precision": evidence_scores["precision"], "evidence_recall": evidence_scores["recall"],
            "evidence_f1": evidence_scores["f1"],
            "num_predictions": len(submission), "num_gold": len(gold_evidence), "num_correct": correct,
            "num_correct_in_train": correct_in_train}


def score_files(gold_path: str, pred_path: str, train_path: str | None = None) -> dict[str, float]:
    """docre_scores of a gold file, a submission file and (optionally) the train annotated file."""
    gold = read_docred(gold_path)
    unlabeled = [i for i, doc in enumerate(gold) if not doc.labeled]
    if unlabeled:
        raise ValueError(f"{gold_path}: document {unlabeled[0]} ({gold[unlabeled[0]].title!r}) has no 'labels' "
                         f"({len(unlabeled)} of {len(gold)} documents lack them); the gold file must be labeled")
    train = read_docred(train_path) if train_path is not None else None
    return docre_scores(gold, read_predictions(pred_path), train)


def format_table(scores: dict[str, float]) -> str:
    rows = [("relation", scores["precision"], scores["recall"], scores["f1"]),
            ("ign", scores["ign_precision"], scores["recall"], scores["ign_f1"]),
            ("evidence", scores["evidence_precision"], scores["evidence_recall"], scores["evidence_f1"])]
    lines = [f"{'metric':8s} {'precision':>9s} {'recall':>8s} {'f1':>8s}"]
    lines += [f"{name:8s} {100 * p:9.2f} {100 * r:8.2f} {100 * f:8.2f}" for name, p, r, f in rows]
    lines.append(f"{scores['num_correct']} correct of {scores['num_predictions']} predictions "
                 f"({scores['num_correct_in_train']} in train) and {scores['num_gold']} gold facts")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m kipjax.metrics.docre", description=__doc__.split("\n")[0])
    parser.add_argument("--gold", required=True, help="labeled DocRED / Re-DocRED file (e.g. dev.json)")
    parser.add_argument("--pred", required=True, help="submission: JSON list of {title, h_idx, t_idx, r[, evidence]}")
    parser.add_argument("--train", help="train annotated file whose facts Ign F1 ignores (default: none)")
    parser.add_argument("--json", action="store_true", help=f"print one JSON object with {', '.join(JSON_KEYS)}")
    args = parser.parse_args(argv)
    try:
        scores = score_files(args.gold, args.pred, args.train)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({key: scores[key] for key in JSON_KEYS}) if args.json else format_table(scores))
    return scores


if __name__ == "__main__":
    main()
