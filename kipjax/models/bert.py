"""BERT-style bidirectional encoders: BERT, RoBERTa and the ELECTRA discriminator.

The three differ only in how position ids are derived (RoBERTa offsets them past the padding index), in a
projection from a narrower embedding (ELECTRA) and in whether a pooler exists, so one module covers them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from kipjax.models import layers
from kipjax.models.dropout import Dropout

Array = jax.Array

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "electra")
_HF_ARCHITECTURES = {"bert": "BertModel", "roberta": "RobertaModel", "electra": "ElectraModel"}
# Fields stored under the same name in a Hugging Face config.json (README lists them with the others read).
HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
             "type_vocab_size", "layer_norm_eps", "pad_token_id", "initializer_range")
_REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size")
# Keys whose other values would need model code kipjax does not have (a causal or cross-attending BERT).
_HF_REQUIRED_VALUES = {"is_decoder": False, "add_cross_attention": False, "position_embedding_type": "absolute"}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT / RoBERTa / ELECTRA encoder plus kipjax compute options."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    model_type: str = "bert"
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    embedding_size: int | None = None  # ELECTRA: narrower embeddings projected to hidden_size
    add_pooler: bool = True
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    remat: bool = False  # recompute each layer's activations in the backward pass
    scan_layers: bool = False  # one nn.scan over stacked layer params (leading axis `layers`)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {SUPPORTED_MODEL_TYPES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        layers.activation_fn(self.hidden_act)

    @property
    def embed_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
        """Builds a config from a Hugging Face `config.json` dict; keys that do not affect the encoder are ignored."""
        missing = [k for k in _REQUIRED_HF_FIELDS if k not in d]
        if missing:
            raise ValueError(f"config lacks required field(s) {missing}")
        layers.reject_unimplemented(d, _HF_REQUIRED_VALUES)
        model_type = d.get("model_type", "bert")
        kwargs = {k: d[k] for k in HF_FIELDS if k in d and d[k] is not None}
        if model_type == "electra":
            kwargs["embedding_size"] = d.get("embedding_size")
        return cls(model_type=model_type, add_pooler=model_type != "electra", **kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` content that `transformers.AutoModel` reads back into this encoder."""
        d: dict[str, Any] = {"model_type": self.model_type, "architectures": [_HF_ARCHITECTURES[self.model_type]]}
        d.update({k: getattr(self, k) for k in HF_FIELDS})
        d["position_embedding_type"] = "absolute"
        if self.model_type == "electra":
            d["embedding_size"] = self.embed_dim
        return d


# Encoder shapes are gin knobs: `BertConfig.hidden_size = 128`, `Method.encoder_config = @BertConfig()`.
gin.external_configurable(BertConfig, module='kipjax.models.bert')


@struct.dataclass
class EncoderOutput:
    last_hidden_state: Array  # (batch, length, hidden)
    pooler_output: Array | None = None  # (batch, hidden): tanh(dense(first token)); None without a pooler
    last_attention: Array | None = None  # (batch, heads, length, length): the last layer's attention, on request


def default_position_ids(config: BertConfig, input_ids: Array) -> Array:
    """0..L-1 for BERT/ELECTRA; RoBERTa counts non-pad tokens from pad_token_id + 1 and gives pads pad_token_id."""
    if config.model_type == "roberta":
        not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(not_pad, axis=1) * not_pad + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, position_ids: Array,
                 deterministic: bool) -> Array:
        cfg = self.config
        embed = dict(features=cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     embedding_init=nn.initializers.normal(cfg.initializer_range))
        x = (layers.Embed(cfg.vocab_size, axes=("vocab", "embed"), name="word_embeddings", **embed)(input_ids)
             + layers.Embed(cfg.max_position_embeddings, axes=("position", "embed"),
                            name="position_embeddings", **embed)(position_ids)
             + layers.Embed(cfg.type_vocab_size, axes=("type_vocab", "embed"),
                            name="token_type_embeddings", **embed)(token_type_ids))
        x = layers.LayerNorm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name="layer_norm")(x)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertLayer(nn.Module):
    """Post-LN transformer layer. Returns (hidden, attention probabilities if `return_attention` else None), so
    the same module is an `nn.scan` body."""

    config: BertConfig
    return_attention: bool = False

    @nn.compact
    def __call__(self, hidden: Array, attention_bias: Array, deterministic: bool) -> tuple[Array, Array | None]:
        cfg = self.config
        common = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      kernel_init=nn.initializers.normal(cfg.initializer_range))
        norm = dict(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        dropout = Dropout(cfg.hidden_dropout_prob)

        attn = layers.MultiHeadAttention(num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim,
                                         dropout_rate=cfg.attention_probs_dropout_prob, name="attention",
                                         return_weights=self.return_attention,
                                         **common)(hidden, bias=attention_bias, deterministic=deterministic)
        attn, weights = attn if self.return_attention else (attn, None)
        hidden = layers.LayerNorm(name="attention_norm", **norm)(hidden + dropout(attn, deterministic))
        hidden = layers.constrain(hidden, layers.BATCH_LENGTH_EMBED)
        mlp = layers.MLP(cfg.intermediate_size, cfg.hidden_act, name="mlp", **common)(hidden)
        hidden = layers.LayerNorm(name="output_norm", **norm)(hidden + dropout(mlp, deterministic))
        return layers.constrain(hidden, layers.BATCH_LENGTH_EMBED), weights


class BertEncoder(nn.Module):
    """Token ids -> contextual embeddings (and optionally the pooled first token)."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, position_ids: Array | None = None,
                 deterministic: bool = True, return_last_attention: bool = False) -> EncoderOutput:
        """With `return_last_attention`, also the last layer's attention probabilities (scanned layers then
        keep every layer's until the scan ends: memory for num_layers attention maps)."""
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = default_position_ids(cfg, input_ids)
        dense = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     kernel_init=nn.initializers.normal(cfg.initializer_range))

        hidden = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, position_ids, deterministic)
        if cfg.embed_dim != cfg.hidden_size:
            # A kernel cannot repeat a logical name, so the hidden side is named like an MLP input projection.
            hidden = layers.Dense(cfg.hidden_size, ("embed", "mlp"), name="embeddings_project", **dense)(hidden)
        hidden = layers.constrain(hidden, layers.BATCH_LENGTH_EMBED)
        bias = layers.attention_bias_from_mask(attention_mask)

        layer_cls = BertLayer
        if cfg.remat:  # argnum 3 is `deterministic` (0 is the module); CSE prevention is redundant under scan
            layer_cls = nn.remat(BertLayer, static_argnums=(3,), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            hidden, weights = stack(cfg, return_last_attention, name="layers")(hidden, bias, deterministic)
            last_attention = weights[-1] if return_last_attention else None
        else:
            for i in range(cfg.num_hidden_layers):
                last = return_last_attention and i == cfg.num_hidden_layers - 1
                hidden, last_attention = layer_cls(cfg, last, name=f"layer_{i}")(hidden, bias, deterministic)

        pooled = None
        if cfg.add_pooler:
            pooled = jnp.tanh(layers.Dense(cfg.hidden_size, ("embed", "mlp"), name="pooler", **dense)(hidden[:, 0]))
            pooled = layers.constrain(pooled, ("activation_batch", "activation_embed"))
        return EncoderOutput(last_hidden_state=hidden, pooler_output=pooled, last_attention=last_attention)
