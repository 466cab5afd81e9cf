"""Readers and writers for DocRED (Yao et al., 2019) and Re-DocRED (Tan et al., 2022) document-level relation
extraction data: the annotated documents, the relation vocabulary, and the submission (prediction) format.

Documents (train_annotated.json, train_distant.json, dev.json, test.json; Re-DocRED train_revised.json,
dev_revised.json, test_revised.json) are one JSON list of
  {"title": str,
   "sents": [[token, ...], ...],
   "vertexSet": [[{"name": str, "sent_id": int, "pos": [start, end], "type": str}, ...], ...],   # entities
   "labels": [{"h": int, "t": int, "r": "P17", "evidence": [sent_id, ...]}, ...]}
`pos` is a token span of sentence `sent_id`, end exclusive; `h` / `t` index `vertexSet`; `r` is a Wikidata
property id. DocRED's test.json has no `labels` (the document then has `labeled=False`); fields not listed
above are ignored.

Relation vocabulary: rel2id.json maps the no-relation label `Na` to 0 and each property id to 1..n-1 (DocRED:
96 relations, 97 entries); rel_info.json maps property ids to names ("P17": "country").

Submissions: one JSON list of {"title", "h_idx", "t_idx", "r"[, "evidence"]}, the format of DocRED's CodaLab
and of `kipjax.metrics.docre`. Candidate pairs (LMRC stage 1's output, stage 2's input): the same list
without `r`, {"title", "h_idx", "t_idx"}, one record per proposed ordered entity pair.

Malformed input raises ValueError naming the file, the document (0-based index and title) or prediction, and
the field, because a silently skipped mention or label changes every downstream number.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

from kipjax.data.zeshel import required_field
from kipjax.run_log import atomic_write_text

NO_RELATION = "Na"
Span = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Mention:
    """One mention of an entity: `pos` is a token span of sentence `sent_id` (end exclusive)."""

    name: str
    sent_id: int
    pos: Span
    type: str


@dataclasses.dataclass(frozen=True)
class Entity:
    """An entity (a `vertexSet` entry): its mentions, at least one."""

    mentions: tuple[Mention, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.mentions)


@dataclasses.dataclass(frozen=True)
class Fact:
    """A labeled relation: head entity `h` and tail entity `t` (indices into the entities), property id `r`,
    and the evidence sentence ids as listed in the file (order and repeats kept)."""

    h: int
    t: int
    r: str
    evidence: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class DocredDocument:
    """A tokenized document with its entities and (unless `labeled` is False, as in test.json) its facts."""

    title: str
    sents: list[list[str]]
    entities: list[Entity]
    facts: list[Fact]
    labeled: bool = True

    @property
    def tokens(self) -> list[str]:
        """The document's tokens: its sentences concatenated."""
        return [token for sentence in self.sents for token in sentence]

    @property
    def sentence_starts(self) -> list[int]:
        """Offset of each sentence's first token in `tokens`."""
        starts, offset = [], 0
        for sentence in self.sents:
            starts.append(offset)
            offset += len(sentence)
        return starts

    def mention_span(self, mention: Mention) -> Span:
        """`mention.pos` as a span of `tokens` (end exclusive)."""
        start = self.sentence_starts[mention.sent_id]
        return start + mention.pos[0], start + mention.pos[1]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One predicted fact of a submission; `evidence` None means the field is absent (scored as empty)."""

    title: str
    h_idx: int
    t_idx: int
    r: str
    evidence: tuple[int, ...] | None = None

    @property
    def key(self) -> tuple[str, int, int, str]:
        return self.title, self.h_idx, self.t_idx, self.r


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_json(path: str | Path, kind: type) -> Any:
    """The JSON value in `path`, which must be of type `kind`."""
    with open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(value, kind):
        raise ValueError(f"{path}: expected a JSON {'list' if kind is list else 'object'}, "
                         f"got {type(value).__name__}")
    return value


def _int_list(record: Mapping[str, Any], name: str, where: str) -> list[int]:
    values = required_field(record, name, list, where)
    if not all(_is_int(v) for v in values):
        raise ValueError(f"{where}: field '{name}' must be a list of ints, got {values!r:.60}")
    return values


# -------------------------------------------------------------------------------------------- relation map

def read_rel2id(path: str | Path) -> dict[str, int]:
    """rel2id.json: relation label -> class id, with `Na` = 0 and the ids exactly 0..n-1."""
    rel2id = _load_json(path, dict)
    for label, index in rel2id.items():
        if not _is_int(index):
            raise ValueError(f"{path}: the id of {label!r} must be an int, got {type(index).__name__} {index!r}")
    if rel2id.get(NO_RELATION) != 0:
        raise ValueError(f"{path}: the no-relation label {NO_RELATION!r} must have id 0, "
                         f"got {rel2id.get(NO_RELATION)!r}")
    if sorted(rel2id.values()) != list(range(len(rel2id))):
        raise ValueError(f"{path}: the ids must be 0..{len(rel2id) - 1}, each once")
    return dict(rel2id)


def read_rel_info(path: str | Path, rel2id: Mapping[str, int] | None = None) -> dict[str, str]:
    """rel_info.json: property id -> relation name. With `rel2id`, every relation of it but `Na` must be named."""
    rel_info = _load_json(path, dict)
    for label, name in rel_info.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: the name of {label!r} must be a string, got {type(name).__name__} {name!r}")
    if rel2id is not None:
        unnamed = [label for label in rel2id if label != NO_RELATION and label not in rel_info]
        if unnamed:
            raise ValueError(f"{path}: no name for relation(s) {unnamed[:5]} of rel2id")
    return dict(rel_info)


# ---------------------------------------------------------------------------------------------- documents

def _read_mention(record: Any, where: str, sents: list[list[str]]) -> Mention:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a mention object, got {type(record).__name__}")
    name = required_field(record, "name", str, where)
    sent_id = required_field(record, "sent_id", int, where)
    if not 0 <= sent_id < len(sents):
        raise ValueError(f"{where}.sent_id {sent_id} is not a sentence index (the document has {len(sents)} "
                         f"sentences)")
    pos = _int_list(record, "pos", where)
    if len(pos) != 2 or not 0 <= pos[0] < pos[1] <= len(sents[sent_id]):
        raise ValueError(f"{where}.pos {pos} is not a valid span of sentence {sent_id} "
                         f"({len(sents[sent_id])} tokens)")
    return Mention(name, sent_id, (pos[0], pos[1]), required_field(record, "type", str, where))


def _read_fact(record: Any, where: str, num_entities: int, num_sents: int,
               relations: Collection[str] | None) -> Fact:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a label object, got {type(record).__name__}")
    head, tail = required_field(record, "h", int, where), required_field(record, "t", int, where)
    for field, index in (("h", head), ("t", tail)):
        if not 0 <= index < num_entities:
            raise ValueError(f"{where}.{field} {index} is not an entity index (the document has {num_entities} "
                             f"entities in vertexSet)")
    relation = required_field(record, "r", str, where)
    if relations is not None and (relation not in relations or relation == NO_RELATION):
        raise ValueError(f"{where}.r {relation!r} is not a relation of the vocabulary")
    evidence = _int_list(record, "evidence", where)
    bad = [i for i in evidence if not 0 <= i < num_sents]
    if bad:
        raise ValueError(f"{where}.evidence {bad} are not sentence indices (the document has {num_sents} "
                         f"sentences)")
    return Fact(head, tail, relation, tuple(evidence))


def parse_document(record: Any, where: str, relations: Collection[str] | None = None) -> DocredDocument:
    """One document record; `where` names it in errors (e.g. "dev.json: document 3")."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a document object, got {type(record).__name__}")
    title = required_field(record, "title", str, where)
    where = f"{where} ({title!r})"
    sents = required_field(record, "sents", list, where)
    for i, sentence in enumerate(sents):
        if not (isinstance(sentence, list) and all(isinstance(token, str) for token in sentence)):
            raise ValueError(f"{where}: sents[{i}] must be a list of token strings, got {sentence!r:.60}")
    entities = []
    for i, vertex in enumerate(required_field(record, "vertexSet", list, where)):
        if not (isinstance(vertex, list) and vertex):
            raise ValueError(f"{where}: vertexSet[{i}] must be a non-empty list of mentions, got {vertex!r:.60}")
        entities.append(Entity(tuple(_read_mention(m, f"{where}: vertexSet[{i}][{j}]", sents)
                                     for j, m in enumerate(vertex))))
    labeled = "labels" in record
    labels = required_field(record, "labels", list, where) if labeled else []
    facts = [_read_fact(label, f"{where}: labels[{i}]", len(entities), len(sents), relations)
             for i, label in enumerate(labels)]
    return DocredDocument(title, sents, entities, facts, labeled)


