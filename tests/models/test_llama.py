"""Llama parity with transformers (GQA untied; tied + llama3 RoPE scaling + biases + a non-default head_dim),
export round trip, scanned layers, cached / greedy decoding on padded batches, q/k/v states, external keys /
values, LoRA, sharding and the gin config."""
import dataclasses
import json
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.torch
import torch
import transformers
from flax import linen as nn
from flax import traverse_util

from kipjax import decoding, partitioning
from kipjax.models import hf, layers
from kipjax.models.llama import (Llama, LlamaConfig, default_positions, is_shared_prompt, lora_trainable_mask,
                                 merge_lora, prefill_shared_prompt)
from torch_init import randomized

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=32)  # head_dim 12: kept, smoothed and slowed frequencies
STYLES = {
    "gqa_untied": dict(num_key_value_heads=2, tie_word_embeddings=False,
                       rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "tied_llama3": dict(num_key_value_heads=4, tie_word_embeddings=True, head_dim=12, attention_bias=True,
                        mlp_bias=True, rope_parameters=dict(LLAMA3_SCALING, rope_theta=10000.0)),
}
# Row 0 full, row 1 left-padded (as batched prompts are for generation), row 2 right-padded.
IDS = np.array([[5, 9, 13, 7, 22, 31, 40, 11, 3, 17, 60],
                [0, 0, 0, 12, 17, 4, 60, 2, 9, 33, 44],
                [70, 3, 3, 18, 44, 52, 61, 8, 0, 0, 0]])
MASK = (np.arange(IDS.shape[1]) >= np.array([[0], [3], [99]])).astype(np.int64)
MASK[2] = np.arange(IDS.shape[1]) < 8
VALID = MASK.astype(bool)


def torch_llama(style: str) -> torch.nn.Module:
    config = transformers.LlamaConfig(**TINY, **STYLES[style], attn_implementation="eager")
    model = randomized(transformers.LlamaForCausalLM(config))
    with torch.no_grad():  # norm scales around 1, as in trained models
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(1.0)
    return model


def torch_logits(model: torch.nn.Module, ids=IDS, mask=MASK) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(np.array(default_positions(jnp.asarray(mask))))).logits.numpy()


def save_hub_style(model: torch.nn.Module, style: str, path) -> None:
    """transformers' own files; the llama3 one rewritten as published Llama 3.1 configs are (rope_theta and
    rope_scaling at the top level), so both config layouts are read."""
    model.save_pretrained(path)
    if style == "tied_llama3":
        config = json.loads((path / "config.json").read_text())
        config.pop("rope_parameters")
        config.update(rope_theta=10000.0, rope_scaling=LLAMA3_SCALING)
        (path / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module", params=sorted(STYLES))
def checkpoint(request, tmp_path_factory):
    model = torch_llama(request.param)
    path = tmp_path_factory.mktemp(f"llama_{request.param}")
    save_hub_style(model, request.param, path)
    return request.param, path, model, torch_logits(model)


def forward(model: Llama, params, ids=IDS, mask=MASK, jit: bool = True, **kwargs):
    apply = jax.jit(model.apply, static_argnames=("return_qk_layers", "rotated_states")) if jit else model.apply
    return apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), **kwargs)


def test_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for head_dim, theta, original in ((12, 10000.0, 32), (128, 500000.0, 8192)):
        scaling = dict(LLAMA3_SCALING, original_max_position_embeddings=original)
        config = transformers.LlamaConfig(**{**TINY, "hidden_size": head_dim * 4},
                                          rope_parameters=dict(scaling, rope_theta=theta))
        expected = ROPE_INIT_FUNCTIONS["llama3"](config)[0].numpy()
        np.testing.assert_allclose(layers.rope_inverse_frequencies(head_dim, theta, scaling), expected, rtol=1e-6)
        default = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters
        np.testing.assert_allclose(layers.rope_inverse_frequencies(head_dim, theta), default(config)[0].numpy(),
                                   rtol=1e-6)


