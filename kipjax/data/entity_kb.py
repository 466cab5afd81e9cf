"""The entity knowledge base of end-to-end entity linking (EntQA, Zhang et al., 2022): every page of KILT's
knowledge source as an entity with a title and a description, and title maps for pages renamed between a
dataset's Wikipedia and KILT's.

KILT's knowledge source (`kilt_knowledgesource.json`, 5.9M pages, 35 GB) is one JSON line per page
  {"wikipedia_id": str, "wikipedia_title": str, "text": [paragraph, ...], ...}
whose first paragraph repeats the title. An entity's description is the paragraphs after the first, as EntQA's
preprocess_data.py builds its entity windows (`item['text'][1:] if len(item['text']) > 1 else item['text']`:
a page of only one paragraph keeps it), joined by single spaces with whitespace collapsed. `max_paragraphs`
bounds how many are kept: EntQA reads only the first 128 tokens of each, and descriptions of all pages whole
would take tens of GB.

Title maps: a TSV `old title<TAB>new title` per line, or a JSON object {old title: new title} (the layout of
EntQA's title_map.json, which renames AIDA's titles to KILT's).

Malformed input raises ValueError naming the file and line.
"""
from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Mapping, Sequence

from kipjax.data.jsonl import json_lines, required_field
from kipjax.run_log import track


@dataclasses.dataclass
class EntityKB:
    """Entities as parallel lists; `index_of` looks titles up (titles are unique, checked on construction;
    the lookup is built then, so the lists are not to be changed afterwards)."""

    titles: list[str]
    descriptions: list[str]
    wikipedia_ids: list[str]
    _index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not len(self.titles) == len(self.descriptions) == len(self.wikipedia_ids):
            raise ValueError(f"titles, descriptions and wikipedia_ids differ in length: {len(self.titles)}, "
                             f"{len(self.descriptions)}, {len(self.wikipedia_ids)}")
        self._index = {}
        for i, title in enumerate(self.titles):
            first = self._index.setdefault(title, i)
            if first != i:
                raise ValueError(f"duplicate title {title!r} at entities {first} and {i}")

    def index_of(self, title: str) -> int:
        """The entity index of `title`; KeyError naming it if the KB has no such title."""
        try:
            return self._index[title]
        except KeyError:
            raise KeyError(f"title {title!r} is not in the entity KB ({len(self)} entities)") from None

    @property
    def rows(self) -> Mapping[str, int]:
        """A read-only title -> entity index map (e.g. for reading candidate files)."""
        return types.MappingProxyType(self._index)

    def __contains__(self, title: object) -> bool:
        return title in self._index

    def __len__(self) -> int:
        return len(self.titles)


def description(paragraphs: Sequence[str], max_paragraphs: int | None = None) -> str:
    """A page's description: its paragraphs after the first (all of a one-paragraph page), at most
    `max_paragraphs` of them, joined by single spaces with whitespace collapsed."""
    body = paragraphs[1:] if len(paragraphs) > 1 else paragraphs
    return " ".join(" ".join(body[:max_paragraphs]).split())


def read_kilt_entities(path: str, max_paragraphs: int | None = None) -> EntityKB:
    """Every page of a KILT knowledge source as an entity, in file order (see the module docstring). Titles and
    wikipedia_ids must be unique."""
    if max_paragraphs is not None and max_paragraphs < 0:
        raise ValueError(f"max_paragraphs must be >= 0, got {max_paragraphs}")
    titles: list[str] = []
    descriptions: list[str] = []
    wikipedia_ids: list[str] = []
    first_line: dict[str, dict[str, int]] = {"wikipedia_title": {}, "wikipedia_id": {}}
    for line_number, record in track(json_lines(path), total=None, desc=f"read {Path(path).name}", unit="pages"):
        where = f"{path}:{line_number}"
        for name, seen in first_line.items():
            value = required_field(record, name, str, where)
            if value in seen:
                raise ValueError(f"{where}: duplicate {name} {value!r}, first at {path}:{seen[value]}")
            seen[value] = line_number
        paragraphs = required_field(record, "text", list, where)
        for i, paragraph in enumerate(paragraphs):
            if not isinstance(paragraph, str):
                raise ValueError(f"{where}: text[{i}] must be str, got {type(paragraph).__name__}")
        titles.append(record["wikipedia_title"])
        wikipedia_ids.append(record["wikipedia_id"])
        descriptions.append(description(paragraphs, max_paragraphs))
    return EntityKB(titles, descriptions, wikipedia_ids)


def _checked_title(title: str, where: str, what: str) -> str:
    if not title.strip():
        raise ValueError(f"{where}: empty {what} title")
    return title.strip()


def read_title_map(path: str) -> dict[str, str]:
    """{old title: new title} from a TSV (one `old<TAB>new` per line; blank lines skipped) or, for a `.json`
    file, a JSON object. An old title may appear once."""
    if Path(path).suffix == ".json":
        with open(path, encoding="utf-8") as f:
            try:
                value = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); expected an object "
                                 "{old title: new title}") from e
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"{path}: expected a JSON object {{old title: new title}} of strings")
        return {_checked_title(old, f"{path}: key {old!r}", "old"): _checked_title(new, f"{path}: key {old!r}", "new")
                for old, new in value.items()}
    titles: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            where = f"{path}:{line_number}"
            if not line.strip():
                continue
            columns = line.rstrip("\r\n").split("\t")
            if len(columns) != 2:
                raise ValueError(f"{where}: {len(columns)} tab-separated columns; expected 'old title<TAB>new title'")
            old, new = (_checked_title(c, where, what) for c, what in zip(columns, ("old", "new")))
            if old in first_line:
                raise ValueError(f"{where}: title {old!r} mapped again, first at line {first_line[old]}")
            first_line[old] = line_number
            titles[old] = new
    return titles
