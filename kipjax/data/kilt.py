"""Readers for KILT (Petroni et al., 2021) task files and for the 100-word-passage knowledge base of multi-task
DPR (Maillard et al., 2021), which TACO (Zhang et al., 2023) retrieves from; and the command that cuts KILT's
knowledge source into such passages.

KILT task files (`nq-train-kilt.jsonl`, `trex-dev-kilt.jsonl`, ...) are JSON lines
  {"id": str | int, "input": str, "meta": ...,
   "output": [{"answer": str, "provenance": [{"wikipedia_id": str, "title": str,
                                              "start_paragraph_id": int, "end_paragraph_id": int, ...}]}, ...]}
An output may hold an answer, a provenance or both; test files (`*-test_input-kilt.jsonl`) have no `output`.
Entity-linking provenance (AIDA, WNED) names only the page, no paragraphs. Ids are kept as `str(id)`: KILT's
evaluation compares `str(id).strip()`, and some files (KILT's own test data) use ints. `paragraph ids` index
the page's `text` list in the knowledge source (0 is the title).

Passages (DPR's `psgs_w100.tsv` layout): a header `id\\ttext\\ttitle`, then one passage per line, read as DPR
and TACO read it (`csv`, tab-delimited, `"`-quoted: a field holding `"`, a tab or a newline is quoted with the
quotes doubled). The releases map passages to KILT pages differently:
  * multi-task DPR's passages, https://dl.fbaipublicfiles.com/ur/wikipedia_split/psgs_w100.tsv.gz ("the KILT
    passages set split into DPR 100-words format", ~34M; DPR issue #186) carry the `wikipedia_id` INLINE, as a
    4th column of 6: TACO (scripts/kilt/process_kilt.py) reads every row as `pid, text, wiki_title, wiki_id, _, _`
    after skipping the header, with pids 0, 1, .... So a header of 4 or more columns whose first three are
    `id, text, title` makes column 4 the wikipedia_id (the header's other names and columns 5-6 are not
    checked or kept; their names in the release could not be confirmed).
  * KILT's DPR baseline passages `kilt_w100_title.tsv` (22.2M, the count DPR issue #186 quotes) come with
    `mapping_KILT_title.p`, a pickle {wikipedia title: wikipedia_id} that KILT's
    `kilt/retrievers/DPR_connector.py` looks each passage's TITLE up in (titles absent from it get no page).
    DPR's KILT code (`KiltCsvCtxSrc`) instead loads a pickle {int passage id: (wikipedia_id, end_paragraph_id)}
    (`map_back_to_kilt.pkl`, configured at a FAIR cluster path; no public copy found), and KILT's
    distributed connector one {int passage id: wikipedia_id}. All three pickle forms are read here, through an
    unpickler that builds only dicts, lists, tuples, strings and ints (a pickle can run code otherwise).
  * the plain alternative, written by the `passages` command: a TSV `passage_id\\twikipedia_id` per line,
    optionally under that header.

Cutting (`python -m kipjax.data.kilt passages --knowledge_source kilt_knowledgesource.json --out DIR
[--words 100]`): the knowledge source is one page per line {"_id": str, "wikipedia_id": str, "wikipedia_title":
str, "text": [paragraph, ...], ...}. See `body_words` and `cut_page` for how a page becomes passages.

Malformed input raises ValueError naming the file and line (the pickle: the file and key), because a silently
dropped passage or gold page changes every recall number downstream.
"""
from __future__ import annotations

import argparse
import array
import csv
import dataclasses
import io
import json
import os
import pickle
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from kipjax.data.jsonl import json_lines, required_field
from kipjax.run_log import track

