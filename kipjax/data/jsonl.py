"""JSON-lines files read record by record, with errors that name the file and line: the one reader behind the
Zeshel, coreference, KILT and metric file formats."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping


def json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, record) for each non-blank line; a line that is not a JSON object raises."""
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: invalid JSON ({e.msg}); expected one JSON object per line") from e
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            yield line_number, record


def required_field(record: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """`record[name]`, checked to be present and of type `kind` (bool does not count as int)."""
    if name not in record:
        raise ValueError(f"{where}: missing field '{name}'")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(
            f"{where}: field '{name}' must be {kind.__name__}, got {type(value).__name__} {value!r:.60}")
    return value
