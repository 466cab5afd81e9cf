"""Llama 3 decoder in Flax linen, numerically equal to `transformers`' LlamaForCausalLM.

Pre-norm blocks of grouped-query self-attention with rotary position embeddings (including Llama 3.1's
`llama3` frequency scaling) and a SwiGLU MLP, RMSNorm throughout, optionally tied input/output embeddings.
Every parameter carries logical axes: heads and the MLP hidden dim are tensor-parallel, `embed` is fsdp.

Hooks for retrieval-augmented methods (ImpRAG reads a layer's query/key states and attends to passages
encoded elsewhere):

- `return_qk_layers=(i, ...)` returns, for each listed layer, its query states (batch, length, heads, head_dim)
  and key / value states (batch, length, kv_heads, head_dim) in `CausalLMOutput`: post-RoPE by default,
  before RoPE with `rotated_states=False` (position-free, as retrieval embeddings want them).
- `extra_kv={i: (keys, values, mask)}` lets layer `i` also attend to external (batch, M, kv_heads, head_dim)
  keys/values, as if they were a prefix: every query sees every extra key whose mask is 1 (no causality
  among them), in addition to its own causal context. Keys must already be rotated (e.g. another call's
  `key_states`). Feeding a prefix's own key/value states reproduces running prefix + suffix jointly (tested).
- `segment_ids` (batch, length) restricts a full pass' causal attention to tokens of the same segment (several
  texts in one row that must not read each other).
- `layer_range=(first, last)` runs only layers first..last (unscanned layers only): from the embeddings when
  first is 0, else from `hidden_states`, the residual stream entering layer `first`; when last is not the top
  layer the output has no logits and `last_hidden_state` is the residual stream leaving it (no final norm).
  A model split into layer groups (ImpRAG) runs each group this way on the same params.

Incremental decoding keeps per-layer key/value caches plus the slot bookkeeping (`DecodeSlots`) in the `cache`
collection: `prepare_cache(batch, max_length)` sizes them, `decode_step(ids, mask)` runs the next n positions
(a left-padded prompt first, then one token at a time). Cached decoding gives the full pass' logits (tested).
For beam search, `prefill_shared_prompt` prefills each prompt once and keeps its keys/values once per prompt
(`share_prompt_cache`): the beams' queries read them together (`layers.shared_prompt_attention`) and beam search
leaves them in place (`is_shared_prompt`), instead of reading and reordering a copy per beam at every step.

Parameter-efficient fine-tuning: with `lora_rank > 0` each projection named in `lora_targets` gets a low-rank
adapter (`layers.LoRADense`) in a `lora` sub-dict; `lora_trainable_mask` selects those params for the optimizer,
`merge_lora` folds them into the kernels (e.g. before `hf.save_pretrained`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct
from flax.core import FrozenDict

from kipjax.models import layers
from kipjax.models.dropout import Dropout

Array = jax.Array
ExtraKV = tuple[Array, Array, Array]  # keys, values: (batch, M, kv_heads, head_dim); mask: (batch, M), 1 = attend

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
CACHE_MODES = (None, "prepare", "step")
# Keys of a Hugging Face Llama config.json read under the same name (README lists them with the others read).
HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
             "tie_word_embeddings", "attention_bias", "attention_dropout", "mlp_bias", "initializer_range",
             "bos_token_id", "eos_token_id", "pad_token_id")
_REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_DEFAULT_ROPE_THETA = 10000.0  # transformers' default when a config.json names none


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama model (Hugging Face names) plus kipjax compute and LoRA options.

    `num_key_value_heads` and `head_dim` default to `num_attention_heads` and `hidden_size // num_attention_heads`.
    `rope_scaling` is None (plain RoPE) or a dict with `rope_type` 'llama3' and `factor`, `low_freq_factor`,
    `high_freq_factor`, `original_max_position_embeddings`; it is stored frozen (hashable).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = _DEFAULT_ROPE_THETA
    rope_scaling: Mapping[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2  # Llama 3 instruct checkpoints list several
    pad_token_id: int | None = None
    model_type: str = "llama"
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32
    remat: bool = False  # recompute each layer's activations in the backward pass
    scan_layers: bool = False  # one nn.scan over stacked layer params (leading axis `layers`)
    lora_rank: int = 0  # > 0: low-rank adapters on the `lora_targets` projections
    lora_alpha: float = 16.0  # adapter output scale is lora_alpha / lora_rank
    lora_targets: Sequence[str] = LORA_TARGETS

    def __post_init__(self) -> None:
        set_field = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if self.model_type != "llama":
            raise ValueError(f"model_type {self.model_type!r} is not 'llama'")
        if self.num_key_value_heads is None:
            set_field("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                                 f"num_attention_heads={self.num_attention_heads}; set head_dim")
            set_field("head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        scaling = _normalized_rope_scaling(self.rope_scaling, self.max_position_embeddings)
        set_field("rope_scaling", None if scaling is None else FrozenDict(scaling))
        layers.rope_inverse_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)  # validates
        if isinstance(self.eos_token_id, (list, tuple)):
            set_field("eos_token_id", tuple(self.eos_token_id))
        set_field("lora_targets", tuple(self.lora_targets))
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"lora_targets {unknown} are not projections; choose from {LORA_TARGETS}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = no adapters), got {self.lora_rank}")

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "LlamaConfig":
        """Builds a config from a Hugging Face `config.json` dict, old (`rope_theta` + `rope_scaling`) or
        transformers 5 (`rope_parameters`) style; keys that do not affect the model are ignored."""
        missing = [k for k in _REQUIRED_HF_FIELDS if k not in d]
        if missing:
            raise ValueError(f"config lacks required field(s) {missing}")
        layers.reject_unimplemented(d, {"hidden_act": "silu"})
        kwargs = {k: d[k] for k in HF_FIELDS if k in d and d[k] is not None}
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        kwargs["rope_theta"] = rope.pop("rope_theta", d.get("rope_theta") or _DEFAULT_ROPE_THETA)
        kwargs["rope_scaling"] = rope or None
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content that `transformers.AutoModelForCausalLM` reads back into this model."""
        d = {k: getattr(self, k) for k in HF_FIELDS}
        if isinstance(self.eos_token_id, tuple):
            d["eos_token_id"] = list(self.eos_token_id)
        d.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                 rope_scaling=None if self.rope_scaling is None else dict(self.rope_scaling))
        return d


