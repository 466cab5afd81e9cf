"""Which entity pairs LMRC stage 2 sees, grouped into prompts, and the token arrays of those prompts.

Training prompts list each document's related pairs (every pair with a gold fact), the stage-1 candidates of a
candidates file when one is given (its false positives teach the `none` answer on the pairs stage 2 will
really see), and `negative_ratio` x (related pairs) pairs drawn at random from the rest. At inference the pairs
are stage 1's candidates, or every ordered pair for the ablation without stage 1. Pairs are listed in
(head, tail) order and cut into groups of `group_size`, one prompt each.

A training sequence is `<bos> prompt answer <eos>` (the answer from `answer_constraint.encode_answer`); the
model reads it shifted by one and only the answer and EOS positions count in the loss.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Mapping, Sequence

import numpy as np

from kipjax.data.docred import DocredDocument
from kipjax.data.padding import pad_rows, round_up
from kipjax.methods.lmrc.answer_constraint import encode_answer
from kipjax.methods.lmrc.prompts import Pair, build_prompt, group_pairs


SEQUENCE_FEATURES = ("input_ids", "attention_mask", "targets", "loss_mask")


@dataclasses.dataclass(frozen=True)
class PromptRow:
    """One prompt: a document (index into the document list) and the pairs it asks about, in order."""

    doc_index: int
    pairs: tuple[Pair, ...]


def all_pairs(doc: DocredDocument) -> list[Pair]:
    """Every ordered pair of two different entities, in (head, tail) order."""
    n = len(doc.entities)
    return [(h, t) for h in range(n) for t in range(n) if h != t]


def related_pairs(doc: DocredDocument) -> set[Pair]:
    return {(fact.h, fact.t) for fact in doc.facts}


def training_pairs(doc: DocredDocument, negative_ratio: float, rng: random.Random,
                   candidates: Sequence[Pair] = ()) -> list[Pair]:
    """The related pairs, the given candidates, and round(negative_ratio x related) other random pairs."""
    related = related_pairs(doc)
    chosen = related | set(candidates)
    rest = [pair for pair in all_pairs(doc) if pair not in chosen]
    count = min(len(rest), round(negative_ratio * len(related)))
    return sorted(chosen | set(rng.sample(rest, count)))


def training_prompt_rows(docs: Sequence[DocredDocument], candidates_per_doc: Sequence[Sequence[Pair]],
                         negative_ratio: float, negative_draws: int, seed: int, group_size: int) -> list[PromptRow]:
    """`negative_draws` independent sets of training prompts over all documents (`training_pairs` with one
    random stream seeded by `seed`, drawn document by document, set after set)."""
    rng = random.Random(seed)
    return [row for _ in range(negative_draws) for row in prompt_rows(
        [training_pairs(doc, negative_ratio, rng, candidates) for doc, candidates in zip(docs, candidates_per_doc)],
        group_size)]


def prompt_rows(pairs_per_doc: Sequence[Sequence[Pair]], group_size: int) -> list[PromptRow]:
    """Each document's pairs, sorted, in groups of `group_size` (documents without pairs get no prompt)."""
    return [PromptRow(i, tuple(group)) for i, pairs in enumerate(pairs_per_doc)
            for group in group_pairs(sorted(pairs), group_size)]


def encode_prompt(tokenizer: Any, doc: DocredDocument, pairs: Sequence[Pair],
                  relation_names: Mapping[str, str]) -> list[int]:
    """`<bos>` then the prompt's tokens (ending with the `Answer :` cue)."""
    text = build_prompt(doc, pairs, relation_names)
    return [tokenizer.bos_token_id] + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def training_sequences(tokenizer: Any, docs: Sequence[DocredDocument], rows: Sequence[PromptRow],
                       relation_names: Mapping[str, str], max_length: int) -> list[dict[str, list[int]]]:
    """Per prompt row, unpadded `input_ids`, `attention_mask`, `targets` (the next token) and `loss_mask` (1
    where the target is an answer token or EOS). A sequence longer than `max_length` + 1 tokens would lose its
    answer's end, so its row is dropped and the count printed."""
    sequences = []
    for row in rows:
        doc = docs[row.doc_index]
        prompt = encode_prompt(tokenizer, doc, row.pairs, relation_names)
        answer = encode_answer(tokenizer, doc, row.pairs, relation_names)
        sequence = prompt + answer
        if len(sequence) - 1 > max_length:
            continue
        sequences.append({"input_ids": sequence[:-1], "attention_mask": [1] * (len(sequence) - 1),
                          "targets": sequence[1:], "loss_mask": [0] * (len(prompt) - 1) + [1] * len(answer)})
    if len(sequences) < len(rows):
        print(f"LMRC stage 2: {len(rows) - len(sequences)} of {len(rows)} prompts are longer than "
              f"max_length={max_length} tokens and were dropped (raise max_length or lower group_size)", flush=True)
    if not sequences:
        raise ValueError(f"LMRC stage 2: no prompt fits in max_length={max_length} tokens")
    return sequences


def training_arrays(sequences: Sequence[Mapping[str, list[int]]], max_length: int,
                    multiple: int = 8) -> dict[str, np.ndarray]:
    """`training_sequences` right-padded to [N, L], L the longest rounded up to `multiple`, at most `max_length`."""
    length = min(max_length, round_up(max(len(x["input_ids"]) for x in sequences), multiple))
    return {name: pad_rows([x[name] for x in sequences], length) for name in SEQUENCE_FEATURES}
