"""Coreference metrics of the CoNLL-2012 reference scorer v8.01 (Pradhan et al., 2014): MUC, B-cubed,
CEAF-phi3 (`ceafm`), CEAF-phi4 (`ceafe`), BLANC, and their CoNLL F1 (mean of MUC, B3 and CEAFe F1).

Each metric has a function scoring ONE document into counts (recall numerator, recall denominator, precision
numerator, precision denominator); `coref_scores` sums them over documents before dividing (micro average),
as the scorer does. A ratio with a zero denominator is 0 and F1 is 0 when P + R = 0, also as in the scorer.

Mentions are any hashable values (e.g. inclusive (start, end) spans) and match only when equal. Key
(gold) and response (predicted) mentions need not coincide; missing and spurious ("twinless") mentions are
scored as v8.01 does (Pradhan et al., 2014, section 3): in MUC a missing key mention is a partition of its
own for recall and a spurious response mention one for precision; B3 and CEAF count every mention of each
side in that side's denominator; BLANC compares each side's links over that side's own mentions.

Duplicates: a mention listed twice (in one cluster or in two) is kept where it first occurs and the later
copies are dropped with a warning. v8.01 does the same for response mentions that are also key mentions
(and refuses to score more than 10 repeats); for other repeats its result depends on implementation details,
so deduplicating both sides is our documented choice.

BLANC (Recasens & Hovy, 2011; extended to predicted mentions by Luo et al., 2014, as implemented in v8.01):
coreference links are the mention pairs inside a cluster, non-coreference links the pairs across clusters,
each side over its own mentions. R_c, P_c, F_c and R_n, P_n, F_n score the two link sets; BLANC averages
them. When the key has no coreference links (all singletons) BLANC is the non-coreference score alone; when
it has no non-coreference links (one entity) BLANC is the coreference score alone; with neither it is 0.
Only the key's (summed) link counts select the case, as in v8.01's ComputeBLANCFromCounts.

CLI:
  python -m kipjax.metrics.coref --gold G --pred P [--json]
  G and P: CoNLL-2012 files or jsonlines (see kipjax.data.coref.read_documents), matched by doc_key; a gold
  document without a prediction is scored as an empty prediction, a predicted doc_key missing from the gold
  file is an error.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import warnings
from math import comb
from typing import Callable, Hashable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from kipjax.data.coref import read_documents
from kipjax.metrics.ratios import prf

Mention = Hashable
Clusters = Sequence[Sequence[Mention]]
Counts = tuple[float, float, float, float]  # recall numerator, recall denominator, precision num., precision den.
METRICS = ("muc", "bcub", "ceafm", "ceafe", "blanc")


def deduplicate(clusters: Clusters, side: str = "clusters") -> list[list[Mention]]:
    """`clusters` with every mention only where it first occurs, and without empty clusters."""
    seen: set[Mention] = set()
    result = []
    for cluster in clusters:
        kept = []
        for mention in cluster:
            if mention in seen:
                warnings.warn(f"{side}: mention {mention!r} occurs more than once; keeping its first occurrence")
                continue
            seen.add(mention)
            kept.append(mention)
        if kept:
            result.append(kept)
    return result


def _cluster_index(clusters: list[list[Mention]]) -> dict[Mention, int]:
    return {mention: i for i, cluster in enumerate(clusters) for mention in cluster}


def _overlaps(key: list[list[Mention]], response: list[list[Mention]]) -> np.ndarray:
    """[len(key), len(response)] matrix of |K_i ∩ R_j|."""
    overlap = np.zeros((len(key), len(response)), dtype=np.int64)
    response_index = _cluster_index(response)
    for i, cluster in enumerate(key):
        for mention in cluster:
            if mention in response_index:
                overlap[i, response_index[mention]] += 1
    return overlap


def muc_counts(key: Clusters, response: Clusters) -> Counts:
    """MUC (Vilain et al., 1995): recall = sum_K (|K| - |p(K)|) / sum_K (|K| - 1), where p(K) partitions K by
    the response and a key mention missing from the response is a part of its own; precision symmetrically."""
    key, response = deduplicate(key, "key"), deduplicate(response, "response")
    overlap = _overlaps(key, response)
    # |K| - |p(K)| = sum over the parts of (|part| - 1); parts of one mention (incl. missing ones) add 0.
    correct_links = float(np.maximum(overlap - 1, 0).sum())
    key_links = sum(len(c) - 1 for c in key)
    response_links = sum(len(c) - 1 for c in response)
    return correct_links, key_links, correct_links, response_links


def b_cubed_counts(key: Clusters, response: Clusters) -> Counts:
    """B-cubed (Bagga & Baldwin, 1998) over all mentions of each side, singletons included: recall sums
    |K ∩ R|^2 / |K| over pairs of clusters and divides by the number of key mentions; precision uses |R|."""
    key, response = deduplicate(key, "key"), deduplicate(response, "response")
    squared = _overlaps(key, response).astype(np.float64) ** 2
    key_sizes = np.array([len(c) for c in key], dtype=np.float64)[:, None]
    response_sizes = np.array([len(c) for c in response], dtype=np.float64)[None, :]
    return (float((squared / key_sizes).sum()) if key else 0.0, float(key_sizes.sum()),
            float((squared / response_sizes).sum()) if response else 0.0, float(response_sizes.sum()))


def _ceaf_counts(key: Clusters, response: Clusters,
                 similarity: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                 self_similarity: Callable[[list[list[Mention]]], float]) -> Counts:
    """CEAF (Luo, 2005): the one-to-one cluster alignment maximizing the total similarity Phi*, recall =
    Phi* / sum_K phi(K, K), precision = Phi* / sum_R phi(R, R)."""
    key, response = deduplicate(key, "key"), deduplicate(response, "response")
    aligned = 0.0
    if key and response:
        scores = similarity(_overlaps(key, response).astype(np.float64),
                            np.array([len(c) for c in key], dtype=np.float64)[:, None],
                            np.array([len(c) for c in response], dtype=np.float64)[None, :])
        rows, columns = linear_sum_assignment(scores, maximize=True)
        aligned = float(scores[rows, columns].sum())
    return aligned, self_similarity(key), aligned, self_similarity(response)


def ceafm_counts(key: Clusters, response: Clusters) -> Counts:
    """Mention-based CEAF, phi3(K, R) = |K ∩ R|; the self-similarities are the numbers of mentions."""
    return _ceaf_counts(key, response, lambda overlap, _k, _r: overlap,
                        lambda clusters: float(sum(len(c) for c in clusters)))


def ceafe_counts(key: Clusters, response: Clusters) -> Counts:
    """Entity-based CEAF, phi4(K, R) = 2 |K ∩ R| / (|K| + |R|); the self-similarities are the cluster counts."""
    return _ceaf_counts(key, response, lambda overlap, k, r: 2 * overlap / (k + r),
                        lambda clusters: float(len(clusters)))


@dataclasses.dataclass(frozen=True)
class BlancCounts:
    """Link counts of BLANC; summing them over documents is the scorer's micro average."""

    coref_correct: int = 0
    coref_key: int = 0
    coref_response: int = 0
    noncoref_correct: int = 0
    noncoref_key: int = 0
    noncoref_response: int = 0

    def __add__(self, other: BlancCounts) -> BlancCounts:
        return BlancCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def _links_within(sizes) -> int:
    return sum(comb(int(n), 2) for n in sizes)


