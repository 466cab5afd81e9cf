import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.extend.random import threefry2x32_p
from jax.sharding import NamedSharding, PartitionSpec

from kipjax import partitioning
from kipjax.models.dropout import Dropout, bernoulli, threefry2x32

# Random123's known-answer vectors for Threefry-2x32-20: (key, counter) -> output.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6b200159, 0x99ba4efe)),
    ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
    ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0)),
]


@pytest.mark.parametrize("key, counter, expected", KNOWN_ANSWERS)
def test_threefry_gives_random123s_known_answers(key, counter, expected):
    out = threefry2x32(*(jnp.uint32(v) for v in (*key, *counter)))
    assert tuple(int(v) for v in out) == expected


def test_threefry_equals_jaxs_primitive_on_random_words():
    words = jax.random.bits(jax.random.PRNGKey(0), (4, 1000), jnp.uint32)
    k1, k2 = words[0, 0], words[1, 0]
    ours = jax.jit(threefry2x32)(k1, k2, words[2], words[3])
    theirs = threefry2x32_p.bind(k1, k2, words[2], words[3])
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4, 9)])
@pytest.mark.parametrize("key", [jax.random.PRNGKey(5), jax.random.key(5), jax.random.key(5, impl="rbg")],
                         ids=["raw", "typed", "rbg"])
def test_bernoulli_equals_jax_random_bernoulli(shape, key):
    for p in (0.9, 0.5, 0.1):
        np.testing.assert_array_equal(jax.jit(bernoulli, static_argnums=(1, 2))(key, p, shape),
                                      jax.random.bernoulli(key, p, shape))


class _TwoDropouts(nn.Module):
    dropout: type

    @nn.compact
    def __call__(self, x, deterministic):
        return self.dropout(0.3)(self.dropout(0.1)(x, deterministic=deterministic) * 2, deterministic=deterministic)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_outputs_equal_flax_dropout_bit_for_bit(dtype):
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 32)).astype(dtype)
    rngs = {"dropout": jax.random.PRNGKey(2)}
    ours = _TwoDropouts(Dropout).apply({}, x, False, rngs=rngs)
    flax_out = _TwoDropouts(nn.Dropout).apply({}, x, False, rngs=rngs)
    assert ours.dtype == flax_out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(flax_out, np.float32))
    assert 0.55 < float(jnp.mean(ours != 0)) < 0.7  # kept: 0.9 * 0.7
    np.testing.assert_array_equal(_TwoDropouts(Dropout).apply({}, x, True), x * 2)


def test_rate_zero_and_one():
    x = jnp.ones((3, 4))
    rngs = {"dropout": jax.random.PRNGKey(0)}
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, False, rngs=rngs), x)
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, False, rngs=rngs), jnp.zeros_like(x))


def test_the_mask_is_one_fused_loop_where_jax_runs_threefry_as_a_while_loop():
    key, shape = jax.random.PRNGKey(0), (8, 64)
    ours = jax.jit(lambda k: bernoulli(k, 0.9, shape)).lower(key).compile().as_text()
    theirs = jax.jit(lambda k: jax.random.bernoulli(k, 0.9, shape)).lower(key).compile().as_text()
    if jax.default_backend() == "cpu":
        assert " while(" in theirs
    assert " while(" not in ours


def test_masks_do_not_depend_on_the_sharding():
    assert jax.device_count() == 8
    key, shape = jax.random.PRNGKey(3), (16, 4, 32)
    draw = lambda k: bernoulli(k, 0.9, shape)
    single = jax.jit(draw)(key)
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    for spec in (PartitionSpec("data", None, "tensor"), PartitionSpec(None, "tensor"),
                 PartitionSpec(("data", "tensor"))):
        sharded = jax.jit(draw, out_shardings=NamedSharding(mesh, spec))(key)
        np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