T = TypeVar("T")
PASSAGE_HEADER = ("id", "text", "title")
MAPPING_HEADER = ("passage_id", "wikipedia_id")
SECTION_MARKER = "Section::::"
DEFAULT_WORDS = 100
DEFAULT_SEED = 42  # TACO's scripts/kilt/process_kilt.py: random.seed(42); random.sample(train, 100000)
PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
_MAX_INT_ID_DIGITS = 18  # fits int64


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object_array(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array of `values` (np.array would build a 2-D array from equal-length sequences)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


# -------------------------------------------------------------------------------------------- task files

@dataclasses.dataclass(frozen=True)
class ProvenanceSpan:
    """A gold evidence span: paragraphs `start_paragraph_id`..`end_paragraph_id` (inclusive) of a page."""

    wikipedia_id: str
    start_paragraph_id: int
    end_paragraph_id: int


@dataclasses.dataclass(frozen=True)
class KiltExample:
    """One KILT instance. `pages` are the distinct gold wikipedia_ids over all outputs (first-seen order);
    `page_sets` the distinct pages of each output that has provenance (KILT's evidence sets: R-precision and
    multi-hop recall need them together); `spans` the distinct paragraph spans where the file gives them.
    `labeled` is False for test inputs (no `output`)."""

    id: str
    input: str
    answers: tuple[str, ...] = ()
    pages: tuple[str, ...] = ()
    page_sets: tuple[tuple[str, ...], ...] = ()
    spans: tuple[ProvenanceSpan, ...] = ()
    labeled: bool = True


def _distinct(values: Iterable[T]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(values))


def _wikipedia_id(value: Any, where: str) -> str:
    """A wikipedia_id as KILT's string; ints (some mapping files) are turned into strings."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if _is_int(value):
        return str(value)
    raise ValueError(f"{where}: wikipedia_id must be a non-empty string or an int, got {type(value).__name__} "
                     f"{value!r:.60}")


def _read_output(output: Any, where: str, answers: list[str], pages: list[str], page_sets: list,
                 spans: list[ProvenanceSpan]) -> None:
    if not isinstance(output, dict):
        raise ValueError(f"{where}: expected an object, got {type(output).__name__}")
    if "answer" in output:
        answers.append(required_field(output, "answer", str, where))
    provenance = output.get("provenance", [])
    if not isinstance(provenance, list):
        raise ValueError(f"{where}: field 'provenance' must be list, got {type(provenance).__name__}")
    output_pages = []
    for j, record in enumerate(provenance):
        at = f"{where}.provenance[{j}]"
        if not isinstance(record, dict):
            raise ValueError(f"{at}: expected an object, got {type(record).__name__}")
        if "wikipedia_id" not in record:
            raise ValueError(f"{at}: missing field 'wikipedia_id'")
        if record["wikipedia_id"] is None:  # KILT's validator allows null: no page known, nothing to retrieve
            continue
        page = _wikipedia_id(record["wikipedia_id"], at)
        output_pages.append(page)
        has_start, has_end = "start_paragraph_id" in record, "end_paragraph_id" in record
        if has_start != has_end:
            raise ValueError(f"{at}: has only one of 'start_paragraph_id' and 'end_paragraph_id'")
        if has_start:
            start = required_field(record, "start_paragraph_id", int, at)
            end = required_field(record, "end_paragraph_id", int, at)
            if not 0 <= start <= end:
                raise ValueError(f"{at}: paragraph span {start}..{end} is not 0 <= start <= end")
            spans.append(ProvenanceSpan(page, start, end))
    pages.extend(output_pages)
    if output_pages:
        page_sets.append(_distinct(output_pages))


def _read_example(record: dict[str, Any], where: str) -> KiltExample:
    if "id" not in record:
        raise ValueError(f"{where}: missing field 'id'")
    if not (isinstance(record["id"], str) or _is_int(record["id"])):
        raise ValueError(f"{where}: field 'id' must be str or int, got {type(record['id']).__name__} "
                         f"{record['id']!r:.60}")
    example_id, text = str(record["id"]), required_field(record, "input", str, where)
    if "output" not in record:
        return KiltExample(example_id, text, labeled=False)
    outputs = required_field(record, "output", list, where)
    answers: list[str] = []
    pages: list[str] = []
    page_sets: list[tuple[str, ...]] = []
    spans: list[ProvenanceSpan] = []
    for i, output in enumerate(outputs):
        _read_output(output, f"{where}: output[{i}]", answers, pages, page_sets, spans)
    return KiltExample(example_id, text, _distinct(answers), _distinct(pages), _distinct(page_sets),
                       _distinct(spans))


def read_kilt_task(path: str | Path, limit: int | None = None) -> list[KiltExample]:
    """The examples of a KILT task file in file order; with `limit`, only the first `limit` (T-REx train is
    2.3M lines, 1.7 GB). Ids must be unique, as KILT's evaluation requires."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = Path(path)
    examples: list[KiltExample] = []
    first_line: dict[str, int] = {}
    if limit == 0:
        return examples
    for line_number, record in track(json_lines(path), total=None, desc=f"read {path.name}", unit="examples"):
        where = f"{path}:{line_number}"
        example = _read_example(record, where)
        key = example.id.strip()
        if key in first_line:
            raise ValueError(f"{where}: duplicate id {example.id!r}, first at line {first_line[key]}")
        first_line[key] = line_number
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    return examples


def downsample(examples: Sequence[T], n: int, seed: int = DEFAULT_SEED) -> list[T]:
    """`n` examples drawn without replacement by `random.Random(seed).sample`, in the order drawn: the same
    draw as TACO's `random.seed(42); random.sample(train, 100000)` for T-REx and zsRE, given the same list in
    the same order (TACO samples DPR's `*-multikilt.json` train lists). With `n >= len(examples)`, all of them
    in their order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), n)


# ------------------------------------------------------------------------------------------ passage files

@dataclasses.dataclass(frozen=True)
class PassageCorpus:
    """Passages as parallel arrays, not per-passage objects (the real files have 21M-36M of them).

    `ids` is int64 when every id is a plain decimal integer (DPR's and the multi-task release's ids), else an
    object array of the id strings. `titles` and `texts` are object arrays of str; consecutive equal titles
    share one string. `wikipedia_ids` (object array of str, None where unknown) comes from the file's 4th
    column or a mapping; it is None when neither is there."""

    ids: np.ndarray
    titles: np.ndarray
    texts: np.ndarray
    wikipedia_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _is_int_id(cell: str) -> bool:
    """Whether `cell` is an id that survives int -> str unchanged (no sign, spaces, leading zeros)."""
    return (0 < len(cell) <= _MAX_INT_ID_DIGITS and cell.isascii() and cell.isdigit()
            and (cell[0] != "0" or cell == "0"))


class IdColumn:
    """Collects ids as int64 while every one is a plain integer, as strings from the first one that is not."""

    def __init__(self):
        self.ints: array.array | None = array.array("q")
        self.strs: list[str] | None = None

    def append(self, cell: str) -> None:
        if self.ints is not None:
            if _is_int_id(cell):
                self.ints.append(int(cell))
                return
            self.strs = [str(i) for i in self.ints]
            self.ints = None
        self.strs.append(cell)

    def to_array(self) -> np.ndarray:
        if self.ints is not None:
            return np.frombuffer(self.ints, dtype=np.int64) if len(self.ints) else np.zeros(0, np.int64)
        return _object_array(self.strs)


def first_duplicate(ids: np.ndarray) -> tuple[int, int] | None:
    """Rows (first, second) of the repeated id whose second occurrence comes first, or None; by sorting,
    which for 36M int64 ids costs far less memory than a set of them."""
    if len(ids) < 2:
        return None
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    repeated = np.flatnonzero(np.asarray(ordered[1:] == ordered[:-1], dtype=bool))
    if not len(repeated):
        return None
    second = int(order[repeated + 1].min())
    first = int(np.flatnonzero(np.asarray(ids == ids[second], dtype=bool))[0])
    return first, second


def _tsv_reader(f: io.TextIOBase) -> Any:
    """DPR's reading of its TSV files: tab-delimited, `"`-quoted (a csv reader, so `line_num` is there)."""
    return csv.reader(f, delimiter="\t", quotechar='"')


def _row_lines(path: Path, rows: Iterable[int], skip_header: bool) -> list[int]:
    """The line numbers of data rows `rows` (0-based, header not counted), found by reading `path` again: only
    errors need them, so the fast path keeps no per-row line numbers."""
    wanted = sorted(set(rows))
    found: dict[int, int] = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = _tsv_reader(f)
        if skip_header:
            next(reader, None)
        for i, _ in enumerate(reader):
            if i in wanted:
                found[i] = reader.line_num
                if len(found) == len(wanted):
                    break
    return [found[i] for i in rows]


def _check_unique(path: Path, ids: np.ndarray, what: str, skip_header: bool) -> None:
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        first, second = _row_lines(path, duplicate, skip_header)
        value = ids[duplicate[1]:duplicate[1] + 1].tolist()[0]  # a Python int or str, not np.int64
        raise ValueError(f"{path}:{second}: duplicate {what} {value!r}, first at line {first}")


def _read_header(reader, path: Path) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}:1: empty file; expected the header {chr(9).join(PASSAGE_HEADER)!r}") from None
    if [c.strip() for c in header[:3]] != list(PASSAGE_HEADER):
        raise ValueError(f"{path}:1: missing header: expected {chr(9).join(PASSAGE_HEADER)!r} (DPR's psgs_w100.tsv "
                         f"layout), got {chr(9).join(header)!r:.80}")
    return header


