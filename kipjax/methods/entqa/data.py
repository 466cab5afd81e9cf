"""EntQA's training and evaluation examples: linked documents cut into passages, each passage with its topic
and the KB rows of the entities mentioned fully inside it, with their spans.

Documents come as gold-link records, `{"id", "text", "links": [[char_start, char_end, title], ...]}` (what
`kipjax.data.aida.gold_links` and `kipjax.data.nif.gold_links` give), so AIDA and the GERBIL datasets read the
same way. A link whose title is not in the KB (a page missing from KILT's dump) cannot be a gold entity: it is
left out of the passages' golds and counted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from kipjax.data.entity_kb import EntityKB
from kipjax.methods.entqa import inputs
from kipjax.methods.entqa.passages import Passage, cut_passages, topic_text


@dataclasses.dataclass(frozen=True)
class PassageExample:
    passage: Passage
    topic_ids: tuple[int, ...]
    gold_entities: tuple[int, ...]  # KB rows, distinct, in order of first mention
    gold_spans: tuple[tuple[tuple[int, int], ...], ...]  # per gold entity: its (first, last) piece spans


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
