"""Turn Zeshel mentions and entity documents into fixed-length wordpiece arrays for retrievers.

    mention: [CLS] left-context [M_START] mention [M_END] right-context [SEP]   (window centred on the mention)
    entity:  [CLS] title [ENT] description [SEP]                              (truncated)

Both are padded to `max_len` (128 wordpieces, as in the chapter's dual / sum-of-max encoders) and returned as
int32 numpy arrays, ready to become device-resident tables. Tokenizer calls are batched (a fast tokenizer
encodes many texts per call), since the full Zeshel entity set is about half a million documents.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from kipjax.data.tokenizer import ENTITY_TITLE_SEP, MENTION_END, MENTION_START
from kipjax.data.zeshel import Document, Mention, index_documents, read_documents, read_mentions

_TOKENIZE_CHUNK = 4096


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids of the framing tokens; a tokenizer without the markers cannot mark spans, so that is an error."""
    vocab = tokenizer.get_vocab()
    tokens = {"cls": tokenizer.cls_token, "sep": tokenizer.sep_token, "pad": tokenizer.pad_token,
              "m_start": MENTION_START, "m_end": MENTION_END, "ent": ENTITY_TITLE_SEP}
    missing = [t for t in tokens.values() if t is None or t not in vocab]
    if missing:
        raise ValueError(f"tokenizer lacks the tokens {missing}; train one with "
                         "kipjax.data.tokenizer.train_wordpiece_tokenizer or add them as special tokens "
                         "(and resize the model's embeddings)")
    return {name: vocab[token] for name, token in tokens.items()}


