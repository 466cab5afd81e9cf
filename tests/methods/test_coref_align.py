"""Gotoh affine-gap mention alignment (sec. 7.3.4): the chapter's example, an affine case worked by hand, and
agreement (score and documented tie-breaking) with brute-force enumeration of every alignment."""
import random

import pytest

from kipjax.methods.coref.align import (align_mentions, align_mentions_by_sentence, gotoh_align,
                                        project_spans)

CHAPTER_SOURCE = list("abcdebb")


def test_chapter_example_aligns_to_the_last_two_tokens():
    # Matches b<->5 and b<->6 and one gap over a..e (-1 at p = 0): 2 - 1 = 1; any other placement of the two b
    # needs two or three gaps.
    alignment = gotoh_align(CHAPTER_SOURCE, ["b", "b"])
    assert alignment.score == 1.0
    assert alignment.source_index == [5, 6]
    assert align_mentions(CHAPTER_SOURCE, ["b", "b"], [(0, 0), (1, 1)]) == [(5, 5), (6, 6)]


def test_affine_penalty_changes_the_optimum():
    # p = 2: a gap of length n scores 1 - 2n. Both b aligned leaves 5 source tokens in at most 3 gaps (before,
    # between, after), costing (#gaps) - 10, so the best is 3 gaps: b at 1 and 5, 2 + 3 - 10 = -5 (b at 5, 6
    # gives 2 - 9 = -7, b at 1, 6 gives 2 - 8 = -6). Leaving a b unaligned costs more than it saves.
    alignment = gotoh_align(CHAPTER_SOURCE, ["b", "b"], gap_penalty=2.0)
    assert alignment.score == -5.0
    assert alignment.source_index == [1, 5]
    # p = 0.5: b at 5, 6 scores 2 - 1 - 4 * 0.5 = -1 and still beats b at 1, 6 (2 - 2 - 3 * 0.5 = -1.5).
    half = gotoh_align(CHAPTER_SOURCE, ["b", "b"], gap_penalty=0.5)
    assert (half.score, half.source_index) == (-1.0, [5, 6])


def test_edge_cases_and_ties():
    assert gotoh_align([], []).score == 0.0
    assert gotoh_align(["a", "b"], []).score == -1.0
    empty_source = gotoh_align([], ["a", "b"], gap_penalty=0.5)
    assert (empty_source.score, empty_source.source_index) == (-1.5, [None, None])
    # b b vs b: matching either b scores 1 - 1 = 0; ties put the mention token as early as possible.
    assert gotoh_align(["b", "b"], ["b"]).source_index == [0]
    # a mismatch (-1) beats two gaps (-2)
    mismatch = gotoh_align(["a"], ["b"])
    assert (mismatch.score, mismatch.source_index) == (-1.0, [0])
    with pytest.raises(ValueError, match="gap_penalty"):
        gotoh_align(["a"], ["a"], gap_penalty=-0.1)


def _all_alignments(num_source, num_target, i=0, k=0):
    """Every alignment as a tuple of moves: "A" (align), "S" (skip a source token), "T" (skip a target token)."""
    if i == num_source and k == num_target:
        yield ()
        return
    for move, di, dk in (("A", 1, 1), ("S", 1, 0), ("T", 0, 1)):
        if i + di <= num_source and k + dk <= num_target:
            for rest in _all_alignments(num_source, num_target, i + di, k + dk):
                yield (move,) + rest


def _score(moves, source, target, gap_penalty):
    score, i, k, previous = 0.0, 0, 0, None
    for move in moves:
        if move == "A":
            score += 1.0 if source[i] == target[k] else -1.0
        else:
            score += -gap_penalty if move == previous else -1.0
        i += move != "T"
        k += move != "S"
        previous = move
    return score


def _source_index(moves, num_target):
    index, i, k = [None] * num_target, 0, 0
    for move in moves:
        if move == "A":
            index[k] = i
        i += move != "T"
        k += move != "S"
    return index


def test_gotoh_equals_brute_force_on_random_short_sequences():
    rng = random.Random(0)
    tie_rank = {"S": 2, "A": 1, "T": 0}  # documented preference when walking back from the end
    checked_ties = 0
    for _ in range(300):
        alphabet = rng.choice(["ab", "abc"])
        source = [rng.choice(alphabet) for _ in range(rng.randint(0, 5))]
        target = [rng.choice(alphabet) for _ in range(rng.randint(0, 5))]
        gap_penalty = rng.choice([0.0, 0.5, 1.5])
        scored = [(_score(m, source, target, gap_penalty), m) for m in _all_alignments(len(source), len(target))]
        best = max(score for score, _ in scored)
        optimal = [moves for score, moves in scored if score == best]
        preferred = max(optimal, key=lambda moves: [tie_rank[m] for m in reversed(moves)])
        alignment = gotoh_align(source, target, gap_penalty)
        assert alignment.score == best, (source, target, gap_penalty)
        assert alignment.source_index == _source_index(preferred, len(target)), (source, target, gap_penalty)
        checked_ties += len({tuple(_source_index(m, len(target))) for m in optimal}) > 1
    assert checked_ties > 30  # the tie-breaking rule was really exercised


def test_project_spans_falls_back_to_aligned_tokens_inside_the_mention():
    source_index = [None, 3, None, 5]
    assert project_spans(source_index, [(0, 0), (0, 2), (0, 3), (2, 3), (1, 1)]) == [
        None, (3, 3), (3, 5), (5, 5), (3, 3)]
    with pytest.raises(ValueError, match="within 4 target tokens"):
        project_spans(source_index, [(2, 4)])


def test_sentence_constrained_alignment_uses_document_positions():
    sentences = [list("abc"), list("debb")]
    # sentence 1: b only at 1. Sentence 2 (positions 3..6): one gap over "d e b" then b (0) beats
    # gap, b, gap (-1), so the last b: 3 + 3 = 6.
    groups = [(["b"], [(0, 0)]), (["b"], [(0, 0)])]
    assert align_mentions_by_sentence(sentences, groups) == [[(1, 1)], [(6, 6)]]
    assert align_mentions_by_sentence(sentences, groups[:1]) == [[(1, 1)]]
    with pytest.raises(ValueError, match="at most one group per sentence"):
        align_mentions_by_sentence(sentences[:1], groups)
