"""T5 parity with the installed transformers (v1.0, v1.1 as transformers 5 saves it, the Hub's FLAN-T5 layout),
export back into transformers, config keys, and cached decoding = full decoding."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from kipjax import decoding
from kipjax.models import hf
from kipjax.models.t5 import T5, T5Config, is_cross_attention_cache, relative_position_bucket
from torch_init import save_random_t5

# How each T5 generation reaches a user's disk. transformers 5 itself writes the first two with
# `save_pretrained`; the third is the Hub's FLAN-T5 / T0 / T5 v1.1 layout, which predates `scale_decoder_outputs`.
STYLES = {
    # T5 v1.0: ReLU MLP, LM head tied to the embedding, output scaled by d_model^-1/2.
    "v1.0": dict(feed_forward_proj="relu"),
    # v1.1 built from keyword arguments and saved by transformers 5: `scale_decoder_outputs: false`,
    # `tie_word_embeddings: true`, `shared.weight` only.
    "v1.1_saved": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # The Hub's FLAN-T5: `tie_word_embeddings: false`, no `scale_decoder_outputs`, its own `lm_head.weight`.
    "flan_hub": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
TINY = dict(vocab_size=80, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)

SOURCE = np.array([[5, 9, 13, 7, 22, 31, 40, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                   [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 1]])
SOURCE_MASK = (SOURCE != 0).astype(np.int64)
SOURCE_MASK[1, :] = 1
TARGET = np.array([[0, 12, 17, 4, 60, 2, 9, 33, 1, 5, 7, 8],
                   [0, 70, 3, 3, 3, 18, 44, 52, 61, 2, 11, 1]])


def save_style(style: str, path, **overrides) -> None:
    """A random transformers T5 written to `path` the way checkpoints of `style` are."""
    config = transformers.T5Config(**{**TINY, **overrides}, **STYLES[style], dropout_rate=0.0)
    save_random_t5(config, path, hub_untied_head=style == "flan_hub")


def transformers_logits(path) -> np.ndarray:
    """The reference: what the installed transformers computes from the directory."""
    model = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(SOURCE), attention_mask=torch.from_numpy(SOURCE_MASK),
                     decoder_input_ids=torch.from_numpy(TARGET)).logits.numpy()


@pytest.fixture(scope="module", params=sorted(STYLES))
def hf_checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"t5_{request.param}")
    save_style(request.param, path)
    return request.param, path, transformers_logits(path)


def kipjax_logits(model: T5, params, jit: bool = False) -> np.ndarray:
    apply = jax.jit(model.apply) if jit else model.apply  # jit: the output must be a pytree
    out = apply({"params": params}, input_ids=jnp.asarray(SOURCE), attention_mask=jnp.asarray(SOURCE_MASK),
                decoder_input_ids=jnp.asarray(TARGET))
    return np.asarray(out.logits)


def test_logits_match_transformers(hf_checkpoint):
    _, path, expected = hf_checkpoint
    model, params = hf.load_pretrained(path)
    assert isinstance(model, T5)
    np.testing.assert_allclose(kipjax_logits(model, params), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(kipjax_logits(model, params, jit=True), expected, atol=1e-4, rtol=0)


def test_the_three_layouts_differ_where_they_should(hf_checkpoint):
    style, path, _ = hf_checkpoint
    model, _ = hf.load_pretrained(path)
    tied, scaled = {"v1.0": (True, True), "v1.1_saved": (True, False), "flan_hub": (False, False)}[style]
    assert (model.config.tie_word_embeddings, model.config.scale_decoder_outputs) == (tied, scaled)


def test_export_loads_back_into_transformers_with_the_same_logits(hf_checkpoint, tmp_path):
    style, path, expected = hf_checkpoint
    model, params = hf.load_pretrained(path)
    exported = hf.save_pretrained(model, params, tmp_path / "export")
    config = json.loads((exported / "config.json").read_text())
    assert config["scale_decoder_outputs"] == model.config.scale_decoder_outputs
    np.testing.assert_allclose(transformers_logits(exported), expected, atol=1e-4, rtol=0)
    reloaded_model, reloaded = hf.load_pretrained(exported)
    assert reloaded_model.config == model.config
    np.testing.assert_array_equal(kipjax_logits(reloaded_model, reloaded), kipjax_logits(model, params))


def test_cached_incremental_decoding_equals_full_decoding(hf_checkpoint):
    _, path, _ = hf_checkpoint
    model, params = hf.load_pretrained(path)
    source, mask = jnp.asarray(SOURCE), jnp.asarray(SOURCE_MASK)
    full = kipjax_logits(model, params)
    encoded = model.apply({"params": params}, source, mask, method=T5.encode)
    max_length = TARGET.shape[1] + 3  # a cache longer than what is decoded: unwritten slots must stay masked
    _, state = model.apply({"params": params}, encoded, mask, max_length, method=T5.prepare_cache,
                           mutable=["cache"])
    cache = state["cache"]
    step = jax.jit(lambda cache, ids: model.apply({"params": params, "cache": cache}, ids, mask, max_length,
                                                  method=T5.decode_step, mutable=["cache"]))
    stepped = []
    for t in range(TARGET.shape[1]):
        logits, state = step(cache, jnp.asarray(TARGET[:, t:t + 1]))
        cache = state["cache"]
        stepped.append(np.asarray(logits[:, 0]))
    np.testing.assert_allclose(np.stack(stepped, axis=1), full, atol=1e-5, rtol=0)


def test_relative_position_buckets_match_transformers():
    positions = torch.arange(-300, 300)
    for bidirectional in (True, False):
        expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            positions, bidirectional=bidirectional, num_buckets=32, max_distance=128).numpy()
        got = relative_position_bucket(jnp.asarray(positions.numpy()), bidirectional, 32, 128)
        np.testing.assert_array_equal(np.asarray(got), expected)


def test_config_round_trips_through_the_hf_dict():
    config = T5Config(**TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    assert config.scale_decoder_outputs is False  # unset: follows tie_word_embeddings
    assert T5Config.from_hf_dict(config.to_hf_dict()) == config
    hf_config = transformers.T5Config(**config.to_hf_dict())
    assert hf_config.is_gated_act and hf_config.dense_act_fn == "gelu_new"


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gelu", "gated-gelu", "gated-silu", "gated-relu", "silu",
                                               "gated-gelu_new"])
def test_activation_is_parsed_as_transformers_parses_it(feed_forward_proj):
    ours = T5Config(**TINY, feed_forward_proj=feed_forward_proj)
    theirs = transformers.T5Config(**TINY, feed_forward_proj=feed_forward_proj)
    assert (ours.activation, ours.is_gated) == (theirs.dense_act_fn, theirs.is_gated_act)


@pytest.mark.parametrize("bad, match", [
    ({"feed_forward_proj": "swish"}, "feed_forward_proj 'swish' is not implemented"),
    ({"feed_forward_proj": "gated-gelu-x"}, "feed_forward_proj 'gated-gelu-x' is not implemented"),
    ({"is_decoder": True}, "is_decoder=True is not implemented"),
])
def test_config_keys_kipjax_cannot_honour_fail_loudly(bad, match, tmp_path):
    save_style("v1.0", tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf_config, **bad}))
    with pytest.raises(hf.CheckpointError, match=rf"config.json: {match}"):
        hf.load_pretrained(tmp_path)


def test_cached_beam_search_matches_transformers_generate(tmp_path):
    save_style("v1.0", tmp_path, num_decoder_layers=TINY["num_layers"])  # generate's cache needs equal stacks
    torch_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    model, params = hf.load_pretrained(tmp_path)
    beams, max_length = 3, 7
    with torch.no_grad():
        expected = torch_model.generate(
            input_ids=torch.from_numpy(SOURCE), attention_mask=torch.from_numpy(SOURCE_MASK), num_beams=beams,
            num_return_sequences=beams, max_new_tokens=max_length, length_penalty=1.0, early_stopping=False,
            do_sample=False, return_dict_in_generate=True, output_scores=True)
    expected_seqs = expected.sequences.numpy().reshape(SOURCE.shape[0], beams, -1)[:, :, 1:]  # drop the start
    expected_scores = expected.sequences_scores.numpy().reshape(SOURCE.shape[0], beams)

    source, mask = jnp.asarray(SOURCE), jnp.asarray(SOURCE_MASK)

    @jax.jit
    def search(params):
        encoded = decoding.repeat_for_beams(model.apply({"params": params}, source, mask, method=T5.encode), beams)
        beam_mask = decoding.repeat_for_beams(mask, beams)
        _, state = model.apply({"params": params}, encoded, beam_mask, max_length, method=T5.prepare_cache,
                               mutable=["cache"])

        def step(cache, tokens):
            logits, state = model.apply({"params": params, "cache": cache}, tokens[:, None], beam_mask, max_length,
                                        method=T5.decode_step, mutable=["cache"])
            return logits[:, 0], state["cache"]

        return decoding.beam_search(step, state["cache"], batch_size=SOURCE.shape[0], beam_size=beams,
                                    max_length=max_length, start_token=0, eos_token=1,
                                    beam_invariant_cache=is_cross_attention_cache)

    out = search(params)
    got = np.asarray(out.sequences)[:, :, :expected_seqs.shape[-1]]
    np.testing.assert_array_equal(got, expected_seqs)
    np.testing.assert_allclose(np.asarray(out.scores), expected_scores, atol=1e-4)
