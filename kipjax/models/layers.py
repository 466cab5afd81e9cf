"""Reusable Flax building blocks whose every parameter and block-boundary activation has logical axis names.

The blocks are family-agnostic: BERT uses them as-is, T5 reuses the same attention (no bias, additive position
bias) and Llama its grouped-query core with rotary embeddings and low-rank adapters, so that sharding rules apply
uniformly across families.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from kipjax.models.dropout import Dropout

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

# Additive logit bias for masked keys: large enough that exp() underflows to exactly 0 in float32, small
# enough that adding several masks (padding + causal) or a position bias never overflows to -inf.
MASK_VALUE = -1e9

BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
# Decoding caches keep keys/values heads-major, the layout attention reads, so no step transposes a whole cache.
BATCH_HEADS_LENGTH_KV = ("activation_batch", "activation_heads", "activation_length", "activation_kv")

# Name of the sub-dict that holds a projection's low-rank adapter (`LoRADense`): the params a parameter-efficient
# fine-tune trains, and that pretrained checkpoints never contain.
LORA = "lora"
# Logical name of the adapter rank dim. No default rule names it, so adapters are replicated (they are tiny).
LORA_RANK_AXIS = "lora_rank"
ROPE_TYPES = ("default", "llama3")

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # Hugging Face "gelu" is the exact erf form; "gelu_new" is the tanh approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,  # Llama's SwiGLU gate
}


def activation_fn(name: str) -> Callable[[Array], Array]:
    """Looks up an activation by its Hugging Face `hidden_act` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def reject_unimplemented(hf_config: Mapping[str, Any], required: Mapping[str, Any]) -> None:
    """Raises ValueError for a config.json key whose value needs model code kipjax does not have (e.g. a BERT
    saved as a decoder), rather than loading a model that silently computes something else."""
    for key, value in required.items():
        if key in hf_config and hf_config[key] is not None and hf_config[key] != value:
            raise ValueError(f"{key}={hf_config[key]!r} is not implemented (kipjax supports only {key}={value!r})")


def constrain(x: Array, names: Sequence[str]) -> Array:
    """Logical sharding constraint; a no-op outside a mesh / axis-rules context."""
    return nn.with_logical_constraint(x, tuple(names))


def attention_bias_from_mask(mask: Array, dtype: DType = jnp.float32) -> Array:
    """(batch, kv_length) mask with 1 = attend into a (batch, 1, 1, kv_length) additive logit bias."""
    return jnp.where(mask[:, None, None, :].astype(bool), 0.0, MASK_VALUE).astype(dtype)


def _query_rows_per_kv_head(q: Array, kv_heads: int) -> Array:
    """(batch, q_length, heads, head_dim) queries -> (batch, kv_heads, groups x q_length, head_dim): one row axis
    per kv head, ordered (group, position). XLA:CPU runs dots with size-1 free axes (q_length 1 when decoding,
    groups 1 without GQA) several times slower than the same dot with those axes merged."""
    batch, q_len, num_heads, head_dim = q.shape
    if num_heads % kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {kv_heads} key/value heads")
    groups = num_heads // kv_heads
    q = jnp.transpose(q.reshape(batch, q_len, kv_heads, groups, head_dim), (0, 2, 3, 1, 4))
    return q.reshape(batch, kv_heads, groups * q_len, head_dim)


def _heads_from_query_rows(out: Array, q_len: int) -> Array:
    """The inverse of `_query_rows_per_kv_head`: (batch, q_length, heads, head_dim), sharding-constrained."""
    batch, kv_heads, rows, head_dim = out.shape
    groups = rows // q_len
    out = jnp.transpose(out.reshape(batch, kv_heads, groups, q_len, head_dim), (0, 3, 1, 2, 4))
    return constrain(out.reshape(batch, q_len, kv_heads * groups, head_dim), BATCH_LENGTH_HEADS_KV)


def grouped_query_attention(q: Array, k: Array, v: Array, bias: Array | None, scale: float,
                            dtype: DType = jnp.float32, dropout: Callable[[Array], Array] | None = None,
                            heads_major_kv: bool = False) -> Array:
    """softmax(q k^T * scale + bias) v over (batch, length, heads, head_dim) states; logits and softmax in float32.

    `k` / `v` may have fewer heads than `q` (grouped-query attention): query head `h` reads kv head
    `h // (heads // kv_heads)`, as Hugging Face's `repeat_kv` arranges them. With `heads_major_kv` they are
    (batch, kv_heads, kv_length, head_dim), as decoding caches store them. `bias` broadcasts to
    (batch, heads, q_length, kv_length); `dropout`, if given, maps the probabilities. Returns (batch, q_length,
    heads, head_dim).
    """
    batch, q_len, num_heads, _ = q.shape
    kv_heads, kv_len = (k.shape[1], k.shape[2]) if heads_major_kv else (k.shape[2], k.shape[1])
    kv = "bhkd" if heads_major_kv else "bkhd"
    q = _query_rows_per_kv_head(q, kv_heads)
    rows = q.shape[2]
    logits = jnp.einsum(f"bhmd,{kv}->bhmk", q, k, preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, num_heads, q_len, kv_len) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    if dropout is not None:
        probs = dropout(probs)
    out = jnp.einsum(f"bhmk,{kv}->bhmd", probs.reshape(batch, kv_heads, rows, kv_len), v.astype(dtype))
    return _heads_from_query_rows(out, q_len)


