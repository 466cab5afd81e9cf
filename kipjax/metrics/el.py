"""Entity-linking metrics: Zeshel accuracy macro-averaged over domains, InKB micro P/R/F1, EntQA error analysis.

Zeshel (Logeswaran et al., 2019) reports, per domain (world), accuracy over all mentions ("unnormalized")
and over the mentions whose gold entity is among the retrieved candidates ("normalized", isolating the
reranker); each is then averaged over domains with equal weight.

InKB micro P/R/F1 (GERBIL A2KB, strong matching, as used for end-to-end linking such as EntQA) pools
(doc, span, entity) triples over the corpus; an annotation counts only if its entity is in the KB, so
NIL annotations are dropped from gold and predictions alike.

Error analysis (EntQA, Zhang et al., 2022, section "Error Analysis") separates mention-detection (MD) errors
from entity-disambiguation errors and sorts imperfect predictions by kind:
  md_micro_prf     the InKB score on (doc, span) pairs only, i.e. treating every entity prediction as correct;
  entity_set_prf   micro P/R/F1 over (key, entity) pairs: how well candidate entities are accepted or rejected
                   regardless of where they are mentioned (EntQA reports it per passage and per document);
  error_categories per key, whether the predicted (span, entity) set over-predicts (gold is a strict subset),
                   under-predicts (it is a strict subset of gold) or neither, as in EntQA's Table 6.4.

CLI:
  python -m kipjax.metrics.el zeshel --gold G --pred P [--json]
    G: {"id": mention, "gold": entity, "domain": world[, "candidates": [...]]}  P: {"id": mention, "pred": entity}
    Without "candidates" a mention counts as having its gold among the candidates.
  python -m kipjax.metrics.el inkb --gold G --pred P [--json]
    G and P: {"id": doc, "links": [[start, end, entity], ...]}  (end exclusive)
  python -m kipjax.metrics.el analysis --gold G --pred P [--json]
    Same files as inkb. Prints InKB and MD P/R/F1, document-level entity-set P/R/F1 and the error category of
    every document. EntQA categorizes passages; these files hold documents, so here a document is the unit.
  Ids and entities are compared as stripped strings. A mention or document without a prediction counts as
  predicting nothing; a prediction for an id not in the gold file is an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Collection, Hashable, Iterable, Mapping, Sequence

import numpy as np

from kipjax.metrics.retrieval import read_jsonl_by_id

DEFAULT_NIL_ENTITIES = (None, "NIL", "--NME--")  # --NME-- is AIDA's out-of-KB marker


def zeshel_accuracy(predictions: np.ndarray, gold: np.ndarray, domains: np.ndarray,
                    gold_in_candidates: np.ndarray | None = None) -> dict[str, Any]:
    """Normalized / unnormalized accuracy, each macro-averaged over domains.

    Args:
      predictions, gold: [M] entity ids per mention.
      domains: [M] domain (world) of each mention.
      gold_in_candidates: [M] bool, whether candidate retrieval found the gold; all True if None.

    Returns:
      {"normalized_accuracy", "unnormalized_accuracy", "per_domain": {domain: {...}}}. A domain without any
      mention whose gold is among its candidates has normalized accuracy None and is left out of that average.
    """
    predictions, gold, domains = np.asarray(predictions), np.asarray(gold), np.asarray(domains)
    found = np.ones(len(gold), bool) if gold_in_candidates is None else np.asarray(gold_in_candidates, bool)
    if not predictions.shape == gold.shape == domains.shape == found.shape or gold.ndim != 1:
        raise ValueError("predictions, gold, domains and gold_in_candidates must all be [M] arrays of one length, "
                         f"got {predictions.shape}, {gold.shape}, {domains.shape}, {found.shape}")
    correct = predictions == gold
    per_domain: dict[Any, dict[str, Any]] = {}
    for domain in np.unique(domains):
        in_domain = domains == domain
        eligible = in_domain & found
        per_domain[domain.item()] = {
            "num_mentions": int(in_domain.sum()),
            "num_gold_in_candidates": int(eligible.sum()),
            "unnormalized_accuracy": float(correct[in_domain].mean()),
            "normalized_accuracy": float(correct[eligible].mean()) if eligible.any() else None,
        }
    normalized = [d["normalized_accuracy"] for d in per_domain.values() if d["normalized_accuracy"] is not None]
    unnormalized = [d["unnormalized_accuracy"] for d in per_domain.values()]
    return {
        "normalized_accuracy": float(np.mean(normalized)) if normalized else 0.0,
        "unnormalized_accuracy": float(np.mean(unnormalized)) if unnormalized else 0.0,
        "per_domain": per_domain,
    }


Triple = tuple[Hashable, Hashable, Hashable]  # (doc, span, entity); span e.g. (start, end)


def inkb_micro_prf(gold: Iterable[Triple], predicted: Iterable[Triple],
                   nil_entities: Collection[Hashable] = DEFAULT_NIL_ENTITIES) -> dict[str, float]:
    """Micro precision / recall / F1 over exact (doc, span, entity) matches of in-KB annotations.

    Duplicated triples count once. With no in-KB gold and no in-KB prediction all three are 1, as in GERBIL
    (nothing to find and nothing wrongly found).
    """
    return _set_prf({t for t in gold if t[2] not in nil_entities},
                    {t for t in predicted if t[2] not in nil_entities})


def prf_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision / recall / F1 from counts, shared by every micro score here so that they agree on edge cases:
    with nothing to find and nothing found all three are 1 (GERBIL), with no true positive otherwise all are 0."""
    if tp == 0:
        score = 1.0 if fp == 0 and fn == 0 else 0.0
        precision = recall = f1 = score
    else:
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1,
            "true_positives": tp, "false_positives": fp, "false_negatives": fn}


