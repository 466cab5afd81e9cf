"""Padding token-id rows into one int32 array, the shape every jitted step reads."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


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