def read_docred(path: str | Path, relations: Collection[str] | None = None) -> list[DocredDocument]:
    """The documents of a DocRED / Re-DocRED JSON file, in file order. With `relations` (e.g. the keys of
    `read_rel2id`), a label whose `r` is not among them (or is `Na`) is an error."""
    return [parse_document(record, f"{path}: document {i}", relations)
            for i, record in enumerate(_load_json(path, list))]


# -------------------------------------------------------------------------------------------- submissions

def parse_prediction(record: Any, where: str) -> Prediction:
    """One submission record {"title", "h_idx", "t_idx", "r"[, "evidence"]}."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a prediction object, got {type(record).__name__}")
    evidence = tuple(_int_list(record, "evidence", where)) if "evidence" in record else None
    return Prediction(required_field(record, "title", str, where), required_field(record, "h_idx", int, where),
                      required_field(record, "t_idx", int, where), required_field(record, "r", str, where),
                      evidence)


def read_predictions(path: str | Path) -> list[Prediction]:
    """A submission file (a JSON list of predictions), in file order, duplicates kept."""
    return [parse_prediction(record, f"{path}: prediction {i}") for i, record in enumerate(_load_json(path, list))]


def prediction_record(prediction: Prediction) -> dict[str, Any]:
    """The submission-format JSON object of `prediction` (no "evidence" key when its evidence is None)."""
    record: dict[str, Any] = {"title": prediction.title, "h_idx": prediction.h_idx, "t_idx": prediction.t_idx,
                              "r": prediction.r}
    if prediction.evidence is not None:
        record["evidence"] = list(prediction.evidence)
    return record


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> None:
    """Writes a submission file atomically (readers never see half of it)."""
    atomic_write_text(str(path), json.dumps([prediction_record(p) for p in predictions], ensure_ascii=False))


# ------------------------------------------------------------------------------------------ candidate pairs

def write_candidate_pairs(path: str | Path, docs: Iterable[DocredDocument],
                          pairs: Iterable[Iterable[tuple[int, int]]]) -> None:
    """Writes each document's candidate (head, tail) pairs as {"title", "h_idx", "t_idx"} records, atomically."""
    records = [{"title": doc.title, "h_idx": int(h), "t_idx": int(t)}
               for doc, doc_pairs in zip(docs, pairs) for h, t in doc_pairs]
    atomic_write_text(str(path), json.dumps(records, ensure_ascii=False))