def test_logits_match_transformers(checkpoint):
    style, path, _, expected = checkpoint
    model, params = hf.load_pretrained(path)
    assert isinstance(model, Llama)
    assert model.config.tie_word_embeddings == (style == "tied_llama3")
    assert (model.config.rope_scaling is not None) == (style == "tied_llama3")
    assert ("lm_head" in params) == (style == "gqa_untied")
    for jit in (False, True):
        np.testing.assert_allclose(forward(model, params, jit=jit).logits[VALID], expected[VALID], atol=1e-4, rtol=0)


@pytest.mark.parametrize("checkpoint", ["tied_llama3"], indirect=True)
def test_a_separate_lm_head_in_the_file_is_used_as_transformers_uses_it(checkpoint, tmp_path):
    """transformers 5 unties a head whose `lm_head.weight` is in the file, whatever `tie_word_embeddings` says."""
    _, path, _, _ = checkpoint
    shutil.copytree(path, tmp_path / "untied")
    weights = tmp_path / "untied" / "model.safetensors"
    state = safetensors.torch.load_file(str(weights))
    state["lm_head.weight"] = 0.2 * torch.randn(TINY["vocab_size"], TINY["hidden_size"],
                                                generator=torch.Generator().manual_seed(1))
    safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "untied", attn_implementation="eager")
    model, params = hf.load_pretrained(tmp_path / "untied")
    assert not model.config.tie_word_embeddings
    np.testing.assert_allclose(forward(model, params).logits[VALID], torch_logits(reference.eval())[VALID],
                               atol=1e-4, rtol=0)


def test_export_loads_in_transformers_with_identical_logits(checkpoint, tmp_path):
    style, path, _, expected = checkpoint
    model, params = hf.load_pretrained(path, scan_layers=style == "gqa_untied")  # export unstacks scanned layers
    exported = hf.save_pretrained(model, params, tmp_path / "export")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(exported, attn_implementation="eager").eval()
    np.testing.assert_allclose(torch_logits(reloaded)[VALID], expected[VALID], atol=1e-4, rtol=0)
    reloaded_model, reloaded_params = hf.load_pretrained(exported, scan_layers=model.config.scan_layers)
    assert reloaded_model.config == model.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, reloaded_params, params)