def read_passages(path: str | Path, mapping: str | Path | WikipediaIdMapping | None = None) -> PassageCorpus:
    """A `psgs_w100.tsv`-layout file, streamed into arrays (see `PassageCorpus`). Pages come from the file's
    4th column if it has one, else from `mapping` (a mapping file or `read_wikipedia_id_mapping`'s result);
    passages the mapping does not cover get None, with a warning."""
    path = Path(path)
    ids, titles, texts = IdColumn(), [], []
    inline: list[str] | None = None
    previous_title = previous_page = None
    with path.open(encoding="utf-8", newline="") as f:
        reader = _tsv_reader(f)
        try:
            header = _read_header(reader, path)
            columns = len(header)
            if columns >= 4:
                inline = []
            for row in track(reader, total=None, desc=f"read {path.name}", unit="passages"):
                if len(row) != columns:
                    raise ValueError(f"{path}:{reader.line_num}: expected {columns} tab-separated columns (as in "
                                     f"the header), got {len(row)}")
                if not row[0]:
                    raise ValueError(f"{path}:{reader.line_num}: empty passage id")
                ids.append(row[0])
                texts.append(row[1])
                title = row[2]
                if title == previous_title:
                    title = previous_title  # one string per page, not one per passage
                titles.append(title)
                previous_title = title
                if inline is not None:
                    page = row[3].strip()
                    if not page:
                        raise ValueError(f"{path}:{reader.line_num}: empty wikipedia_id (column 4)")
                    if page == previous_page:
                        page = previous_page
                    inline.append(page)
                    previous_page = page
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed TSV ({e})") from e
    id_array = ids.to_array()
    _check_unique(path, id_array, "passage id", skip_header=True)
    corpus = PassageCorpus(id_array, _object_array(titles), _object_array(texts),
                           None if inline is None else _object_array(inline))
    if mapping is None:
        return corpus
    if inline is not None:
        raise ValueError(f"{path}: the file has its own wikipedia_id column (column 4 of {columns}); "
                         f"a mapping file as well is ambiguous")
    if not isinstance(mapping, WikipediaIdMapping):
        mapping = read_wikipedia_id_mapping(mapping)
    pages = mapping.lookup(corpus)
    missing = np.flatnonzero(pages == None)  # noqa: E711 (elementwise on an object array)
    if len(missing):
        examples = ", ".join(f"{corpus.ids[i]} ({corpus.titles[i]!r})" for i in missing[:5])
        warnings.warn(f"{path}: {len(missing)} of {len(corpus)} passages have no wikipedia_id in {mapping.source} "
                      f"(e.g. {examples})", stacklevel=2)
    return dataclasses.replace(corpus, wikipedia_ids=pages)


