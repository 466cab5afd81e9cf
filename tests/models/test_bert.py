"""BERT / RoBERTa / ELECTRA encoders: parity with transformers' PyTorch models, scan/remat, logical axes."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from kipjax import partitioning
from kipjax.models import hf, layers
from kipjax.models.bert import BertConfig, BertEncoder

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40)
HF_MODELS = {
    "bert": lambda **kw: transformers.BertModel(transformers.BertConfig(**TINY, **kw)),
    "roberta": lambda **kw: transformers.RobertaModel(transformers.RobertaConfig(**TINY, **kw)),
    "electra": lambda **kw: transformers.ElectraModel(transformers.ElectraConfig(**TINY, embedding_size=16, **kw)),
}
RULE_NAMES = {name for name, _ in partitioning.DEFAULT_RULES}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (HF inits LayerNorm/biases to constants, which would hide mapping bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if "LayerNorm.weight" in name else 0.0))
    return model.eval()


def padded_inputs(pad_token_id: int, token_types: bool = True) -> dict[str, np.ndarray]:
    """Three rows, two of them padded, ids avoiding the pad id; second segment has token type 1."""
    ids = np.random.default_rng(0).integers(3, TINY["vocab_size"], size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad_token_id
    inputs = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        inputs["token_type_ids"] = (np.arange(9)[None, :] >= 4).astype(np.int64) * mask
    return inputs


def hf_forward(model: torch.nn.Module, inputs: dict[str, np.ndarray]):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()})


def kipjax_forward(model, params, inputs: dict[str, np.ndarray], **kwargs):
    return model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()}, **kwargs)


@pytest.fixture(scope="module", params=sorted(HF_MODELS))
def checkpoint(request, tmp_path_factory):
    """(directory, HF model, inputs) for one family, saved as model.safetensors."""
    kind = request.param
    model = randomize_(HF_MODELS[kind]())
    path = tmp_path_factory.mktemp(kind)
    model.save_pretrained(path)
    return path, model, padded_inputs(model.config.pad_token_id, token_types=kind != "roberta")


def test_matches_transformers(checkpoint):
    path, hf_model, inputs = checkpoint
    ref = hf_forward(hf_model, inputs)
    model, params = hf.load_pretrained(path)
    out = kipjax_forward(model, params, inputs)
    np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    if hf_model.config.model_type == "electra":
        assert out.pooler_output is None
    else:
        np.testing.assert_allclose(out.pooler_output, ref.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_scan_and_remat_match_plain_model(checkpoint):
    path, _, inputs = checkpoint
    model, params = hf.load_pretrained(path)
    plain = kipjax_forward(model, params, inputs).last_hidden_state
    for overrides in ({"remat": True}, {"scan_layers": True}, {"scan_layers": True, "remat": True}):
        variant, variant_params = hf.load_pretrained(path, **overrides)
        out = kipjax_forward(variant, variant_params, inputs).last_hidden_state
        np.testing.assert_allclose(out, plain, atol=1e-5, rtol=0, err_msg=str(overrides))


def test_last_attention_matches_transformers_output_attentions(checkpoint):
    path, hf_model, inputs = checkpoint
    hf_model.config._attn_implementation = "eager"  # the attention-weights path of transformers
    with torch.no_grad():
        ref = hf_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_attentions=True)
    expected = ref.attentions[-1].numpy()
    real = inputs["attention_mask"].astype(bool)
    for overrides in ({}, {"scan_layers": True}):
        model, params = hf.load_pretrained(path, **overrides)
        out = kipjax_forward(model, params, inputs, return_last_attention=True)
        got = np.asarray(out.last_attention)
        assert got.shape == expected.shape
        for row in range(len(real)):  # padded query rows are meaningless on both sides
            np.testing.assert_allclose(got[row][:, real[row]], expected[row][:, real[row]], atol=1e-5,
                                       err_msg=str(overrides))
        assert kipjax_forward(model, params, inputs).last_attention is None


@pytest.mark.parametrize("activation", ["gelu_new", "relu"])
def test_other_activations_match_transformers(activation, tmp_path):
    hf_model = randomize_(HF_MODELS["bert"](hidden_act=activation))
    hf_model.save_pretrained(tmp_path)
    inputs = padded_inputs(0)
    model, params = hf.load_pretrained(tmp_path)
    assert model.config.hidden_act == activation
    np.testing.assert_allclose(kipjax_forward(model, params, inputs).last_hidden_state,
                               hf_forward(hf_model, inputs).last_hidden_state.numpy(), atol=1e-4, rtol=0)


def tiny_config(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, "intermediate_size": 48, **overrides})


def abstract_params(config: BertConfig):
    """Boxed params with shapes only: enough for axis names and sharding specs, nothing compiled."""
    return jax.eval_shape(lambda: BertEncoder(config).init(jax.random.PRNGKey(0), jnp.ones((2, 5), jnp.int32)))[
        "params"]


def random_params(config: BertConfig):
    """Unboxed random params drawn with numpy (compiling `init` would dominate these tests' run time)."""
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype),
                                  nn.unbox(abstract_params(config)))