def blanc_counts(key: Clusters, response: Clusters) -> BlancCounts:
    """Coreference / non-coreference link counts of one document (Luo et al., 2014)."""
    key, response = deduplicate(key, "key"), deduplicate(response, "response")
    overlap = _overlaps(key, response)
    num_key, num_response = sum(len(c) for c in key), sum(len(c) for c in response)
    coref_key, coref_response = _links_within(len(c) for c in key), _links_within(len(c) for c in response)
    coref_correct = _links_within(overlap.ravel())
    # Pairs of common mentions in different key AND different response clusters, by inclusion-exclusion.
    noncoref_correct = (comb(int(overlap.sum()), 2) - _links_within(overlap.sum(axis=1))
                        - _links_within(overlap.sum(axis=0)) + coref_correct)
    return BlancCounts(coref_correct, coref_key, coref_response,
                       noncoref_correct, comb(num_key, 2) - coref_key, comb(num_response, 2) - coref_response)


def blanc_scores(counts: BlancCounts) -> dict[str, dict[str, float]]:
    """{"coref_links", "noncoref_links", "blanc"}, each {"recall", "precision", "f1"} (v8.01 boundary cases)."""
    coref = prf(counts.coref_correct, counts.coref_key, counts.coref_correct, counts.coref_response)
    noncoref = prf(counts.noncoref_correct, counts.noncoref_key, counts.noncoref_correct, counts.noncoref_response)
    if counts.coref_key == 0 and counts.noncoref_key == 0:
        blanc = {"recall": 0.0, "precision": 0.0, "f1": 0.0}
    elif counts.coref_key == 0:
        blanc = noncoref
    elif counts.noncoref_key == 0:
        blanc = coref
    else:
        blanc = {name: (coref[name] + noncoref[name]) / 2 for name in coref}
    return {"coref_links": coref, "noncoref_links": noncoref, "blanc": dict(blanc)}


