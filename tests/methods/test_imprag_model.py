"""ImpRAG's layer groups against transformers' Llama: retrieval embeddings from layer b's q / k states, reading
passages in L_M (equal to a joint pass when every layer reads), the three passage encodings, and cached
generation with passages equal to repeated full passes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from kipjax.methods.imprag.model import ImpragModel, LayerGroups, last_token_index
from kipjax.models import hf
from kipjax.models.llama import default_positions
from torch_init import randomized

CONFIG = dict(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Row 0 right-padded, row 1 left-padded, row 2 full.
QUERIES = np.array([[5, 9, 13, 7, 22, 0, 0], [0, 0, 12, 17, 4, 60, 9], [33, 44, 8, 19, 27, 50, 6]])
QUERY_MASK = (QUERIES > 0).astype(np.int32)
rng = np.random.default_rng(0)
PASSAGES = rng.integers(3, 64, size=(3, 2, 5))  # 3 queries x k = 2 passages x l_max = 5
PASSAGE_MASK = np.ones_like(PASSAGES)
PASSAGE_MASK[0, 1, 3:] = 0  # a short passage
PASSAGE_MASK[2, 0, 4:] = 0
PASSAGES = PASSAGES * PASSAGE_MASK


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch_model = randomized(transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG,
                                                                                    attn_implementation="eager")))
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(1.0)
    path = tmp_path_factory.mktemp("llama")
    torch_model.save_pretrained(path)
    llama, params = hf.load_pretrained(path)
    return torch_model, llama, params


def torch_projections(torch_model, ids, mask, layer):
    """transformers' layer-`layer` q / k projections (before and after RoPE) of (batch, length) tokens."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    positions = torch.from_numpy(np.array(default_positions(jnp.asarray(mask))))
    head_dim = CONFIG["hidden_size"] // CONFIG["num_attention_heads"]
    with torch.no_grad():
        hidden = torch_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             position_ids=positions, output_hidden_states=True).hidden_states[layer]
        block = torch_model.model.layers[layer]
        x = block.input_layernorm(hidden)
        q = block.self_attn.q_proj(x).view(*ids.shape, -1, head_dim).transpose(1, 2)
        k = block.self_attn.k_proj(x).view(*ids.shape, -1, head_dim).transpose(1, 2)
        cos, sin = torch_model.model.rotary_emb(x, positions)
        rq, rk = apply_rotary_pos_emb(q, k, cos, sin)
    return [t.transpose(1, 2).numpy() for t in (q, k, rq, rk)]  # (batch, length, heads, head_dim)


def expected_embeddings(q, k, mask):
    last = np.array([np.flatnonzero(row)[-1] for row in mask])
    rows = np.arange(len(mask))
    q_last, k_last = q[rows, last], k[rows, last]  # (batch, heads, head_dim)
    group = CONFIG["num_attention_heads"] // CONFIG["num_key_value_heads"]
    # Heads 0..2 read kv head 0, heads 3..5 kv head 1 (transformers' repeat_kv).
    query = np.stack([q_last[:, g * group:(g + 1) * group].mean(axis=1) for g in range(CONFIG["num_key_value_heads"])],
                     axis=1)
    return query.reshape(len(mask), -1), k_last.reshape(len(mask), -1)


@pytest.mark.parametrize("rotated", [False, True], ids=["pre_rope", "post_rope"])
def test_embeddings_are_layer_b_states_of_transformers(checkpoint, rotated):
    torch_model, llama, params = checkpoint
    model = ImpragModel(llama, LayerGroups(bottom_end=2, middle_end=3), rotated_embeddings=rotated)
    q, k, rq, rk = torch_projections(torch_model, QUERIES, QUERY_MASK, layer=2)
    want_query, want_passage = expected_embeddings(rq if rotated else q, rk if rotated else k, QUERY_MASK)
    got_query = jax.jit(model.query_embeddings)(params, jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK))
    got_passage = jax.jit(model.passage_embeddings)(params, jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK))
    assert got_query.shape == got_passage.shape == (3, model.embedding_size)
    np.testing.assert_allclose(np.asarray(got_query), want_query, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(got_passage), want_passage, atol=1e-5, rtol=0)


