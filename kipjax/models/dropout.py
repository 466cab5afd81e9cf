"""Dropout with `flax.linen.Dropout`'s masks, bit for bit, drawn without XLA:CPU's slow threefry loop.

`flax.linen.Dropout` draws its mask with `jax.random.bernoulli`: per activation, one threefry2x32 hash of the
activation's flat index, a float32 uniform from its bits, and a comparison with the keep probability. On CPU,
JAX lowers threefry as a rolled loop of five iterations over whole arrays (to keep compile times short), so
every iteration writes and re-reads the full counter arrays from memory; a BERT train step spent a quarter of
its time there (benchmarks/README.md, "Dropout"). Here the same 20 rounds are written out as plain integer
ops, which XLA fuses with the comparison and the select into one vectorised loop, on every backend.

The counters are the flat index (iota), as in JAX's partitionable threefry (`jax_threefry_partitionable`, the
default), so masks do not depend on the sharding, and equal `jax.random.bernoulli`'s: a model keeps its
random stream, exact resume and sharded = single-device. Keys that are not threefry keys, threefry's older
non-partitionable counters, and arrays of 2**32 elements or more (whose flat index needs a second word) go
through `jax.random.bernoulli` itself.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = 0x1BD11BDA  # Threefry's key-schedule constant
_FLOAT32_MANTISSA_BITS = 23


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al., 2011), unrolled: the hash `jax.random` uses, as one fusion."""
    keys = (k1, k2, k1 ^ k2 ^ jnp.uint32(_KEY_PARITY))
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for injection in range(1, 6):
        for rotation in _ROTATIONS[(injection - 1) % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, rotation) ^ x1
        x1 = x1 + keys[injection % 3]
        x2 = x2 + keys[(injection + 1) % 3] + jnp.uint32(injection)
    return x1, x2


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 [shape]: each element's row-major flat index (the array has fewer than 2**32 elements)."""
    index = jnp.zeros(shape, jnp.uint32)
    for axis in range(len(shape)):
        stride = math.prod(shape[axis + 1:])
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    return index


def _raw_threefry_key(key: jax.Array) -> jax.Array | None:
    """The two key words of a threefry key (raw uint32[2] or typed), None for keys of other PRNGs."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key) if str(jax.random.key_impl(key)) == "threefry2x32" else None
    return key if key.shape == (2,) and key.dtype == jnp.uint32 else None


def bernoulli(key: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
    """`jax.random.bernoulli(key, p, shape)` for a float32 `p`, bit for bit."""
    words = _raw_threefry_key(key)
    if (words is None or not jax.config.jax_threefry_partitionable or not shape
            or math.prod(shape) >= 2 ** 32):
        return jax.random.bernoulli(key, p, shape)
    bits1, bits2 = threefry2x32(words[0], words[1], jnp.zeros(shape, jnp.uint32), _flat_index(shape))
    mantissa = (bits1 ^ bits2) >> jnp.uint32(32 - _FLOAT32_MANTISSA_BITS)
    one = np.array(1.0, np.float32).view(np.uint32)
    uniform = jax.lax.bitcast_convert_type(mantissa | jnp.uint32(one), jnp.float32) - jnp.float32(1.0)
    return uniform < jnp.float32(p)


class Dropout(nn.Module):
    """`flax.linen.Dropout(rate)(x, deterministic)`, the same outputs, with `bernoulli`'s fused mask."""
    rate: float

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool) -> jax.Array:
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        mask = bernoulli(self.make_rng("dropout"), keep_prob, inputs.shape)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
