"""TACO's text encoder: one shared T5 in the ST5-EncDec form, and the authors' optional scaled T5 init.

A query or passage is embedded by running the T5 encoder on its tokens, then the T5 decoder for one step from
the decoder start token (id 0 for every T5), and taking the decoder's last hidden state after its final layer
norm (and dropout, as transformers' `T5Stack` applies it), before any LM head: no pooling, no normalization
and no `d_model ** -0.5` output scaling (that scaling belongs to tied heads' logits, not to the hidden state).
This is transformers' `T5Model(..., decoder_input_ids=[[0]]).last_hidden_state[:, 0]`, which is what the
authors' `DenseModel.dense_encode` takes (WenzhengZhang/TACO, src/taco/modeling/dense_retrieval_model.py).
Queries and passages share the encoder; a query-passage score is the dot product of their embeddings.

`ST5EncDec` is `kipjax.models.t5.T5` with the LM head taken out, so its param tree is T5's (same names, same
logical-axis boxes) minus `lm_head`: an untied head is defined but never called, so `init` never creates it,
and `load_st5_encdec` drops the checkpoint's `lm_head` (T5 v1.1 / FLAN-T5 files carry one) so that the
loaded tree has exactly `init`'s structure (`partitioning.fill_boxed` needs that). A tied v1.0 head *is* the
shared embedding, which the embedding path uses as the input table only.

Dropout (`deterministic=False`, a 'dropout' rng) and `T5Config.remat` work as in T5. T5Config has no
`scan_layers`: T5's blocks are unrolled, so there is no such flag to honour (the loaders reject it by name).

Note on gradients: the decoder runs one position, so its self-attention softmax is over a single key and is
constant (= 1). The decoder self-attention query/key kernels and the decoder relative-position table therefore
get exactly zero gradient under this objective; every other parameter (encoder, decoder cross-attention,
self-attention value/out, MLPs, norms, shared embedding) is trained.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from flax.core import FrozenDict

from kipjax.models import hf, layers
from kipjax.models.t5 import T5

Array = jax.Array
Params = Any

# The authors' scaled T5-base init (fp16 training): HF tensor -> divisor, from
# WenzhengZhang/TACO scripts/scale_t5_weights.py lines 27-43 (per layer i of both stacks):
#   encoder.block.{i}.layer.0.SelfAttention.o.weight    /= 100
#   encoder.block.{i}.layer.1.DenseReluDense.wi.weight  /= 10
#   encoder.block.{i}.layer.1.DenseReluDense.wo.weight  /= 10
#   decoder.block.{i}.layer.1.EncDecAttention.o.weight  /= 100
#   decoder.block.{i}.layer.0.SelfAttention.o.weight    /= 100
#   decoder.block.{i}.layer.2.DenseReluDense.wi.weight  /= 10
#   decoder.block.{i}.layer.2.DenseReluDense.wo.weight  /= 10
#   shared.weight                                       /= 100
# In kipjax names (`hf.t5_weights`): the relative-position tables, layer norms, q/k/v projections and any
# untied `lm_head` are left as they are (the script edits `AutoModel`'s = T5Model's state dict, which has no
# LM head; t5-base's head is tied to `shared`, so it is scaled with it).
_SCALED_SUBLAYERS = {
    "encoder": {("attention", "out", "kernel"): 100.0,
                ("mlp", "wi", "kernel"): 10.0, ("mlp", "wo", "kernel"): 10.0},
    "decoder": {("self_attention", "out", "kernel"): 100.0, ("cross_attention", "out", "kernel"): 100.0,
                ("mlp", "wi", "kernel"): 10.0, ("mlp", "wo", "kernel"): 10.0},
}
_SHARED = ("shared", "embedding")
_SHARED_DIVISOR = 100.0
_LAYER = re.compile(r"(encoder|decoder)_layer_\d+")


class ST5EncDec(T5):
    """`__call__(input_ids, attention_mask=None, deterministic=True)` -> [batch, d_model] float32 embeddings.

    Same params as `T5(config)` without `lm_head`; `decode` returns the decoder's final hidden states
    [batch, tgt_len, d_model] (after the final norm and dropout) instead of logits.
    """

    def _logits(self, x: Array) -> Array:
        # The hidden state T5's head would read, untouched: no d_model^-1/2 scaling, no projection.
        return layers.constrain(x, layers.BATCH_LENGTH_EMBED)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None,  # type: ignore[override]
                 deterministic: bool = True) -> Array:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        encoded = self.encode(input_ids, attention_mask, deterministic)
        start = jnp.full((input_ids.shape[0], 1), self.config.decoder_start_token_id, jnp.int32)
        hidden = self.decode(encoded, attention_mask, start, deterministic=deterministic)
        return hidden[:, 0].astype(jnp.float32)


def without_lm_head(params: Params) -> Params:
    """`params` (a T5 tree, boxed or not) without the `lm_head` subtree the embedding path never reads."""
    out = {k: v for k, v in params.items() if k != "lm_head"}
    return FrozenDict(out) if isinstance(params, FrozenDict) else out


def load_st5_encdec(path: str | os.PathLike, *, dtype: Any = jnp.float32,
                    **config_overrides: Any) -> tuple[ST5EncDec, Params]:
    """A local Hugging Face T5 directory (t5-base layout, or v1.1 / FLAN-T5 with an untied head) as an
    `ST5EncDec` and its unboxed params, through `hf.load_pretrained` (so `remat=True`, `dropout_rate=...`
    and other T5Config fields can be overridden by keyword). The params have `ST5EncDec.init`'s structure."""
    model, params = hf.load_pretrained(path, dtype=dtype, **config_overrides)
    if not isinstance(model, T5):
        raise ValueError(f"{path}: TACO's ST5-EncDec encoder needs a T5 checkpoint, got {type(model).__name__}")
    return ST5EncDec(model.config), without_lm_head(params)