def test_last_token_index_handles_both_paddings():
    np.testing.assert_array_equal(np.asarray(last_token_index(jnp.asarray(QUERY_MASK))), [4, 6, 6])


def test_query_embedding_does_not_depend_on_passages_or_their_shift(checkpoint):
    _, llama, params = checkpoint
    model = ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2))
    alone = model.query_embeddings(params, jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK))
    passages = model.passage_states(params, jnp.asarray(PASSAGES), jnp.asarray(PASSAGE_MASK))
    out = model.read(params, jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK), passages, passage_slots=10)
    reading = model.embedding_of(out, last_token_index(jnp.asarray(QUERY_MASK)))
    np.testing.assert_allclose(np.asarray(reading), np.asarray(alone), atol=1e-4, rtol=0)


def joint_logits(llama, params, passage_ids, passage_mask, positions):
    """A plain Llama pass over [passages ; query] rows: the reference for reading at every layer."""
    batch, k, l_max = PASSAGES.shape
    ids = np.concatenate([passage_ids.reshape(batch, -1), QUERIES], axis=1)
    mask = np.concatenate([passage_mask.reshape(batch, -1), QUERY_MASK], axis=1)
    query_positions = np.asarray(default_positions(jnp.asarray(QUERY_MASK))) + k * l_max
    all_positions = np.concatenate([positions, query_positions], axis=1)
    logits = llama.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(all_positions)).logits
    return np.asarray(logits)[:, k * l_max:]


def test_reading_at_every_layer_equals_one_pass_over_passages_and_query(checkpoint):
    _, llama, params = checkpoint
    model = ImpragModel(llama, LayerGroups(bottom_end=0, middle_end=3))  # every layer reads
    passages = model.passage_states(params, jnp.asarray(PASSAGES), jnp.asarray(PASSAGE_MASK))
    got = model.read(params, jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK), passages, passage_slots=10).logits
    positions = np.asarray(default_positions(jnp.asarray(PASSAGE_MASK.reshape(3, -1))))
    want = joint_logits(llama, params, PASSAGES, PASSAGE_MASK, positions)
    valid = QUERY_MASK.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-4, rtol=0)


def test_only_the_middle_group_reads(checkpoint):
    """Layers below b and above t never see the passages: with b = t = the top layer, changing the passages
    changes only what the top layer adds; with no middle layer reading (passages fully masked) it is the plain
    model with shifted positions, which RoPE makes equal to unshifted ones."""
    _, llama, params = checkpoint
    model = ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2))
    ids, mask = jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK)
    passages = model.passage_states(params, jnp.asarray(PASSAGES), jnp.asarray(PASSAGE_MASK))
    hidden = llama.apply({"params": params}, ids, mask, model.query_positions(mask, 10), layer_range=(0, 0)
                         ).last_hidden_state
    reading = llama.apply({"params": params}, None, mask, model.query_positions(mask, 10), extra_kv=passages,
                          layer_range=(1, 3), hidden_states=hidden).logits
    got = model.read(params, ids, mask, passages, passage_slots=10).logits
    valid = QUERY_MASK.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(reading)[valid], atol=1e-5, rtol=0)
    blind = {i: (kk, v, jnp.zeros_like(m)) for i, (kk, v, m) in passages.items()}
    plain = llama.apply({"params": params}, ids, mask).logits
    np.testing.assert_allclose(np.asarray(model.read(params, ids, mask, blind, passage_slots=10).logits)[valid],
                               np.asarray(plain)[valid], atol=1e-4, rtol=0)
    assert np.abs(np.asarray(got)[valid] - np.asarray(plain)[valid]).max() > 1e-3


