"""Special tokens kipjax adds to any tokenizer (mention markers, coreference symbols), pretrained vocabularies
included."""
from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedTokenizerBase

from kipjax.data.tokenizer import MARKER_TOKENS


def ensure_special_tokens(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> PreTrainedTokenizerBase:
    """Adds `tokens` as special tokens where missing (a pretrained vocabulary lacks kipjax's symbols).

    Added tokens get ids at the end of the vocabulary; the caller grows the embedding table to `len(tokenizer)`.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


def ensure_marker_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The mention-boundary and title-separator markers (see `ensure_special_tokens`)."""
    return ensure_special_tokens(tokenizer, MARKER_TOKENS)