def test_config_round_trips_through_the_hf_dict():
    config = LlamaConfig(**TINY, num_key_value_heads=2, head_dim=12, rope_scaling=LLAMA3_SCALING)
    assert LlamaConfig.from_hf_dict(config.to_hf_dict()) == config
    hf_config = transformers.LlamaConfig(**config.to_hf_dict())
    assert hf_config.rope_parameters == dict(LLAMA3_SCALING, rope_theta=10000.0)
    assert LlamaConfig.from_hf_dict(hf_config.to_dict()) == config  # transformers 5 layout (rope_parameters)
    llama31 = LlamaConfig.from_hf_dict({**TINY, "rope_theta": 500000.0, "eos_token_id": [128001, 128009],
                                        "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0}})
    assert llama31.rope_scaling["original_max_position_embeddings"] == TINY["max_position_embeddings"]
    assert llama31.eos_token_id == (128001, 128009) and llama31.num_key_value_heads == 4
    hash(llama31)
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        LlamaConfig(**TINY, rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="hidden_act='gelu' is not implemented"):
        LlamaConfig.from_hf_dict({**TINY, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="lora_targets"):
        LlamaConfig(**TINY, lora_targets=("q", "ffn"))


@pytest.mark.parametrize("checkpoint", ["tied_llama3"], indirect=True)
def test_scanned_layers_and_remat_match_unrolled(checkpoint):
    _, path, _, _ = checkpoint
    model, params = hf.load_pretrained(path)
    scanned_model, scanned = hf.load_pretrained(path, scan_layers=True, remat=True)
    layers_requested = (0, 2)
    out = forward(model, params, return_qk_layers=layers_requested)
    scanned_out = forward(scanned_model, scanned, return_qk_layers=layers_requested)
    np.testing.assert_allclose(scanned_out.logits, out.logits, atol=1e-5, rtol=0)
    for states in ("query_states", "key_states", "value_states"):
        assert sorted(getattr(scanned_out, states)) == list(layers_requested)
        for i in layers_requested:
            np.testing.assert_allclose(getattr(scanned_out, states)[i], getattr(out, states)[i], atol=1e-5, rtol=0)

    def loss(model, params):
        return jnp.sum(forward(model, params).logits[VALID] ** 2) * 1e-3

    grads = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
    scanned_grads = jax.jit(jax.grad(lambda p: loss(scanned_model, p)))(scanned)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
                           scanned_grads, hf.stack_layers(jax.tree_util.tree_map(np.asarray, grads)))


def step_function(model: Llama, params):
    return jax.jit(lambda cache, ids, mask: model.apply({"params": params, "cache": cache}, ids, mask,
                                                        method=Llama.decode_step, mutable=["cache"]))


def prepared_cache(model: Llama, params, batch_size: int, max_length: int):
    _, state = model.apply({"params": params}, batch_size, max_length, method=Llama.prepare_cache,
                           mutable=["cache"])
    return state["cache"]


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_cached_decoding_equals_full_pass(checkpoint, scan_layers):
    """A padded prompt in one step, then one token at a time (padding included), into a cache longer than needed."""
    _, path, _, _ = checkpoint
    model, params = hf.load_pretrained(path, scan_layers=scan_layers)
    full = np.asarray(forward(model, params).logits)
    prompt = 5
    step = step_function(model, params)
    cache = prepared_cache(model, params, IDS.shape[0], IDS.shape[1] + 3)
    out, state = step(cache, jnp.asarray(IDS[:, :prompt]), jnp.asarray(MASK[:, :prompt]))
    stepped = [np.asarray(out.logits)]
    for t in range(prompt, IDS.shape[1]):
        out, state = step(state["cache"], jnp.asarray(IDS[:, t:t + 1]), jnp.asarray(MASK[:, t:t + 1]))
        stepped.append(np.asarray(out.logits))
    np.testing.assert_allclose(np.concatenate(stepped, axis=1)[VALID], full[VALID], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_a_shared_prompt_cache_decodes_as_the_prompt_repeated_for_every_beam(checkpoint, scan_layers):
    """Beams reading one prompt copy (and reordered without it) get the logits of beams with a copy each."""
    _, path, _, _ = checkpoint
    model, params = hf.load_pretrained(path, scan_layers=scan_layers)
    beams, steps, prompt = 3, 4, 7
    prompts, mask = jnp.asarray(IDS[:2, :prompt]), jnp.asarray(MASK[:2, :prompt])  # one full, one left-padded
    step = step_function(model, params)
    _, state = step(prepared_cache(model, params, 2, prompt + steps), prompts, mask)
    repeated = decoding.repeat_for_beams(state["cache"], beams)
    shared = jax.jit(lambda: prefill_shared_prompt(model, params, prompts, mask, beams, steps))()
    assert shared["decode_slots"]["prompt_mask"].shape == (2, prompt)
    tokens = np.random.default_rng(0).integers(3, TINY["vocab_size"], size=(steps, 2 * beams))
    reorder = jnp.array([2, 2, 0, 4, 3, 5])  # within each prompt's beams, as beam search reorders them
    for t in range(steps):
        ids = jnp.asarray(tokens[t])[:, None]
        expected, state = step(repeated, ids, jnp.ones_like(ids))
        got, shared_state = step(shared, ids, jnp.ones_like(ids))
        np.testing.assert_allclose(np.asarray(got.logits), np.asarray(expected.logits), atol=1e-5, rtol=0)
        repeated = decoding.gather_rows(state["cache"], reorder)
        shared = decoding.gather_rows(shared_state["cache"], reorder, is_shared_prompt)
    with pytest.raises(ValueError, match="extra_kv cannot be combined with a shared prompt"):
        noise = jnp.zeros((2 * beams, 1, model.config.num_key_value_heads, model.config.head_dim))
        model.apply({"params": params, "cache": shared}, ids, extra_kv={0: (noise, noise, jnp.ones((2 * beams, 1)))},
                    method=Llama.decode_step, mutable=["cache"])


def test_greedy_decoding_equals_full_pass_and_transformers_generate(checkpoint):
    torch.set_flush_denormal(True)
    _, path, torch_model, _ = checkpoint
    model, params = hf.load_pretrained(path)
    prompt, mask, new_tokens = IDS[:2, :7], MASK[:2, :7], 6  # row 1 is left-padded
    step = step_function(model, params)
    out, state = step(prepared_cache(model, params, 2, prompt.shape[1] + new_tokens), jnp.asarray(prompt),
                      jnp.asarray(mask))
    logits, tokens = [np.asarray(out.logits[:, -1])], []
    for _ in range(new_tokens):
        tokens.append(np.argmax(logits[-1], axis=-1))
        out, state = step(state["cache"], jnp.asarray(tokens[-1][:, None]), jnp.ones((2, 1), jnp.int32))
        logits.append(np.asarray(out.logits[:, 0]))
    tokens = np.stack(tokens, axis=1)

    sequence = np.concatenate([prompt, tokens], axis=1)
    sequence_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
    full = np.asarray(forward(model, params, sequence, sequence_mask).logits)
    np.testing.assert_allclose(np.stack(logits[:-1], axis=1), full[:, prompt.shape[1] - 1:-1], atol=1e-5, rtol=0)

    torch_model.generation_config.eos_token_id = None
    with torch.no_grad():
        expected = torch_model.generate(input_ids=torch.from_numpy(prompt), attention_mask=torch.from_numpy(mask),
                                        max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(tokens, expected.numpy()[:, prompt.shape[1]:])


def test_query_key_value_states_are_the_rotated_projections(checkpoint):
    _, path, torch_model, _ = checkpoint
    model, params = hf.load_pretrained(path)
    cfg = model.config
    out = forward(model, params, return_qk_layers=(1,))
    assert out.query_states[1].shape == (*IDS.shape, cfg.num_attention_heads, cfg.head_dim)
    assert out.key_states[1].shape == out.value_states[1].shape == (*IDS.shape, cfg.num_key_value_heads, cfg.head_dim)

    # By hand from transformers' pieces: layer 1's input, its norm and projections, then RoPE.
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    positions = torch.from_numpy(np.array(default_positions(jnp.asarray(MASK))))
    with torch.no_grad():
        hidden = torch_model(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK),
                             position_ids=positions, output_hidden_states=True).hidden_states[1]
        attention = torch_model.model.layers[1].self_attn
        x = torch_model.model.layers[1].input_layernorm(hidden)
        q, k, v = (proj(x).view(*IDS.shape, -1, cfg.head_dim).transpose(1, 2)
                   for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        cos, sin = torch_model.model.rotary_emb(x, positions)
        rotated_q, rotated_k = apply_rotary_pos_emb(q, k, cos, sin)
    for got, want in ((out.query_states[1], rotated_q), (out.key_states[1], rotated_k), (out.value_states[1], v)):
        np.testing.assert_allclose(np.asarray(got)[VALID], want.transpose(1, 2).numpy()[VALID], atol=1e-4, rtol=0)
    unrotated = forward(model, params, return_qk_layers=(1,), rotated_states=False)
    for got, want in ((unrotated.query_states[1], q), (unrotated.key_states[1], k), (unrotated.value_states[1], v)):
        np.testing.assert_allclose(np.asarray(got)[VALID], want.transpose(1, 2).numpy()[VALID], atol=1e-4, rtol=0)


@pytest.mark.parametrize("checkpoint", ["gqa_untied"], indirect=True)
def test_layer_ranges_chain_into_the_full_pass(checkpoint):
    _, path, torch_model, torch_full = checkpoint
    model, params = hf.load_pretrained(path)
    apply = jax.jit(model.apply, static_argnames=("layer_range",))
    bottom = apply({"params": params}, jnp.asarray(IDS), jnp.asarray(MASK), layer_range=(0, 1))
    assert bottom.logits is None
    with torch.no_grad():  # hidden_states[2] is the residual stream leaving layer 1
        hidden = torch_model(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK),
                             position_ids=torch.from_numpy(np.array(default_positions(jnp.asarray(MASK)))),
                             output_hidden_states=True).hidden_states[2].numpy()
    np.testing.assert_allclose(np.asarray(bottom.last_hidden_state)[VALID], hidden[VALID], atol=1e-4, rtol=0)
    top = apply({"params": params}, None, jnp.asarray(MASK), layer_range=(2, 2),
                hidden_states=bottom.last_hidden_state)
    np.testing.assert_allclose(np.asarray(top.logits)[VALID], torch_full[VALID], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="hidden_states"):
        model.apply({"params": params}, jnp.asarray(IDS), layer_range=(1, 2))
    with pytest.raises(ValueError, match="0 <= first <= last"):
        model.apply({"params": params}, jnp.asarray(IDS), layer_range=(0, 3))
    scanned, scanned_params = hf.load_pretrained(path, scan_layers=True)
    with pytest.raises(ValueError, match="unscanned"):
        scanned.apply({"params": scanned_params}, jnp.asarray(IDS), layer_range=(0, 1))


@pytest.mark.parametrize("checkpoint", ["gqa_untied"], indirect=True)
def test_segments_of_one_row_do_not_read_each_other(checkpoint):
    _, path, _, torch_full = checkpoint
    model, params = hf.load_pretrained(path)
    # Row 0's first 5 tokens and row 1's last 6 as two segments of one row, each with positions from 0: each
    # segment's logits are those of the text run alone.
    first, second = IDS[0, :5], IDS[1, 5:]
    ids = np.concatenate([first, second])[None]
    segments = jnp.asarray(np.repeat([0, 1], [5, 6])[None])
    positions = jnp.asarray(np.concatenate([np.arange(5), np.arange(6)])[None])
    out = forward(model, params, ids, np.ones_like(ids), segment_ids=segments, positions=positions)
    alone = [np.asarray(forward(model, params, t[None], np.ones((1, len(t)), np.int64)).logits[0])
             for t in (first, second)]
    np.testing.assert_allclose(np.asarray(out.logits[0]), np.concatenate(alone), atol=1e-5, rtol=0)


@pytest.mark.parametrize("checkpoint", ["gqa_untied"], indirect=True)
@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_extra_kv(checkpoint, scan_layers):
    _, path, _, _ = checkpoint
    model, params = hf.load_pretrained(path, scan_layers=scan_layers)
    cfg = model.config
    all_layers = tuple(range(cfg.num_hidden_layers))
    full = np.asarray(forward(model, params).logits)

    # Masked-out external states change nothing at attended positions (even on only some layers, which scanning
    # pads to all); a pad's query attends to no key at all, so its (unused) output may differ.
    noise = np.random.default_rng(0).normal(size=(IDS.shape[0], 4, cfg.num_key_value_heads, cfg.head_dim))
    ignored = {i: (jnp.asarray(noise), jnp.asarray(-noise), jnp.zeros((IDS.shape[0], 4), jnp.int32)) for i in (0, 2)}
    np.testing.assert_allclose(np.asarray(forward(model, params, extra_kv=ignored).logits)[VALID], full[VALID],
                               atol=1e-6, rtol=0)

    # A prefix's own key/value states as external states reproduce running prefix + suffix jointly.
    split = 6
    prefix = forward(model, params, IDS[:, :split], MASK[:, :split], return_qk_layers=all_layers)
    extra = {i: (prefix.key_states[i], prefix.value_states[i], jnp.asarray(MASK[:, :split])) for i in all_layers}
    suffix = forward(model, params, IDS[:, split:], MASK[:, split:], extra_kv=extra,
                     positions=default_positions(jnp.asarray(MASK))[:, split:])
    np.testing.assert_allclose(np.asarray(suffix.logits)[VALID[:, split:]], full[:, split:][VALID[:, split:]],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("checkpoint", ["tied_llama3"], indirect=True)
def test_lora_starts_as_the_base_model_and_merges_for_export(checkpoint, tmp_path):
    _, path, _, _ = checkpoint
    model, params = hf.load_pretrained(path)
    lora_model, lora_params = hf.load_pretrained(path, lora_rank=4, lora_alpha=8.0)
    base_part = {p: v for p, v in traverse_util.flatten_dict(lora_params).items() if not layers.is_lora_path(p)}
    assert base_part.keys() == traverse_util.flatten_dict(params).keys()
    base = np.asarray(forward(model, params).logits)
    np.testing.assert_allclose(forward(lora_model, lora_params).logits, base, atol=1e-6, rtol=0)

    rng = np.random.default_rng(0)
    trained = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 * rng.normal(size=x.shape).astype(x.dtype) if p[-1].key == "b" else x, lora_params)
    tuned = np.asarray(forward(lora_model, trained).logits)
    assert np.abs(tuned - base).max() > 1e-2
    with pytest.raises(ValueError, match="merge_lora"):
        hf.save_pretrained(lora_model, trained, tmp_path / "unmerged")
    merged_model, merged = merge_lora(lora_model, trained)
    assert merged_model.config.lora_rank == 0
    np.testing.assert_allclose(forward(merged_model, merged).logits, tuned, atol=1e-4, rtol=0)
    exported = hf.save_pretrained(merged_model, merged, tmp_path / "merged")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(exported, attn_implementation="eager").eval()
    np.testing.assert_allclose(torch_logits(reloaded)[VALID], tuned[VALID], atol=1e-4, rtol=0)


def test_lora_mask_freezes_the_base_model():
    config = LlamaConfig(**{**TINY, "num_hidden_layers": 2}, num_key_value_heads=2, lora_rank=2,
                         lora_targets=("q", "o", "down"))
    model = Llama(config)
    boxed = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(IDS[:, :4]))["params"]
    params = nn.unbox(boxed)
    adapters = sorted("/".join(p[:-1]) for p in traverse_util.flatten_dict(params) if layers.is_lora_path(p))
    assert adapters == sorted(f"layer_{i}/{m}/lora" for i in range(2) for m in ("attention/query", "attention/out",
                                                                                   "mlp/down") for _ in "ab")
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
    assert tuple(specs["layer_0/attention/query/lora/a"]) == ("embed", "lora_rank")
    assert tuple(specs["layer_0/attention/query/lora/b"]) == ("lora_rank", "heads", "kv")
    assert tuple(specs["layer_0/attention/out/lora/a"]) == ("heads", "kv", "lora_rank")

    mask = lora_trainable_mask(params)
    flat_mask = traverse_util.flatten_dict(mask)
    assert all(flat_mask[p] == layers.is_lora_path(p) for p in flat_mask)
    assert jax.tree_util.tree_structure(lora_trainable_mask(boxed)) == jax.tree_util.tree_structure(boxed)
    tx = optax.multi_transform({True: optax.adam(1e-2), False: optax.set_to_zero()}, mask)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, jnp.asarray(IDS)).logits ** 2)))(params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    flat_updates = traverse_util.flatten_dict(updates)
    assert all(not np.any(flat_updates[p]) for p in flat_updates if not flat_mask[p])
    assert all(np.any(flat_updates[p]) for p in flat_updates if p[-1] == "b")  # B gets gradient at B = 0


@pytest.mark.parametrize("checkpoint", ["gqa_untied"], indirect=True)
def test_sharded_forward_equals_single_device(checkpoint):
    _, path, _, _ = checkpoint
    model, params = hf.load_pretrained(path, scan_layers=True, lora_rank=2)
    expected = np.asarray(forward(model, params).logits)
    mesh = partitioning.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = partitioning.DEFAULT_RULES
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(IDS[:, :2])))["params"]
    shardings = partitioning.logical_to_sharding(partitioning.params_logical_specs(boxed), mesh, rules, params)
    sharded = jax.device_put(params, shardings)
    assert sharded["layers"]["mlp"]["gate"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp",
                                                                                                  "tensor")
    batch = jax.device_put((jnp.asarray(np.tile(IDS, (2, 1))), jnp.asarray(np.tile(MASK, (2, 1)))),
                           partitioning.batch_sharding(mesh))
    with partitioning.activate(mesh, rules):
        logits = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask).logits)(sharded, *batch)
    np.testing.assert_allclose(np.asarray(logits)[:IDS.shape[0]], expected, atol=1e-4, rtol=0)


def test_gin_config_builds_the_tiny_model():
    gin.clear_config()
    try:
        gin.parse_config_file("gin_configs/models/llama_tiny.gin")
        config = gin.get_configurable("kipjax.models.llama.LlamaConfig")()
    finally:
        gin.clear_config()
    assert isinstance(config, LlamaConfig)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (64, 2, 2)
    assert config.rope_scaling["rope_type"] == "llama3" and config.lora_rank == 0
    lora = dataclasses.replace(config, lora_rank=8)
    shapes = jax.eval_shape(lambda: Llama(lora).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32)))
    assert nn.unbox(shapes)["params"]["layer_1"]["mlp"]["up"]["lora"]["b"].shape == (8, 128)
