"""TACO's ST5-EncDec encoder: parity with transformers' T5 decoder state, padding invariance, dropout / remat,
gradient flow under a dot-product NCE loss, and the authors' scaled T5 init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn
from flax import traverse_util

from kipjax.methods.taco.encoder import (ST5EncDec, dot_scores, load_st5_encdec, save_st5_encdec, scaled_t5_init,
                                         without_lm_head)
from kipjax.models import hf
from kipjax.models.t5 import T5Config
from kipjax.partitioning import fill_boxed
from torch_init import randomized, save_random_t5

TINY = dict(vocab_size=80, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
            dropout_rate=0.0)
STYLES = {
    "v1.0": dict(feed_forward_proj="relu"),  # ReLU MLP, head tied to `shared` (logits scaled by d_model^-1/2)
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),  # + its own lm_head.weight on disk
}
# Padded batch: 0 = pad (mask 0), 1 = eos. Row lengths 5, 12, 3.
IDS = np.array([[5, 9, 13, 7, 1, 0, 0, 0, 0, 0, 0, 0],
                [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1],
                [40, 41, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
MASK = (IDS != 0).astype(np.int64)
LENGTHS = MASK.sum(1)


def save_style(style: str, path, **overrides) -> None:
    """A random transformers T5 written as checkpoints of `style` are: v1.0 as transformers 5 saves it (tied),
    v1.1 in the Hub's FLAN-T5 layout (`tie_word_embeddings: false`, a separate `lm_head.weight`)."""
    save_random_t5(transformers.T5Config(**{**TINY, **overrides}, **STYLES[style]), path,
                   hub_untied_head=style == "v1.1")


def transformers_embeddings(path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference: transformers' decoder run one step from [[0]] on the encoder states of the directory's
    model; `last_hidden_state` is after the decoder's final layer norm (T5Stack.forward)."""
    model = transformers.T5Model.from_pretrained(path).eval()
    with torch.no_grad():
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        encoded = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        out = model.decoder(input_ids=torch.zeros((ids.shape[0], 1), dtype=torch.long),
                            encoder_hidden_states=encoded, encoder_attention_mask=mask)
    return out.last_hidden_state[:, 0].numpy()


@pytest.fixture(scope="module", params=sorted(STYLES))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"taco_t5_{request.param}")
    save_style(request.param, path)
    return request.param, path


def embed(model, params, ids=IDS, mask=MASK, **kwargs) -> np.ndarray:
    return np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), **kwargs))


def test_embeddings_match_the_transformers_decoder_state(checkpoint):
    style, path = checkpoint
    t5, t5_params = hf.load_pretrained(path)
    # v1.0's head scales by d_model^-1/2 (so parity shows the embedding does not); v1.1's file has its own head.
    assert (t5.config.tie_word_embeddings, t5.config.scale_decoder_outputs) == {
        "v1.0": (True, True), "v1.1": (False, False)}[style]
    assert ("lm_head" in t5_params) == (style == "v1.1")

    model, params = load_st5_encdec(path)
    assert isinstance(model, ST5EncDec) and "lm_head" not in params
    expected = transformers_embeddings(path, IDS, MASK)
    got = embed(model, params)
    assert got.shape == (IDS.shape[0], TINY["d_model"]) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    jitted = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(params, jnp.asarray(IDS), jnp.asarray(MASK))
    np.testing.assert_allclose(np.asarray(jitted), expected, atol=1e-4, rtol=0)
    # The full T5 tree (with an untied head) is accepted too: the head is simply never read.
    np.testing.assert_array_equal(embed(model, t5_params), got)


def test_a_saved_encoder_gives_transformers_the_same_embeddings(checkpoint, tmp_path):
    _, path = checkpoint
    model, params = load_st5_encdec(path)
    save_st5_encdec(model, params, tmp_path / "exported")
    np.testing.assert_allclose(transformers_embeddings(tmp_path / "exported", IDS, MASK),
                               transformers_embeddings(path, IDS, MASK), atol=1e-5, rtol=0)
    _, reloaded = load_st5_encdec(tmp_path / "exported")
    jax.tree.map(np.testing.assert_array_equal, reloaded, params)


def test_loaded_params_have_the_structure_of_init(checkpoint):
    _, path = checkpoint
    model, params = load_st5_encdec(path)
    boxed = model.init(jax.random.PRNGKey(0), jnp.asarray(IDS[:1]))["params"]
    assert "lm_head" not in boxed
    filled = fill_boxed(boxed, params)  # needs identical structures
    assert isinstance(filled["shared"]["embedding"], nn.Partitioned)
    np.testing.assert_array_equal(embed(model, nn.unbox(filled)), embed(model, params))


