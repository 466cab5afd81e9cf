"""DocRED documents -> encoder inputs for relation candidate proposal (ATLOP's input format).

Every mention is wrapped in `*` tokens ("* Obama * was born in * Hawaii *"); a mention is represented by the
encoder state at its opening `*`. A document becomes its word pieces (no [CLS] / [SEP]: the encoder adds
them per chunk, see `rcp.encode_long`), the opening-marker position of every mention of every entity, and,
for training, the label of every ordered entity pair (h != t): 1 when the pair has at least one relation.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from kipjax.data.docred import DocredDocument

MARKER = "*"
FEATURES = {"input_ids": 1, "attention_mask": 1, "mention_positions": 2, "pair_heads": 1, "pair_tails": 1,
            "pair_labels": 1, "pair_mask": 1}  # name -> rank, the arrays of `pad_documents`


@dataclasses.dataclass(frozen=True)
class RcpDocument:
    ids: list[int]  # word pieces with the `*` markers, no special tokens
    mention_positions: list[list[int]]  # per entity: the opening `*` of each of its mentions
    pairs: list[tuple[int, int]]  # every ordered entity pair (h, t), h != t, in (h, t) order
    labels: list[int]  # per pair: 1 if the gold document relates h to t, else 0 (all 0 when unlabeled)


def featurize_document(doc: DocredDocument, tokenizer: PreTrainedTokenizerBase) -> RcpDocument:
    """Pieces of `doc` with `*` around each mention; as in ATLOP, mentions that share a start (or an end) share
    one marker."""
    words = doc.tokens
    starts: dict[int, list[tuple[int, int]]] = {}
    ends: set[int] = set()
    for e, entity in enumerate(doc.entities):
        for m, mention in enumerate(entity.mentions):
            start, end = doc.mention_span(mention)
            starts.setdefault(start, []).append((e, m))
            ends.add(end - 1)
    marker = tokenizer.convert_tokens_to_ids(MARKER)
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    ids: list[int] = []
    positions = [[0] * len(entity.mentions) for entity in doc.entities]
    for w, word_pieces in enumerate(pieces):
        if w in starts:
            for e, m in starts[w]:
                positions[e][m] = len(ids)
            ids.append(marker)
        ids += word_pieces or [tokenizer.unk_token_id]
        if w in ends:
            ids.append(marker)
    related = {(fact.h, fact.t) for fact in doc.facts}
    pairs = [(h, t) for h in range(len(doc.entities)) for t in range(len(doc.entities)) if h != t]
    return RcpDocument(ids, positions, pairs, [int(pair in related) for pair in pairs])


def pad_documents(docs: Sequence[RcpDocument], max_length: int, max_entities: int,
                  max_mentions: int) -> dict[str, np.ndarray]:
    """Fixed-shape arrays: `input_ids` / `attention_mask` [N, L], `mention_positions` [N, E, M] (-1 = none),
    `pair_heads` / `pair_tails` / `pair_labels` / `pair_mask` [N, E*(E-1)]. Pieces past `max_length` are cut,
    and mentions whose marker falls past it are dropped (an entity left without mentions keeps its pairs,
    represented by zeros); too many entities or mentions raise ValueError."""
    num_pairs = max_entities * (max_entities - 1)
    out = {"input_ids": np.zeros((len(docs), max_length), np.int32),
           "attention_mask": np.zeros((len(docs), max_length), np.int32),
           "mention_positions": np.full((len(docs), max_entities, max_mentions), -1, np.int32),
           "pair_heads": np.zeros((len(docs), num_pairs), np.int32),
           "pair_tails": np.zeros((len(docs), num_pairs), np.int32),
           "pair_labels": np.zeros((len(docs), num_pairs), np.int32),
           "pair_mask": np.zeros((len(docs), num_pairs), bool)}
    for i, doc in enumerate(docs):
        if len(doc.mention_positions) > max_entities:
            raise ValueError(f"document {i} has {len(doc.mention_positions)} entities; max_entities is "
                             f"{max_entities}")
        ids = doc.ids[:max_length]
        out["input_ids"][i, :len(ids)] = ids
        out["attention_mask"][i, :len(ids)] = 1
        for e, positions in enumerate(doc.mention_positions):
            kept = [p for p in positions if p < max_length]
            if len(kept) > max_mentions:
                raise ValueError(f"document {i}, entity {e} has {len(kept)} mentions; max_mentions is {max_mentions}")
            out["mention_positions"][i, e, :len(kept)] = kept
        n = len(doc.pairs)
        out["pair_heads"][i, :n] = [h for h, _ in doc.pairs]
        out["pair_tails"][i, :n] = [t for _, t in doc.pairs]
        out["pair_labels"][i, :n] = doc.labels
        out["pair_mask"][i, :n] = True
    return out


def featurize_documents(docs: Sequence[DocredDocument], tokenizer: PreTrainedTokenizerBase, max_length: int,
                        max_entities: int, max_mentions: int) -> dict[str, np.ndarray]:
    """`pad_documents` of the documents' `featurize_document`s: stage 1's inputs and labels, as the method and
    the DocRED RCP SeqIO tasks both build them."""
    return pad_documents([featurize_document(d, tokenizer) for d in docs], max_length, max_entities, max_mentions)
