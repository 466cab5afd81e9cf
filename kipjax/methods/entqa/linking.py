"""From the reader's kept spans to a document's entity links (dissertation sec. 6.2.3), and their scores.

A kept span of candidate k in a passage becomes a `ScoredLink`: the characters its pieces cover in the
document, the candidate's title and p = p_rerank(k) p_start(s) p_end(t). Overlapping passages propose the same
link more than once; a document keeps each (span, entity) once, with its best score (the authors' code
deduplicates the same way, after thresholding). `final_links` keeps the links scored above the threshold gamma;
nested and overlapping mentions stay (`overlaps='keep'`, the default), or only the best-scored of any
overlapping links does (`'best'`, greedy by score).

`calibrate` is appendix D.1's threshold search: every threshold that changes the kept set, the best InKB F1.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from kipjax.methods.entqa.data import PassageExample
from kipjax.methods.entqa.passages import Passage
from kipjax.metrics import el as el_metrics

OVERLAPS = ("keep", "best")


class ScoredLink(NamedTuple):
    start: int  # document characters [start, end)
    end: int
    entity: str
    score: float


def passage_links(passage: Passage, candidates: np.ndarray, keep: np.ndarray, log_probs: np.ndarray,
                  starts: np.ndarray, ends: np.ndarray, titles: Sequence[str]) -> list[ScoredLink]:
    """One passage's kept spans as document links: `candidates` [K] KB rows, `keep` / `log_probs` / `starts` /
    `ends` [K, count] from `reader_objective.top_spans` and `select_spans` (positions in the pair, where the
    passage's piece i is at i + 1)."""
    links = []
    for k, i in zip(*np.nonzero(keep)):
        start, end = passage.char_span(int(starts[k, i]) - 1, int(ends[k, i]) - 1)
        links.append(ScoredLink(start, end, titles[int(candidates[k])], math.exp(float(log_probs[k, i]))))
    return links


def merge_passages(examples: Sequence[PassageExample], per_passage: Sequence[Iterable[ScoredLink]]
                   ) -> dict[str, list[ScoredLink]]:
    """Each document's links from all its passages, every (span, entity) once with its best score, in text
    order; documents without a link map to []."""
    best: dict[str, dict[tuple[int, int, str], float]] = {}
    for example, links in zip(examples, per_passage, strict=True):
        document = best.setdefault(example.passage.doc_id, {})
        for link in links:
            key = link[:3]
            document[key] = max(document.get(key, -math.inf), link.score)
    return {doc: [ScoredLink(*key, score) for key, score in sorted(links.items())] for doc, links in best.items()}


def final_links(scored: Sequence[ScoredLink], threshold: float, overlaps: str = "keep") -> list[ScoredLink]:
    """The links scored above `threshold`; with overlaps='best', only the best of any overlapping ones (ties
    to the earlier link), in text order."""
    if overlaps not in OVERLAPS:
        raise ValueError(f"overlaps must be one of {OVERLAPS}, got {overlaps!r}")
    kept = [link for link in scored if link.score > threshold]
    if overlaps == "keep":
        return kept
    chosen: list[ScoredLink] = []
    for link in sorted(kept, key=lambda link: (-link.score, link.start, link.end, link.entity)):
        if all(link.end <= other.start or other.end <= link.start for other in chosen):
            chosen.append(link)
    return sorted(chosen)


def best_per_span(links: Sequence[ScoredLink]) -> list[ScoredLink]:
    """One link per span, the best-scored (ties to the first entity in order): what NIF and GERBIL can carry,
    one entity per phrase. The JSON-lines output keeps every (span, entity), as the authors' code does."""
    best: dict[tuple[int, int], ScoredLink] = {}
    for link in sorted(links, key=lambda link: (-link.score, link.entity)):
        best.setdefault((link.start, link.end), link)
    return sorted(best.values())


def gold_triples(records: Iterable[Mapping[str, Any]]) -> set[el_metrics.Triple]:
    """(doc, (start, end), title) of gold-link records; NIL links (title None) stay, the scorer drops them."""
    return {(str(r["id"]), (int(s), int(e)), t) for r in records for s, e, t in r["links"]}


def predicted_triples(links: Mapping[str, Sequence[ScoredLink]]) -> set[el_metrics.Triple]:
    return {(doc, (link.start, link.end), link.entity) for doc, doc_links in links.items() for link in doc_links}


def calibrate(scored: Mapping[str, Sequence[ScoredLink]], records: Sequence[Mapping[str, Any]],
              overlaps: str = "keep", max_thresholds: int = 200) -> dict[str, Any]:
    """The threshold with the best InKB F1 (appendix D.1) and the F1 of every threshold tried.

    Keeping links scored above gamma changes only at the distinct scores, so gamma runs over them (and 0): with
    overlaps='keep' all of them, exactly and at once (links sorted by score, true positives counted
    cumulatively); with 'best' the kept set is recomputed per threshold, at every distinct score or, when there
    are more than `max_thresholds`, at that many score quantiles. Ties in F1 go to the larger threshold (fewer
    links)."""
    gold = {t for t in gold_triples(records) if t[2] not in el_metrics.DEFAULT_NIL_ENTITIES}
    links = sorted(((link.score, (doc, (link.start, link.end), link.entity)) for doc, doc_links in scored.items()
                    for link in doc_links), key=lambda pair: -pair[0])
    scores = np.array([score for score, _ in links])
    if overlaps == "keep":
        # gamma = scores[i] keeps exactly the links scored above it: the first `kept[i]` of the sorted list
        thresholds = np.unique(np.concatenate([scores, [0.0]]))[::-1]
        hits = np.concatenate([[0], np.cumsum([triple in gold for _, triple in links])])
        kept = np.searchsorted(-scores, -thresholds, side="left")
        curve = [el_metrics.prf_counts(int(hits[n]), int(n - hits[n]), len(gold) - int(hits[n]))["f1"]
                 for n in kept]
    else:
        grid = np.unique(scores)
        if len(grid) > max_thresholds:
            grid = np.quantile(scores, np.linspace(0, 1, max_thresholds), method="lower")
        thresholds = np.unique(np.concatenate([grid, [0.0]]))[::-1]
        curve = [inkb_at(scored, records, t, overlaps)["f1"] for t in thresholds]
    best = int(np.argmax(curve))  # thresholds descend, so the first maximum is the largest threshold
    return {"threshold": float(thresholds[best]), "f1": float(curve[best]),
            "curve": [[float(t), float(f)] for t, f in zip(thresholds, curve)]}


def inkb_at(scored: Mapping[str, Sequence[ScoredLink]], records: Sequence[Mapping[str, Any]], threshold: float,
            overlaps: str = "keep") -> dict[str, float]:
    """InKB P/R/F1 of the links kept at `threshold`."""
    return el_metrics.inkb_micro_prf(gold_triples(records), predicted_triples(
        {doc: final_links(doc_links, threshold, overlaps) for doc, doc_links in scored.items()}))


def entities_by_document(triples: Iterable[el_metrics.Triple]) -> dict[str, set]:
    """{doc: the entities of its (doc, span, entity) triples}, in one pass."""
    entities: dict[str, set] = {}
    for doc, _, entity in triples:
        entities.setdefault(doc, set()).add(entity)
    return entities


def link_metrics(scored: Mapping[str, Sequence[ScoredLink]], records: Sequence[Mapping[str, Any]],
                 threshold: float, overlaps: str = "keep",
                 passage_entities: tuple[Mapping[Any, set], Mapping[Any, set]] | None = None) -> dict[str, float]:
    """InKB P/R/F1 at `threshold`, mention-detection F1, document-level accept/reject F1 of entities (and the
    passage-level one, given (gold, predicted) entity sets per passage) and the calibrated threshold's F1."""
    predicted = {doc: final_links(doc_links, threshold, overlaps) for doc, doc_links in scored.items()}
    gold, pred = gold_triples(records), predicted_triples(predicted)
    inkb = el_metrics.inkb_micro_prf(gold, pred)
    metrics = {"precision": inkb["precision"], "recall": inkb["recall"], "f1": inkb["f1"],
               "md_f1": el_metrics.md_micro_prf(gold, pred)["f1"],
               "document_entities_f1": el_metrics.entity_set_prf(entities_by_document(gold),
                                                                 entities_by_document(pred))["f1"]}
    if passage_entities is not None:
        metrics["passage_entities_f1"] = el_metrics.entity_set_prf(*passage_entities)["f1"]
    calibrated = calibrate(scored, records, overlaps)
    metrics.update(calibrated_threshold=calibrated["threshold"], calibrated_f1=calibrated["f1"])
    return metrics