@pytest.mark.parametrize("config", [tiny_config(), tiny_config(model_type="electra", embedding_size=16)],
                         ids=["bert", "electra"])
def test_every_param_has_logical_axes_from_the_rules(config):
    leaves = jax.tree_util.tree_leaves(abstract_params(config),
                                       is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == len(leaf.value.shape)
        assert set(leaf.names) <= RULE_NAMES, leaf.names


def test_scanned_params_add_a_leading_layers_axis():
    params = abstract_params(tiny_config(scan_layers=True))
    kernel = params["layers"]["attention"]["query"]["kernel"]
    assert kernel.names == ("layers", "embed", "heads", "kv")
    assert kernel.value.shape == (2, 32, 4, 8)
    for leaf in jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        assert set(leaf.names) <= RULE_NAMES | {"layers"}, leaf.names


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_forward_equals_single_device(scan_layers):
    config = tiny_config(scan_layers=scan_layers)
    model = BertEncoder(config)
    boxed = abstract_params(config)
    params = random_params(config)
    inputs = {"input_ids": np.tile(padded_inputs(0)["input_ids"][:2], (4, 1)),
              "attention_mask": np.tile(padded_inputs(0)["attention_mask"][:2], (4, 1))}
    expected = kipjax_forward(model, params, inputs).last_hidden_state

    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = partitioning.DEFAULT_RULES
    shardings = partitioning.logical_to_sharding(partitioning.params_logical_specs(boxed), mesh, rules)
    sharded_params = jax.device_put(params, shardings)
    batch = jax.device_put({k: jnp.asarray(v) for k, v in inputs.items()}, partitioning.batch_sharding(mesh))
    with mesh, nn.logical_axis_rules(rules):
        out = jax.jit(lambda p, b: model.apply({"params": p}, **b).last_hidden_state)(sharded_params, batch)
    word_embeddings = sharded_params["embeddings"]["word_embeddings"]["embedding"]
    assert word_embeddings.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_dropout_is_active_only_when_not_deterministic():
    for scan_layers in (False, True):
        config = tiny_config(scan_layers=scan_layers)
        model, params = BertEncoder(config), random_params(config)
        ids = jnp.asarray(padded_inputs(0)["input_ids"])

        @jax.jit
        def clean_and_noisy(rng):
            forward = lambda **kw: model.apply({"params": params}, ids, **kw).last_hidden_state
            return forward(), forward(deterministic=False, rngs={"dropout": rng})

        (clean, noisy), (_, same_seed), (_, other_seed) = (clean_and_noisy(jax.random.PRNGKey(s)) for s in (1, 1, 2))
        np.testing.assert_array_equal(noisy, same_seed)
        assert not np.allclose(noisy, clean) and not np.allclose(noisy, other_seed)


def test_bfloat16_compute_stays_close_to_float32():
    config = tiny_config()
    params = random_params(config)
    inputs = padded_inputs(0)
    out16 = kipjax_forward(BertEncoder(dataclasses.replace(config, dtype=jnp.bfloat16)), params, inputs)
    assert out16.last_hidden_state.dtype == jnp.bfloat16
    np.testing.assert_allclose(out16.last_hidden_state.astype(jnp.float32),
                               kipjax_forward(BertEncoder(config), params, inputs).last_hidden_state,
                               atol=0.1, rtol=0.05)


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
def test_config_reads_transformers_config_and_round_trips(kind):
    hf_config = HF_MODELS[kind]().config
    config = BertConfig.from_hf_dict(hf_config.to_dict())
    assert (config.model_type, config.pad_token_id, config.hidden_size) == (kind, hf_config.pad_token_id, 32)
    assert config.embed_dim == (16 if kind == "electra" else 32)
    assert config.add_pooler == (kind != "electra")
    assert BertConfig.from_hf_dict(config.to_hf_dict()) == config


def test_roberta_position_ids_skip_padding():
    from kipjax.models.bert import default_position_ids
    config = tiny_config(model_type="roberta", pad_token_id=1)
    ids = jnp.asarray([[5, 6, 7, 1, 1], [5, 1, 1, 1, 1]])
    np.testing.assert_array_equal(default_position_ids(config, ids), [[2, 3, 4, 1, 1], [2, 1, 1, 1, 1]])
    np.testing.assert_array_equal(default_position_ids(dataclasses.replace(config, model_type="bert"), ids),
                                  [[0, 1, 2, 3, 4]] * 2)


@pytest.mark.parametrize("bad, match", [
    ({"hidden_size": None}, "hidden_size"),
    ({"hidden_act": "swish"}, "swish"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not implemented"),
    ({"is_decoder": True}, "is_decoder=True is not implemented"),
    ({"add_cross_attention": True}, "add_cross_attention=True is not implemented"),
    ({"num_attention_heads": 5}, "num_attention_heads=5"),
])
def test_config_rejects_what_it_cannot_build(bad, match):
    d = {k: v for k, v in {**tiny_config().to_hf_dict(), **bad}.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        BertConfig.from_hf_dict(d)


def test_grouped_query_cross_attention_matches_torch_sdpa():
    """The shared attention block (used by later families without bias and with GQA) against torch SDPA."""
    rng = np.random.default_rng(0)
    batch, q_len, kv_len, embed, heads, kv_heads, head_dim = 2, 5, 7, 12, 4, 2, 3
    x, memory = rng.normal(size=(batch, q_len, embed)), rng.normal(size=(batch, kv_len, embed))
    mask = np.ones((batch, kv_len), bool)
    mask[1, 4:] = False
    params = {"query": {"kernel": rng.normal(size=(embed, heads, head_dim))},
              "key": {"kernel": rng.normal(size=(embed, kv_heads, head_dim))},
              "value": {"kernel": rng.normal(size=(embed, kv_heads, head_dim))},
              "out": {"kernel": rng.normal(size=(heads, head_dim, embed))}}
    attention = layers.MultiHeadAttention(num_heads=heads, head_dim=head_dim, num_kv_heads=kv_heads, use_bias=False)
    out = attention.apply({"params": jax.tree_util.tree_map(jnp.asarray, params)}, jnp.asarray(x),
                          jnp.asarray(memory), bias=layers.attention_bias_from_mask(jnp.asarray(mask)))

    t = {k: torch.from_numpy(v["kernel"]) for k, v in params.items()}
    q = torch.einsum("bqe,ehd->bhqd", torch.from_numpy(x), t["query"])
    k = torch.einsum("bke,ehd->bhkd", torch.from_numpy(memory), t["key"])
    v = torch.einsum("bke,ehd->bhkd", torch.from_numpy(memory), t["value"])
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.from_numpy(mask)[:, None, None],
                                                           enable_gqa=True)
    ref = torch.einsum("bhqd,hde->bqe", ref, t["out"])
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=1e-4)