def test_passage_encodings(checkpoint):
    _, llama, params = checkpoint
    batch, k, l_max = PASSAGES.shape
    groups = LayerGroups(bottom_end=1, middle_end=2)
    states = {name: ImpragModel(llama, groups, passage_encoding=name).passage_states(
        params, jnp.asarray(PASSAGES), jnp.asarray(PASSAGE_MASK)) for name in ("concatenated", "segmented",
                                                                                 "independent")}
    counts = PASSAGE_MASK.sum(axis=2)
    for row in range(batch):
        for j in range(k):
            ids = PASSAGES[row, j][None, :counts[row, j]]
            start = counts[row, :j].sum()
            for name, offset in (("segmented", start), ("independent", 0)):
                alone = llama.apply({"params": params}, jnp.asarray(ids), None,
                                    jnp.arange(ids.shape[1])[None] + offset, return_qk_layers=groups.middle)
                for layer in groups.middle:
                    keys, values, slot_mask = states[name][layer]
                    got = slice(j * l_max, j * l_max + counts[row, j])
                    np.testing.assert_allclose(np.asarray(keys[row, got]), np.asarray(alone.key_states[layer][0]),
                                               atol=1e-5, rtol=0, err_msg=f"{name} row {row} passage {j}")
                    np.testing.assert_allclose(np.asarray(values[row, got]),
                                               np.asarray(alone.value_states[layer][0]), atol=1e-5, rtol=0)
                    np.testing.assert_array_equal(np.asarray(slot_mask), PASSAGE_MASK.reshape(batch, -1))
    # Concatenated: each passage reads the ones before it, so the second passages' states differ from segmented.
    second = slice(l_max, l_max + 2)
    concatenated, segmented = states["concatenated"][2][0], states["segmented"][2][0]
    np.testing.assert_allclose(np.asarray(concatenated[:, :l_max][PASSAGE_MASK[:, 0] > 0]),
                               np.asarray(segmented[:, :l_max][PASSAGE_MASK[:, 0] > 0]), atol=1e-5, rtol=0)
    assert np.abs(np.asarray(concatenated[:, second]) - np.asarray(segmented[:, second])).max() > 1e-3


@pytest.mark.slow  # about 26 s: decoding step by step against a full pass per token
def test_cached_generation_with_passages_equals_repeated_full_passes(checkpoint):
    _, llama, params = checkpoint
    model = ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2))
    prompts = np.array([[0, 0, 12, 17, 4, 60, 9], [33, 44, 8, 19, 27, 50, 6], [0, 5, 9, 13, 7, 22, 11]])
    prompt_mask = (prompts > 0).astype(np.int32)
    passages = model.passage_states(params, jnp.asarray(PASSAGES), jnp.asarray(PASSAGE_MASK))
    new = 6
    generate = jax.jit(model.generate, static_argnames=("passage_slots", "max_new_tokens", "eos_token"))
    got = np.asarray(generate(params, jnp.asarray(prompts), jnp.asarray(prompt_mask), passages, passage_slots=10,
                              max_new_tokens=new, eos_token=-1))
    ids, mask = prompts, prompt_mask
    for i in range(new):  # greedy by hand: the full model over the whole sequence each step
        logits = model.read(params, jnp.asarray(ids), jnp.asarray(mask), passages, passage_slots=10).logits
        token = np.asarray(jnp.argmax(logits[:, -1], axis=-1))
        ids, mask = np.concatenate([ids, token[:, None]], 1), np.concatenate([mask, np.ones((3, 1), np.int32)], 1)
    np.testing.assert_array_equal(got, ids[:, prompts.shape[1]:])


def test_bad_layer_groups_are_named(checkpoint):
    _, llama, _ = checkpoint
    with pytest.raises(ValueError, match="0 <= b <= t < 4"):
        ImpragModel(llama, LayerGroups(bottom_end=3, middle_end=2))
    with pytest.raises(ValueError, match="passage_encoding"):
        ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2), passage_encoding="parallel")