# ----------------------------------------------------------------------------------------------- mappings

@dataclasses.dataclass(frozen=True)
class WikipediaIdMapping:
    """Passage -> KILT wikipedia_id, keyed by passage title (`by_title`, KILT's mapping_KILT_title.p) or by
    passage id (`passage_ids` / `wikipedia_ids`, parallel arrays; ids int64 when all are integers)."""

    source: str
    by_title: dict[str, str] | None = None
    passage_ids: np.ndarray | None = None
    wikipedia_ids: np.ndarray | None = None

    def lookup(self, corpus: PassageCorpus) -> np.ndarray:
        """The wikipedia_id of each passage of `corpus` (object array, None where the mapping has none)."""
        if self.by_title is not None:
            pages = np.empty(len(corpus), dtype=object)
            previous, page = object(), None
            for i, title in enumerate(corpus.titles):
                if title is not previous:
                    previous, page = title, self.by_title.get(title)
                pages[i] = page
            return pages
        return _align(corpus.ids, self.passage_ids, self.wikipedia_ids)


def _align(ids: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[j] for the j with keys[j] == ids[i], for every i (None where there is none), by sorted search."""
    if ids.dtype != keys.dtype:  # int64 on one side, strings on the other: compare as strings
        ids, keys = _object_array([str(i) for i in ids]), _object_array([str(k) for k in keys])
    if len(keys) == len(ids) and np.array_equal(keys, ids):  # the mapping written beside the passages
        return values.copy()
    out = np.full(len(ids), None, dtype=object)
    if not len(keys) or not len(ids):
        return out
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    position = np.minimum(np.searchsorted(ordered, ids), len(ordered) - 1)
    found = np.asarray(ordered[position] == ids, dtype=bool)
    out[found] = values[order[position[found]]]
    return out


class _SafeUnpickler(pickle.Unpickler):
    """Builds only plain containers, strings and ints: a mapping needs nothing else, and any other global
    could run code on load."""

    ALLOWED = {("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "str", "int")} | {
        ("collections", "OrderedDict"), ("collections", "defaultdict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a wikipedia_id mapping holds only "
                                     f"dicts, lists, tuples, strings and ints")


def _mapping_value(value: Any, where: str) -> str:
    """A wikipedia_id, or the first element of DPR's (wikipedia_id, end_paragraph_id) pairs."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return _wikipedia_id(value, where)


def _read_pickle_mapping(path: Path) -> WikipediaIdMapping:
    with path.open("rb") as f:
        try:
            value = _SafeUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
                IndexError, KeyError) as e:
            raise ValueError(f"{path}: not a readable wikipedia_id mapping pickle ({type(e).__name__}: {e})") from e
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for i, pair in enumerate(value):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ValueError(f"{path}: element {i} must be a (key, wikipedia_id) pair, got {pair!r:.60}")
            items.append(tuple(pair))
    else:
        raise ValueError(f"{path}: expected a dict (title or passage id -> wikipedia_id), got {type(value).__name__}")
    if not items:
        raise ValueError(f"{path}: the mapping is empty")
    by_title = isinstance(items[0][0], str)
    kind = "a title (str)" if by_title else "a passage id (int)"
    for key, _ in items:
        if not (isinstance(key, str) if by_title else _is_int(key)):
            raise ValueError(f"{path}: key {key!r:.60} ({type(key).__name__}) is not {kind} like the first key "
                             f"{items[0][0]!r:.60}")
    pages = [_mapping_value(v, f"{path}: value of key {k!r:.60}") for k, v in items]
    if by_title:
        return WikipediaIdMapping(str(path), by_title=dict(zip((k for k, _ in items), pages)))
    keys = np.fromiter((k for k, _ in items), dtype=np.int64, count=len(items))
    duplicate = first_duplicate(keys)
    if duplicate is not None:
        raise ValueError(f"{path}: passage id {int(keys[duplicate[1]])} appears twice")
    return WikipediaIdMapping(str(path), passage_ids=keys, wikipedia_ids=_object_array(pages))


