"""Ranking metrics over ranked id lists: recall@k, KILT evidence-set recall@k, MRR, nDCG@k, R-precision.

Gold convention (per query), chosen so that one gold file serves every metric, as in KILT:
  * a scalar id, or a list whose scalar elements are alternative gold ids (each its own evidence set);
  * list elements that are themselves lists are evidence sets that must be retrieved *together*
    (e.g. the two pages of a multi-hop question).
The relevant set for recall@k, MRR and nDCG is the union of all gold ids.

CLI:  python -m kipjax.metrics.retrieval --gold G --pred P [--ks 1,5,10,20] [--json]
  G: JSON lines {"id": ..., "gold": [...]};  P: JSON lines {"id": ..., "ranked": [...]}.
  Ids are compared as stripped strings (as KILT does), so 12 and "12" match. A query without a
  prediction scores 0 on every metric; a prediction for an unknown id is an error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any, Hashable, Iterable, Sequence

import numpy as np

from kipjax.data.jsonl import json_lines

Gold = Any  # a scalar id or a list of ids / lists of ids; see the module docstring
Ranked = Sequence[Sequence[Hashable]] | np.ndarray


def _is_scalar(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim == 0
    return not isinstance(x, (list, tuple, set, frozenset))


def _plain(x: Any) -> Hashable:
    return x.item() if isinstance(x, np.generic) else x


def evidence_sets(gold: Gold) -> list[frozenset]:
    """Distinct evidence sets of one query's gold (scalars become singleton sets), in first-seen order."""
    items = [gold] if _is_scalar(gold) else list(gold)
    sets: list[frozenset] = []
    for item in items:
        s = frozenset([_plain(item)]) if _is_scalar(item) else frozenset(_plain(x) for x in item)
        if s and s not in sets:
            sets.append(s)
    return sets


def relevant_ids(gold: Gold) -> set:
    """Union of all gold ids of one query."""
    return set().union(*evidence_sets(gold))


def _rows(ranked: Ranked, gold: Sequence[Gold]) -> list[tuple[list, Gold]]:
    if len(ranked) != len(gold):
        raise ValueError(f"{len(ranked)} ranked lists but {len(gold)} gold entries")
    return [([_plain(x) for x in row], g) for row, g in zip(ranked, gold)]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


def recall_at_k(ranked: Ranked, gold: Sequence[Gold], k: int) -> float:
    """Fraction of queries with at least one gold id among the top k (entity linking's recall@k)."""
    return _mean(float(bool(relevant_ids(g) & set(row[:k]))) for row, g in _rows(ranked, gold))


def evidence_rank(row: Sequence[Hashable], sets: Sequence[frozenset | set]) -> list:
    """KILT's rank: each evidence set is one point, placed where its last member is retrieved.

    Entries are True (a completed set), False (a non-gold prediction) or ("partial", set index) for a set
    with members still missing, moved to the latest position at which one of its members appeared.
    """
    remaining = [set(s) for s in sets]
    rank: list = []
    for page in row:
        found = False
        for index, members in enumerate(remaining):
            if page in members:
                found = True
                partial = ("partial", index)
                if partial in rank:
                    rank.remove(partial)
                members.remove(page)
                rank.append(True if not members else partial)
        if not found:
            rank.append(False)
    return rank


def evidence_recall_at_k(ranked: Ranked, gold: Sequence[Gold], k: int) -> float:
    """KILT recall@k: per query, completed evidence sets within the top k (sets counted as one rank
    position each) over the number of distinct sets, averaged over queries. Multi-gold recall: with
    singleton golds it is |gold ∩ top-k| / |gold|."""
    def one(row: list, g: Gold) -> float:
        sets = evidence_sets(g)
        return evidence_rank(row, sets)[:k].count(True) / len(sets) if sets and row else 0.0
    return _mean(one(row, g) for row, g in _rows(ranked, gold))


def mrr(ranked: Ranked, gold: Sequence[Gold], k: int | None = None) -> float:
    """Mean reciprocal rank of the first gold id (within the top k if given; 0 when absent)."""
    def one(row: list, g: Gold) -> float:
        relevant = relevant_ids(g)
        return next((1.0 / (i + 1) for i, x in enumerate(row[:k]) if x in relevant), 0.0)
    return _mean(one(row, g) for row, g in _rows(ranked, gold))


