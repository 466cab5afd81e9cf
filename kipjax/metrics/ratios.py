"""Recall / precision / F1 from counts, with the official scorers' convention that a ratio over nothing is 0
(the CoNLL-2012 scorer; DocRED's script crashes there instead, and kipjax reports 0)."""
from __future__ import annotations


def ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def prf(recall_numerator: float, recall_denominator: float, precision_numerator: float,
        precision_denominator: float) -> dict[str, float]:
    recall = ratio(recall_numerator, recall_denominator)
    precision = ratio(precision_numerator, precision_denominator)
    return {"recall": recall, "precision": precision, "f1": ratio(2 * precision * recall, precision + recall)}
