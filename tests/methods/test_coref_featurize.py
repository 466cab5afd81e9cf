"""Documents -> pieces, speakers, segments and (source, z, y) examples, and predictions back to words."""
import random

import pytest
from test_coref_vocabulary import tiny_t5_tokenizer

from kipjax.data.coref import CorefDocument, canonical
from kipjax.methods.coref import featurize as feat
from kipjax.methods.coref.linearize import parse_full, parse_partial, rebuild_linearization
from kipjax.methods.coref.vocabulary import SPEAKER_END, SPEAKER_START, add_coref_tokens, speaker_marker_ids


def tokenizer_and_symbols(max_clusters=0):
    tokenizer = tiny_t5_tokenizer()
    symbols = add_coref_tokens(tokenizer, max_clusters)
    return tokenizer, symbols


def test_words_map_to_piece_spans_and_back():
    tokenizer, _ = tokenizer_and_symbols()
    doc = CorefDocument("d", [["the", "cats", "sat"], ["it", "purred"]], [[(0, 1), (3, 3)]])
    sub = feat.tokenize_document(doc, tokenizer)
    assert [tokenizer.convert_ids_to_tokens(p) for p in feat.word_pieces(tokenizer, ["cats"])] == [["\u2581cat", "s"]]
    assert sub.word_of == [0, 1, 1, 2, 3, 4]  # "cats" is two pieces
    assert sub.sentence_lengths == [4, 2]
    assert sub.clusters == [[(0, 2), (4, 4)]]  # "the cats" ends on its last piece
    segment = feat.cut_segments([sub], max_length=16, stride=8)[0]
    assert feat.word_clusters(sub.clusters, segment) == doc.clusters


def test_speaker_names_go_before_each_new_speakers_first_word():
    tokenizer, _ = tokenizer_and_symbols()
    start, end = speaker_marker_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens([start, end]) == [SPEAKER_START, SPEAKER_END]
    doc = CorefDocument("d", [["the", "cat"], ["it", "sat"], ["the", "it"]], [[(1, 1), (2, 2)]],
                        speakers=[["sat", "sat"], ["sat", "purred"], ["purred", "purred"]])
    sub = feat.tokenize_document(doc, tokenizer, (start, end))
    sat, purred = (feat.word_pieces(tokenizer, [w])[0] for w in ("sat", "purred"))
    the, cat, it = (feat.word_pieces(tokenizer, [w])[0] for w in ("the", "cat", "it"))
    expected = [start, *sat, end, *the, *cat, *it, start, *purred, end, *sat, *the, *it]
    assert sub.ids == expected
    assert [w for w in sub.word_of if w != feat.NOT_A_WORD] == [0, 1, 2, 3, 4, 5]
    assert sum(sub.sentence_lengths) == len(expected)
    # Clusters point at the words' pieces, past the inserted names.
    assert [[sub.ids[s] for s, _ in cluster] for cluster in sub.clusters] == [[cat[0], it[0]]]
    # Without markers (or without speakers) nothing is inserted.
    assert feat.tokenize_document(doc, tokenizer).ids == [*the, *cat, *it, *sat, *the, *it]


@pytest.mark.parametrize("lengths,max_length,stride,expected", [
    ([3, 3, 3, 3], 6, 3, [(0, 6), (3, 9), (6, 12)]),
    ([3, 3, 3, 3], 7, 3, [(0, 6), (3, 9), (6, 12)]),  # whole sentences only
    ([10], 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),  # a long sentence is cut inside
    ([2, 5], 4, 4, [(0, 2), (2, 6), (6, 7)]),
    ([2, 2], 8, 4, [(0, 4)]),
    ([], 8, 4, [(0, 0)]),
])
def test_segment_bounds_by_hand(lengths, max_length, stride, expected):
    assert feat.segment_bounds(lengths, max_length, stride) == expected


def test_segment_bounds_cover_the_document_in_overlapping_windows():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 12))]
        max_length = rng.randint(1, 20)
        stride = rng.randint(1, max_length)
        bounds = feat.segment_bounds(lengths, max_length, stride)
        assert bounds[0][0] == 0 and bounds[-1][1] == sum(lengths)
        for (s1, e1), (s2, e2) in zip(bounds, bounds[1:]):
            assert s1 < s2 <= e1 < e2  # each starts later, touches or overlaps the previous, ends later
        assert all(0 < e - s <= max_length for s, e in bounds)


