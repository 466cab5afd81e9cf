"""T5 parity with transformers (v1.0 and v1.1 styles), export round trip, and cached decoding = full decoding."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

from kipjax import decoding
from kipjax.models import hf
from kipjax.models.t5 import T5, T5Config, is_cross_attention_cache, relative_position_bucket
from torch_init import randomized

STYLES = {
    # T5 v1.0: ReLU MLP, LM head tied to the embedding (output scaled by d_model^-1/2).
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    # T5 v1.1 / T0 / FLAN-T5: gated tanh-GELU MLP, separate LM head.
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
TINY = dict(vocab_size=80, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)

SOURCE = np.array([[5, 9, 13, 7, 22, 31, 40, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                   [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 1]])
SOURCE_MASK = (SOURCE != 0).astype(np.int64)
SOURCE_MASK[1, :] = 1
TARGET = np.array([[0, 12, 17, 4, 60, 2, 9, 33, 1, 5, 7, 8],
                   [0, 70, 3, 3, 3, 18, 44, 52, 61, 2, 11, 1]])


def torch_t5(style: str, **overrides) -> torch.nn.Module:
    """A random transformers T5 with the style's semantics.

    transformers 5.x forces `tie_word_embeddings=True` and output scaling on every T5Config it builds, even
    from a v1.1 config.json that says `false` (real FLAN-T5 / T0 checkpoints do); so the v1.1 reference gets
    its own LM head and unscaled outputs set by hand, which is what those checkpoints were trained with.
    """
    config = transformers.T5Config(**{**TINY, **overrides}, feed_forward_proj=STYLES[style]["feed_forward_proj"],
                                   dropout_rate=0.0)
    model = transformers.T5ForConditionalGeneration(config)
    if not STYLES[style]["tie_word_embeddings"]:
        model.config.scale_decoder_outputs = False
        model.lm_head.weight = torch.nn.Parameter(torch.empty(config.vocab_size, config.d_model))
    return randomized(model)


def save_like_the_hub(model: torch.nn.Module, style: str, path) -> None:
    """config.json + model.safetensors laid out as published checkpoints of that style are."""
    path.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.config.to_dict().items() if k != "scale_decoder_outputs"}
    config["tie_word_embeddings"] = STYLES[style]["tie_word_embeddings"]
    (path / "config.json").write_text(json.dumps(config))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight" or not config["tie_word_embeddings"]}
    safetensors.torch.save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module", params=sorted(STYLES))
def hf_checkpoint(request, tmp_path_factory):
    model = torch_t5(request.param)
    path = tmp_path_factory.mktemp(f"t5_{request.param}")
    save_like_the_hub(model, request.param, path)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(SOURCE), attention_mask=torch.from_numpy(SOURCE_MASK),
                       decoder_input_ids=torch.from_numpy(TARGET)).logits.numpy()
    return request.param, path, logits


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


def test_export_round_trips(hf_checkpoint, tmp_path):
    style, path, expected = hf_checkpoint
    model, params = hf.load_pretrained(path)
    exported = hf.save_pretrained(model, params, tmp_path / "export")
    reloaded_model, reloaded = hf.load_pretrained(exported)
    np.testing.assert_array_equal(kipjax_logits(reloaded_model, reloaded), kipjax_logits(model, params))
    config = json.loads((exported / "config.json").read_text())
    assert config["tie_word_embeddings"] == STYLES[style]["tie_word_embeddings"]
    if style == "v1.0":  # transformers reads v1.0 exports faithfully (see torch_t5 for why not v1.1)
        torch_model = transformers.T5ForConditionalGeneration.from_pretrained(exported).eval()
        with torch.no_grad():
            logits = torch_model(input_ids=torch.from_numpy(SOURCE), attention_mask=torch.from_numpy(SOURCE_MASK),
                                 decoder_input_ids=torch.from_numpy(TARGET)).logits.numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


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
    config = T5Config(**TINY, **STYLES["v1.1"])
    assert T5Config.from_hf_dict(config.to_hf_dict()) == config
    hf_config = transformers.T5Config(**config.to_hf_dict())
    assert hf_config.is_gated_act and hf_config.dense_act_fn == "gelu_new"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(**TINY, feed_forward_proj="swish")


def test_cached_beam_search_matches_transformers_generate(tmp_path):
    torch_model = torch_t5("v1.0", num_decoder_layers=TINY["num_layers"])  # generate's cache needs equal stacks
    save_like_the_hub(torch_model, "v1.0", tmp_path)
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