def read_candidate_pairs(path: str | Path, docs: list[DocredDocument]) -> list[list[tuple[int, int]]]:
    """Per document of `docs` (matched by title), its candidate pairs in file order, duplicates dropped; a
    document the file does not list has none. Unknown titles, entity indices out of range and h == t are
    errors naming the record, as are titles that `docs` repeats (a pair would be ambiguous)."""
    index: dict[str, int] = {}
    for i, doc in enumerate(docs):
        if doc.title in index:
            raise ValueError(f"{path}: the documents repeat the title {doc.title!r}, so its candidate pairs are "
                             f"ambiguous")
        index[doc.title] = i
    out: list[list[tuple[int, int]]] = [[] for _ in docs]
    seen: set[tuple[int, int, int]] = set()
    for k, record in enumerate(_load_json(path, list)):
        where = f"{path}: record {k}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a pair object, got {type(record).__name__}")
        title = required_field(record, "title", str, where)
        head, tail = required_field(record, "h_idx", int, where), required_field(record, "t_idx", int, where)
        if title not in index:
            raise ValueError(f"{where}: title {title!r} is not a document of the evaluated file")
        num_entities = len(docs[index[title]].entities)
        if not (0 <= head < num_entities and 0 <= tail < num_entities) or head == tail:
            raise ValueError(f"{where} ({title!r}): pair ({head}, {tail}) must be two different entities in "
                             f"0..{num_entities - 1}")
        if (index[title], head, tail) not in seen:
            seen.add((index[title], head, tail))
            out[index[title]].append((head, tail))
    return out
