"""What every BERT-family method builds first: tokenizer, encoder config, and (optionally) pretrained weights.

A method either trains from scratch (`encoder_config`) or starts from a local Hugging Face checkpoint
(`pretrained`). Either way the tokenizer gets the mention-marker tokens, and a pretrained embedding table is
grown to cover them (`grow_embedding_rows`), so retrievers and rerankers share one recipe.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from transformers import PreTrainedTokenizerBase

from kipjax.data.markers import ensure_marker_tokens
from kipjax.methods.base import Params
from kipjax.models import hf
from kipjax.models.bert import BertConfig
from kipjax.models.vocab import grow_embedding_rows
from kipjax.partitioning import fill_boxed

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class EncoderSetup:
    config: BertConfig
    tokenizer: PreTrainedTokenizerBase
    pretrained_params: Params | None  # unboxed Hugging Face weights, or None when training from scratch


def setup_encoder(owner: str, data_dir: str, tokenizer_dir: str | None, pretrained: str | None,
                  encoder_config: BertConfig | None, compute_dtype: str, remat: bool,
                  scan_layers: bool = False) -> EncoderSetup:
    """Loads the tokenizer (default: `pretrained`, else `data_dir/tokenizer`) and the encoder config/weights.

    `owner` names the configurable in error messages (e.g. 'HardNCERetrieval'). Use `scan_layers` with
    `remat`: XLA then recomputes one loop iteration at a time, whereas unrolled rematerialised layers may be
    scheduled early (a BERT-base K=64 step measured 12 GiB scanned vs 52 GiB unrolled, benchmarks/README.md).
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"{owner}.compute_dtype: expected one of {list(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    if pretrained is None and encoder_config is None:
        raise ValueError(f"{owner} needs `pretrained` (a Hugging Face directory) or `encoder_config`")
    tokenizer = ensure_marker_tokens(
        hf.load_tokenizer(tokenizer_dir or pretrained or os.path.join(data_dir, "tokenizer")))
    overrides = {"dtype": COMPUTE_DTYPES[compute_dtype], "remat": remat, "scan_layers": scan_layers}
    pretrained_params = None
    if pretrained is not None:
        encoder, pretrained_params = hf.load_pretrained(pretrained, **overrides)
        config = encoder.config
    else:
        config = dataclasses.replace(encoder_config, **overrides)
    if len(tokenizer) > config.vocab_size:  # marker tokens added to a pretrained vocabulary
        config = dataclasses.replace(config, vocab_size=len(tokenizer))
    return EncoderSetup(config, tokenizer, pretrained_params)


def with_pretrained_encoders(params: Params, loaded: Params, vocab_size: int,
                             encoder_names: Sequence[str]) -> Params:
    """Copies pretrained encoder weights into the boxed subtrees `encoder_names` of `params`, keeping the
    logical-axis boxes; the word-embedding table is first grown to `vocab_size` rows."""
    emb = loaded["embeddings"]["word_embeddings"]["embedding"]
    if emb.shape[0] < vocab_size:
        loaded = jax.tree.map(lambda x: x, loaded)  # a copy: the caller's tree stays as it was
        loaded["embeddings"]["word_embeddings"]["embedding"] = grow_embedding_rows(emb, vocab_size)
    params = dict(params)
    for name in encoder_names:
        if name in params:
            params[name] = fill_boxed(params[name], loaded)
    return params