def _read_tsv_mapping(path: Path) -> WikipediaIdMapping:
    ids, pages = IdColumn(), []
    previous_page, has_header = None, False
    with path.open(encoding="utf-8", newline="") as f:
        reader = _tsv_reader(f)
        try:
            for row in track(reader, total=None, desc=f"read {path.name}", unit="passages"):
                if reader.line_num == 1 and tuple(c.strip() for c in row) == MAPPING_HEADER:
                    has_header = True
                    continue
                if len(row) != 2:
                    raise ValueError(f"{path}:{reader.line_num}: expected 2 tab-separated columns "
                                     f"(passage_id, wikipedia_id), got {len(row)}")
                passage_id, page = row[0].strip(), row[1].strip()
                if not passage_id or not page:
                    raise ValueError(f"{path}:{reader.line_num}: empty passage_id or wikipedia_id")
                ids.append(passage_id)
                if page == previous_page:
                    page = previous_page
                pages.append(page)
                previous_page = page
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed TSV ({e})") from e
    id_array = ids.to_array()
    _check_unique(path, id_array, "passage_id", skip_header=has_header)
    return WikipediaIdMapping(str(path), passage_ids=id_array, wikipedia_ids=_object_array(pages))


def read_wikipedia_id_mapping(path: str | Path) -> WikipediaIdMapping:
    """A passage -> wikipedia_id mapping: a pickle (by its suffix .p/.pkl/.pickle or its first byte) in any of
    the released forms of the module docstring, else a `passage_id\\twikipedia_id` TSV."""
    path = Path(path)
    with path.open("rb") as f:
        first = f.read(1)
    if path.suffix in PICKLE_SUFFIXES or first == pickle.PROTO:
        return _read_pickle_mapping(path)
    return _read_tsv_mapping(path)


