"""Growing a pretrained vocabulary: new special tokens need new embedding rows."""
from __future__ import annotations

import numpy as np


def grow_embedding_rows(table: np.ndarray, new_size: int) -> np.ndarray:
    """Appends rows to an embedding table [V, H] up to `new_size`, each set to the mean of the existing rows.

    The mean keeps new tokens (e.g. mention markers) in the region of embedding space the pretrained encoder
    has seen, rather than at random points far from every trained row.
    """
    table = np.asarray(table)
    if new_size < table.shape[0]:
        raise ValueError(f"cannot shrink an embedding table of {table.shape[0]} rows to {new_size}")
    extra = np.repeat(table.mean(axis=0, keepdims=True), new_size - table.shape[0], axis=0)
    return np.concatenate([table, extra.astype(table.dtype)], axis=0)