def test_segments_keep_the_mentions_wholly_inside():
    tokenizer, _ = tokenizer_and_symbols()
    doc = CorefDocument("d", [["the", "cat"], ["it", "sat"], ["the", "cat"]], [[(0, 1), (2, 2), (4, 5)], [(3, 3)]])
    sub = feat.tokenize_document(doc, tokenizer)
    segments = feat.cut_segments([sub], max_length=4, stride=2)
    assert [(s.start, len(s.ids)) for s in segments] == [(0, 4), (2, 4)]
    assert segments[0].clusters == [[(0, 1), (2, 2)], [(3, 3)]]
    assert segments[1].clusters == [[(0, 0), (2, 3)], [(1, 1)]]  # renumbered relative to the segment


def random_document(rng, num_sentences=4):
    words = ["the", "cat", "sat", "it", "purred", "cats"]
    sentences = [[rng.choice(words) for _ in range(rng.randint(1, 6))] for _ in range(num_sentences)]
    bounds, offset = [], 0
    for sentence in sentences:
        bounds.append((offset, offset + len(sentence)))
        offset += len(sentence)
    spans = set()
    for begin, end in bounds:  # non-crossing mentions inside sentences: nested or disjoint
        for _ in range(rng.randint(0, 2)):
            s = rng.randrange(begin, end)
            spans.add((s, rng.randrange(s, end)))
    clusters = [[] for _ in range(3)]
    for span in sorted(spans):
        clusters[rng.randrange(3)].append(span)
    return CorefDocument("d", sentences, canonical(clusters))


def ends(clusters, ids):
    return sorted(sorted((ids[s], ids[e]) for s, e in cluster) for cluster in clusters)


@pytest.mark.parametrize("representation,identity,actions", [
    ("full", "after", "token"), ("full", "after", "copy"), ("full", "free", "copy"), ("full", "free", "token"),
    ("full", "before", "token"), ("partial", "after", "token")])
def test_examples_round_trip_for_every_representation(representation, identity, actions):
    tokenizer, symbols = tokenizer_and_symbols(max_clusters=8)
    rng = random.Random(1)
    for _ in range(20):
        doc = random_document(rng)
        segment = feat.cut_segments([feat.tokenize_document(doc, tokenizer)], 1000, 1000)[0]
        writable = canonical(feat.drop_unwritable_mentions(segment.clusters, None))
        source, z, y = feat.encode_example(segment, symbols, representation, identity, actions, decoder_start=0)
        assert source[-1] == symbols.eos and z[0] == 0 and len(z) == len(y) and y[-1] == symbols.eos
        linearization = z[1:]
        assert rebuild_linearization(y, segment.ids, symbols) == linearization  # y drives z (eq. 7.1)
        if representation == "partial":
            assert source[:-1] == [t for sentence in feat._sentences(segment)
                                   for t in (symbols.sentence_start, *sentence, symbols.sentence_end)]
            parsed = parse_partial(linearization, segment.ids, symbols, segment.sentence_lengths)
            # Alignment may place a mention on an equal-text span, or across a gap inside it (the chapter's
            # oracle reaches 98 F1, not 100); each cluster's mentions come back with their first and last tokens.
            assert ends(parsed, segment.ids) == ends(writable, segment.ids)
        else:
            assert source[:-1] == segment.ids
            assert parse_full(linearization, symbols, identity) == writable
        word_level = canonical(feat.drop_unwritable_mentions(doc.clusters, None))
        assert feat.word_clusters(writable, segment) == word_level


def test_word_clusters_drop_spans_on_speaker_pieces():
    segment = feat.Segment(0, 0, [7, 8, 9, 5, 6], [-1, -1, -1, 0, 1], [5], [])
    assert feat.word_clusters([[(0, 2), (3, 3)], [(1, 4)], [(4, 4)]], segment) == [[(0, 0)], [(1, 1)]]


def test_unsupported_representations_are_refused():
    with pytest.raises(ValueError, match="partial linearization"):
        feat.check_representation("partial", "after", "copy")
    with pytest.raises(ValueError, match="ablation"):
        feat.check_representation("full", "before", "copy")
    with pytest.raises(ValueError, match="identity"):
        feat.check_representation("full", "middle", "token")
    feat.check_representation("full", "free", "copy")