def _set_prf(gold: set, predicted: set) -> dict[str, float]:
    tp = len(gold & predicted)
    return prf_counts(tp, len(predicted) - tp, len(gold) - tp)


def md_micro_prf(gold: Iterable[Triple], predicted: Iterable[Triple],
                 nil_entities: Collection[Hashable] = DEFAULT_NIL_ENTITIES) -> dict[str, float]:
    """Mention-detection-only micro P/R/F1: inkb_micro_prf on (doc, span) pairs, treating every entity
    prediction as correct, so that the gap to the InKB score is what disambiguation loses.

    As in InKB, annotations with a NIL entity are dropped first (a span linked to NIL is not a detected in-KB
    mention, in gold or predictions). A span predicted with several entities counts once.
    """
    return _set_prf({t[:2] for t in gold if t[2] not in nil_entities},
                    {t[:2] for t in predicted if t[2] not in nil_entities})


def entity_set_prf(gold: Mapping[Hashable, Collection[Hashable]],
                   predicted: Mapping[Hashable, Collection[Hashable]],
                   nil_entities: Collection[Hashable] = DEFAULT_NIL_ENTITIES) -> dict[str, float]:
    """Micro P/R/F1 over (key, entity) pairs: how well candidate entities are accepted or rejected, ignoring
    where (and how often) they are mentioned, which isolates the reader's accept/reject decision.

    The caller decides what a key is: a passage for EntQA's passage-level score, a document (the union of its
    passages' entities) for the document-level one. A key missing from one side has no entities there; NIL
    entities are dropped as in InKB.
    """
    def pairs(sets: Mapping[Hashable, Collection[Hashable]]) -> set[tuple[Hashable, Hashable]]:
        return {(key, e) for key, entities in sets.items() for e in entities if e not in nil_entities}
    return _set_prf(pairs(gold), pairs(predicted))


ERROR_CATEGORIES = ("correct", "over", "under", "neither")


def error_categories(gold_by_key: Mapping[Hashable, Collection[tuple]],
                     pred_by_key: Mapping[Hashable, Collection[tuple]],
                     nil_entities: Collection[Hashable] = DEFAULT_NIL_ENTITIES) -> dict[str, Any]:
    """Sorts keys (EntQA: passages) by how their predicted annotation set differs from the gold one, to tell
    missing gold annotations and too-high thresholds (over / under) apart from wrong spans or entities.

    Annotations are tuples ending in the entity, e.g. (span, entity); those with a NIL entity are dropped.
    A key's prediction is 'correct' if the sets are equal, 'over' if gold is a strict subset of it, 'under' if
    it is a strict subset of gold, else 'neither'. A key missing from one side has no annotations there.

    Returns:
      {"correct": n, "over": n, "under": n, "neither": n, "keys": {category: [keys, gold's order first]}}.
    """
    keys: dict[str, list[Hashable]] = {category: [] for category in ERROR_CATEGORIES}
    for key in [*gold_by_key, *(k for k in pred_by_key if k not in gold_by_key)]:
        gold = {a for a in gold_by_key.get(key, ()) if a[-1] not in nil_entities}
        pred = {a for a in pred_by_key.get(key, ()) if a[-1] not in nil_entities}
        category = ("correct" if gold == pred else "over" if gold < pred else "under" if pred < gold
                    else "neither")
        keys[category].append(key)
    return {**{category: len(members) for category, members in keys.items()}, "keys": keys}


def _text(value: Any) -> str | None:
    return None if value is None else str(value).strip()


