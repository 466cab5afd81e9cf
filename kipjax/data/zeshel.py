"""Reader for the Zeshel zero-shot entity linking dataset (Logeswaran et al., 2019) in its released layout.

    ROOT/documents/<world>.json   JSON lines {document_id, title, text}; every document is an entity
    ROOT/mentions/<split>.json    JSON lines {mention_id, context_document_id, start_index, end_index,
                                  label_document_id, corpus, category[, text]}

A mention span indexes the whitespace tokens of its context document's text, with an INCLUSIVE end index.
Mentions link only to entities of their own world (`corpus`), which is what makes the test worlds zero-shot.
Every record is validated on read; a bad one raises `ValueError` naming the file, the line and what was
expected, because a silently dropped mention changes recall denominators without anyone noticing.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Mapping

from kipjax.data.jsonl import json_lines, required_field

SPLITS = ("train", "heldout_train_seen", "heldout_train_unseen", "val", "test")


@dataclasses.dataclass(frozen=True)
class Document:
    """One entity page of a world; `text` is whitespace-tokenized (mention spans index `text.split()`)."""

    document_id: str
    title: str
    text: str
    world: str


@dataclasses.dataclass(frozen=True)
class Mention:
    """A linked span `[start_index, end_index]` (inclusive) of the context document's whitespace tokens."""

    mention_id: str
    context_document_id: str
    start_index: int
    end_index: int
    label_document_id: str
    world: str
    category: str
    text: str | None = None


def read_documents(root: str | Path) -> dict[str, list[Document]]:
    """All worlds under `root/documents`, world name -> documents in file order (worlds sorted by name)."""
    directory = Path(root) / "documents"
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no <world>.json files in {directory} (expected the Zeshel documents/ folder)")
    worlds: dict[str, list[Document]] = {}
    first_seen: dict[str, str] = {}
    for path in paths:
        world = path.stem
        documents = []
        for line_number, record in json_lines(path):
            where = f"{path}:{line_number}"
            document = Document(
                document_id=required_field(record, "document_id", str, where),
                title=required_field(record, "title", str, where),
                text=required_field(record, "text", str, where),
                world=world,
            )
            if document.document_id in first_seen:
                raise ValueError(f"{where}: duplicate document_id {document.document_id!r}, "
                                 f"first defined at {first_seen[document.document_id]}")
            first_seen[document.document_id] = where
            documents.append(document)
        worlds[world] = documents
    return worlds


def index_documents(documents: Mapping[str, list[Document]]) -> dict[str, Document]:
    """document_id -> Document over all worlds of `read_documents`' output."""
    return {d.document_id: d for world_documents in documents.values() for d in world_documents}


def read_mentions(root: str | Path, split: str,
                  documents: Mapping[str, list[Document]] | None = None) -> list[Mention]:
    """Mentions of `split`, each checked against the documents (read from `root` unless given)."""
    if split not in SPLITS:
        raise ValueError(f"unknown Zeshel split {split!r}; expected one of {SPLITS}")
    if documents is None:
        documents = read_documents(root)
    by_id = index_documents(documents)
    path = Path(root) / "mentions" / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"missing mentions file {path}")
    # Mentions of one context document are usually adjacent; a bounded cache keeps long texts from piling up.
    tokens_of = functools.lru_cache(maxsize=4096)(lambda document_id: by_id[document_id].text.split())
    first_seen: dict[str, int] = {}
    mentions = []
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        text = record.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: field 'text' must be str, got {type(text).__name__}")
        mention = Mention(
            mention_id=required_field(record, "mention_id", str, where),
            context_document_id=required_field(record, "context_document_id", str, where),
            start_index=required_field(record, "start_index", int, where),
            end_index=required_field(record, "end_index", int, where),
            label_document_id=required_field(record, "label_document_id", str, where),
            world=required_field(record, "corpus", str, where),
            category=required_field(record, "category", str, where),
            text=text,
        )
        if mention.mention_id in first_seen:
            raise ValueError(f"{where}: duplicate mention_id {mention.mention_id!r}, "
                             f"first at line {first_seen[mention.mention_id]}")
        first_seen[mention.mention_id] = line_number
        _check_mention(mention, by_id, tokens_of, where)
        mentions.append(mention)
    return mentions


def _check_mention(mention: Mention, by_id: Mapping[str, Document], tokens_of: Callable[[str], list[str]],
                   where: str) -> None:
    """Raise unless the mention's world, documents, span and surface text agree with the documents."""
    for field, document_id in (("context_document_id", mention.context_document_id),
                               ("label_document_id", mention.label_document_id)):
        document = by_id.get(document_id)
        if document is None:
            raise ValueError(f"{where}: {field} {document_id!r} is not a document of any world")
        if document.world != mention.world:
            raise ValueError(f"{where}: {field} {document_id!r} belongs to world {document.world!r}, "
                             f"but the mention's corpus is {mention.world!r}")
    tokens = tokens_of(mention.context_document_id)
    n = len(tokens)
    if not 0 <= mention.start_index <= mention.end_index < n:
        raise ValueError(f"{where}: span [{mention.start_index}, {mention.end_index}] (inclusive) must satisfy "
                         f"0 <= start_index <= end_index < {n}, the token count of context document "
                         f"{mention.context_document_id!r}")
    if mention.text is not None:
        surface = " ".join(tokens[mention.start_index:mention.end_index + 1])
        if surface != mention.text:
            raise ValueError(f"{where}: field 'text' is {mention.text!r} but tokens "
                             f"[{mention.start_index}, {mention.end_index}] of the context document read "
                             f"{surface!r}")


def mention_surface(mention: Mention, context: Document) -> str:
    """The mention's tokens joined by single spaces (the span's end index is inclusive)."""
    return " ".join(context.text.split()[mention.start_index:mention.end_index + 1])
