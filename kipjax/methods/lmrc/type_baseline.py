"""The trivial reference system LMRC is compared against: entity types alone decide the relation.

From the training facts it learns, for each (head type, tail type), the relation most often seen between
entities of those types; it then predicts that relation for every pair it is given whose types have one.
Scored on all pairs, it shows what a system that reads no text gets; scored on stage 1's candidates, what
stage 2 adds over the filter alone.
"""
from __future__ import annotations

import collections
from typing import Sequence

from kipjax.data.docred import DocredDocument, Entity, Prediction
from kipjax.methods.lmrc.prompts import Pair

TypePair = tuple[str, str]


def entity_type(entity: Entity) -> str:
    """The type of an entity's first mention (DocRED's mentions of one entity share it, near enough)."""
    return entity.mentions[0].type


def fit_type_rules(train_docs: Sequence[DocredDocument]) -> dict[TypePair, str]:
    """(head type, tail type) -> its most frequent relation in the training facts (ties: smallest id string)."""
    counts: dict[TypePair, collections.Counter] = collections.defaultdict(collections.Counter)
    for doc in train_docs:
        for fact in doc.facts:
            counts[entity_type(doc.entities[fact.h]), entity_type(doc.entities[fact.t])][fact.r] += 1
    return {types: min(counter, key=lambda r: (-counter[r], r)) for types, counter in counts.items()}


def predict_by_type(rules: dict[TypePair, str], docs: Sequence[DocredDocument],
                    pairs_per_doc: Sequence[Sequence[Pair]]) -> list[Prediction]:
    """One prediction per given pair whose type pair has a rule."""
    predictions = []
    for doc, pairs in zip(docs, pairs_per_doc):
        for h, t in pairs:
            relation = rules.get((entity_type(doc.entities[h]), entity_type(doc.entities[t])))
            if relation is not None:
                predictions.append(Prediction(doc.title, h, t, relation))
    return predictions
