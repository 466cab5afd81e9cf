"""EntQA's token inputs, as the authors' code lays them out (BERT-style tokenizers; the markers are BERT's
reserved `[unused1]` / `[unused2]` tokens, which a tokenizer for EntQA must have):

- entity (retriever and reader): `[CLS] title [unused2] description [SEP]`, cut to 128 pieces (BLINK's
  candidate representation);
- passage for the retriever: `[CLS] p [SEP] [unused1] topic`, cut to its budget (no closing [SEP]);
- reader input: `[CLS] p [unused1] topic [SEP] title [unused2] description [SEP]`, at most 180 pieces, with
  token type 0 up to and including the first [SEP] and 1 after it. Spans may start and end only at [CLS]
  (position 0, the "no mention" span) and the passage's pieces (positions 1 .. |p|).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

TOPIC_MARKER = "[unused1]"
TITLE_MARKER = "[unused2]"
ENTITY_TOKENS = 128
READER_TOKENS = 180


def marker_id(tokenizer: Any, token: str) -> int:
    """The id of a reserved marker, or a clear error when the vocabulary lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token} token; EntQA's inputs need BERT's reserved "
                         f"{TOPIC_MARKER} and {TITLE_MARKER}")
    return int(token_id)


def pieces(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def entity_tokens(tokenizer: Any, titles: Sequence[str], descriptions: Sequence[str],
                  max_tokens: int = ENTITY_TOKENS) -> np.ndarray:
    """[E, max_tokens] int32 entity inputs (module docstring), padded with the pad id."""
    title_marker = marker_id(tokenizer, TITLE_MARKER)
    table = np.full((len(titles), max_tokens), tokenizer.pad_token_id, np.int32)
    for i, (title, text) in enumerate(zip(titles, descriptions)):
        body = (pieces(tokenizer, title) + [title_marker] + pieces(tokenizer, text))[:max_tokens - 2]
        row = [tokenizer.cls_token_id, *body, tokenizer.sep_token_id]
        table[i, :len(row)] = row
    return table


def retriever_passage(tokenizer: Any, passage_ids: Sequence[int], topic_ids: Sequence[int],
                      max_tokens: int) -> list[int]:
    """The retriever's passage input (module docstring): the topic only when there is one."""
    row = [tokenizer.cls_token_id, *passage_ids, tokenizer.sep_token_id]
    if topic_ids:
        row += [marker_id(tokenizer, TOPIC_MARKER), *topic_ids]
    return row[:max_tokens]


@dataclasses.dataclass(frozen=True)
class ReaderInput:
    input_ids: np.ndarray  # [L] int32, pad-padded
    token_type_ids: np.ndarray  # [L] int32
    attention_mask: np.ndarray  # [L] int32
    answer_mask: np.ndarray  # [L] bool: [CLS] and the passage's pieces


def reader_input(tokenizer: Any, passage_ids: Sequence[int], topic_ids: Sequence[int], entity_row: np.ndarray,
                 max_tokens: int = READER_TOKENS) -> ReaderInput:
    """One (passage, candidate) pair for the reader (module docstring). `entity_row` is the candidate's row of
    `entity_tokens` (its [CLS] is dropped, its [SEP] kept); the entity is cut if the whole exceeds
    `max_tokens`, the passage never is."""
    first = [tokenizer.cls_token_id, *passage_ids]
    if topic_ids:
        first += [marker_id(tokenizer, TOPIC_MARKER), *topic_ids]
    first.append(tokenizer.sep_token_id)
    if len(first) >= max_tokens:
        raise ValueError(f"passage and topic take {len(first)} pieces, more than the reader's {max_tokens}")
    entity = [int(t) for t in entity_row[1:] if t != tokenizer.pad_token_id][:max_tokens - len(first)]
    ids = np.full(max_tokens, tokenizer.pad_token_id, np.int32)
    ids[:len(first) + len(entity)] = first + entity
    types = np.zeros(max_tokens, np.int32)
    types[len(first):len(first) + len(entity)] = 1
    attention = (np.arange(max_tokens) < len(first) + len(entity)).astype(np.int32)
    answer = np.arange(max_tokens) <= len(passage_ids)
    return ReaderInput(ids, types, attention, answer)
