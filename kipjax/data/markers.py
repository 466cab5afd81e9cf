"""Mention-boundary and title-separator tokens in any tokenizer, pretrained vocabularies included."""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from kipjax.data.tokenizer import MARKER_TOKENS


def ensure_marker_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Adds the markers as special tokens where missing (a pretrained BERT vocabulary lacks them).

    Added tokens get ids at the end of the vocabulary; the caller grows the embedding table to `len(tokenizer)`.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in MARKER_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer
