"""Documents -> model examples for seq2seq coreference (sec. 7.5.2): subword tokens, speakers, segments, targets.

A word-level `CorefDocument` becomes a `SubwordDocument`: the tokenizer's pieces of every word, with the
speaker's name inserted as `<speaker> name </speaker>` before the first word of each new speaker (Kirstain et
al.'s convention, which the chapter follows), and mentions mapped to inclusive spans of pieces. `word_of`
records which word each piece came from (-1 for inserted speaker pieces), so predictions map back to words.

Long documents are cut at sentence boundaries into overlapping segments: each holds as many whole sentences
as fit in `max_length` pieces (cut inside a sentence when whole ones would not reach past the previous
segment), and the next starts at the first sentence
boundary at least `stride` pieces later (or `stride` pieces later when no boundary comes before the end). Training uses 2048-piece segments with stride 1024 (an overlap of
1024); inference uses non-overlapping segments of up to 4096 pieces, whose predicted clusters stay separate.
A segment's annotation is the mentions lying wholly inside it.

`encode_example` writes a segment as (encoder input, decoder input z, decoder targets y) for a chosen
representation (full or partial linearization, cluster identity after / before / integer-free, token or
copy actions); the encoder input ends with eos, z starts with the decoder start token, and y ends with eos.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from kipjax.data.coref import CorefDocument, Span, canonical
from kipjax.methods.coref import linearize as lin
from kipjax.methods.coref.linearize import Identity, Symbols
from kipjax.methods.coref.vocabulary import speaker_marker_ids

Representation = Literal["full", "partial"]
Actions = Literal["token", "copy"]
NOT_A_WORD = -1


@dataclasses.dataclass(frozen=True)
class SubwordDocument:
    doc_key: str
    ids: list[int]  # the document's pieces, speaker insertions included
    word_of: list[int]  # word index of each piece; NOT_A_WORD for inserted speaker pieces
    sentence_lengths: list[int]  # in pieces; they sum to len(ids)
    clusters: list[list[Span]]  # inclusive piece spans


@dataclasses.dataclass(frozen=True)
class Segment:
    doc_index: int  # position of its document in the list it was cut from
    start: int  # first piece of the segment in its document
    ids: list[int]
    word_of: list[int]
    sentence_lengths: list[int]
    clusters: list[list[Span]]  # spans relative to `start`, only mentions wholly inside


def word_pieces(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[list[int]]:
    """Each word's piece ids (without special tokens); a word the tokenizer drops becomes its unknown token."""
    pieces = tokenizer(list(words), add_special_tokens=False)["input_ids"] if words else []
    return [ids or [tokenizer.unk_token_id] for ids in pieces]


def tokenize_document(doc: CorefDocument, tokenizer: PreTrainedTokenizerBase,
                      speaker_markers: tuple[int, int] | None = None) -> SubwordDocument:
    """Pieces of `doc`; with `speaker_markers` (`vocabulary.speaker_marker_ids`) and speakers in the data, the
    speaker's name goes before the first word of every speaker turn (turns inside a sentence included)."""
    words = doc.tokens
    pieces = word_pieces(tokenizer, words)
    speakers = [s for sentence in doc.speakers for s in sentence] if doc.speakers and speaker_markers else None
    names = dict(zip(sorted(set(speakers)), word_pieces(tokenizer, sorted(set(speakers))))) if speakers else {}
    ids: list[int] = []
    word_of: list[int] = []
    first_piece, last_piece = [], []
    sentence_lengths = []
    word = 0
    for sentence in doc.sentences:
        begin = len(ids)
        for _ in sentence:
            if speakers and (word == 0 or speakers[word] != speakers[word - 1]):
                inserted = [speaker_markers[0], *names[speakers[word]], speaker_markers[1]]
                ids += inserted
                word_of += [NOT_A_WORD] * len(inserted)
            first_piece.append(len(ids))
            ids += pieces[word]
            word_of += [word] * len(pieces[word])
            last_piece.append(len(ids) - 1)
            word += 1
        sentence_lengths.append(len(ids) - begin)
    clusters = [[(first_piece[s], last_piece[e]) for s, e in cluster] for cluster in doc.clusters]
    return SubwordDocument(doc.doc_key, ids, word_of, sentence_lengths, clusters)


def segment_bounds(sentence_lengths: Sequence[int], max_length: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) piece ranges covering the document, each at most `max_length` long (see module doc)."""
    if max_length < 1 or not 1 <= stride <= max_length:
        raise ValueError(f"segments need max_length >= 1 and 1 <= stride <= max_length, got {max_length}, {stride}")
    boundaries = np.cumsum([0, *sentence_lengths]).tolist()
    total = boundaries[-1]
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < total or not bounds:
        fitting = [b for b in boundaries if start < b <= start + max_length]
        previous_end = bounds[-1][1] if bounds else 0
        end = fitting[-1] if fitting and fitting[-1] > previous_end else min(start + max_length, total)
        bounds.append((start, end))
        if end >= total:
            break
        later = [b for b in boundaries if start + stride <= b < end]
        start = later[0] if later else min(start + stride, end)
    return bounds


def _sentence_lengths_within(sentence_lengths: Sequence[int], start: int, end: int) -> list[int]:
    """The parts of the sentences inside [start, end), sentences cut by the range clipped to it."""
    lengths, offset = [], 0
    for length in sentence_lengths:
        inside = min(end, offset + length) - max(start, offset)
        if inside > 0:
            lengths.append(inside)
        offset += length
    return lengths


def cut_segments(docs: Sequence[SubwordDocument], max_length: int, stride: int) -> list[Segment]:
    """Every document's segments, in order."""
    segments = []
    for index, doc in enumerate(docs):
        for start, end in segment_bounds(doc.sentence_lengths, max_length, stride):
            clusters = canonical([(s - start, e - start) for s, e in cluster if start <= s and e < end]
                                 for cluster in doc.clusters)
            segments.append(Segment(index, start, doc.ids[start:end], doc.word_of[start:end],
                                    _sentence_lengths_within(doc.sentence_lengths, start, end),
                                    [c for c in clusters if c]))
    return segments