# Model shapes and LoRA are gin knobs: `LlamaConfig.hidden_size = 64`, `LlamaConfig.lora_rank = 8`.
gin.external_configurable(LlamaConfig, module='kipjax.models.llama')


def _normalized_rope_scaling(scaling: Mapping[str, Any] | None, max_position_embeddings: int
                             ) -> dict[str, Any] | None:
    """None for plain RoPE; otherwise a dict keyed `rope_type` (old configs say `type`) with transformers' default
    for `original_max_position_embeddings` filled in."""
    if not scaling:
        return None
    scaling = dict(scaling)
    scaling.setdefault("rope_type", scaling.pop("type", "default"))
    scaling.pop("rope_theta", None)
    if scaling["rope_type"] == "default":
        return None
    if scaling["rope_type"] == "llama3":
        scaling.setdefault("original_max_position_embeddings", max_position_embeddings)
    return scaling


@struct.dataclass
class CausalLMOutput:
    logits: Array | None  # (batch, length, vocab), float32; None when `layer_range` stops below the top layer
    last_hidden_state: Array  # (batch, length, hidden), after the final norm (see `layer_range` otherwise)
    # layer -> states of this call's positions, for the layers in `return_qk_layers` (see `rotated_states`):
    query_states: dict[int, Array] | None = None  # (batch, length, heads, head_dim)
    key_states: dict[int, Array] | None = None  # (batch, length, kv_heads, head_dim)
    value_states: dict[int, Array] | None = None  # (batch, length, kv_heads, head_dim)


