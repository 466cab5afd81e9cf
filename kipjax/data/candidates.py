"""Candidate files: a retriever's ranked entities per mention, the input of the JOINT reranker.

`candidates_{split}.json` holds one JSON object per line, `{"mention_id": ..., "candidates": [document_id,
...]}`, best first, one line per mention of the split in file order. Ids rather than table rows keep the
file meaningful outside the run that wrote it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from kipjax.data.zeshel import json_lines, required_field
from kipjax.run_log import atomic_write_text


def candidates_path(directory: str | Path, split: str) -> Path:
    return Path(directory) / f"candidates_{split}.json"


def write_candidates(path: str | Path, mention_ids: Sequence[str], ranked_rows: np.ndarray,
                     entity_ids: Sequence[str]) -> None:
    """Writes ranked entity table rows [M, k] (-1 = none) as document ids, atomically."""
    if len(mention_ids) != len(ranked_rows):
        raise ValueError(f"{len(mention_ids)} mention ids but {len(ranked_rows)} candidate rows")
    lines = [json.dumps({"mention_id": m, "candidates": [entity_ids[i] for i in row if i >= 0]})
             for m, row in zip(mention_ids, np.asarray(ranked_rows).tolist())]
    atomic_write_text(str(path), "".join(line + "\n" for line in lines))


def read_candidates(path: str | Path, mention_ids: Sequence[str], entity_row: Mapping[str, int],
                    num_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate table rows for the mentions, in `mention_ids` order.

    Returns `(rows, valid)`: int32 [M, num_candidates] rows of the entity table (`entity_row` maps document id
    to row) and a bool mask of the filled positions (a line may list fewer candidates). Lines beyond
    `num_candidates` are cut. Unknown mention or document ids, duplicates and missing mentions raise a
    ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing candidates file {path}; write it with `python -m kipjax.index "
                                f"--candidates=DIR` from a trained retriever")
    position = {m: i for i, m in enumerate(mention_ids)}
    rows = np.zeros((len(mention_ids), num_candidates), np.int32)
    valid = np.zeros((len(mention_ids), num_candidates), bool)
    seen: dict[str, int] = {}
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        mention_id = required_field(record, "mention_id", str, where)
        candidates = required_field(record, "candidates", list, where)
        if mention_id not in position:
            raise ValueError(f"{where}: mention_id {mention_id!r} is not a mention of this split")
        if mention_id in seen:
            raise ValueError(f"{where}: duplicate mention_id {mention_id!r}, first at line {seen[mention_id]}")
        seen[mention_id] = line_number
        kept = candidates[:num_candidates]
        unknown = [c for c in kept if c not in entity_row]
        if unknown:
            raise ValueError(f"{where}: candidates {unknown[:3]} are not entities of the mention's split")
        i = position[mention_id]
        rows[i, :len(kept)] = [entity_row[c] for c in kept]
        valid[i, :len(kept)] = True
    missing = [m for m in mention_ids if m not in seen]
    if missing:
        raise ValueError(f"{path}: no candidates for {len(missing)} mentions, e.g. {missing[:3]}")
    return rows, valid