# ---------------------------------------------------------------------------------------------- cutting

@dataclasses.dataclass(frozen=True)
class KiltPage:
    """One knowledge-source page: its id, title and paragraphs (`text`; paragraph 0 is the title)."""

    wikipedia_id: str
    title: str
    paragraphs: list[str]


def read_knowledge_source(path: str | Path) -> Iterator[KiltPage]:
    """The pages of `kilt_knowledgesource.json` (35 GB) one at a time, validated."""
    path = Path(path)
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        ids = {name: _wikipedia_id(record[name], f"{where}: field '{name}'")
               for name in ("wikipedia_id", "_id") if name in record}
        if not ids:
            raise ValueError(f"{where}: missing field 'wikipedia_id' (or '_id')")
        if len(set(ids.values())) > 1:
            raise ValueError(f"{where}: '_id' {ids['_id']!r} and 'wikipedia_id' {ids['wikipedia_id']!r} differ")
        paragraphs = required_field(record, "text", list, where)
        for i, paragraph in enumerate(paragraphs):
            if not isinstance(paragraph, str):
                raise ValueError(f"{where}: text[{i}] must be str, got {type(paragraph).__name__}")
        yield KiltPage(next(iter(ids.values())), required_field(record, "wikipedia_title", str, where), paragraphs)


def body_words(paragraphs: Sequence[str]) -> list[str]:
    """The words (whitespace-separated) of a page's body: every paragraph but the first, which repeats the
    title, and but section headings (`Section::::History.`), in order and across paragraph boundaries.

    Both skips follow KILT's own passage script (scripts/create_kilt_data_paragraphs.py: "loop paragraphs
    removing first (title)"; a paragraph with "Section::::" is kept only as the section's name) and Pyserini's
    fixed-window KILT passages (scripts/kilt/convert_kilt_to_fixed_passages_jsonl.py: skips paragraph 0 and
    paragraphs starting with "Section::::"); the title stays in its own column, which DPR prepends when
    encoding. Other markup (`BULLET::::- item`) is kept as words, as both scripts keep it. Multi-task DPR's
    own splitting code is not public, so whether its release kept titles or headings could not be checked."""
    words: list[str] = []
    for paragraph in paragraphs[1:]:
        if paragraph.lstrip().startswith(SECTION_MARKER):
            continue
        words.extend(paragraph.split())
    return words