COUNTS = {"muc": muc_counts, "bcub": b_cubed_counts, "ceafm": ceafm_counts, "ceafe": ceafe_counts}


def _check_same_length(gold: Sequence[Clusters], pred: Sequence[Clusters]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred must list the same documents, got {len(gold)} and {len(pred)} documents")


def coref_scores(gold: Sequence[Clusters], pred: Sequence[Clusters]) -> dict:
    """Micro-averaged scores over documents: {"muc", "bcub", "ceafm", "ceafe", "blanc": {"recall", "precision",
    "f1"}, "conll_f1"}; gold[i] and pred[i] are the clusters of document i."""
    _check_same_length(gold, pred)
    scores: dict = {}
    for name, counts in COUNTS.items():
        totals = np.zeros(4)
        for key, response in zip(gold, pred):
            totals += counts(key, response)
        scores[name] = prf(*totals)
    blanc = sum((blanc_counts(key, response) for key, response in zip(gold, pred)), BlancCounts())
    scores["blanc"] = blanc_scores(blanc)["blanc"]
    scores["conll_f1"] = (scores["muc"]["f1"] + scores["bcub"]["f1"] + scores["ceafe"]["f1"]) / 3
    return scores


def mention_detection(gold: Sequence[Clusters], pred: Sequence[Clusters]) -> dict[str, float]:
    """Micro P/R/F1 of unlabeled mentions (exact match), each side's mentions counted once per document."""
    _check_same_length(gold, pred)
    correct = num_gold = num_pred = 0
    for key, response in zip(gold, pred):
        key_mentions = {m for cluster in key for m in cluster}
        response_mentions = {m for cluster in response for m in cluster}
        correct += len(key_mentions & response_mentions)
        num_gold, num_pred = num_gold + len(key_mentions), num_pred + len(response_mentions)
    return prf(correct, num_gold, correct, num_pred)


def detected_mention_clustering(gold: Sequence[Clusters], pred: Sequence[Clusters]) -> float:
    """CoNLL F1 with both sides restricted to the mentions they share: clustering quality on correctly
    detected mentions, separating it from mention detection (the dissertation's Table 7.7)."""
    _check_same_length(gold, pred)
    restricted_gold, restricted_pred = [], []
    for key, response in zip(gold, pred):
        shared = {m for cluster in key for m in cluster} & {m for cluster in response for m in cluster}
        restricted_gold.append([[m for m in cluster if m in shared] for cluster in key])
        restricted_pred.append([[m for m in cluster if m in shared] for cluster in response])
    return coref_scores(restricted_gold, restricted_pred)["conll_f1"]


def score_files(gold_path: str, pred_path: str) -> dict:
    """coref_scores of two files matched by doc_key (see the module docstring)."""
    def clusters_by_key(path: str) -> dict[str, list]:
        documents = read_documents(path)
        repeated = [k for k, n in collections.Counter(d.doc_key for d in documents).items() if n > 1]
        if repeated:
            raise ValueError(f"{path}: doc_key(s) {repeated[:5]} occur more than once")
        return {d.doc_key: d.clusters for d in documents}

    gold, pred = clusters_by_key(gold_path), clusters_by_key(pred_path)
    unknown = [k for k in pred if k not in gold]
    if unknown:
        raise ValueError(f"{pred_path}: doc_key(s) {unknown[:5]} are not in the gold file {gold_path}")
    return coref_scores(list(gold.values()), [pred.get(k, []) for k in gold])


def format_table(scores: dict) -> str:
    lines = [f"{'metric':8s} {'recall':>8s} {'precision':>9s} {'f1':>8s}"]
    for name in METRICS:
        s = scores[name]
        lines.append(f"{name:8s} {100 * s['recall']:8.2f} {100 * s['precision']:9.2f} {100 * s['f1']:8.2f}")
    lines.append(f"{'conll_f1':8s} {'':8s} {'':9s} {100 * scores['conll_f1']:8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kipjax.metrics.coref", description=__doc__.split("\n")[0])
    parser.add_argument("--gold", required=True, help="CoNLL-2012 or jsonlines file with the key clusters")
    parser.add_argument("--pred", required=True, help="CoNLL-2012 or jsonlines file with the response clusters")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        scores = score_files(args.gold, args.pred)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(scores) if args.json else format_table(scores))
    return scores


if __name__ == "__main__":
    main()
