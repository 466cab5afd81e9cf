"""LMRC stage 2 (relation classification) prompts and answers, as plain strings.

A prompt lists the relation names once, the document, and a group of candidate pairs (the paper groups 18
pairs per prompt); the answer gives, for each listed pair in order, one triple per relation that holds (in
rel2id order), or a single `none` triple when none holds:

  Relations : country ; employer ; spouse Document : Greta Quist works for Falk Bank . Pairs :
  ( Greta Quist | - | Falk Bank ) ( Falk Bank | - | Greta Quist ) Answer :
  ( Greta Quist | employer | Falk Bank ) ( Falk Bank | none | Greta Quist )

(one line each in reality). Every token is written with single spaces around it, so a word-level tokenizer
that isolates punctuation (the demo's Llama tokenizer) decodes an answer back to exactly the same string. An
entity is named by its first mention, whitespace-normalised, with the format's delimiters `(`, `)` and `|`
replaced by `[`, `]` and `/`, so that every name fits in a triple. `parse_answer` reads answers back into
DocRED facts, counting (never raising on) malformed parts.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from kipjax.data.docred import DocredDocument, Entity

Pair = tuple[int, int]  # (head, tail) entity indices
NONE_NAME = "none"  # the relation slot of a pair with no relation
CANDIDATE_MARK = "-"  # the relation slot of a pair in the prompt
RELATION_LIST_SEPARATOR = " ; "
_DELIMITERS = str.maketrans({"(": "[", ")": "]", "|": "/"})
# `( X | Y | Z )` with no parentheses or bars inside X, Y, Z.
TRIPLE_PATTERN = re.compile(r"\(([^()|]*)\|([^()|]*)\|([^()|]*)\)")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def entity_name(entity: Entity) -> str:
    """The name an entity is written with: its first mention's (whitespace-normalised, delimiters replaced)."""
    return _normalise(entity.mentions[0].name.translate(_DELIMITERS))


def group_pairs(pairs: Sequence[Pair], group_size: int = 18) -> list[list[Pair]]:
    """`pairs` in consecutive groups of `group_size` (the last one possibly shorter), one prompt each."""
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    return [list(pairs[i:i + group_size]) for i in range(0, len(pairs), group_size)]


def check_relation_names(relation_names: Mapping[str, str]) -> None:
    """Relation names (property id -> name) must be distinct after whitespace normalisation, non-empty,
    free of the delimiters, and neither `none` nor `-`; ValueError naming the offender otherwise."""
    seen: dict[str, str] = {}
    for relation, name in relation_names.items():
        normal = _normalise(name)
        if not normal or normal in (NONE_NAME, CANDIDATE_MARK) or normal.translate(_DELIMITERS) != normal:
            raise ValueError(f"relation {relation}: name {name!r} cannot be written in an answer (empty, "
                             f"{NONE_NAME!r}, {CANDIDATE_MARK!r}, or containing one of '(', ')', '|')")
        if normal in seen:
            raise ValueError(f"relations {seen[normal]} and {relation} share the name {normal!r}")
        seen[normal] = relation


def triple_prefix(head: str) -> str:
    """`( head |`: the part of a triple before its relation slot."""
    return f"( {head} |"


def triple_suffix(tail: str) -> str:
    """`| tail )`: the part of a triple after its relation slot."""
    return f"| {tail} )"


def format_triple(head: str, relation: str, tail: str) -> str:
    return f"{triple_prefix(head)} {relation} {triple_suffix(tail)}"


def _pair_names(doc: DocredDocument, pair: Pair) -> tuple[str, str]:
    return entity_name(doc.entities[pair[0]]), entity_name(doc.entities[pair[1]])


def build_prompt(doc: DocredDocument, pairs: Sequence[Pair], relation_names: Mapping[str, str]) -> str:
    """`Relations : r1 ; r2 ... Document : tokens Pairs : ( head | - | tail ) ... Answer :`."""
    check_relation_names(relation_names)
    relations = RELATION_LIST_SEPARATOR.join(_normalise(name) for name in relation_names.values())
    listed = " ".join(format_triple(head, CANDIDATE_MARK, tail) for head, tail in
                      (_pair_names(doc, pair) for pair in pairs))
    return f"Relations : {relations} Document : {' '.join(doc.tokens)} Pairs : {listed} Answer :"


def answer_triples(doc: DocredDocument, pairs: Sequence[Pair],
                   relation_names: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """The gold answer as (head name, relation name or `none`, tail name) triples: for each pair in order, one
    per gold relation (in `relation_names` order, which should be rel2id order), or one `none` triple when the
    pair has none. A gold relation missing from `relation_names` is a ValueError naming the document."""
    check_relation_names(relation_names)
    order = {relation: i for i, relation in enumerate(relation_names)}
    gold: dict[Pair, set[str]] = {}
    for fact in doc.facts:
        gold.setdefault((fact.h, fact.t), set()).add(fact.r)
    triples = []
    for pair in pairs:
        head, tail = _pair_names(doc, pair)
        relations = gold.get(tuple(pair), set())
        unknown = sorted(relations - order.keys())
        if unknown:
            raise ValueError(f"document {doc.title!r}: relation(s) {unknown} of pair {tuple(pair)} have no name "
                             f"in relation_names")
        names = [_normalise(relation_names[r]) for r in sorted(relations, key=order.__getitem__)]
        triples += [(head, name, tail) for name in names or [NONE_NAME]]
    return triples


def build_answer(doc: DocredDocument, pairs: Sequence[Pair], relation_names: Mapping[str, str]) -> str:
    """The gold answer text: `answer_triples` written out, `( head | relation | tail ) ...`."""
    return " ".join(format_triple(*triple) for triple in answer_triples(doc, pairs, relation_names))


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
    facts: list[tuple[int, int, str]]  # (head entity, tail entity, property id), deduplicated, in answer order
    malformed: int  # triples naming no listed pair or no relation, and stretches of text that are no triple


def parse_answer(text: str, doc: DocredDocument, pairs: Sequence[Pair],
                 relation_names: Mapping[str, str]) -> ParsedAnswer:
    """The facts of a (generated) answer. Each `( X | Y | Z )` group (any whitespace) is matched to a listed
    pair whose head and tail names are X and Z, the first such pair at or after the previous match (else the
    first in the list), and Y to a relation name or `none`. A group naming no listed pair or an unknown
    relation, and each non-blank stretch of text outside the groups, counts as one malformed part; never
    raises."""
    relation_of = {_normalise(name): relation for relation, name in relation_names.items()}
    names = [_pair_names(doc, pair) for pair in pairs]
    facts: list[tuple[int, int, str]] = []
    malformed, cursor, end = 0, 0, 0
    for match in TRIPLE_PATTERN.finditer(text):
        malformed += bool(text[end:match.start()].strip())
        end = match.end()
        head, relation, tail = (_normalise(group) for group in match.groups())
        matching = [i for i, pair_names in enumerate(names) if pair_names == (head, tail)]
        if not matching or (relation != NONE_NAME and relation not in relation_of):
            malformed += 1
            continue
        cursor = next((i for i in matching if i >= cursor), matching[0])
        if relation != NONE_NAME:
            fact = (pairs[cursor][0], pairs[cursor][1], relation_of[relation])
            if fact not in facts:
                facts.append(fact)
    malformed += bool(text[end:].strip())
    return ParsedAnswer(facts, malformed)
