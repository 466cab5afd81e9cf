"""Mention alignment for partial linearizations (sec. 7.3.4): Gotoh's affine-gap global alignment.

A partial linearization lists only the mention tokens, so a predicted mention such as `<m> b | 0 </m>` does
not say which `b` of the document it is. With the special symbols removed (keeping each mention's span over
the remaining "mention tokens"), the mention tokens are globally aligned to the source tokens:

    score = #matches - #mismatches + sum over gaps of g(n),   g(n) = -1 - p (n - 1),  p >= 0,

where a (mis)match aligns a source token with a mention token and a gap is a maximal run of source tokens
(or of mention tokens) aligned to nothing; gaps are allowed in both sequences, including at either end. The
affine gap rewards one long gap over several short ones (mentions tend to be dense). An alignment is a
monotone lattice path of three moves, ALIGN (diagonal), SKIP_SOURCE and SKIP_TARGET; Gotoh's algorithm finds
an optimal one in O(T'K) time with three score tables, one per last move (here filled one anti-diagonal at a
time so each step is a vectorised numpy operation).

Ties: among optimal alignments the traceback, walking back from the end, prefers SKIP_SOURCE, then ALIGN,
then SKIP_TARGET, i.e. it returns the alignment whose moves read backwards are greatest in that order. Each
mention token, from the last one backwards, therefore sits as early in the source as an optimal alignment
allows (the "high road", default of the authors' implementation), and the result never depends on hash or
iteration order.

A mention span over mention tokens maps to the source span from its first to its last ALIGNED token (a
mismatch counts as aligned): an end aligned to a gap falls back to the nearest aligned token inside the
mention, and a mention none of whose tokens is aligned is lost (None).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Hashable, Sequence, TypeVar

import numpy as np

from kipjax.data.coref import Span

T = TypeVar("T", bound=Hashable)

# Last move of a path; the order is the traceback's tie preference (np.argmax returns the first maximum).
SKIP_SOURCE, ALIGN, SKIP_TARGET = 0, 1, 2
MATCH_SCORE, MISMATCH_SCORE, GAP_OPEN_SCORE = 1.0, -1.0, -1.0


@dataclasses.dataclass(frozen=True)
class Alignment:
    """An optimal alignment: its score and, for each target token, its source position (None for a gap)."""

    score: float
    source_index: list[int | None]


def _check_gap_penalty(gap_penalty: float) -> None:
    if not (math.isfinite(gap_penalty) and gap_penalty >= 0):
        raise ValueError(f"gap_penalty: expected a finite number >= 0, got {gap_penalty!r}")


def _gap_costs(skip_move: int, gap_penalty: float) -> np.ndarray:
    """Score added by a `skip_move` after each previous move: extending its own gap, else opening one."""
    costs = np.full(3, GAP_OPEN_SCORE)
    costs[skip_move] = -gap_penalty
    return costs[:, None]


def gotoh_align(source: Sequence[T], target: Sequence[T], gap_penalty: float = 0.0) -> Alignment:
    """Optimal global alignment of `target` (the mention tokens) to `source` under the module's scoring."""
    _check_gap_penalty(gap_penalty)
    num_source, num_target = len(source), len(target)
    vocabulary: dict[T, int] = {}
    source_ids = np.array([vocabulary.setdefault(token, len(vocabulary)) for token in source], dtype=np.int64)
    target_ids = np.array([vocabulary.get(token, -1) for token in target], dtype=np.int64)

    # scores[move, i, k]: best score of aligning source[:i] with target[:k] with `move` last;
    # back[move, i, k]: the move before it on that best path.
    scores = np.full((3, num_source + 1, num_target + 1), -np.inf)
    back = np.full((3, num_source + 1, num_target + 1), ALIGN, dtype=np.int8)
    scores[ALIGN, 0, 0] = 0.0  # the empty path; ALIGN so that a first gap opens
    scores[SKIP_SOURCE, 1:, 0] = GAP_OPEN_SCORE - gap_penalty * np.arange(num_source)
    back[SKIP_SOURCE, 2:, 0] = SKIP_SOURCE
    scores[SKIP_TARGET, 0, 1:] = GAP_OPEN_SCORE - gap_penalty * np.arange(num_target)
    back[SKIP_TARGET, 0, 2:] = SKIP_TARGET

    skip_source_costs = _gap_costs(SKIP_SOURCE, gap_penalty)
    skip_target_costs = _gap_costs(SKIP_TARGET, gap_penalty)
    for diagonal in range(2, num_source + num_target + 1):
        i = np.arange(max(1, diagonal - num_target), min(num_source, diagonal - 1) + 1)
        if i.size == 0:
            continue
        k = diagonal - i
        substitution = np.where(source_ids[i - 1] == target_ids[k - 1], MATCH_SCORE, MISMATCH_SCORE)
        for move, previous in ((ALIGN, scores[:, i - 1, k - 1]),
                               (SKIP_SOURCE, scores[:, i - 1, k] + skip_source_costs),
                               (SKIP_TARGET, scores[:, i, k - 1] + skip_target_costs)):
            best_previous = previous.argmax(axis=0)
            scores[move, i, k] = previous[best_previous, np.arange(i.size)]
            back[move, i, k] = best_previous
        scores[ALIGN, i, k] += substitution

    move = int(scores[:, num_source, num_target].argmax())
    score = float(scores[move, num_source, num_target])
    source_index: list[int | None] = [None] * num_target
    i, k = num_source, num_target
    while i > 0 or k > 0:
        previous_move = int(back[move, i, k])
        if move == ALIGN:
            source_index[k - 1] = i - 1
        i -= move != SKIP_TARGET
        k -= move != SKIP_SOURCE
        move = previous_move
    return Alignment(score=score, source_index=source_index)