@pytest.mark.slow
def test_an_embedding_does_not_depend_on_the_rest_of_the_batch(checkpoint):
    _, path = checkpoint
    model, params = load_st5_encdec(path)
    full = embed(model, params)
    for i, n in enumerate(LENGTHS):
        alone = embed(model, params, IDS[i:i + 1, :n], MASK[i:i + 1, :n])
        np.testing.assert_allclose(full[i:i + 1], alone, atol=1e-5, rtol=0)
    # Longer neighbours (more padding for row 0), and junk ids under the padding, change nothing.
    longer = np.zeros((2, 20), np.int64)
    longer[0, :LENGTHS[0]] = IDS[0, :LENGTHS[0]]
    longer[0, LENGTHS[0]:] = np.arange(2, 2 + 20 - LENGTHS[0])
    longer[1] = np.arange(20, 40)
    longer_mask = np.zeros_like(longer)
    longer_mask[0, :LENGTHS[0]] = 1
    longer_mask[1] = 1
    np.testing.assert_allclose(embed(model, params, longer, longer_mask)[0], full[0], atol=1e-5, rtol=0)


def nce_loss(model, params, rng, deterministic=False):
    """Dot-product NCE: query i's positive is passage i (in-batch negatives), dropout on."""
    q_rng, p_rng = jax.random.split(rng)
    queries = model.apply({"params": params}, jnp.asarray(IDS), jnp.asarray(MASK), deterministic=deterministic,
                          rngs={"dropout": q_rng})
    passages = model.apply({"params": params}, jnp.asarray(IDS[::-1]), jnp.asarray(MASK[::-1]),
                           deterministic=deterministic, rngs={"dropout": p_rng})
    scores = dot_scores(queries, passages)
    return -jnp.mean(jax.nn.log_softmax(scores)[jnp.arange(3), jnp.arange(3)])


@pytest.mark.slow
def test_gradients_reach_encoder_and_decoder_in_an_nce_step(tmp_path):
    save_style("v1.0", tmp_path)
    model, params = load_st5_encdec(tmp_path, dropout_rate=0.1)
    loss, grads = jax.value_and_grad(lambda p: nce_loss(model, p, jax.random.PRNGKey(3)))(params)
    assert np.isfinite(float(loss))
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(grads).items()}
    # The decoder runs one position: its self-attention softmax is over one key, constant 1, so the decoder
    # self-attention query/key kernels and its relative-position table cannot get any gradient.
    structurally_zero = {f"decoder_layer_{i}/self_attention/{p}/kernel" for i in range(3) for p in ("query", "key")}
    structurally_zero.add("decoder_position_bias/embedding")
    zero = {name for name, g in flat.items() if not np.any(g)}
    assert zero == structurally_zero
    for stack in ("encoder", "decoder"):
        trained = [name for name in flat if name.startswith(stack) and name not in structurally_zero]
        assert trained and all(np.all(np.isfinite(flat[n])) and np.any(flat[n]) for n in trained)
    assert np.any(flat["shared/embedding"])


