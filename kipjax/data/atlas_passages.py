"""Atlas's Wikipedia passages (Izacard et al., 2023) as the DPR passages TSV that kipjax reads
(`kipjax.data.kilt.read_passages`): ImpRAG's knowledge corpus (chapter 5: "the December 2021 Wikipedia from
Izacard et al.").

Atlas releases each dump (`corpora/wiki/enwiki-dec2018`, ..., `enwiki-dec2021`, via its
`preprocessing/download_corpus.py`) as two JSON-lines files, `text-list-100-sec.jsonl` (~100-word passages of
the article text, cut within sections) and `infobox.jsonl`, one passage per line:
  {"id": "3793043", "title": "Bermuda Triangle", "section": "Compass variations", "text": " Compass ..."}
`section` is optional (Atlas's README); ids are strings. The output is `id\\ttext\\ttitle` under that header,
one passage per line in input order, as `kipjax.data.kilt.write_passages` writes it (csv, tab-delimited, a
field holding `"` quoted with the quote doubled), so `read_passages` reads it back exactly.

Fields:
  * id: kept as written (an int id becomes its decimal string). It must be unique over all the input files
    (the passage id is what retrieval, pseudo-labels and predictions name), non-empty, and free of tabs, line
    breaks and surrounding whitespace, because it is not sanitised (a changed id would no longer be Atlas's).
  * title: the page title, unchanged. Atlas itself retrieves over `"{title}: {section}"` as the title
    (`src/index_io.py`), but kipjax's title column must stay the page title: it is what KILT provenance is
    matched on (KILT's `mapping_KILT_title.p` looks passages up by title, `WikipediaIdMapping.by_title`) and
    what answers a page-title task such as entity linking.
  * section: with `include_section` (the default, as Atlas uses it), a non-empty section is prepended to the
    text as `"{section}: {text}"` (`SECTION_SEPARATOR`, Atlas's own join), so ImpRAG's `passage_text`
    ("Title: {title} Text: {section}: {text}") and the pseudo-label teachers ("{title} {section}: {text}") still
    see the section Atlas's retriever saw. Without it (`--no_section`) the section is dropped.
  * text, title and section are sanitised: every tab and every character Python counts as a line break
    (`\\n`, `\\r`, `\\v`, `\\f`, `\\x1c`-`\\x1e`, `\\x85`, `\\u2028`, `\\u2029`) becomes a space, one for one, and
    leading and trailing whitespace is stripped (Atlas's texts start with a space). So every passage is one
    physical line, which line-based tools (`wc -l`, `head`, `shuf`) need, and csv quoting is only ever for `"`.

The conversion streams: one passage in memory at a time, plus the ids (int64 while all are integers, as
Atlas's are) for the uniqueness check, as `read_passages` keeps them. It writes a temporary file beside the
output and renames it into place only once every line converted and every id proved unique, so a failed run
leaves an existing output as it was and no temporary file; a successful run replaces it. Bad input (invalid
JSON, a missing or mistyped field, a bad or repeated id) raises ValueError naming the file and line.

    python -m kipjax.data.atlas_passages --jsonl enwiki-dec2021/text-list-100-sec.jsonl \\
        enwiki-dec2021/infobox.jsonl --out passages.tsv [--no_section] [--limit N]
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from kipjax.data.jsonl import json_lines, required_field
from kipjax.data.kilt import PASSAGE_HEADER, first_duplicate, IdColumn
from kipjax.run_log import track

SECTION_SEPARATOR = ": "
REQUIRED_FIELDS = ("id", "title", "text")
EXPECTED = '{"id": str, "title": str, "text": str, "section": str (optional)}'
# Tab and every character str.splitlines splits on, each to one space.
_TO_SPACE = str.maketrans({c: " " for c in "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def sanitise(value: str) -> str:
    """`value` on one line: tabs and line breaks to spaces, surrounding whitespace stripped (module docstring)."""
    return value.translate(_TO_SPACE).strip()


def _passage_id(record: Mapping[str, Any], where: str) -> str:
    value = record["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field 'id' must be str or int, got {type(value).__name__} {value!r:.60}")
    if not value or sanitise(value) != value:
        raise ValueError(f"{where}: field 'id' must be a non-empty string without tabs, line breaks or "
                         f"surrounding whitespace, got {value!r:.60}")
    return value


def passage_row(record: Mapping[str, Any], where: str, include_section: bool = True) -> tuple[str, str, str]:
    """One Atlas record as its TSV row (id, text, title), checked and sanitised (module docstring)."""
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise ValueError(f"{where}: missing field{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}; "
                         f"expected an Atlas passage {EXPECTED}")
    passage_id = _passage_id(record, where)
    title = sanitise(required_field(record, "title", str, where))
    text = sanitise(required_field(record, "text", str, where))
    if include_section and record.get("section") is not None:
        section = sanitise(required_field(record, "section", str, where))
        if section:
            text = f"{section}{SECTION_SEPARATOR}{text}"
    return passage_id, text, title


def _rows(paths: Sequence[Path], include_section: bool) -> Iterator[tuple[str, str, str]]:
    for path in paths:
        for line_number, record in track(json_lines(path), total=None, desc=f"convert {path.name}",
                                         unit="passages"):
            yield passage_row(record, f"{path}:{line_number}", include_section)


def _row_locations(paths: Sequence[Path], rows: Sequence[int]) -> list[str]:
    """"file:line" of passage rows `rows` (0-based over all files), found by reading the files again: only a
    duplicate id needs them, so the fast path keeps no per-row line numbers (as `kilt._row_lines`)."""
    wanted, found, row = set(rows), {}, 0
    for path in paths:
        with open(path, encoding="utf-8") as f:  # opened and counted as `json_lines` does, blank lines skipped
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if row in wanted:
                    found[row] = f"{path}:{line_number}"
                    if len(found) == len(wanted):
                        return [found[r] for r in rows]
                row += 1
    raise RuntimeError(f"rows {sorted(wanted - set(found))} are no longer in {[str(p) for p in paths]}")


def convert(jsonl_paths: Sequence[str | Path], out_path: str | Path, *, include_section: bool = True,
            limit: int | None = None) -> int:
    """Writes the passages of `jsonl_paths`, in order (the first `limit` over all files if given), to `out_path`
    as DPR's TSV, atomically (module docstring); returns the number of passages written."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    paths = [Path(p) for p in jsonl_paths]
    if not paths:
        raise ValueError("no input files")
    if len({p.resolve() for p in paths}) < len(paths):
        raise ValueError(f"an input file is given twice: {[str(p) for p in paths]}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    ids = IdColumn()  # as read_passages collects them, so "unique" means what its check will find
    try:
        with temp.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quotechar='"', lineterminator="\n")
            writer.writerow(PASSAGE_HEADER)
            for row in itertools.islice(_rows(paths, include_section), limit):
                ids.append(row[0])
                writer.writerow(row)
        id_array = ids.to_array()
        duplicate = first_duplicate(id_array)
        if duplicate is not None:
            first, second = _row_locations(paths, duplicate)
            raise ValueError(f"{second}: duplicate passage id {str(id_array[duplicate[1]])!r}, first at {first}; "
                             f"ids must be unique over all input files")
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    return len(id_array)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kipjax.data.atlas_passages",
                                     description="Atlas's Wikipedia passage JSON lines to DPR's passages TSV "
                                                 "(see the kipjax.data.atlas_passages docstring).")
    parser.add_argument("--jsonl", nargs="+", required=True,
                        help="Atlas passage files, e.g. text-list-100-sec.jsonl infobox.jsonl")
    parser.add_argument("--out", required=True, help="output TSV (id, text, title), replaced atomically")
    parser.add_argument("--no_section", action="store_true", help="drop the section instead of prepending it")
    parser.add_argument("--limit", type=int, default=None, help="only the first N passages over all files")
    args = parser.parse_args(argv)
    try:
        passages = convert(args.jsonl, args.out, include_section=not args.no_section, limit=args.limit)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({"passages": passages, "out": str(args.out), "sections": not args.no_section}))


if __name__ == "__main__":
    main()
