"""Padding into the fixed shapes every jitted step reads: token-id rows into one int32 array, and tables into
equal batches."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from kipjax.run_log import track


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad: int = 0, left: bool = False) -> np.ndarray:
    """int32 [len(rows), length] padded with `pad`: rows start at column 0, or with `left` end at the last
    column (so that decoding continues every row at the same position). A longer row raises ValueError."""
    out = np.full((len(rows), length), pad, np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded length {length}")
        start = length - len(row) if left else 0
        out[i, start:start + len(row)] = row
    return out


def round_up(n: int, multiple: int) -> int:
    """The least positive multiple of `multiple` that is >= n: padded lengths taken from it let batches of
    similar lengths share one compiled shape."""
    return max(multiple, math.ceil(n / multiple) * multiple)


def fixed_size_batches(size: int, *arrays: np.ndarray, desc: str | None = None) -> Iterable[tuple[np.ndarray, ...]]:
    """Splits arrays into batches of exactly `size` rows, the last padded by repeating row 0, so inference
    over a table of any length compiles once. Callers cut the outputs back to `len(arrays[0])` rows. With
    `desc`, iterating shows progress in rows (`run_log.track`)."""
    n = len(arrays[0])
    pad = (-n) % size
    padded = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a for a in arrays]
    batches = [tuple(a[i:i + size] for a in padded) for i in range(0, n + pad, size)]
    return batches if desc is None else track(batches, total=n, desc=desc, rows_per_item=size)