def shared_prompt_attention(q: Array, prompt_k: Array, prompt_v: Array, k: Array, v: Array, bias: Array,
                            scale: float, dtype: DType = jnp.float32) -> Array:
    """`grouped_query_attention` over a prompt's keys/values shared by consecutive query rows, then each row's own.

    Beam search runs batch x beams rows whose beams share one prompt. Keeping the prompt's heads-major
    (batch, kv_heads, prompt_length, head_dim) keys/values once per batch item instead of once per row reads them
    once per step for all beams, as one dot with the beams on its row axis, and beam search never reorders them.
    `q` is (batch x beams, q_length, heads, head_dim), rows b*beams ... b*beams+beams-1 being item b's; `k` / `v`
    are the rows' own heads-major keys/values; `bias` broadcasts to (rows, heads, q_length, prompt_length +
    own length), the prompt's keys first. One softmax spans both, so this equals attention over the prompt's
    keys/values repeated for every row and joined to the row's own. Returns (rows, q_length, heads, head_dim).
    """
    rows, q_len, num_heads, _ = q.shape
    batch, kv_heads, prompt_len, _ = prompt_k.shape
    if rows % batch:
        raise ValueError(f"{rows} query rows are not a multiple of {batch} prompts")
    beams = rows // batch
    q = _query_rows_per_kv_head(q, kv_heads)
    per_head = q.shape[2]  # a row's queries of one kv head

    def to_items(x: Array) -> Array:  # (rows, kv_heads, per_head, n) -> (batch, kv_heads, beams x per_head, n)
        x = jnp.swapaxes(x.reshape(batch, beams, kv_heads, per_head, x.shape[-1]), 1, 2)
        return x.reshape(batch, kv_heads, beams * per_head, x.shape[-1])

    def to_rows(x: Array) -> Array:  # the inverse of `to_items`
        x = jnp.swapaxes(x.reshape(batch, kv_heads, beams, per_head, x.shape[-1]), 1, 2)
        return x.reshape(rows, kv_heads, per_head, x.shape[-1])

    shared = jnp.einsum("bhmd,bhkd->bhmk", to_items(q), prompt_k, preferred_element_type=jnp.float32)
    own = jnp.einsum("bhmd,bhkd->bhmk", q, k, preferred_element_type=jnp.float32)
    logits = jnp.concatenate([to_rows(shared), own], axis=-1)
    kv_len = logits.shape[-1]
    logits = logits.reshape(rows, num_heads, q_len, kv_len) * scale + bias.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype).reshape(rows, kv_heads, per_head, kv_len)
    out = to_rows(jnp.einsum("bhmk,bhkd->bhmd", to_items(probs[..., :prompt_len]), prompt_v.astype(dtype)))
    out = out + jnp.einsum("bhmk,bhkd->bhmd", probs[..., prompt_len:], v.astype(dtype))
    return _heads_from_query_rows(out, q_len)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """The (head_dim // 2,) float32 inverse frequencies of rotary position embeddings, computed as `transformers`
    does: theta^(-2i / head_dim), and for `scaling['rope_type'] == 'llama3'` (Llama 3.1 and later) wavelengths above
    `original_max_position_embeddings / low_freq_factor` slowed down by `factor`, those below
    `... / high_freq_factor` kept, and a smooth interpolation between the two (`_compute_llama3_parameters`)."""
    inv_freq = np.float32(1.0) / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32)
                                                        / np.float32(head_dim)))
    rope_type = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {ROPE_TYPES}")
    if rope_type == "default":
        return inv_freq
    factor, low, high = (np.float32(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old_context = np.float32(scaling["original_max_position_embeddings"])
    wavelen = np.float32(2 * np.pi) / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotates (batch, length, heads, head_dim) `x` by its (batch, length) positions, in float32.

    Hugging Face's half-split layout: dims i and i + head_dim/2 form a pair rotated by position * inv_freq[i].
    """
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class Dense(nn.Module):
    """Linear map contracting the last `contract_dims` input dims into `features` (one or more output dims).

    `kernel_axes` names the kernel's dims (contracted input dims first), so a head-shaped projection such as
    (embed, heads, kv) needs no reshapes and shards over heads directly. The bias carries the output names.
    """

    features: int | Sequence[int]
    kernel_axes: Sequence[str]
    contract_dims: int = 1
    use_bias: bool = True
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        n_in = self.contract_dims
        if len(self.kernel_axes) != n_in + len(features):
            raise ValueError(f"kernel_axes {tuple(self.kernel_axes)} must name {n_in} input and "
                             f"{len(features)} output dims")
        kernel_shape = tuple(x.shape[-n_in:]) + features
        init = self.kernel_init or nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal",
            in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, len(kernel_shape))))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.kernel_axes)),
                            kernel_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   tuple(self.kernel_axes[n_in:])),
                              features, self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        x_dims = tuple(range(x.ndim - n_in, x.ndim))
        y = jax.lax.dot_general(x, kernel, ((x_dims, tuple(range(n_in))), ((), ())))
        return y + bias if bias is not None else y


class LowRankAdapter(nn.Module):
    """The LoRA update (x A) B * alpha / rank of a projection shaped like `Dense(features, kernel_axes, contract_dims)`.

    A (contracted input dims..., rank) starts normal (fan-in scaled), B (rank, output dims...) at zero, so a fresh
    adapter adds exactly nothing. Both carry the kernel's logical names plus `LORA_RANK_AXIS`.
    """

    features: int | Sequence[int]
    kernel_axes: Sequence[str]
    rank: int
    alpha: float
    contract_dims: int = 1
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        n_in = self.contract_dims
        a_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=tuple(range(n_in)),
                                                  out_axis=(n_in,))
        a = self.param("a", nn.with_logical_partitioning(a_init, (*self.kernel_axes[:n_in], LORA_RANK_AXIS)),
                       (*x.shape[-n_in:], self.rank), self.param_dtype)
        b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         (LORA_RANK_AXIS, *self.kernel_axes[n_in:])),
                       (self.rank, *features), self.param_dtype)
        x, a, b = nn.dtypes.promote_dtype(x, a, b, dtype=self.dtype)
        x_dims = tuple(range(x.ndim - n_in, x.ndim))
        h = jax.lax.dot_general(x, a, ((x_dims, tuple(range(n_in))), ((), ())))
        return jnp.tensordot(h, b, axes=1) * (self.alpha / self.rank)


class LoRADense(Dense):
    """`Dense` plus, when `lora_rank` > 0, a `LowRankAdapter` in the sub-dict `LORA` beside `kernel`.

    With `lora_rank` 0 it is `Dense` exactly (same params, same output), so one module serves the base model and
    its parameter-efficient fine-tune, and pretrained kernels load into either.
    """

    lora_rank: int = 0
    lora_alpha: float = 16.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = super().__call__(x)
        if not self.lora_rank:
            return y
        return y + LowRankAdapter(self.features, self.kernel_axes, self.lora_rank, self.lora_alpha,
                                  self.contract_dims, self.dtype, self.param_dtype, name=LORA)(x)


def is_lora_path(path: Sequence[Any]) -> bool:
    """Whether a param path (strings, or jax tree-path keys) lies inside a low-rank adapter sub-dict."""
    return any(getattr(k, "key", k) == LORA for k in path)


class Embed(nn.Module):
    """Lookup table; `axes` names (rows, features), e.g. (vocab, embed) or (position, embed)."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=0.02)

    def setup(self) -> None:
        self.embedding = self.param("embedding", nn.with_logical_partitioning(self.embedding_init, self.axes),
                                    (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        """Logits of `x` against every row: the tied output projection of T5 v1.0-style language models."""
        return jnp.einsum("...e,ve->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with statistics in float32 (two-pass variance, as PyTorch computes it)."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
                           features, self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
                          features, self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm (T5's LayerNorm, Llama's RMSNorm): scale only, no mean subtraction, float32 statistics."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class MLP(nn.Module):
    """Position-wise feed-forward: `wo(act(wi(x)))`, hidden dim named `mlp` (tensor-parallel)."""

    intermediate_size: int
    activation: str = "gelu"
    use_bias: bool = True
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=self.kernel_init)
        h = Dense(self.intermediate_size, kernel_axes=("embed", "mlp"), name="wi", **dense)(x)
        h = constrain(activation_fn(self.activation)(h), BATCH_LENGTH_MLP)
        return Dense(x.shape[-1], kernel_axes=("mlp", "embed"), name="wo", **dense)(h)


class MultiHeadAttention(nn.Module):
    """Dot-product attention with separate q/k/v projections shaped (embed, heads, kv).

    Keys and values may have fewer heads than queries (grouped-query attention, `num_kv_heads`); query head
    `h` reads kv head `h // (num_heads // num_kv_heads)`, as in Hugging Face's `repeat_kv`. `bias` is added to
    the (batch, heads, q_length, kv_length) logits and carries masks and position biases alike, so one
    module serves encoders (padding), decoders (causal) and T5 (relative position bias). `scale` defaults to
    1/sqrt(head_dim); T5 uses 1. Logits and softmax are computed in float32. With `return_weights` the call
    returns (output, attention probabilities [batch, heads, q_length, kv_length], before dropout), e.g. for
    ATLOP's localized context pooling.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    use_bias: bool = True
    dropout_rate: float = 0.0
    scale: float | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Initializer | None = None
    return_weights: bool = False

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array | None = None, bias: Array | None = None,
                 deterministic: bool = True, cache: str | None = None) -> Array | tuple[Array, Array]:
        """`cache` selects incremental decoding (variables in the `cache` collection):

        - "self": keys/values of `inputs_q` are written into a (batch, kv_heads, max_length, head_dim) cache at
          its running index and attention reads the whole cache, so `bias` must mask positions not yet
          written. Initialising with `max_length` query positions sizes the cache; decoding then feeds one
          (or a few) positions per call.
        - "cross_fill": keys/values of `inputs_kv` (the encoder output) are computed once and stored.
        - "cross": the stored keys/values are used and `inputs_kv` is ignored (may be None).
        Caches are heads-major (`BATCH_HEADS_LENGTH_KV`), the layout attention reads.
        """
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}")
        dense = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=self.kernel_init)
        head_axes = ("embed", "heads", "kv")
        q = Dense((self.num_heads, self.head_dim), head_axes, name="query", **dense)(inputs_q)
        key_proj = Dense((kv_heads, self.head_dim), head_axes, name="key", **dense)
        value_proj = Dense((kv_heads, self.head_dim), head_axes, name="value", **dense)
        if cache == "cross":
            k = self.get_variable("cache", "cross_key")
            v = self.get_variable("cache", "cross_value")
            if k is None:
                raise ValueError("cache='cross' before the cross-attention cache was filled (cache='cross_fill')")
        else:
            inputs_kv = inputs_q if inputs_kv is None else inputs_kv
            k, v = key_proj(inputs_kv), value_proj(inputs_kv)
        if cache not in (None, "self", "cross_fill", "cross"):
            raise ValueError(f"cache must be None, 'self', 'cross_fill' or 'cross', got {cache!r}")
        if cache in ("self", "cross_fill"):
            k, v = (heads_major(t) for t in (k, v))
        if cache == "cross_fill":
            self.put_variable("cache", "cross_key", k)
            self.put_variable("cache", "cross_value", v)
        elif cache == "self":
            k, v = self._update_self_cache(k, v)
        kv_names = BATCH_LENGTH_HEADS_KV if cache is None else BATCH_HEADS_LENGTH_KV
        q = constrain(q, BATCH_LENGTH_HEADS_KV)
        k, v = (constrain(t, kv_names) for t in (k, v))
        scale = self.scale if self.scale is not None else self.head_dim ** -0.5
        weights: list[Array] = []

        def dropout(probs: Array) -> Array:
            weights.append(probs)
            return Dropout(self.dropout_rate)(probs, deterministic=deterministic)

        out = grouped_query_attention(q, k, v, bias, scale, self.dtype, dropout, heads_major_kv=cache is not None)
        out = Dense(inputs_q.shape[-1], ("heads", "kv", "embed"), contract_dims=2, name="out", **dense)(out)
        return (out, weights[0]) if self.return_weights else out

    def _update_self_cache(self, k: Array, v: Array) -> tuple[Array, Array]:
        """Writes this call's keys/values at the cache index and returns the full cache (see `__call__`)."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # the init call only sizes the cache
            return k, v
        caches = write_cache(cached_key, cached_value, k, v, index.value)
        index.value = index.value + k.shape[2]
        return caches


def write_cache(cached_key: Any, cached_value: Any, k: Array, v: Array, index: Array) -> tuple[Array, Array]:
    """Writes heads-major `k` / `v` into the cache variables from length position `index`; returns the caches."""
    start = (0, 0, index, 0)
    for variable, new in ((cached_key, k), (cached_value, v)):
        variable.value = jax.lax.dynamic_update_slice(variable.value, new.astype(variable.value.dtype), start)
    return cached_key.value, cached_value.value


def heads_major(states: Array) -> Array:
    """(batch, length, heads, head_dim) -> (batch, heads, length, head_dim), the layout of decoding caches."""
    return jnp.swapaxes(states, 1, 2)
