"""EntQA's training and evaluation examples: linked documents cut into passages, each passage with its topic
and the KB rows of the entities mentioned fully inside it, with their spans.

Documents come as gold-link records, `{"id", "text", "links": [[char_start, char_end, title], ...]}` (what
`kipjax.data.aida.gold_links` and `kipjax.data.nif.gold_links` give), so AIDA and the GERBIL datasets read the
same way. A link whose title is not in the KB (a page missing from KILT's dump) cannot be a gold entity: it is
left out of the passages' golds and counted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from kipjax.data import aida
from kipjax.data.entity_kb import EntityKB, read_title_map
from kipjax.methods.entqa import inputs
from kipjax.methods.entqa.passages import Passage, cut_passages, topic_text


@dataclasses.dataclass(frozen=True)
class PassageExample:
    passage: Passage
    topic_ids: tuple[int, ...]
    gold_entities: tuple[int, ...]  # KB rows, distinct, in order of first mention
    gold_spans: tuple[tuple[tuple[int, int], ...], ...]  # per gold entity: its (first, last) piece spans


def passage_id(passage: Passage) -> str:
    """A passage's name in candidate files: its document and its first piece, `doc@offset`."""
    return f"{passage.doc_id}@{passage.offset}"


def gold_recall(examples: Sequence[PassageExample], candidates: Iterable[Iterable[int]]) -> float:
    """The share of the passages' (passage, gold entity) pairs whose entity is among that passage's candidate
    KB rows: the retriever's recall@k and the reader's candidate recall."""
    found = total = 0
    for example, rows in zip(examples, candidates, strict=True):
        found += len(set(example.gold_entities) & {int(r) for r in rows})
        total += len(example.gold_entities)
    return found / max(total, 1)


@dataclasses.dataclass
class DocumentExamples:
    passages: list[PassageExample]
    out_of_kb_links: int  # links whose title the KB lacks


def document_examples(record: Mapping[str, Any], kb: EntityKB, tokenizer: Any, length: int = 32, stride: int = 16,
                      topic_mode: str = "first_token") -> DocumentExamples:
    """One document's passages with their gold entities (module docstring)."""
    text = record["text"]
    known = [(s, e, t) for s, e, t in record["links"] if t is not None and t in kb]
    topic = tuple(inputs.pieces(tokenizer, topic_text(text, topic_mode))) if topic_mode != "none" else ()
    examples = []
    for passage in cut_passages(str(record["id"]), text, known, tokenizer, length, stride):
        spans: dict[int, list[tuple[int, int]]] = {}
        for first, last, title in passage.mentions:
            spans.setdefault(kb.index_of(title), []).append((first, last))
        examples.append(PassageExample(passage, topic, tuple(spans), tuple(tuple(v) for v in spans.values())))
    unknown = sum(1 for *_, t in record["links"] if t is not None and t not in kb)
    return DocumentExamples(examples, unknown)


def corpus_examples(records: Iterable[Mapping[str, Any]], kb: EntityKB, tokenizer: Any, **settings: Any
                    ) -> DocumentExamples:
    """`document_examples` of every document, concatenated."""
    passages: list[PassageExample] = []
    unknown = 0
    for record in records:
        examples = document_examples(record, kb, tokenizer, **settings)
        passages += examples.passages
        unknown += examples.out_of_kb_links
    return DocumentExamples(passages, unknown)


def split_records(path: str, split: str | None, title_map: Mapping[str, str] | None) -> list[dict]:
    """The gold-link records of an AIDA file's documents of `split` (None: all of them)."""
    documents = aida.read_aida(path, title_map)
    chosen = [aida.gold_links(d) for d in documents if split is None or d.split == split]
    if not chosen:
        raise ValueError(f"{path}: no document of split {split!r}")
    return chosen


def split_name(split: str | None, role: str) -> str:
    """How `--split` names a role's documents: their split, or the role when the role takes a whole file."""
    return role if split is None else split


def split_sources(*roles: tuple[str, str | None, str | None]) -> dict[str, tuple[str, str | None]]:
    """{split name: (AIDA file, split)} of the (role, file, split) triples that have a file."""
    return {split_name(split, role): (path, split) for role, path, split in roles if path is not None}


class SplitDocuments:
    """A method's named splits of AIDA-layout documents (`split_sources`), read on demand and cut into
    passages with one setting, so the retriever and the reader see the same passages."""

    def __init__(self, kb: EntityKB, tokenizer: Any, sources: Mapping[str, tuple[str, str | None]],
                 title_map: Mapping[str, str] | None, settings: Mapping[str, Any]):
        self.kb, self.tokenizer, self.sources = kb, tokenizer, dict(sources)
        self.title_map, self.settings = title_map, dict(settings)

    @classmethod
    def from_files(cls, kb: EntityKB, tokenizer: Any, roles: Sequence[tuple[str, str | None, str | None]],
                   title_map_file: str | None, **settings: Any) -> "SplitDocuments":
        """From a method's (role, AIDA file, split) bindings (`split_sources`) and its title map file."""
        return cls(kb, tokenizer, split_sources(*roles), read_title_map(title_map_file) if title_map_file else None,
                   settings)

    def records(self, split: str) -> list[dict]:
        if split not in self.sources:
            raise ValueError(f"no split {split!r}; the configured splits are {sorted(self.sources)}")
        return split_records(*self.sources[split], self.title_map)

    def passages(self, split: str) -> list[PassageExample]:
        """Every passage of the split's documents, in document order."""
        return corpus_examples(self.records(split), self.kb, self.tokenizer, **self.settings).passages
