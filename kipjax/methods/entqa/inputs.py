"""EntQA's token inputs, as the authors' code lays them out (BERT-style tokenizers; the markers are BERT's
reserved `[unused1]` / `[unused2]` tokens, which a tokenizer for EntQA must have):

- entity (retriever and reader): `[CLS] title [unused2] description [SEP]`, cut to 128 pieces (BLINK's
  candidate representation);
- passage for the retriever: `[CLS] p [SEP] [unused1] topic`, cut to its budget (no closing [SEP]);
- reader input: `[CLS] p [unused1] topic [SEP] title [unused2] description [SEP]`, at most 180 pieces (the
  first segment gets 180 - 128 + 1 = 53, the entity the rest), with token type 0 up to and including the
  first [SEP] and 1 after it. Spans may start and end only at [CLS] (position 0, the "no mention" span) and
  the passage's pieces (positions 1 .. |p|).
"""
from __future__ import annotations

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


def entity_table(tokenizer: Any, titles: Sequence[str], descriptions: Sequence[str],
                 max_tokens: int = ENTITY_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """`entity_tokens` and its attention mask ([E, max_tokens] int32 each)."""
    ids = entity_tokens(tokenizer, titles, descriptions, max_tokens)
    return ids, (ids != tokenizer.pad_token_id).astype(np.int32)


def retriever_passage(tokenizer: Any, passage_ids: Sequence[int], topic_ids: Sequence[int],
                      max_tokens: int) -> list[int]:
    """The retriever's passage input (module docstring): the topic only when there is one."""
    row = [tokenizer.cls_token_id, *passage_ids, tokenizer.sep_token_id]
    if topic_ids:
        row += [marker_id(tokenizer, TOPIC_MARKER), *topic_ids]
    return row[:max_tokens]


def reader_first_part(tokenizer: Any, passage_ids: Sequence[int], topic_ids: Sequence[int],
                      max_tokens: int) -> list[int]:
    """The reader input's first segment, `[CLS] p [unused1] topic [SEP]` (module docstring), the topic cut so
    that the whole fits `max_tokens`; the passage is never cut. The device appends the candidate's entity row
    (`kipjax.methods.joint_rerank.pack_pairs`, which drops the entity's [CLS])."""
    passage = [tokenizer.cls_token_id, *passage_ids]
    room = max_tokens - len(passage) - 1
    if room < 0:
        raise ValueError(f"a passage of {len(passage_ids)} pieces does not fit the reader's first segment of "
                         f"{max_tokens}")
    topic = [marker_id(tokenizer, TOPIC_MARKER), *topic_ids][:room] if topic_ids and room > 1 else []
    return [*passage, *topic, tokenizer.sep_token_id]