def score_zeshel_files(gold_path: str, pred_path: str) -> dict[str, Any]:
    gold = read_jsonl_by_id(gold_path, ["gold", "domain"])
    preds = read_jsonl_by_id(pred_path, ["pred"])
    for key, record in preds.items():
        if key not in gold:
            raise ValueError(f"{record.where}: id {record.data['id']!r} is not in the gold file {gold_path}")
    keys = list(gold)
    found = []
    for key in keys:
        record = gold[key]
        if record.data["gold"] is None:
            raise ValueError(f"{record.where}: 'gold' is null; expected an entity id")
        candidates = record.data.get("candidates")
        if candidates is not None and not isinstance(candidates, list):
            raise ValueError(f"{record.where}: 'candidates' must be a list of entity ids")
        found.append(candidates is None or _text(record.data["gold"]) in {_text(c) for c in candidates})
    metrics = zeshel_accuracy(
        np.array([_text(preds[k].data["pred"]) if k in preds else None for k in keys], dtype=object),
        np.array([_text(gold[k].data["gold"]) for k in keys], dtype=object),
        np.array([_text(gold[k].data["domain"]) for k in keys]),
        np.array(found))
    metrics.update(num_mentions=len(keys), num_missing_predictions=sum(k not in preds for k in keys))
    return metrics


def _links(path: str) -> dict[str, set[Triple]]:
    triples: dict[str, set[Triple]] = {}
    for key, record in read_jsonl_by_id(path, ["links"]).items():
        links = record.data["links"]
        if not isinstance(links, list) or not all(isinstance(l, list) and len(l) == 3 for l in links):
            raise ValueError(f"{record.where}: 'links' must be a list of [start, end, entity]")
        triples[key] = {(key, (int(start), int(end)), _text(entity)) for start, end, entity in links}
    return triples


def _link_files(gold_path: str, pred_path: str) -> tuple[dict[str, set[Triple]], dict[str, set[Triple]]]:
    gold, preds = _links(gold_path), _links(pred_path)
    unknown = sorted(set(preds) - set(gold))
    if unknown:
        raise ValueError(f"{pred_path}: document id(s) {unknown[:5]} are not in the gold file {gold_path}")
    return gold, preds


def score_inkb_files(gold_path: str, pred_path: str) -> dict[str, float]:
    gold, preds = _link_files(gold_path, pred_path)
    return inkb_micro_prf(set().union(*gold.values()), set().union(*preds.values()))


def score_analysis_files(gold_path: str, pred_path: str) -> dict[str, Any]:
    """EntQA's error analysis over document files (the inkb format): InKB, MD and document-level entity-set
    P/R/F1 ("inkb_", "md_", "document_entities_" keys) and each document's error category. EntQA categorizes
    passages; these files hold whole documents, so documents are categorized instead."""
    gold, preds = _link_files(gold_path, pred_path)
    gold_triples, pred_triples = set().union(*gold.values()), set().union(*preds.values())
    metrics: dict[str, Any] = {"num_documents": len(gold)}
    for prefix, scores in (
            ("inkb", inkb_micro_prf(gold_triples, pred_triples)),
            ("md", md_micro_prf(gold_triples, pred_triples)),
            ("document_entities", entity_set_prf({k: {t[2] for t in v} for k, v in gold.items()},
                                                 {k: {t[2] for t in v} for k, v in preds.items()}))):
        metrics.update({f"{prefix}_{name}": value for name, value in scores.items()})
    errors = error_categories({k: {t[1:] for t in v} for k, v in gold.items()},
                              {k: {t[1:] for t in v} for k, v in preds.items()})
    metrics.update({f"num_{category}_documents": errors[category] for category in ERROR_CATEGORIES})
    metrics["documents_by_category"] = errors["keys"]
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kipjax.metrics.el", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=["zeshel", "inkb", "analysis"],
                        help="analysis: EntQA's error analysis of inkb files, per document "
                             "(EntQA categorizes passages; these files hold documents)")
    parser.add_argument("--gold", required=True)
    parser.add_argument("--pred", required=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        score = {"zeshel": score_zeshel_files, "inkb": score_inkb_files, "analysis": score_analysis_files}
        metrics = score[args.task](args.gold, args.pred)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(metrics))
        return
    width = max(24, *map(len, metrics))  # analysis keys are longer than the zeshel / inkb ones
    for name, value in metrics.items():
        if isinstance(value, dict):  # per_domain: {domain: stats}; documents_by_category: {category: [ids]}
            for group, stats in value.items():
                print(f"  {group}: " + (", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in stats.items()) if isinstance(stats, dict)
                                        else ", ".join(map(str, stats)) or "(none)"))
        else:
            print(f"{name:{width}s} {value:.4f}" if isinstance(value, float) else f"{name:{width}s} {value}")


if __name__ == "__main__":
    main()
