"""Reusable Flax building blocks whose every parameter and block-boundary activation has logical axis names.

The blocks are family-agnostic: BERT uses them as-is, and T5 / Llama reuse the same attention (no bias,
grouped-query heads, additive position bias) so that sharding rules apply uniformly across families.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

# Additive logit bias for masked keys: large enough that exp() underflows to exactly 0 in float32, small
# enough that adding several masks (padding + causal) or a position bias never overflows to -inf.
MASK_VALUE = -1e9

BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length", "activation_heads", "activation_kv")

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # Hugging Face "gelu" is the exact erf form; "gelu_new" is the tanh approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation_fn(name: str) -> Callable[[Array], Array]:
    """Looks up an activation by its Hugging Face `hidden_act` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def constrain(x: Array, names: Sequence[str]) -> Array:
    """Logical sharding constraint; a no-op outside a mesh / axis-rules context."""
    return nn.with_logical_constraint(x, tuple(names))


def attention_bias_from_mask(mask: Array, dtype: DType = jnp.float32) -> Array:
    """(batch, kv_length) mask with 1 = attend into a (batch, 1, 1, kv_length) additive logit bias."""
    return jnp.where(mask[:, None, None, :].astype(bool), 0.0, MASK_VALUE).astype(dtype)


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
    1/sqrt(head_dim); T5 uses 1. Logits and softmax are computed in float32.
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

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array | None = None, bias: Array | None = None,
                 deterministic: bool = True, cache: str | None = None) -> Array:
        """`cache` selects incremental decoding (variables in the `cache` collection):

        - "self": keys/values of `inputs_q` are written into a (batch, max_length, kv_heads, head_dim) cache at
          its running index and attention reads the whole cache, so `bias` must mask positions not yet
          written. Initialising with `max_length` query positions sizes the cache; decoding then feeds one
          (or a few) positions per call.
        - "cross_fill": keys/values of `inputs_kv` (the encoder output) are computed once and stored.
        - "cross": the stored keys/values are used and `inputs_kv` is ignored (may be None).
        """
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}")
        groups = self.num_heads // kv_heads
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
        if cache == "cross_fill":
            self.put_variable("cache", "cross_key", k)
            self.put_variable("cache", "cross_value", v)
        elif cache == "self":
            k, v = self._update_self_cache(k, v)
        elif cache not in (None, "cross"):
            raise ValueError(f"cache must be None, 'self', 'cross_fill' or 'cross', got {cache!r}")
        q, k, v = (constrain(t, BATCH_LENGTH_HEADS_KV) for t in (q, k, v))

        batch, q_len = q.shape[:2]
        kv_len = k.shape[1]
        scale = self.scale if self.scale is not None else self.head_dim ** -0.5
        q = q.reshape(batch, q_len, kv_heads, groups, self.head_dim)
        logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32)
        logits = logits.reshape(batch, self.num_heads, q_len, kv_len) * scale
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
        probs = probs.reshape(batch, kv_heads, groups, q_len, kv_len)
        out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v.astype(self.dtype))
        out = constrain(out.reshape(batch, q_len, self.num_heads, self.head_dim), BATCH_LENGTH_HEADS_KV)
        return Dense(inputs_q.shape[-1], ("heads", "kv", "embed"), contract_dims=2, name="out", **dense)(out)

    def _update_self_cache(self, k: Array, v: Array) -> tuple[Array, Array]:
        """Writes this call's keys/values at the cache index and returns the full cache (see `__call__`)."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # the init call only sizes the cache
            return k, v
        start = (0, index.value, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k.astype(cached_key.value.dtype), start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v.astype(cached_value.value.dtype),
                                                          start)
        index.value = index.value + k.shape[1]
        return cached_key.value, cached_value.value