def _wordpieces(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Wordpiece ids of each text without special tokens, encoded in large batches."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        batch = list(texts[start:start + _TOKENIZE_CHUNK])
        ids.extend(tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"])
    return ids


def _pack(rows: Sequence[Sequence[int]], max_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad rows (each at most `max_len` long) into input_ids / attention_mask int32 arrays."""
    input_ids = np.full((len(rows), max_len), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows), max_len), dtype=np.int32)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = row
        attention_mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def featurize_entities(tokenizer: PreTrainedTokenizerBase, documents: Sequence[Document],
                       max_len: int = 128) -> dict[str, np.ndarray]:
    """`[CLS] title [ENT] description [SEP]`, the title cut first only if it alone overflows `max_len`."""
    if max_len < 4:
        raise ValueError(f"entity max_len must be at least 4 ([CLS] x [ENT] [SEP]), got {max_len}")
    ids = _special_ids(tokenizer)
    budget = max_len - 3
    titles = _wordpieces(tokenizer, [d.title for d in documents])
    # Every whitespace token yields at least one wordpiece, so `budget` tokens suffice for the description.
    descriptions = _wordpieces(tokenizer, [" ".join(d.text.split()[:budget]) for d in documents])
    rows = []
    for title, description in zip(titles, descriptions):
        title = title[:budget]
        rows.append([ids["cls"], *title, ids["ent"], *description[:budget - len(title)], ids["sep"]])
    return _pack(rows, max_len, ids["pad"])


def centred_window(left: Sequence[int], mention: Sequence[int], right: Sequence[int],
                   budget: int) -> tuple[list[int], list[int], list[int]]:
    """Cut (left, mention, right) to `budget` pieces around the mention: the context budget is split evenly
    (the odd piece goes right) and a side that runs out hands its leftover to the other side."""
    mention = list(mention[:budget])
    remaining = budget - len(mention)
    left_budget = remaining // 2
    right_budget = remaining - left_budget
    num_left = min(len(left), left_budget + max(0, right_budget - len(right)))
    num_right = min(len(right), right_budget + max(0, left_budget - len(left)))
    return list(left[len(left) - num_left:]), mention, list(right[:num_right])


def featurize_mentions(tokenizer: PreTrainedTokenizerBase, mentions: Sequence[Mention],
                       documents_by_id: Mapping[str, Document], entity_index: Mapping[str, int],
                       max_len: int = 128) -> dict[str, np.ndarray]:
    """`[CLS] left [M_START] mention [M_END] right [SEP]` per mention plus `gold_entity` (row of the label
    document in the entity table described by `entity_index`)."""
    if max_len < 5:
        raise ValueError(f"mention max_len must be at least 5 ([CLS] [M_START] x [M_END] [SEP]), got {max_len}")
    ids = _special_ids(tokenizer)
    budget = max_len - 4
    gold = np.zeros(len(mentions), dtype=np.int32)
    lefts, surfaces, rights = [], [], []
    tokens_cache: dict[str, list[str]] = {}
    for i, m in enumerate(mentions):
        if m.label_document_id not in entity_index:
            raise ValueError(f"mention {m.mention_id}: label document {m.label_document_id!r} is not in the "
                             "entity table")
        gold[i] = entity_index[m.label_document_id]
        if m.context_document_id not in tokens_cache:
            tokens_cache.clear()  # mentions of one document are adjacent in Zeshel files; keep memory flat
            tokens_cache[m.context_document_id] = documents_by_id[m.context_document_id].text.split()
        tokens = tokens_cache[m.context_document_id]
        # `budget` whitespace tokens per side always cover `budget` wordpieces.
        lefts.append(" ".join(tokens[max(0, m.start_index - budget):m.start_index]))
        surfaces.append(" ".join(tokens[m.start_index:m.end_index + 1]))
        rights.append(" ".join(tokens[m.end_index + 1:m.end_index + 1 + budget]))
    rows = []
    for left, surface, right in zip(_wordpieces(tokenizer, lefts), _wordpieces(tokenizer, surfaces),
                                    _wordpieces(tokenizer, rights)):
        left, surface, right = centred_window(left, surface, right, budget)
        rows.append([ids["cls"], *left, ids["m_start"], *surface, ids["m_end"], *right, ids["sep"]])
    return {**_pack(rows, max_len, ids["pad"]), "gold_entity": gold}


@dataclasses.dataclass(frozen=True)
class EntityTable:
    """The candidate entities of a set of worlds, in a fixed order: worlds as listed, documents in file order.

    Row i of the featurized table is `documents[i]`; `world[i]` indexes `world_names`, so retrieval can be
    restricted to the mention's own world.
    """

    documents: tuple[Document, ...]
    world_names: tuple[str, ...]

    @classmethod
    def for_worlds(cls, documents: Mapping[str, Sequence[Document]], world_names: Sequence[str]) -> EntityTable:
        unknown = [w for w in world_names if w not in documents]
        if unknown:
            raise ValueError(f"worlds {unknown} have no documents file")
        return cls(tuple(d for w in world_names for d in documents[w]), tuple(world_names))

    @property
    def index(self) -> dict[str, int]:
        """document_id -> row."""
        return {d.document_id: i for i, d in enumerate(self.documents)}

    @property
    def world(self) -> np.ndarray:
        """int32 [N] world index of each row."""
        world_id = {w: i for i, w in enumerate(self.world_names)}
        return np.asarray([world_id[d.world] for d in self.documents], dtype=np.int32).reshape(-1)


class ZeshelSplit(NamedTuple):
    """A featurized split: `mentions` has input_ids, attention_mask [M, L], gold_entity, world and
    mention_index (row in the split's file) [M]; `entities` has input_ids, attention_mask [N, L] and
    entity_world [N]; world and entity_world index the sorted `world_names`. `mention_ids` and `entity_ids`
    (document id of each entity row) name the rows, e.g. for candidate files."""

    mentions: dict[str, np.ndarray]
    entities: dict[str, np.ndarray]
    world_names: list[str]
    mention_ids: list[str]
    entity_ids: list[str]


def load_zeshel_split(root: str | Path, split: str, tokenizer: PreTrainedTokenizerBase,
                      max_len: int = 128) -> ZeshelSplit:
    """Featurized mentions of `split` and the entity table of the worlds they occur in (files read once)."""
    documents = read_documents(root)
    mentions = read_mentions(root, split, documents)
    world_names = sorted({m.world for m in mentions})
    table = EntityTable.for_worlds(documents, world_names)
    world_id = {w: i for i, w in enumerate(world_names)}
    mention_arrays = featurize_mentions(tokenizer, mentions, index_documents(documents), table.index, max_len)
    mention_arrays["world"] = np.asarray([world_id[m.world] for m in mentions], dtype=np.int32).reshape(-1)
    mention_arrays["mention_index"] = np.arange(len(mentions), dtype=np.int32)
    entity_arrays = featurize_entities(tokenizer, table.documents, max_len)
    entity_arrays["entity_world"] = table.world
    return ZeshelSplit(mention_arrays, entity_arrays, world_names, [m.mention_id for m in mentions],
                       [d.document_id for d in table.documents])