def save_st5_encdec(model: ST5EncDec, params: Params, path: str | os.PathLike) -> Any:
    """Writes the encoder as a Hugging Face T5 directory (atomically) whose `transformers.T5Model` gives the same
    embeddings (`decoder_input_ids=[[0]]`, `last_hidden_state[:, 0]`) and which `load_st5_encdec` reads back.
    There is no LM head to store, so the file says `tie_word_embeddings: true` even for a v1.1 encoder: load
    it as `T5Model` (an embedding model), not as a T5 for generation."""
    config = dataclasses.replace(model.config, tie_word_embeddings=True)
    return hf.save_pretrained(T5(config), without_lm_head(nn.unbox(params)), path)


def dot_scores(queries: Array, passages: Array) -> Array:
    """[Bq, d] x [Bp, d] -> [Bq, Bp] float32 dot products (TACO's relevance score)."""
    return jnp.einsum("qd,pd->qp", queries.astype(jnp.float32), passages.astype(jnp.float32))


def _divisor(path: tuple[str, ...]) -> float | None:
    if path == _SHARED:
        return _SHARED_DIVISOR
    match = _LAYER.fullmatch(path[0])
    return _SCALED_SUBLAYERS[match.group(1)].get(path[1:]) if match else None


def scaled_t5_init(params: Params) -> Params:
    """The authors' optional "scaled" T5 init for fp16 training (WenzhengZhang/TACO,
    scripts/scale_t5_weights.py, lines 27-43; their `setup_data.sh` writes it as `t5-base-scaled`).

    Divides, in every encoder and decoder layer, the attention output projections (`attention/out`; decoder
    `self_attention/out` and `cross_attention/out`) by 100 and the MLP `wi` and `wo` kernels by 10, and the
    shared embedding by 100 (so also a tied v1.0 LM head). Nothing else changes: q/k/v, norms, relative
    position tables and an untied `lm_head` keep their values. Works on kipjax's T5 / ST5EncDec param tree,
    boxed (the boxes and their axis names are kept) or unboxed; dtypes are kept. Run eagerly (it is a one-off
    on loaded weights), each division is IEEE-exact, as torch's `/=` in the script.

    The script is written for t5-base's ReLU MLP (`DenseReluDense.wi`); it has no rule for gated MLPs
    (`wi_0` / `wi_1`, T5 v1.1 / FLAN-T5), where it would fail on the missing key, so this raises ValueError.
    """
    flat = traverse_util.flatten_dict(params)
    if _SHARED not in flat or not any(_LAYER.fullmatch(p[0]) for p in flat):
        raise ValueError("scaled_t5_init expects a kipjax T5 param tree (`shared`, `encoder_layer_{i}`, ...)")
    gated = sorted("/".join(p) for p in flat if len(p) > 2 and p[1] == "mlp" and p[2] in ("wi_0", "wi_1"))
    if gated:
        raise ValueError(f"scaled_t5_init: the authors' scaling is defined for T5 v1.0's ReLU MLP (`wi`); "
                         f"this tree has a gated MLP ({gated[0]}, ...)")

    def scale(leaf: Any, divisor: float) -> Any:
        if isinstance(leaf, nn.Partitioned):
            return leaf.replace_boxed(scale(leaf.value, divisor))
        if isinstance(leaf, np.ndarray):
            return (leaf / np.asarray(divisor, leaf.dtype)).astype(leaf.dtype)
        # Divide by an array, not a scalar: XLA turns x / constant into x * (1 / constant), off by one ulp.
        return jnp.divide(leaf, jnp.full_like(leaf, divisor))

    out = {p: (leaf if (d := _divisor(p)) is None else scale(leaf, d)) for p, leaf in flat.items()}
    scaled = traverse_util.unflatten_dict(out)
    return FrozenDict(scaled) if isinstance(params, FrozenDict) else scaled