def _sentences(segment: Segment) -> list[list[int]]:
    bounds = np.cumsum([0, *segment.sentence_lengths]).tolist()
    return [segment.ids[b:e] for b, e in zip(bounds[:-1], bounds[1:])]


def encoder_source(segment: Segment, symbols: Symbols[int], representation: Representation) -> list[int]:
    """The encoder input without its eos: the pieces, wrapped in sentence markers for partial linearization."""
    if representation == "partial":
        return lin.mark_sentences(_sentences(segment), symbols)
    return list(segment.ids)


def drop_unwritable_mentions(clusters: Sequence[Sequence[Span]], sentence_lengths: Sequence[int] | None
                             ) -> list[list[Span]]:
    """The annotation without crossing and duplicated mentions, and (when `sentence_lengths` are given, for
    sentence-marked partial linearization) without mentions spanning two sentences."""
    clusters, _ = lin.drop_duplicate_mentions(clusters)
    clusters, _ = lin.drop_crossing_mentions(clusters)
    if sentence_lengths is not None:
        sentence_of = np.repeat(np.arange(len(sentence_lengths)), sentence_lengths)
        clusters = [[s for s in cluster if sentence_of[s[0]] == sentence_of[s[1]]] for cluster in clusters]
    return [c for c in clusters if c]


def encode_example(segment: Segment, symbols: Symbols[int], representation: Representation = "full",
                   identity: Identity = "after", actions: Actions = "token",
                   decoder_start: int = 0) -> tuple[list[int], list[int], list[int]]:
    """(encoder input with eos, decoder input z, targets y) of one segment; len(z) == len(y)."""
    source = encoder_source(segment, symbols, representation) + [symbols.eos]
    if representation == "partial":
        clusters = drop_unwritable_mentions(segment.clusters, segment.sentence_lengths)
        linearization = lin.linearize_partial(segment.ids, clusters, symbols, segment.sentence_lengths)
    else:
        clusters = drop_unwritable_mentions(segment.clusters, None)
        linearization = lin.linearize(segment.ids, clusters, symbols, identity)
    if actions == "copy":
        targets = lin.copy_actions(linearization, symbols, identity)
    else:
        targets = lin.token_actions(linearization, symbols)
    if identity == "free":
        targets = lin.new_actions(targets, symbols)
    return source, [decoder_start, *linearization], targets


def check_representation(representation: str, identity: str, actions: str) -> None:
    """Raises ValueError for combinations the chapter does not define."""
    if representation not in ("full", "partial"):
        raise ValueError(f"representation must be 'full' or 'partial', got {representation!r}")
    if identity not in lin.IDENTITIES:
        raise ValueError(f"identity must be one of {lin.IDENTITIES}, got {identity!r}")
    if actions not in ("token", "copy"):
        raise ValueError(f"actions must be 'token' or 'copy', got {actions!r}")
    if representation == "partial" and (identity != "after" or actions != "token"):
        raise ValueError("partial linearization writes the integer after the mention with token actions "
                         f"(sec. 7.3.2); got identity={identity!r}, actions={actions!r}")
    if identity == "before" and actions == "copy":
        raise ValueError("identity='before' is the token-action ablation of Table 7.4; use actions='token'")


def word_clusters(piece_clusters: Sequence[Sequence[Span]], segment: Segment) -> list[list[Span]]:
    """Segment-relative piece spans -> word spans of the document; a span that starts or ends on an inserted
    speaker piece is dropped."""
    result = []
    for cluster in piece_clusters:
        spans = [(segment.word_of[s], segment.word_of[e]) for s, e in cluster
                 if e < len(segment.word_of) and NOT_A_WORD not in (segment.word_of[s], segment.word_of[e])]
        if spans:
            result.append(spans)
    return canonical(result)


def training_examples(docs: Sequence[CorefDocument], tokenizer: PreTrainedTokenizerBase, symbols: Symbols[int],
                      max_length: int, stride: int, representation: Representation = "full",
                      identity: Identity = "after", actions: Actions = "token",
                      decoder_start: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """(encoder input, z, y) of every training segment of `docs` (speakers inserted where the data has them);
    `tokenizer` must have had `add_coref_tokens`."""
    markers = speaker_marker_ids(tokenizer)
    pieces = [tokenize_document(doc, tokenizer, markers) for doc in docs]
    return [encode_example(segment, symbols, representation, identity, actions, decoder_start)
            for segment in cut_segments(pieces, max_length, stride)]
