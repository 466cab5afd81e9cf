"""T5 encoder-decoder (T5 v1.0, v1.1, T0, FLAN-T5) in Flax linen, numerically equal to `transformers`' T5.

The two T5 generations differ only in configuration: v1.0 uses a ReLU MLP and ties the LM head to the input
embedding (scaling the decoder output by d_model^-1/2 first); v1.1 / T0 / FLAN-T5 use a gated-GELU MLP and an
untied head. Attention has no biases and no 1/sqrt(d) scaling; positions enter only as a learned bias per
relative-position bucket and head, owned by the first layer of each stack and shared by the others.

Incremental decoding keeps per-layer caches in the `cache` collection: `init_cache` sizes them, `fill_cache`
stores the encoder's keys/values once, and `decode_step` runs one target position at a time. Decoding
through the cache gives the same logits as a full forward pass (tested).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from kipjax.models import layers
from kipjax.models.dropout import Dropout

Array = jax.Array

# Keys of a Hugging Face T5 config.json that kipjax reads under the same name (README lists them).
HF_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
             "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
             "layer_norm_epsilon", "feed_forward_proj", "tie_word_embeddings", "scale_decoder_outputs",
             "pad_token_id", "eos_token_id", "decoder_start_token_id")
# Keys whose other values would need model code kipjax does not have.
_HF_REQUIRED_VALUES = {"is_decoder": False}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of a T5-family model (Hugging Face names) plus kipjax compute options."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    num_decoder_layers: int | None = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "ACT" or "gated-ACT", ACT one of layers.ACTIVATIONS
    tie_word_embeddings: bool = True  # the LM head is the input embedding (no separate `lm_head` weight)
    # Scale the decoder output by d_model^-1/2 before the LM head (T5 v1.0); None = as tie_word_embeddings,
    # the rule checkpoints without the key were trained under.
    scale_decoder_outputs: bool | None = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    model_type: str = "t5"
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass

    def __post_init__(self) -> None:
        parts = self.feed_forward_proj.split("-")
        if not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")) or parts[-1] not in layers.ACTIVATIONS:
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not implemented; expected 'ACT' or "
                             f"'gated-ACT' with ACT one of {sorted(layers.ACTIVATIONS)}")
        if self.model_type != "t5":
            raise ValueError(f"model_type {self.model_type!r} is not 't5'")
        if self.scale_decoder_outputs is None:
            object.__setattr__(self, "scale_decoder_outputs", self.tie_word_embeddings)  # frozen dataclass

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """The MLP activation by its Hugging Face name, as transformers parses `feed_forward_proj`: the part
        after "gated-", except that "gated-gelu" (T5 v1.1) means the tanh approximation, "gelu_new"."""
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "T5Config":
        """Reads `config.json` as transformers 5 does: `scale_decoder_outputs` when present, else scaling iff
        `tie_word_embeddings` is not false (the Hub's T5 / T0 / FLAN-T5 files). Whether the head is tied is
        settled by the weights (`hf.t5_fit_to_weights`), since transformers 5 writes `tie_word_embeddings: true`
        for every T5 it saves."""
        layers.reject_unimplemented(d, _HF_REQUIRED_VALUES)
        kwargs = {k: d[k] for k in HF_FIELDS if k in d and d[k] is not None}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        kwargs.setdefault("scale_decoder_outputs", d.get("tie_word_embeddings") is not False)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in HF_FIELDS}
        d["num_decoder_layers"] = self.decoder_layers
        d.update(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                 dense_act_fn=self.activation, is_gated_act=self.is_gated)
        return d


# Model shapes are gin knobs: `T5Config.d_model = 256`, `Method.model_config = @T5Config()`.
gin.external_configurable(T5Config, module='kipjax.models.t5')


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """T5's bucketing of key_position - query_position: exact for small distances, logarithmic up to
    `max_distance`, one bucket beyond; the bidirectional (encoder) form spends half the buckets on each side."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 log as in the reference; the max() keeps log() finite where the small branch is taken anyway.
    large = max_exact + (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(distance.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """(1, heads, q_len, k_len) additive logits bias from a learned (buckets, heads) table."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        cfg = self.config
        table = self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("relpos_buckets", "heads")),
            (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.param_dtype)
        buckets = relative_position_bucket(key_positions[None, :] - query_positions[:, None], self.bidirectional,
                                           cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        return jnp.transpose(jnp.take(table, buckets, axis=0), (2, 0, 1))[None].astype(jnp.float32)


class DecoderPositions(nn.Module):
    """Query and key positions of a decoder call; under incremental decoding it owns the running index."""

    @nn.compact
    def __call__(self, length: int, cache: str | None, max_length: int | None) -> tuple[Array, Array]:
        if cache is None:
            return jnp.arange(length), jnp.arange(length)
        index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
        if cache == "prepare":
            return jnp.arange(length), jnp.arange(length)
        if max_length is None:
            raise ValueError("cache='step' needs max_length (the length the caches were prepared for)")
        query_positions = index.value + jnp.arange(length)
        index.value = index.value + length
        return query_positions, jnp.arange(max_length)


# T5's LayerNorm is the shared RMSNorm (re-exported: `t5.RMSNorm` predates `layers.RMSNorm`).
RMSNorm = layers.RMSNorm


class FeedForward(nn.Module):
    """`wo(act(wi(x)))`, or `wo(act(wi_0(x)) * wi_1(x))` for the gated kinds (v1.1 uses tanh-GELU)."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        dense = dict(use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     kernel_init=nn.initializers.normal(cfg.d_model ** -0.5))
        act = layers.activation_fn(cfg.activation)
        if cfg.is_gated:
            h = act(layers.Dense(cfg.d_ff, ("embed", "mlp"), name="wi_0", **dense)(x))
            h = h * layers.Dense(cfg.d_ff, ("embed", "mlp"), name="wi_1", **dense)(x)
        else:
            h = act(layers.Dense(cfg.d_ff, ("embed", "mlp"), name="wi", **dense)(x))
        h = layers.constrain(Dropout(cfg.dropout_rate)(h, deterministic=deterministic), layers.BATCH_LENGTH_MLP)
        return layers.Dense(cfg.d_model, ("mlp", "embed"), name="wo", **{
            **dense, "kernel_init": nn.initializers.normal(cfg.d_ff ** -0.5)})(h)


def _attention(cfg: T5Config, name: str) -> layers.MultiHeadAttention:
    return layers.MultiHeadAttention(
        num_heads=cfg.num_heads, head_dim=cfg.d_kv, use_bias=False, dropout_rate=cfg.dropout_rate, scale=1.0,
        dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nn.initializers.normal((cfg.d_model * cfg.d_kv) ** -0.5), name=name)


class EncoderBlock(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
        cfg = self.config
        norm = dict(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        dropout = Dropout(cfg.dropout_rate)
        h = _attention(cfg, "attention")(RMSNorm(name="attention_norm", **norm)(x), bias=bias,
                                         deterministic=deterministic)
        x = x + dropout(h, deterministic)
        h = FeedForward(cfg, name="mlp")(RMSNorm(name="mlp_norm", **norm)(x), deterministic)
        return layers.constrain(x + dropout(h, deterministic), layers.BATCH_LENGTH_EMBED)


class DecoderBlock(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, encoded: Array | None, self_bias: Array, cross_bias: Array,
                 deterministic: bool, cache: str | None) -> Array:
        """`cache`: None (full sequence), 'prepare' (size caches, store encoder keys/values) or 'step'."""
        cfg = self.config
        norm = dict(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        dropout = Dropout(cfg.dropout_rate)
        self_cache = None if cache is None else "self"
        cross_cache = {None: None, "prepare": "cross_fill", "step": "cross"}[cache]
        h = _attention(cfg, "self_attention")(RMSNorm(name="self_attention_norm", **norm)(x), bias=self_bias,
                                              deterministic=deterministic, cache=self_cache)
        x = x + dropout(h, deterministic)
        h = _attention(cfg, "cross_attention")(RMSNorm(name="cross_attention_norm", **norm)(x), encoded,
                                               bias=cross_bias, deterministic=deterministic, cache=cross_cache)
        x = x + dropout(h, deterministic)
        h = FeedForward(cfg, name="mlp")(RMSNorm(name="mlp_norm", **norm)(x), deterministic)
        return layers.constrain(x + dropout(h, deterministic), layers.BATCH_LENGTH_EMBED)


@struct.dataclass
class Seq2SeqOutput:
    logits: Array
    encoder_last_hidden_state: Array


def is_cross_attention_cache(path: tuple) -> bool:
    """Whether a `cache` leaf (by key path) holds encoder keys/values: the same for every beam of an input, so
    beam search need not reorder it (`decoding.beam_search(..., beam_invariant_cache=...)`)."""
    return getattr(path[-1], "key", path[-1]) in ("cross_key", "cross_value")


class T5(nn.Module):
    """`__call__(input_ids, attention_mask, decoder_input_ids)` -> Seq2SeqOutput with `logits`."""

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.shared = layers.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                   embedding_init=nn.initializers.normal(1.0))
        encoder_block = nn.remat(EncoderBlock, static_argnums=(3,)) if cfg.remat else EncoderBlock
        decoder_block = nn.remat(DecoderBlock, static_argnums=(5, 6)) if cfg.remat else DecoderBlock
        self.encoder_blocks = [encoder_block(cfg, name=f"encoder_layer_{i}") for i in range(cfg.num_layers)]
        self.decoder_blocks = [decoder_block(cfg, name=f"decoder_layer_{i}") for i in range(cfg.decoder_layers)]
        self.decoder_positions = DecoderPositions()
        self.encoder_position_bias = RelativePositionBias(cfg, bidirectional=True)
        self.decoder_position_bias = RelativePositionBias(cfg, bidirectional=False)
        norm = dict(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.encoder_norm = RMSNorm(**norm)
        self.decoder_norm = RMSNorm(**norm)
        self.dropout = Dropout(cfg.dropout_rate)
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.Dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=cfg.dtype,
                                        param_dtype=cfg.param_dtype,
                                        kernel_init=nn.initializers.normal(cfg.d_model ** -0.5))

    def encode(self, input_ids: Array, attention_mask: Array | None = None, deterministic: bool = True) -> Array:
        """(batch, src_len) ids -> (batch, src_len, d_model) encoder states."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        positions = jnp.arange(input_ids.shape[1])
        bias = self.encoder_position_bias(positions, positions) + layers.attention_bias_from_mask(attention_mask)
        x = self.dropout(self.shared(input_ids), deterministic=deterministic)
        for block in self.encoder_blocks:
            x = block(x, bias, deterministic)
        return self.dropout(self.encoder_norm(x), deterministic=deterministic)

    def decode(self, encoded: Array | None, attention_mask: Array, decoder_input_ids: Array,
               decoder_attention_mask: Array | None = None, deterministic: bool = True,
               cache: str | None = None, max_length: int | None = None) -> Array:
        """Decoder logits (batch, tgt_len, vocab).

        `cache`: None for a full (teacher-forced) pass; 'prepare' sizes the self-attention caches for
        `decoder_input_ids.shape[1]` positions and stores the encoder keys/values (run through
        `apply(..., mutable=['cache'])`); 'step' feeds the next position(s) at the running cache index, whose
        caches hold `max_length` positions.
        """
        if cache not in (None, "prepare", "step"):
            raise ValueError(f"cache must be None, 'prepare' or 'step', got {cache!r}")
        query_positions, key_positions = self.decoder_positions(decoder_input_ids.shape[1], cache, max_length)
        visible = key_positions[None, :] <= query_positions[:, None]
        self_bias = self.decoder_position_bias(query_positions, key_positions)
        self_bias = self_bias + jnp.where(visible, 0.0, layers.MASK_VALUE)[None, None]
        if decoder_attention_mask is not None and cache is None:
            self_bias = self_bias + layers.attention_bias_from_mask(decoder_attention_mask)
        cross_bias = layers.attention_bias_from_mask(attention_mask)
        x = self.dropout(self.shared(decoder_input_ids), deterministic=deterministic)
        for block in self.decoder_blocks:
            x = block(x, encoded, self_bias, cross_bias, deterministic, cache)
        x = self.dropout(self.decoder_norm(x), deterministic=deterministic)
        return self._logits(x)

    def _logits(self, x: Array) -> Array:
        cfg = self.config
        if cfg.scale_decoder_outputs:
            x = x * (cfg.d_model ** -0.5)
        if cfg.tie_word_embeddings:
            logits = self.shared.attend(x)
        else:
            logits = self.lm_head(x)
        return layers.constrain(logits.astype(jnp.float32), ("activation_batch", "activation_length",
                                                             "activation_vocab"))

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, decoder_input_ids: Array | None = None,
                 decoder_attention_mask: Array | None = None, deterministic: bool = True) -> Seq2SeqOutput:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if decoder_input_ids is None:
            decoder_input_ids = jnp.full((input_ids.shape[0], 1), self.config.decoder_start_token_id, jnp.int32)
        encoded = self.encode(input_ids, attention_mask, deterministic)
        logits = self.decode(encoded, attention_mask, decoder_input_ids, decoder_attention_mask, deterministic)
        return Seq2SeqOutput(logits=logits, encoder_last_hidden_state=encoded)

    def prepare_cache(self, encoded: Array, attention_mask: Array, max_length: int) -> Array:
        """Run as `model.apply({'params': p}, encoded, mask, max_length, method=T5.prepare_cache,
        mutable=['cache'])`: returns caches for `max_length` target positions holding `encoded`'s keys/values."""
        ids = jnp.zeros((encoded.shape[0], max_length), jnp.int32)
        return self.decode(encoded, attention_mask, ids, cache="prepare")

    def decode_step(self, decoder_input_ids: Array, attention_mask: Array, max_length: int) -> Array:
        """Logits (batch, n, vocab) of the next n positions, reading and extending the caches."""
        return self.decode(None, attention_mask, decoder_input_ids, cache="step", max_length=max_length)