def default_positions(attention_mask: Array) -> Array:
    """Position ids that count only attended tokens (cumsum(mask) - 1, at least 0), so a left-padded row starts
    at 0 like an unpadded one; pads get some position but are never attended to."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0).astype(jnp.int32)


def _projection(cfg: LlamaConfig, target: str, features: int | tuple[int, int], kernel_axes: tuple[str, ...],
                name: str, use_bias: bool, contract_dims: int = 1) -> layers.LoRADense:
    return layers.LoRADense(
        features, kernel_axes, contract_dims=contract_dims, use_bias=use_bias, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, kernel_init=nn.initializers.normal(cfg.initializer_range),
        lora_rank=cfg.lora_rank if target in cfg.lora_targets else 0, lora_alpha=cfg.lora_alpha, name=name)


def _prepend_extra(k: Array, v: Array, bias: Array, extra: ExtraKV, heads_major_kv: bool
                   ) -> tuple[Array, Array, Array]:
    """Keys, values and bias with the external keys/values of `extra_kv` before the own ones, all visible."""
    extra_k, extra_v, extra_mask = extra
    extra_bias = jnp.broadcast_to(layers.attention_bias_from_mask(extra_mask),
                                  (bias.shape[0], 1, bias.shape[2], extra_k.shape[1]))
    if heads_major_kv:
        extra_k, extra_v = (layers.heads_major(t) for t in (extra_k, extra_v))
    length_axis = 2 if heads_major_kv else 1
    k = jnp.concatenate([extra_k.astype(k.dtype), k], axis=length_axis)
    v = jnp.concatenate([extra_v.astype(v.dtype), v], axis=length_axis)
    return k, v, jnp.concatenate([extra_bias, bias.astype(extra_bias.dtype)], axis=-1)


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE, an optional key/value cache and optional external keys/values."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array, positions: Array, bias: Array, extra: ExtraKV | None, cache: str | None,
                 cache_index: Array | None, deterministic: bool, rotated_states: bool = True
                 ) -> tuple[Array | None, tuple[Array, Array, Array] | None]:
        """Returns (output, (queries, keys, values) of `x`'s positions, queries and keys after RoPE unless
        `rotated_states` is False). `bias` (batch, 1, length, kv_length) masks the own keys (the whole cache
        under cache='step'); 'prepare' only sizes the cache from `x`."""
        cfg = self.config
        kv_heads, head_dim = cfg.num_key_value_heads, cfg.head_dim
        if cache == "prepare":
            shape = (x.shape[0], kv_heads, x.shape[1], head_dim)  # heads-major, as attention reads it
            self.variable("cache", "cached_key", jnp.zeros, shape, cfg.dtype)
            self.variable("cache", "cached_value", jnp.zeros, shape, cfg.dtype)
            return None, None
        head_axes = ("embed", "heads", "kv")
        bias_on = cfg.attention_bias
        q = _projection(cfg, "q", (cfg.num_attention_heads, head_dim), head_axes, "query", bias_on)(x)
        k = _projection(cfg, "k", (kv_heads, head_dim), head_axes, "key", bias_on)(x)
        v = _projection(cfg, "v", (kv_heads, head_dim), head_axes, "value", bias_on)(x)
        unrotated = (q, k, v)
        inv_freq = layers.rope_inverse_frequencies(head_dim, cfg.rope_theta, cfg.rope_scaling)
        q, k = (layers.apply_rope(t, positions, inv_freq) for t in (q, k))
        q, k, v = (layers.constrain(t, layers.BATCH_LENGTH_HEADS_KV) for t in (q, k, v))
        states = (q, k, v) if rotated_states else unrotated
        cached = cache == "step"
        prompt = None
        if cached:
            k, v = self._write_cache(*(layers.heads_major(t) for t in (k, v)), cache_index)
            if self.has_variable("cache", "prompt_key"):
                prompt = (self.get_variable("cache", "prompt_key"), self.get_variable("cache", "prompt_value"))
        if prompt is not None:
            if extra is not None:
                raise ValueError("extra_kv cannot be combined with a shared prompt cache (share_prompt_cache)")
            out = layers.shared_prompt_attention(q, *prompt, k, v, bias, head_dim ** -0.5, cfg.dtype)
        else:
            if extra is not None:
                k, v, bias = _prepend_extra(k, v, bias, extra, heads_major_kv=cached)
            out = layers.grouped_query_attention(
                q, k, v, bias, head_dim ** -0.5, cfg.dtype,
                lambda p: Dropout(cfg.attention_dropout)(p, deterministic=deterministic), heads_major_kv=cached)
        out = _projection(cfg, "o", x.shape[-1], ("heads", "kv", "embed"), "out", bias_on, contract_dims=2)(out)
        return out, states

    def _write_cache(self, k: Array, v: Array, index: Array) -> tuple[Array, Array]:
        if not self.has_variable("cache", "cached_key"):
            raise ValueError("cache='step' before the caches were prepared (Llama.prepare_cache)")
        return layers.write_cache(self.variable("cache", "cached_key"), self.variable("cache", "cached_value"), k, v,
                                  index)


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), hidden dim named `mlp` (tensor-parallel)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        size, use_bias = cfg.intermediate_size, cfg.mlp_bias
        h = jax.nn.silu(_projection(cfg, "gate", size, ("embed", "mlp"), "gate", use_bias)(x))
        h = h * _projection(cfg, "up", size, ("embed", "mlp"), "up", use_bias)(x)
        h = layers.constrain(h, layers.BATCH_LENGTH_MLP)
        return _projection(cfg, "down", cfg.hidden_size, ("mlp", "embed"), "down", use_bias)(h)


class LlamaBlock(nn.Module):
    """Pre-norm decoder layer. Returns (hidden, states or None) so the same module is an `nn.scan` body."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array, bias: Array | None, positions: Array | None, cache_index: Array | None,
                 extra: ExtraKV | None, deterministic: bool, cache: str | None, return_states: bool,
                 rotated_states: bool = True) -> tuple[Array, tuple[Array, Array, Array] | None]:
        cfg = self.config
        norm = dict(epsilon=cfg.rms_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        attention = LlamaAttention(cfg, name="attention")
        if cache == "prepare":
            attention(x, positions, bias, None, cache, cache_index, deterministic)
            return x, None
        h, states = attention(layers.RMSNorm(name="attention_norm", **norm)(x), positions, bias, extra, cache,
                              cache_index, deterministic, rotated_states)
        x = x + h
        x = x + LlamaMLP(cfg, name="mlp")(layers.RMSNorm(name="mlp_norm", **norm)(x))
        return layers.constrain(x, layers.BATCH_LENGTH_EMBED), states if return_states else None


class DecodeSlots(nn.Module):
    """Cache bookkeeping of incremental decoding: the next cache slot (shared by the batch), which slots hold
    attended tokens, and each row's next position id (rows of a left-padded batch differ)."""

    @nn.compact
    def __call__(self, attention_mask: Array, positions: Array | None, cache: str,
                 max_length: int | None) -> tuple[Array | None, Array | None, Array | None]:
        """'prepare': creates the state for `attention_mask.shape[0]` rows and `max_length` slots.
        'step': returns (positions, bias (batch, 1, n, max_length), first slot) of the n new tokens and advances;
        with a shared prompt (`share_prompt_cache`) the bias covers the prompt's slots first."""
        batch, n = attention_mask.shape
        if cache == "prepare":
            self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
            self.variable("cache", "key_mask", jnp.zeros, (batch, max_length), jnp.int32)
            self.variable("cache", "next_position", jnp.zeros, (batch,), jnp.int32)
            return None, None, None
        if not self.has_variable("cache", "index"):
            raise ValueError("cache='step' before the caches were prepared (Llama.prepare_cache)")
        index, key_mask = self.variable("cache", "index"), self.variable("cache", "key_mask")
        next_position = self.variable("cache", "next_position")
        mask = attention_mask.astype(jnp.int32)
        if positions is None:
            positions = jnp.maximum(next_position.value[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)
        start = index.value
        key_mask.value = jax.lax.dynamic_update_slice(key_mask.value, mask, (0, start))
        next_position.value = jnp.maximum(next_position.value, jnp.max(jnp.where(mask > 0, positions + 1, 0), axis=1))
        index.value = start + n
        query_slots = start + jnp.arange(n)
        visible = jnp.arange(key_mask.value.shape[1])[None, :] <= query_slots[:, None]
        visible = visible[None] & (key_mask.value[:, None, :] > 0)
        if self.has_variable("cache", "prompt_mask"):  # every prompt slot precedes every own slot
            prompt_mask = self.get_variable("cache", "prompt_mask") > 0
            prompt_visible = jnp.repeat(prompt_mask, batch // prompt_mask.shape[0], axis=0)[:, None, :]
            visible = jnp.concatenate([jnp.broadcast_to(prompt_visible, (batch, n, prompt_mask.shape[1])), visible],
                                      axis=-1)
        return positions, jnp.where(visible, 0.0, layers.MASK_VALUE)[:, None], start


def full_pass_bias(attention_mask: Array, segment_ids: Array | None = None) -> Array:
    """(batch, 1, length, length): causal, masked keys hidden, and (with `segment_ids`) other segments hidden."""
    length = attention_mask.shape[1]
    causal = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
    visible = causal[None] & attention_mask[:, None, :].astype(bool)
    if segment_ids is not None:
        visible = visible & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return jnp.where(visible, 0.0, layers.MASK_VALUE)[:, None]


def _stacked_extra(extra_kv: Mapping[int, ExtraKV], num_layers: int) -> ExtraKV:
    """Per-layer extra keys/values stacked on a leading layer axis for the scanned layers; layers without any
    get zeros with an all-zero mask (which attends to nothing, so they are unaffected)."""
    shapes = {tuple(jnp.shape(t) for t in kv) for kv in extra_kv.values()}
    if len(shapes) != 1:
        raise ValueError(f"with scan_layers, every layer's extra_kv must have the same shapes, got {sorted(shapes)}")
    template = next(iter(extra_kv.values()))
    return tuple(jnp.stack([extra_kv[i][j] if i in extra_kv else jnp.zeros_like(template[j])
                            for i in range(num_layers)]) for j in range(3))


class Llama(nn.Module):
    """`__call__(input_ids, attention_mask, ...)` -> CausalLMOutput (see the module docstring)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, input_ids: Array | None, attention_mask: Array | None = None, positions: Array | None = None,
                 deterministic: bool = True, cache: str | None = None, max_length: int | None = None,
                 extra_kv: Mapping[int, ExtraKV] | None = None, return_qk_layers: Sequence[int] = (),
                 rotated_states: bool = True, segment_ids: Array | None = None,
                 layer_range: tuple[int, int] | None = None, hidden_states: Array | None = None
                 ) -> CausalLMOutput | None:
        """Logits of (batch, length) `input_ids`.

        `attention_mask` (1 = token, 0 = pad; left or right padding) defaults to all ones; `positions` default to
        `default_positions(attention_mask)`, continued across calls under cache='step'. `cache`: None for a full
        pass; 'prepare' only sizes the caches for `input_ids.shape[0]` rows and `max_length` (default
        `input_ids.shape[1]`) positions and returns None (run through `apply(..., mutable=['cache'])`); 'step'
        feeds the next positions at the running cache slot. `extra_kv` / `return_qk_layers` / `rotated_states` /
        `segment_ids` / `layer_range` / `hidden_states`: see the module docstring.
        """
        cfg = self.config
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        first, last = self._checked_range(layer_range, cache, segment_ids, hidden_states)
        extra_kv = dict(extra_kv or {})
        return_qk_layers = tuple(return_qk_layers)
        bad = sorted(i for i in (*extra_kv, *return_qk_layers) if not first <= i <= last)
        if bad:
            raise ValueError(f"layer indices {bad} are out of range for layers {first}..{last}")
        if attention_mask is None:
            rows = input_ids if hidden_states is None else hidden_states[..., 0]
            attention_mask = jnp.ones(rows.shape, jnp.int32)
        embed = layers.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                             embedding_init=nn.initializers.normal(cfg.initializer_range), name="embed_tokens")

        cache_index = None
        if cache is None:
            positions = default_positions(attention_mask) if positions is None else positions
            bias = full_pass_bias(attention_mask, segment_ids)
            x = embed(input_ids) if hidden_states is None else hidden_states.astype(cfg.dtype)
        elif cache == "prepare":
            max_length = input_ids.shape[1] if max_length is None else max_length
            DecodeSlots(name="decode_slots")(attention_mask, None, cache, max_length)
            bias = None
            x = jnp.zeros((input_ids.shape[0], max_length, cfg.hidden_size), cfg.dtype)
        else:
            positions, bias, cache_index = DecodeSlots(name="decode_slots")(attention_mask, positions, cache, None)
            x = embed(input_ids)
        x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)

        block_cls = LlamaBlock
        # Remat only for a full pass (decoding has no backward pass). Static argnums: 6 is `deterministic`
        # (0 is the module), 7 `cache`, 8 whether to return states, 9 whether they are rotated.
        if cfg.remat and cache is None:
            block_cls = nn.remat(LlamaBlock, static_argnums=(6, 7, 8, 9), prevent_cse=not cfg.scan_layers)
        states: dict[int, tuple[Array, Array, Array]] = {}
        if cfg.scan_layers:
            stack = nn.scan(block_cls, variable_axes={"params": 0, "cache": 1},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast,
                                     nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            extra = _stacked_extra(extra_kv, cfg.num_hidden_layers) if extra_kv else None
            x, stacked = stack(cfg, name="layers")(x, bias, positions, cache_index, extra, deterministic, cache,
                                                   bool(return_qk_layers), rotated_states)
            states = {i: jax.tree_util.tree_map(lambda s: s[i], stacked) for i in return_qk_layers}
        else:
            for i in range(first, last + 1):
                x, layer_states = block_cls(cfg, name=f"layer_{i}")(x, bias, positions, cache_index, extra_kv.get(i),
                                                                     deterministic, cache, i in return_qk_layers,
                                                                     rotated_states)
                if layer_states is not None:
                    states[i] = layer_states
        if cache == "prepare":
            return None

        logits = None
        if last == cfg.num_hidden_layers - 1:
            x = layers.RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
            logits = self._logits(embed, x)
        if not return_qk_layers:
            return CausalLMOutput(logits=logits, last_hidden_state=x)
        return CausalLMOutput(logits=logits, last_hidden_state=x,
                              query_states={i: s[0] for i, s in states.items()},
                              key_states={i: s[1] for i, s in states.items()},
                              value_states={i: s[2] for i, s in states.items()})

    def _checked_range(self, layer_range: tuple[int, int] | None, cache: str | None, segment_ids: Array | None,
                       hidden_states: Array | None) -> tuple[int, int]:
        """(first, last) layers to run, after checking the options that go with them."""
        cfg = self.config
        top = cfg.num_hidden_layers - 1
        first, last = (0, top) if layer_range is None else layer_range
        if not 0 <= first <= last <= top:
            raise ValueError(f"layer_range {layer_range} must satisfy 0 <= first <= last <= {top}")
        if (first, last) != (0, top) and cfg.scan_layers:
            raise ValueError("layer_range needs unscanned layers (scan_layers=False): scanned layers run all at once")
        if (first > 0) != (hidden_states is not None):
            raise ValueError("hidden_states (the residual stream entering layer `first`) must be given exactly "
                             f"when layer_range starts above layer 0, got layer_range {layer_range}")
        if cache is not None and (segment_ids is not None or first > 0):
            raise ValueError("segment_ids and layer_range starting above layer 0 are for full passes (cache=None)")
        return first, last

    def _logits(self, embed: layers.Embed, x: Array) -> Array:
        cfg = self.config
        if cfg.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = layers.Dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=cfg.dtype,
                                  param_dtype=cfg.param_dtype,
                                  kernel_init=nn.initializers.normal(cfg.initializer_range), name="lm_head")(x)
        return layers.constrain(logits.astype(jnp.float32),
                                ("activation_batch", "activation_length", "activation_vocab"))

    def prepare_cache(self, batch_size: int, max_length: int) -> None:
        """Run as `model.apply({'params': p}, batch, max_length, method=Llama.prepare_cache, mutable=['cache'])`:
        returns (None, {'cache': ...}) with empty caches for `max_length` positions. No model compute is done.
        Size it for prompt + new tokens: writing past `max_length` is not detected (slices clamp)."""
        return self(jnp.zeros((batch_size, max_length), jnp.int32), cache="prepare")

    def decode_step(self, input_ids: Array, attention_mask: Array | None = None, positions: Array | None = None,
                    extra_kv: Mapping[int, ExtraKV] | None = None,
                    return_qk_layers: Sequence[int] = ()) -> CausalLMOutput:
        """Output for the next n = `input_ids.shape[1]` positions (a padded prompt, or one token per row),
        reading and extending the caches (run with `mutable=['cache']`). Every row advances n cache slots;
        slots whose `attention_mask` is 0 are never attended to and do not advance that row's positions."""
        return self(input_ids, attention_mask, positions, cache="step", extra_kv=extra_kv,
                    return_qk_layers=return_qk_layers)


def lora_trainable_mask(params: Any) -> Any:
    """A pytree like `params` with True at the LoRA adapter params (inside `lora` sub-dicts), False elsewhere.

    A fine-tuning method freezes the base model by routing updates through the mask, e.g.

        mask = lora_trainable_mask(params)
        tx = optax.multi_transform({True: make_optimizer(schedule), False: optax.set_to_zero()}, mask)

    (`optax.masked(inner, mask)` alone is not enough: it passes the gradients of unmasked leaves through as
    updates.) With `set_to_zero` the frozen params get exactly zero updates and no optimizer state.
    Boxed (logical-axis annotated) and unboxed trees both work.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: layers.is_lora_path(path), params)


def merge_lora(model: Llama, params: Any) -> tuple[Llama, Any]:
    """Folds every adapter into its kernel (W + A B * alpha / rank): returns the model without adapters and its
    unboxed params, which give the same logits and export with `hf.save_pretrained`."""
    cfg = model.config
    scale = cfg.lora_alpha / max(cfg.lora_rank, 1)

    def low_rank_product(a: Array, b: Array) -> Array:
        return jnp.tensordot(a, b, axes=1)

    product = jax.vmap(low_rank_product) if cfg.scan_layers else low_rank_product

    def merge(tree: Any) -> Any:
        if not isinstance(tree, Mapping):
            return tree
        out = {k: merge(v) for k, v in tree.items() if k != layers.LORA}
        if layers.LORA in tree:
            adapter = tree[layers.LORA]
            delta = product(adapter["a"].astype(jnp.float32), adapter["b"].astype(jnp.float32)) * scale
            out["kernel"] = (tree["kernel"].astype(jnp.float32) + delta).astype(tree["kernel"].dtype)
        return out

    return Llama(dataclasses.replace(cfg, lora_rank=0)), merge(nn.unbox(params))


def share_prompt_cache(cache: Mapping[str, Any], beam_size: int, max_new: int) -> dict[str, Any]:
    """A prefilled cache (`prepare_cache` sized to the prompts) as a beam-search cache of batch x `beam_size`
    rows whose beams share their prompt: its keys/values and mask stay once per prompt under `prompt_*` names,
    and every row gets `max_new` empty slots of its own, positions continuing from its prompt."""
    def convert(tree: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, x in tree.items():
            if isinstance(x, Mapping):
                out[name] = convert(x)
            elif name in ("cached_key", "cached_value"):  # (batch, [layers,] kv_heads, length, head_dim)
                out["prompt_" + name.removeprefix("cached_")] = x
                out[name] = jnp.zeros((x.shape[0] * beam_size, *x.shape[1:-2], max_new, x.shape[-1]), x.dtype)
            elif name == "key_mask":
                out["prompt_mask"] = x
                out[name] = jnp.zeros((x.shape[0] * beam_size, max_new), x.dtype)
            elif name == "index":
                out[name] = jnp.zeros_like(x)
            elif name == "next_position":
                out[name] = jnp.repeat(x, beam_size, axis=0)
            else:
                raise ValueError(f"share_prompt_cache: unexpected cache entry {name!r}")
        return out

    return convert(cache)


def is_shared_prompt(path: tuple) -> bool:
    """Beam search's `beam_invariant_cache` for `share_prompt_cache`: the prompt entries, once per prompt."""
    return str(getattr(path[-1], "key", "")).startswith("prompt_")


def prefill_shared_prompt(model: Llama, params: Any, prompts: Array, prompt_mask: Array, beam_size: int,
                          max_new: int) -> dict[str, Any]:
    """Prefills each left-padded prompt once and returns `share_prompt_cache`'s cache for beam search over
    `max_new` steps (pass `beam_invariant_cache=is_shared_prompt`). Traceable."""
    _, state = model.apply({"params": params}, prompts.shape[0], prompts.shape[1], method=Llama.prepare_cache,
                           mutable=["cache"])
    _, state = model.apply({"params": params, "cache": state["cache"]}, prompts, prompt_mask,
                           method=Llama.decode_step, mutable=["cache"])  # its logits are unused (compiled away)
    return share_prompt_cache(state["cache"], beam_size, max_new)
