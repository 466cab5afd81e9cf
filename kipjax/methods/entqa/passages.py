"""Documents cut into EntQA's overlapping word-piece passages, with the maps between characters and pieces.

A document's text is tokenized once (word pieces with their character offsets, no special tokens). As the
authors' preprocessing does it, a document of n pieces shorter than the content length C = L - 2 (30 for
L = 32: the rest is [CLS] and [SEP]) is one passage; otherwise passage i, for i in 0 .. ceil(n / S) - 1,
holds pieces [i S, i S + C) (the last ones shorter). A gold mention belongs to a passage only if all of its
pieces lie inside it. Spans inside a passage are (first, last) content-piece positions, both inclusive;
position 0 is the passage's first piece (the reader's input puts it after [CLS], at 1).

The document-level topic text psi_topic(x) is a knob: 'none', 'first_token' (the document's first
whitespace word, with ',' and "'s" removed, as the authors' code takes it) or 'first_sentence' (the text up
to the first '.').
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

TOPIC_MODES = ("none", "first_token", "first_sentence")
Link = tuple[int, int, str]  # (char start, char end exclusive, entity title)


@dataclasses.dataclass(frozen=True)
class Passage:
    """One window of a document's word pieces and the gold mentions lying fully inside it."""

    doc_id: str
    offset: int  # the document piece index of its first piece
    piece_ids: tuple[int, ...]  # content pieces, no [CLS] / [SEP]
    char_spans: tuple[tuple[int, int], ...]  # each piece's [start, end) in the document text
    mentions: tuple[tuple[int, int, str], ...]  # (first, last) piece positions (inclusive) and the title

    def char_span(self, first: int, last: int) -> tuple[int, int]:
        """The document characters [start, end) covered by pieces first..last of this passage."""
        if not 0 <= first <= last < len(self.piece_ids):
            raise ValueError(f"piece span ({first}, {last}) is outside the passage's {len(self.piece_ids)} pieces")
        return self.char_spans[first][0], self.char_spans[last][1]


def topic_text(text: str, mode: str) -> str:
    """psi_topic(x) of a document (module docstring)."""
    if mode == "none":
        return ""
    if mode == "first_token":
        return text.split(" ", 1)[0].replace(",", "").replace("'s", "").strip()
    if mode == "first_sentence":
        return text.split(".", 1)[0].strip()
    raise ValueError(f"topic mode must be one of {TOPIC_MODES}, got {mode!r}")


def document_pieces(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Word-piece ids of `text` (no special tokens) and each piece's character span; needs a fast tokenizer."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def char_span_to_pieces(char_spans: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """(first, last) indices of the pieces overlapping characters [start, end); ValueError if none does."""
    covered = [i for i, (s, e) in enumerate(char_spans) if s < end and start < e]
    if not covered:
        raise ValueError(f"characters [{start}, {end}) cover no word piece")
    return covered[0], covered[-1]


def window_starts(num_pieces: int, content: int, stride: int) -> list[int]:
    """First piece of every passage (module docstring)."""
    if num_pieces < content:
        return [0]
    return [i * stride for i in range(math.ceil(num_pieces / stride))]


def cut_passages(doc_id: str, text: str, links: Sequence[Link], tokenizer: Any, length: int = 32,
                 stride: int = 16) -> list[Passage]:
    """The document's passages of `length` pieces including [CLS] and [SEP], `stride` apart."""
    if length < 3 or stride < 1:
        raise ValueError(f"passage length must be >= 3 and stride >= 1, got length={length}, stride={stride}")
    ids, spans = document_pieces(tokenizer, text)
    mentions = []
    for start, end, title in links:
        if not 0 <= start < end <= len(text):
            raise ValueError(f"document {doc_id}: link [{start}, {end}) is outside its {len(text)} characters")
        mentions.append((*char_span_to_pieces(spans, start, end), title))
    content = length - 2
    passages = []
    for begin in window_starts(len(ids), content, stride):
        stop = min(begin + content, len(ids))
        inside = tuple((first - begin, last - begin, title) for first, last, title in mentions
                       if begin <= first and last < stop)
        passages.append(Passage(doc_id, begin, tuple(ids[begin:stop]), tuple(spans[begin:stop]), inside))
    return passages
