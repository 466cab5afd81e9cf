"""The coreference symbols as tokens of a T5 vocabulary, and embedding rows for the ones a checkpoint lacks.

Initialisation of new rows (documented choice): each new token's input embedding row, and its LM-head column
when the head is untied, is set to the mean of the pretrained rows. Pretrained T5 tables have spare rows past
the tokenizer (32128 rows for 32100 pieces), so added tokens may land on existing but never-trained rows; those
are overwritten with the mean too rather than kept as they are.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from kipjax.data.markers import ensure_special_tokens
from kipjax.methods.coref.linearize import Symbols
from kipjax.models.t5 import T5Config
from kipjax.models.vocab import grow_embedding_rows

SPEAKER_START, SPEAKER_END = "<speaker>", "</speaker>"  # around a speaker's name inserted into the text
FIXED_SYMBOLS = dict(mention_start="<m>", mention_end="</m>", separator="|", copy="<c>", new="<new>",
                     sentence_start="<sentence>", sentence_end="</sentence>")
_DIGITS = re.compile(r"^(\u2581)?[0-9]+$")  # a SentencePiece digit piece, with or without the word marker


def cluster_end_token(label: int) -> str:
    return f"</m_{label}>"


def add_coref_tokens(tokenizer: PreTrainedTokenizerBase, max_clusters: int = 0) -> Symbols[int]:
    """Adds the symbols (and `</m_0> .. </m_{max_clusters-1}>` for integer-free runs), and the speaker markers, as
    special tokens where missing; returns the symbols as ids, cluster numbers written and read through the
    tokenizer."""
    ensure_special_tokens(tokenizer, [*FIXED_SYMBOLS.values(), *(cluster_end_token(k) for k in range(max_clusters)),
                                      SPEAKER_START, SPEAKER_END])
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in FIXED_SYMBOLS.items()}
    ends = [tokenizer.convert_tokens_to_ids(cluster_end_token(k)) for k in range(max_clusters)]
    end_index = {token_id: k for k, token_id in enumerate(ends)}

    def decode_int(token_ids: Sequence[int]) -> int | None:
        # Any run of digit pieces reads as one number ("1", "2" -> 12), so every identity that the decoding
        # constraint allows parses, however the pieces happen to be spaced.
        text = "".join(tokenizer.decode(list(token_ids)).split())
        return int(text) if text.isdigit() else None

    return Symbols(**ids, eos=tokenizer.eos_token_id, cluster_end=lambda k: ends[k],
                   cluster_index=end_index.get,
                   encode_int=lambda k: tokenizer.encode(str(k), add_special_tokens=False),
                   decode_int=decode_int)


def speaker_marker_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Ids of `<speaker>` and `</speaker>` (after `add_coref_tokens`)."""
    start, end = tokenizer.convert_tokens_to_ids([SPEAKER_START, SPEAKER_END])
    return start, end


def integer_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the pieces made only of digits: what a cluster number may be written with (the constraint's U)."""
    return sorted(i for piece, i in tokenizer.get_vocab().items() if _DIGITS.match(piece))


def init_new_token_rows(params: dict[str, Any], config: T5Config, first_new_id: int,
                        vocab_size: int) -> tuple[dict[str, Any], T5Config]:
    """Rows `first_new_id..` of the T5 tables (grown to `vocab_size` if smaller) set to the mean of the rows
    before it; `first_new_id` is the tokenizer's length before `add_coref_tokens`."""
    shared = np.asarray(params["shared"]["embedding"])
    if not 1 <= first_new_id <= shared.shape[0]:
        raise ValueError(f"first_new_id {first_new_id} must be in 1..{shared.shape[0]} (the embedding's rows)")
    size = max(vocab_size, shared.shape[0])
    params = {**params, "shared": {"embedding": grow_embedding_rows(shared[:first_new_id], size)}}
    if "lm_head" in params:
        kernel = np.asarray(params["lm_head"]["kernel"])  # [d_model, vocab]
        params["lm_head"] = {"kernel": grow_embedding_rows(kernel.T[:first_new_id], size).T}
    return params, dataclasses.replace(config, vocab_size=size)
