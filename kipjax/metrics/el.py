"""Entity-linking metrics: Zeshel accuracy macro-averaged over domains, and GERBIL-style InKB micro P/R/F1.

Zeshel (Logeswaran et al., 2019) reports, per domain (world), accuracy over all mentions ("unnormalized")
and over the mentions whose gold entity is among the retrieved candidates ("normalized", isolating the
reranker); each is then averaged over domains with equal weight.

InKB micro P/R/F1 (GERBIL A2KB, strong matching, as used for end-to-end linking such as EntQA) pools
(doc, span, entity) triples over the corpus; an annotation counts only if its entity is in the KB, so
NIL annotations are dropped from gold and predictions alike.

CLI:
  python -m kipjax.metrics.el zeshel --gold G --pred P [--json]
    G: {"id": mention, "gold": entity, "domain": world[, "candidates": [...]]}  P: {"id": mention, "pred": entity}
    Without "candidates" a mention counts as having its gold among the candidates.
  python -m kipjax.metrics.el inkb --gold G --pred P [--json]
    G and P: {"id": doc, "links": [[start, end, entity], ...]}
  Ids and entities are compared as stripped strings. A mention or document without a prediction counts as
  predicting nothing; a prediction for an id not in the gold file is an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Collection, Hashable, Iterable, Sequence

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
    gold_set = {t for t in gold if t[2] not in nil_entities}
    pred_set = {t for t in predicted if t[2] not in nil_entities}
    tp = len(gold_set & pred_set)
    fp, fn = len(pred_set) - tp, len(gold_set) - tp
    if tp == 0:
        score = 1.0 if fp == 0 and fn == 0 else 0.0
        precision = recall = f1 = score
    else:
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1,
            "true_positives": tp, "false_positives": fp, "false_negatives": fn}


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


def score_inkb_files(gold_path: str, pred_path: str) -> dict[str, float]:
    gold, preds = _links(gold_path), _links(pred_path)
    unknown = sorted(set(preds) - set(gold))
    if unknown:
        raise ValueError(f"{pred_path}: document id(s) {unknown[:5]} are not in the gold file {gold_path}")
    return inkb_micro_prf(set().union(*gold.values()), set().union(*preds.values()))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kipjax.metrics.el", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=["zeshel", "inkb"])
    parser.add_argument("--gold", required=True)
    parser.add_argument("--pred", required=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        metrics = (score_zeshel_files if args.task == "zeshel" else score_inkb_files)(args.gold, args.pred)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(metrics))
        return
    for name, value in metrics.items():
        if name == "per_domain":
            for domain, stats in value.items():
                print(f"  {domain}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in stats.items()))
        else:
            print(f"{name:24s} {value:.4f}" if isinstance(value, float) else f"{name:24s} {value}")


if __name__ == "__main__":
    main()