def test_candidate_states_serve_embeddings_and_independent_reading(checkpoint):
    _, llama, params = checkpoint
    batch, k, l_max = PASSAGES.shape
    model = ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2), passage_encoding="independent")
    flat, flat_mask = jnp.asarray(PASSAGES.reshape(-1, l_max)), jnp.asarray(PASSAGE_MASK.reshape(-1, l_max))
    embeddings, states = model.candidate_states(params, flat, flat_mask)
    np.testing.assert_allclose(np.asarray(embeddings), np.asarray(model.passage_embeddings(params, flat, flat_mask)),
                               atol=1e-6, rtol=0)
    joined = model.concatenate_candidates(states, batch)
    reference = model.passage_states(params, jnp.asarray(PASSAGES), jnp.asarray(PASSAGE_MASK))
    valid = PASSAGE_MASK.reshape(batch, -1).astype(bool)
    for layer in (1, 2):
        for got, want in zip(joined[layer][:2], reference[layer][:2]):
            np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-5, rtol=0)


def test_candidate_log_likelihoods_read_each_passage_alone(checkpoint):
    _, llama, params = checkpoint
    batch, k, l_max = PASSAGES.shape
    model = ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2))
    ids, mask = jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK)
    targets = jnp.asarray(np.roll(QUERIES, -1, axis=1))
    loss_mask = jnp.asarray(QUERY_MASK * (np.arange(QUERIES.shape[1]) >= 3))
    _, states = model.candidate_states(params, jnp.asarray(PASSAGES.reshape(-1, l_max)),
                                       jnp.asarray(PASSAGE_MASK.reshape(-1, l_max)))
    got = np.asarray(model.candidate_log_likelihoods(params, ids, mask, targets, loss_mask, states))
    assert got.shape == (batch, k)
    for j in range(k):  # by hand: read passage j alone, log-softmax, mean over the loss positions
        one = model.passage_states(params, jnp.asarray(PASSAGES[:, j:j + 1]), jnp.asarray(PASSAGE_MASK[:, j:j + 1]))
        logits = np.asarray(model.read(params, ids, mask, one, passage_slots=l_max).logits, np.float64)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
        want = (picked * np.asarray(loss_mask)).sum(1) / np.asarray(loss_mask).sum(1)
        np.testing.assert_allclose(got[:, j], want, atol=1e-4, rtol=0)


def test_heavy_hitters_keep_every_token_at_fraction_one_and_half_the_slots_at_one_half(checkpoint):
    """Keeping all tokens reorders nothing the reader can see (attention ignores the order of extra keys), so
    the logits equal reading the uncompressed states; at 0.5 each passage keeps ceil(n / 2) of its n tokens."""
    _, llama, params = checkpoint
    model = ImpragModel(llama, LayerGroups(bottom_end=1, middle_end=2))
    ids, mask = jnp.asarray(PASSAGES), jnp.asarray(PASSAGE_MASK)
    full = model.read(params, jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK), model.passage_states(params, ids, mask),
                      passage_slots=10).logits
    kept = model.read(params, jnp.asarray(QUERIES), jnp.asarray(QUERY_MASK),
                      model.heavy_hitter_states(params, ids, mask, 1.0), passage_slots=10).logits
    valid = QUERY_MASK.astype(bool)
    np.testing.assert_allclose(np.asarray(kept)[valid], np.asarray(full)[valid], atol=1e-5, rtol=0)
    half = model.heavy_hitter_states(params, ids, mask, 0.5)
    for keys, values, slots in half.values():
        assert keys.shape == (3, 2 * 3, 2, 8) and values.shape == keys.shape  # k = 2 passages x ceil(5 / 2)
        per_passage = np.asarray(slots).reshape(3, 2, 3).sum(-1)
        np.testing.assert_array_equal(per_passage, np.ceil(PASSAGE_MASK.sum(-1) / 2))