def ndcg_at_k(ranked: Ranked, gold: Sequence[Gold], k: int) -> float:
    """Binary-relevance nDCG@k: sum 1/log2(rank+1) over gold hits (repeats count once), over the ideal."""
    def one(row: list, g: Gold) -> float:
        relevant = relevant_ids(g)
        if not relevant:
            return 0.0
        seen: set = set()
        dcg = 0.0
        for i, x in enumerate(row[:k]):
            if x in relevant and x not in seen:
                seen.add(x)
                dcg += 1.0 / math.log2(i + 2)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
        return dcg / ideal
    return _mean(one(row, g) for row, g in _rows(ranked, gold))


def r_precision(ranked: Ranked, gold: Sequence[Gold]) -> float:
    """KILT R-precision: per evidence set of size R, the share of the first R distinct predictions in the
    set; the best set counts; averaged over queries."""
    def one(row: list, g: Gold) -> float:
        distinct = list(dict.fromkeys(row))
        return max((len(s & set(distinct[:len(s)])) / len(s) for s in evidence_sets(g)), default=0.0)
    return _mean(one(row, g) for row, g in _rows(ranked, gold))


def evaluate_rankings(ranked: Ranked, gold: Sequence[Gold], ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """All metrics of this module in one dict (keys like `recall@10`, `evidence_recall@10`, `ndcg@10`)."""
    metrics = {"mrr": mrr(ranked, gold), "r_precision": r_precision(ranked, gold)}
    for k in ks:
        metrics[f"recall@{k}"] = recall_at_k(ranked, gold, k)
        metrics[f"evidence_recall@{k}"] = evidence_recall_at_k(ranked, gold, k)
        metrics[f"ndcg@{k}"] = ndcg_at_k(ranked, gold, k)
    return metrics


@dataclasses.dataclass(frozen=True)
class JsonlRecord:
    where: str  # "path:line", for error messages
    data: dict


def read_jsonl_by_id(path: str, fields: Sequence[str]) -> dict[str, JsonlRecord]:
    """Records of a JSON-lines file keyed by stripped `str(id)`, in file order; errors name the file and line.

    Blank lines are skipped. Every record must be an object with an "id" and all of `fields`.
    """
    records: dict[str, JsonlRecord] = {}
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        missing = [key for key in ("id", *fields) if key not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; expected {['id', *fields]}")
        key = str(record["id"]).strip()
        if key in records:
            raise ValueError(f"{where}: duplicate id {record['id']!r}")
        records[key] = JsonlRecord(where, record)
    return records


def _normalize_ids(value: Any, where: str, field: str) -> Any:
    """Ids as stripped strings, keeping the scalar / list / list-of-lists shape of gold."""
    if isinstance(value, list):
        return [_normalize_ids(v, where, field) for v in value]
    if isinstance(value, (dict, bool)) or value is None:
        raise ValueError(f"{where}: field {field!r} holds {value!r}; expected ids (strings or integers)")
    return str(value).strip()


def score_files(gold_path: str, pred_path: str, ks: Sequence[int]) -> dict[str, float]:
    """Reads gold and prediction files (see the module docstring) and evaluates every metric."""
    gold = read_jsonl_by_id(gold_path, ["gold"])
    preds = read_jsonl_by_id(pred_path, ["ranked"])
    for key, record in preds.items():
        if key not in gold:
            raise ValueError(f"{record.where}: id {record.data['id']!r} is not in the gold file {gold_path}")
        if not isinstance(record.data["ranked"], list) or any(isinstance(x, list) for x in record.data["ranked"]):
            raise ValueError(f"{record.where}: 'ranked' must be a flat list of ids")
    golds = [_normalize_ids(r.data["gold"], r.where, "gold") for r in gold.values()]
    ranked = [_normalize_ids(preds[key].data["ranked"], preds[key].where, "ranked") if key in preds else []
              for key in gold]
    metrics = evaluate_rankings(ranked, golds, ks)
    metrics.update(num_queries=len(gold), num_missing_predictions=sum(key not in preds for key in gold))
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kipjax.metrics.retrieval", description=__doc__.split("\n")[0])
    parser.add_argument("--gold", required=True, help='JSON lines {"id": ..., "gold": [...]}')
    parser.add_argument("--pred", required=True, help='JSON lines {"id": ..., "ranked": [...]}')
    parser.add_argument("--ks", default="1,5,10,20", help="comma-separated cut-offs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.ks.split(",")]
        metrics = score_files(args.gold, args.pred, ks)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(metrics))
    else:
        for name, value in metrics.items():
            print(f"{name:24s} {value:.4f}" if isinstance(value, float) else f"{name:24s} {value}")


if __name__ == "__main__":
    main()