def test_dropout_is_driven_by_the_rng_and_off_when_deterministic(tmp_path):
    save_style("v1.1", tmp_path)
    model, params = load_st5_encdec(tmp_path, dropout_rate=0.3)
    clean = embed(model, params)
    np.testing.assert_array_equal(embed(model, params, deterministic=True, rngs={"dropout": jax.random.PRNGKey(0)}),
                                  clean)
    a = embed(model, params, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    b = embed(model, params, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    c = embed(model, params, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, clean) and not np.allclose(a, c)


@pytest.mark.slow
def test_remat_gives_the_same_embeddings_and_gradients(tmp_path):
    save_style("v1.0", tmp_path)
    plain_model, params = load_st5_encdec(tmp_path, dropout_rate=0.1)
    remat_model, remat_params = load_st5_encdec(tmp_path, dropout_rate=0.1, remat=True)
    assert remat_model.config.remat
    np.testing.assert_allclose(embed(remat_model, remat_params), embed(plain_model, params), atol=1e-6, rtol=0)
    rng = jax.random.PRNGKey(5)
    grads = jax.grad(lambda p: nce_loss(plain_model, p, rng))(params)
    remat_grads = jax.grad(lambda p: nce_loss(remat_model, p, rng))(remat_params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, rtol=1e-4),
                 grads, remat_grads)


def test_bfloat16_compute_still_returns_float32_embeddings(tmp_path):
    save_style("v1.0", tmp_path)
    model, params = load_st5_encdec(tmp_path, dtype=jnp.bfloat16)
    got = embed(model, params)
    assert got.dtype == np.float32 and got.shape == (3, TINY["d_model"])
    np.testing.assert_allclose(got, transformers_embeddings(tmp_path, IDS, MASK), atol=0.25, rtol=0.05)


def test_t5config_has_no_scan_layers_and_the_loader_says_so(tmp_path):
    save_style("v1.0", tmp_path)
    with pytest.raises(TypeError, match="scan_layers"):
        load_st5_encdec(tmp_path, scan_layers=True)


def test_dot_scores_are_plain_dot_products():
    q = np.random.RandomState(0).randn(2, 4).astype(np.float32)
    p = np.random.RandomState(1).randn(3, 4).astype(np.float32)
    np.testing.assert_allclose(np.asarray(dot_scores(jnp.asarray(q), jnp.asarray(p))), q @ p.T, rtol=1e-6)


# What scripts/scale_t5_weights.py (WenzhengZhang/TACO) divides, written out in kipjax names for the tiny
# v1.0 model (2 encoder, 3 decoder layers).
SCALED = {"shared/embedding": 100.0,
          **{f"encoder_layer_{i}/attention/out/kernel": 100.0 for i in range(2)},
          **{f"encoder_layer_{i}/mlp/{w}/kernel": 10.0 for i in range(2) for w in ("wi", "wo")},
          **{f"decoder_layer_{i}/{a}/out/kernel": 100.0 for i in range(3)
             for a in ("self_attention", "cross_attention")},
          **{f"decoder_layer_{i}/mlp/{w}/kernel": 10.0 for i in range(3) for w in ("wi", "wo")}}


def flat_named(tree):
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def test_scaled_init_divides_exactly_the_documented_weights(tmp_path):
    save_style("v1.0", tmp_path)
    _, params = load_st5_encdec(tmp_path)
    original = {k: np.asarray(v).copy() for k, v in flat_named(params).items()}
    scaled = flat_named(scaled_t5_init(params))
    assert set(scaled) == set(original) and set(SCALED) <= set(original)
    for name, before in original.items():
        after = np.asarray(scaled[name])
        assert after.dtype == before.dtype and after.shape == before.shape
        if name in SCALED:
            np.testing.assert_array_equal(after, before / np.float32(SCALED[name]), err_msg=name)
        else:
            np.testing.assert_array_equal(after, before, err_msg=name)
    # The input tree is left as it was.
    for name, value in flat_named(params).items():
        np.testing.assert_array_equal(np.asarray(value), original[name])


def test_scaled_init_equals_the_authors_script_applied_in_torch(tmp_path):
    """The script's edits of `AutoModel.from_pretrained(...).state_dict()` (a T5Model), replayed on a tiny
    random T5Model: loading the edited weights gives what `scaled_t5_init` makes of the original ones."""
    config = transformers.T5Config(**TINY, **STYLES["v1.0"])
    model = randomized(transformers.T5Model(config))
    model.save_pretrained(tmp_path / "original")
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(config.num_layers):
        state_dict[f"encoder.block.{i}.layer.0.SelfAttention.o.weight"] /= 100
        state_dict[f"encoder.block.{i}.layer.1.DenseReluDense.wi.weight"] /= 10
        state_dict[f"encoder.block.{i}.layer.1.DenseReluDense.wo.weight"] /= 10
    for i in range(config.num_decoder_layers):
        state_dict[f"decoder.block.{i}.layer.1.EncDecAttention.o.weight"] /= 100
        state_dict[f"decoder.block.{i}.layer.0.SelfAttention.o.weight"] /= 100
        state_dict[f"decoder.block.{i}.layer.2.DenseReluDense.wi.weight"] /= 10
        state_dict[f"decoder.block.{i}.layer.2.DenseReluDense.wo.weight"] /= 10
    state_dict["shared.weight"] /= 100
    (tmp_path / "scaled").mkdir()
    (tmp_path / "scaled" / "config.json").write_text((tmp_path / "original" / "config.json").read_text())
    torch.save(state_dict, tmp_path / "scaled" / "pytorch_model.bin")  # the script writes a torch file

    _, original = load_st5_encdec(tmp_path / "original")
    _, expected = load_st5_encdec(tmp_path / "scaled")
    got = scaled_t5_init(original)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), got, expected)


def test_scaled_init_keeps_logical_axis_boxes():
    model = ST5EncDec(T5Config(**TINY, feed_forward_proj="relu"))
    boxed = model.init(jax.random.PRNGKey(0), jnp.asarray(IDS[:1]))["params"]
    scaled = scaled_t5_init(boxed)
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    before = flat_named(boxed)
    after = flat_named(scaled)
    for name, box in before.items():
        assert type(after[name]) is type(box) and after[name].names == box.names, name
        divisor = SCALED.get(name, 1.0)
        np.testing.assert_array_equal(np.asarray(after[name].value), np.asarray(box.value) / np.float32(divisor))
    assert jax.tree.structure(scaled, is_leaf=is_box) == jax.tree.structure(boxed, is_leaf=is_box)


def test_scaled_init_refuses_gated_mlps_and_other_trees(tmp_path):
    save_style("v1.1", tmp_path)
    _, params = load_st5_encdec(tmp_path)
    with pytest.raises(ValueError, match="gated MLP"):
        scaled_t5_init(params)
    with pytest.raises(ValueError, match="kipjax T5 param tree"):
        scaled_t5_init({"embeddings": {"word_embeddings": {"embedding": np.ones((2, 2), np.float32)}}})


def test_without_lm_head_only_drops_the_head(checkpoint):
    _, path = checkpoint
    _, t5_params = hf.load_pretrained(path)
    kept = without_lm_head(t5_params)
    assert set(kept) == set(t5_params) - {"lm_head"}
