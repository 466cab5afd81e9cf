"""Reader for AIDA CoNLL-YAGO (Hoffart et al., 2011), the entity-linking benchmark EntQA (Zhang et al., 2022)
trains and tests on, and the gold-link files that `kipjax.metrics.el`'s InKB scorer reads.

AIDA-YAGO2-dataset.tsv holds all three splits. A line `-DOCSTART- (947testa CRICKET)` starts each document (its
id is the text inside the parentheses; "testa" / "testb" in the id's first word name the split, any other id
is train); then one token per line, blank lines ending sentences. A token inside a mention has tab-separated
columns
  token, B | I, the full mention, --NME--                                          (out of the KB)
  token, B | I, the full mention, YAGO2 entity, Wikipedia URL, Wikipedia id[, Freebase mid]
and a token outside mentions has only the first. A mention's title is the URL's page name (after `/wiki/`,
URL-decoded, underscores as spaces) or, without a URL, the YAGO2 name (its `\\uXXXX` escapes decoded,
underscores as spaces); a title map (`kipjax.data.entity_kb.read_title_map`) renames titles of pages renamed
since, such as EntQA's map from AIDA's to KILT's titles.

A document's `text` is its tokens joined by single spaces, and mention character offsets index that string.
(EntQA's preprocessing detokenizes instead, dropping spaces before punctuation; gold links are therefore
comparable only between systems that read the same text.)

Malformed input raises ValueError naming the file and line, because a silently dropped mention changes every
recall number downstream.

CLI: python -m kipjax.data.aida AIDA-YAGO2-dataset.tsv --out G.jsonl [--split testa] [--title_map MAP]
  writes one line {"id": doc, "text": text, "links": [[char_start, char_end, title], ...]} per document (in-KB
  mentions only, in order), the gold file of `python -m kipjax.metrics.el inkb`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import unquote

from kipjax.data.entity_kb import read_title_map
from kipjax.run_log import atomic_write_text

DOCSTART = "-DOCSTART-"
NME = "--NME--"
SPLITS = ("train", "testa", "testb")
WIKIPEDIA_PREFIXES = ("http://en.wikipedia.org/wiki/", "https://en.wikipedia.org/wiki/")
_MAX_COLUMNS = 7
_YAGO_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


@dataclasses.dataclass(frozen=True)
class AidaMention:
    """A mention: tokens [start_token, end_token) and characters [char_start, char_end) of its document's
    `text`; `title` None for an out-of-KB (--NME--) mention."""

    start_token: int
    end_token: int
    char_start: int
    char_end: int
    surface: str
    title: str | None
    wikipedia_url: str | None
    wikipedia_id: str | None


@dataclasses.dataclass
class AidaDocument:
    """A tokenized document; `sentences` are token ranges [start, end); `split` is None for a header
    without AIDA's parentheses (no split can be told)."""

    id: str
    split: str | None
    tokens: list[str]
    sentences: list[tuple[int, int]]
    text: str
    mentions: list[AidaMention]


def wikipedia_title(url: str) -> str | None:
    """The page title of an English Wikipedia URL (everything after `/wiki/`, so titles with `/` survive,
    URL-decoded, underscores as spaces), or None for another URL."""
    for prefix in WIKIPEDIA_PREFIXES:
        if url.startswith(prefix) and len(url) > len(prefix):
            return unquote(url[len(prefix):]).replace("_", " ")
    return None


def yago_title(name: str) -> str:
    """A YAGO2 entity name as a Wikipedia title: `\\uXXXX` escapes decoded (surrogate pairs joined),
    underscores as spaces."""
    decoded = _YAGO_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16").replace("_", " ")


def split_of(doc_id: str) -> str:
    """AIDA's split of a document id: "testa" / "testb" when its first word says so, else "train"."""
    first = doc_id.split(maxsplit=1)[0]
    return next((split for split in ("testa", "testb") if split in first), "train")


@dataclasses.dataclass
class _OpenMention:
    columns: tuple[str, ...]  # the mention's columns after B / I: full mention and entity columns
    start_token: int
    line_number: int


class _DocumentBuilder:
    """Tokens, sentences and mentions of the document being read."""

    def __init__(self, doc_id: str, split: str | None, title_map: Mapping[str, str]):
        self.id, self.split, self.title_map = doc_id, split, title_map
        self.tokens: list[str] = []
        self.starts: list[int] = []  # character offset of each token in the joined text
        self.sentences: list[tuple[int, int]] = []
        self.sentence_start = 0
        self.mentions: list[AidaMention] = []
        self.open: _OpenMention | None = None

    def add_token(self, token: str) -> None:
        self.starts.append(self.starts[-1] + len(self.tokens[-1]) + 1 if self.tokens else 0)
        self.tokens.append(token)

    def close_mention(self, path: str) -> None:
        if self.open is None:
            return
        mention, self.open = self.open, None
        start, end = mention.start_token, len(self.tokens)
        char_start, char_end = self.starts[start], self.starts[end - 1] + len(self.tokens[end - 1])
        surface, entity = mention.columns[0], mention.columns[1:]
        joined = " ".join(self.tokens[start:end])
        if surface != joined:
            raise ValueError(f"{path}:{mention.line_number}: full mention {surface!r} does not match its "
                             f"tokens {joined!r}")
        title = url = page_id = None
        if entity[0] != NME:
            url = entity[1] if len(entity) > 1 and entity[1] else None
            page_id = entity[2] if len(entity) > 2 and entity[2] else None
            title = wikipedia_title(url) if url else yago_title(entity[0])
            title = self.title_map.get(title, title)
        self.mentions.append(AidaMention(start, end, char_start, char_end, surface, title, url, page_id))

    def end_sentence(self, path: str) -> None:
        self.close_mention(path)
        if len(self.tokens) > self.sentence_start:
            self.sentences.append((self.sentence_start, len(self.tokens)))
        self.sentence_start = len(self.tokens)

    def finish(self, path: str) -> AidaDocument:
        self.end_sentence(path)
        return AidaDocument(self.id, self.split, self.tokens, self.sentences, " ".join(self.tokens),
                            self.mentions)


