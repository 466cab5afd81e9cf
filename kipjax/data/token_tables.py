"""Tokenized text tables: texts as one zero-padded [N, width] array of token ids, optionally cached on disk.

A corpus of tens of millions of passages is tokenized once into one array (uint16 where the vocabulary fits:
11.5 GB for the 36M passages of KILT's knowledge source, against 23 GB as int32 and far more as Python lists)
and, with a cache directory, saved as a `.npy` that later runs memory-map instead of tokenizing again. The
retrieval methods (TACO, ImpRAG) gather the rows a batch needs from it on the host. Texts are tokenized without
the tokenizer's special tokens and end with its EOS; `row_mask` finds a row's tokens by that EOS, not by
`ids != 0`, since id 0 can be a real token (Llama 3's "!").
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np

from kipjax.run_log import atomic_save_npy, track


def encode_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int, desc: str | None = None,
                 chunk: int = 4096) -> list[list[int]]:
    """Token ids of each text without special tokens, cut to `max_tokens - 1`, then EOS."""
    eos = tokenizer.eos_token_id
    starts = range(0, len(texts), chunk)
    if desc:
        starts = track(starts, total=len(texts), desc=desc, rows_per_item=chunk)
    out: list[list[int]] = []
    for start in starts:
        batch = tokenizer(list(texts[start:start + chunk]), add_special_tokens=False)["input_ids"]
        out += [ids[:max_tokens - 1] + [eos] for ids in batch]
    return out


def row_mask(rows: np.ndarray, eos_id: int) -> np.ndarray:
    """[..., L] int32 mask of table rows: 1 through each row's last EOS (the tokens `encode_texts` wrote), 0 on
    the zero padding after it; an all-padding row (a missing candidate) is all 0."""
    is_eos = np.asarray(rows) == eos_id
    width = is_eos.shape[-1]
    last = width - 1 - np.argmax(is_eos[..., ::-1], axis=-1)
    return ((np.arange(width) <= last[..., None]) & is_eos.any(-1, keepdims=True)).astype(np.int32)


def token_table(tokenizer: Any, texts: Sequence[str], max_tokens: int, desc: str | None = None,
                chunk: int = 4096) -> np.ndarray:
    """`encode_texts` of every text, written chunk by chunk into one zero-padded [N, width] table (width: the
    longest row), uint16 when the vocabulary fits, else int32."""
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    table = np.zeros((len(texts), max_tokens), dtype)
    width = 1
    starts = range(0, len(texts), chunk)
    if desc:
        starts = track(starts, total=len(texts), desc=desc, rows_per_item=chunk)
    for start in starts:
        for i, ids in enumerate(encode_texts(tokenizer, texts[start:start + chunk], max_tokens), start):
            table[i, :len(ids)] = ids
            width = max(width, len(ids))
    return table[:, :width]


def cached_token_table(tokenizer: Any, texts: Sequence[str], max_tokens: int, *, source_file: str,
                       tokenizer_dir: str, cache_dir: str | None, desc: str | None = None) -> np.ndarray:
    """`token_table(tokenizer, texts, max_tokens)`, memory-mapped from `cache_dir` when a run has cached it for
    the same `source_file` (the file `texts` were read from: path, size, modification time), tokenizer and
    token budget; else built and, with a `cache_dir`, cached (atomically) for the next run."""
    if cache_dir is None:
        return token_table(tokenizer, texts, max_tokens, desc=desc)
    stat = os.stat(source_file)
    key = json.dumps([os.path.abspath(source_file), stat.st_size, stat.st_mtime_ns, os.path.abspath(tokenizer_dir),
                      len(tokenizer), max_tokens])
    path = os.path.join(cache_dir, f"passage_tokens-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy")
    if os.path.exists(path):
        table = np.load(path, mmap_mode="r")
        if len(table) != len(texts):
            raise ValueError(f"{path}: {len(table)} cached passages, but {source_file} has {len(texts)}; "
                             "delete the cache file")
        return table
    table = token_table(tokenizer, texts, max_tokens, desc=desc)
    os.makedirs(cache_dir, exist_ok=True)
    atomic_save_npy(path, table)
    return np.load(path, mmap_mode="r")