def cut_page(paragraphs: Sequence[str], words: int = DEFAULT_WORDS) -> list[str]:
    """A page's passages: its body words (`body_words`) in disjoint runs of `words`, the last run shorter, each
    joined by single spaces. DPR split each article into disjoint 100-word blocks that never cross articles;
    the multi-task release's description is the same ("splitting all pages into 100-word segments (no
    overlap)"). A page with no body gives none."""
    if words < 1:
        raise ValueError(f"words must be >= 1, got {words}")
    body = body_words(paragraphs)
    return [" ".join(body[start:start + words]) for start in range(0, len(body), words)]


def passage_file_names(words: int = DEFAULT_WORDS) -> tuple[str, str]:
    """The passages file (DPR's psgs_w100.tsv name) and its passage_id -> wikipedia_id mapping, in --out."""
    return f"psgs_w{words}.tsv", f"psgs_w{words}.wikipedia_ids.tsv"


def write_passages(knowledge_source: str | Path, out_dir: str | Path, words: int = DEFAULT_WORDS,
                   first_id: int = 0, force: bool = False) -> dict[str, Any]:
    """Cuts every page of `knowledge_source` (`cut_page`) into out_dir's passages file and mapping file;
    passage ids count from `first_id` (0, as in the multi-task release; DPR's Wikipedia passages count from 1).
    Both are written to temporary files and renamed into place at the end, so an interrupted run leaves no
    half-written file. Returns counts and paths."""
    if words < 1:
        raise ValueError(f"words must be >= 1, got {words}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / name for name in passage_file_names(words)]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} exist(s); pass --force to replace")
    temps = [p.with_name(f".{p.name}.tmp.{os.getpid()}") for p in targets]
    pages = empty_pages = 0
    passage_id = first_id
    try:
        with temps[0].open("w", encoding="utf-8", newline="") as passages_file, \
                temps[1].open("w", encoding="utf-8", newline="") as mapping_file:
            passages = csv.writer(passages_file, delimiter="\t", quotechar='"', lineterminator="\n")
            mapping = csv.writer(mapping_file, delimiter="\t", quotechar='"', lineterminator="\n")
            passages.writerow(PASSAGE_HEADER)
            mapping.writerow(MAPPING_HEADER)
            for page in track(read_knowledge_source(knowledge_source), total=None,
                              desc=f"cut {Path(knowledge_source).name}", unit="pages"):
                pages += 1
                texts = cut_page(page.paragraphs, words)
                empty_pages += not texts
                for text in texts:
                    passages.writerow((passage_id, text, page.title))
                    mapping.writerow((passage_id, page.wikipedia_id))
                    passage_id += 1
        os.replace(temps[1], targets[1])  # the mapping first: a passages file never lacks its mapping
        os.replace(temps[0], targets[0])
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return {"pages": pages, "pages_without_passages": empty_pages, "passages": passage_id - first_id,
            "words": words, "passages_file": str(targets[0]), "mapping_file": str(targets[1])}


# ------------------------------------------------------------------------------------------------------ CLI

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kipjax.data.kilt",
                                     description="KILT data tools (see the kipjax.data.kilt docstring).")
    commands = parser.add_subparsers(dest="command", required=True)
    cut = commands.add_parser("passages", help="cut KILT's knowledge source into DPR-layout word passages")
    cut.add_argument("--knowledge_source", required=True, help="kilt_knowledgesource.json (JSON lines)")
    cut.add_argument("--out", required=True, help="output folder for psgs_w{words}.tsv and its mapping")
    cut.add_argument("--words", type=int, default=DEFAULT_WORDS, help="words per passage (default 100)")
    cut.add_argument("--first_id", type=int, default=0, help="id of the first passage (default 0)")
    cut.add_argument("--force", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)
    try:
        if args.command == "passages":
            result = write_passages(args.knowledge_source, args.out, args.words, args.first_id, args.force)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