def _header(line: str, where: str) -> tuple[str, str | None]:
    """(id, split) of a -DOCSTART- line; a header without parentheses keeps its text as the id, no split."""
    rest = line[len(DOCSTART):].strip()
    if rest.startswith("(") and rest.endswith(")") and rest[1:-1].strip():
        doc_id = rest[1:-1].strip()
        return doc_id, split_of(doc_id)
    if not rest or rest.startswith("("):
        raise ValueError(f"{where}: expected '{DOCSTART} (document id)', got {line!r:.80}")
    return rest, None


def _entity_columns(columns: list[str], where: str) -> None:
    """Checks a mention line's columns after the token, B / I and full mention."""
    if len(columns) < 4:
        raise ValueError(f"{where}: mention line has {len(columns)} columns; expected token, B/I, full mention "
                         f"and {NME} or YAGO2 entity, Wikipedia URL, Wikipedia id[, Freebase mid]")
    if columns[1] not in ("B", "I"):
        raise ValueError(f"{where}: second column is {columns[1]!r}; expected B or I")
    if columns[3] == NME:
        if len(columns) > 4:
            raise ValueError(f"{where}: {len(columns)} columns; expected nothing after {NME}")
        return
    if len(columns) > _MAX_COLUMNS:
        raise ValueError(f"{where}: {len(columns)} columns; expected at most {_MAX_COLUMNS} (token, B/I, full "
                         "mention, YAGO2 entity, Wikipedia URL, Wikipedia id, Freebase mid)")
    if len(columns) > 4 and columns[4] and wikipedia_title(columns[4]) is None:
        raise ValueError(f"{where}: {columns[4]!r:.80} is not an English Wikipedia URL; expected "
                         f"{WIKIPEDIA_PREFIXES[0]}Title")
    if len(columns) > 5 and columns[5] and not columns[5].isdigit():
        raise ValueError(f"{where}: Wikipedia id {columns[5]!r:.40} is not a number")


def read_aida(path: str, title_map: Mapping[str, str] | None = None) -> list[AidaDocument]:
    """The documents of an AIDA-YAGO2 TSV file in file order (see the module docstring); ids must be unique."""
    title_map = title_map or {}
    documents: list[AidaDocument] = []
    first_line: dict[str, int] = {}
    doc: _DocumentBuilder | None = None
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            line, where = line.rstrip("\r\n"), f"{path}:{line_number}"
            if not line.strip():
                if doc is not None:
                    doc.end_sentence(path)
                continue
            if line.startswith(DOCSTART):
                if doc is not None:
                    documents.append(doc.finish(path))
                doc_id, split = _header(line, where)
                if doc_id in first_line:
                    raise ValueError(f"{where}: duplicate document id {doc_id!r}, first at line {first_line[doc_id]}")
                first_line[doc_id] = line_number
                doc = _DocumentBuilder(doc_id, split, title_map)
                continue
            if doc is None:
                raise ValueError(f"{where}: token before the first '{DOCSTART} (document id)' line")
            columns = line.split("\t")
            if not columns[0].strip():
                raise ValueError(f"{where}: empty token in the first column")
            if len(columns) == 1:
                doc.close_mention(path)
            else:
                _entity_columns(columns, where)
                if columns[1] == "B":
                    doc.close_mention(path)
                    doc.open = _OpenMention(tuple(columns[2:]), len(doc.tokens), line_number)
                elif doc.open is None or doc.open.columns != tuple(columns[2:]):
                    raise ValueError(f"{where}: I line of mention {columns[2]!r} without a preceding B or I line of "
                                     "the same mention (same full mention and entity) in the same sentence")
            doc.add_token(columns[0])
    if doc is not None:
        documents.append(doc.finish(path))
    return documents


def links_record(doc_id: str, text: str, links: Iterable[tuple[int, int, str | None]]) -> dict[str, Any]:
    """A gold-link line of `kipjax.metrics.el` inkb: the document's id, text and in-KB links [start, end,
    title] (links without a title are dropped, as the InKB score drops them)."""
    return {"id": doc_id, "text": text,
            "links": [[start, end, title] for start, end, title in links if title is not None]}


def gold_links(doc: AidaDocument) -> dict[str, Any]:
    """`doc`'s in-KB mentions as a gold-link line (see `links_record`)."""
    return links_record(doc.id, doc.text, ((m.char_start, m.char_end, m.title) for m in doc.mentions))


def write_gold_links(path: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Writes gold-link lines atomically (temp file + rename); returns the counts a CLI prints."""
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return {"documents": len(records), "links": sum(len(r["links"]) for r in records), "out": path}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kipjax.data.aida",
                                     description="AIDA-YAGO2 TSV to gold-link JSON lines (see the module docstring).")
    parser.add_argument("file", help="AIDA-YAGO2-dataset.tsv (or a file in its layout)")
    parser.add_argument("--out", required=True, help="output JSON-lines file")
    parser.add_argument("--split", choices=SPLITS, help="keep only this split's documents")
    parser.add_argument("--title_map", help="TSV 'old title<TAB>new title' (or a JSON object) renaming titles")
    args = parser.parse_args(argv)
    try:
        title_map = read_title_map(args.title_map) if args.title_map else None
        documents = [d for d in read_aida(args.file, title_map) if args.split in (None, d.split)]
        result = write_gold_links(args.out, [gold_links(d) for d in documents])
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