def project_spans(source_index: Sequence[int | None], spans: Sequence[Span]) -> list[Span | None]:
    """Map spans over target tokens to source spans through `source_index` (fallback in the module doc)."""
    projected: list[Span | None] = []
    for start, end in spans:
        if not 0 <= start <= end < len(source_index):
            raise ValueError(f"spans: expected inclusive spans within {len(source_index)} target tokens, "
                             f"got {(start, end)}")
        aligned = [position for position in source_index[start:end + 1] if position is not None]
        projected.append((aligned[0], aligned[-1]) if aligned else None)
    return projected


def align_mentions(source: Sequence[T], mention_tokens: Sequence[T], spans: Sequence[Span],
                   gap_penalty: float = 0.0) -> list[Span | None]:
    """Source spans of mentions given as `spans` over the special-symbol-free `mention_tokens`."""
    return project_spans(gotoh_align(source, mention_tokens, gap_penalty).source_index, spans)


def align_mentions_by_sentence(sentences: Sequence[Sequence[T]],
                               mentions: Sequence[tuple[Sequence[T], Sequence[Span]]],
                               gap_penalty: float = 0.0) -> list[list[Span | None]]:
    """Sentence-constrained alignment: `mentions[i]` = (mention tokens, spans) of the linearization's i-th
    sentence, aligned to `sentences[i]` only; the spans returned are document positions (sentences
    concatenated). Fewer mention groups than sentences is fine (the rest have no mentions)."""
    if len(mentions) > len(sentences):
        raise ValueError(f"mentions: expected at most one group per sentence ({len(sentences)}), "
                         f"got {len(mentions)}")
    offsets = itertools.accumulate((len(sentence) for sentence in sentences), initial=0)
    aligned = []
    for sentence, offset, (tokens, spans) in zip(sentences, offsets, mentions):
        aligned.append([None if span is None else (span[0] + offset, span[1] + offset)
                        for span in align_mentions(sentence, tokens, spans, gap_penalty)])
    return aligned
