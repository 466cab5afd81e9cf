"""The choice every generative method (seq2seq coreference, LMRC stage 2) makes first: a local Hugging Face
checkpoint to fine-tune, or a config to train from scratch with a tokenizer named separately."""
from __future__ import annotations

from typing import Any


def check_model_source(owner: str, family: str, pretrained: str | None, model_config: Any,
                       tokenizer_dir: str | None) -> None:
    """ValueError naming `owner` unless exactly one of `pretrained` and `model_config` is set, and a
    from-scratch run names its tokenizer (a checkpoint directory brings its own)."""
    if (pretrained is None) == (model_config is None):
        raise ValueError(f"{owner}: set exactly one of `pretrained` (a Hugging Face {family} directory) and "
                         f"`model_config` (a {family}Config to train from scratch)")
    if tokenizer_dir is None and pretrained is None:
        raise ValueError(f"{owner}: training from scratch needs `tokenizer_dir`")
