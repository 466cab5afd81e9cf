"""LMRC stage 1: `*`-marked features, long-document chunk merging, localized context pooling against a numpy
re-derivation, the ATLOP loss, and the candidate metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax.data.demo_docred import demo_docred_path
from kipjax.data.docred import DocredDocument, Entity, Fact, Mention, read_candidate_pairs
from kipjax.methods.lmrc import rcp, rcp_features
from kipjax.models.bert import BertConfig
from kipjax.models.hf import load_tokenizer


def doc():
    sents = [["Greta", "Quist", "was", "born", "in", "Falkirsk", "."], ["Quist", "was", "in", "Falkirsk", "Istrana", "."]]
    greta = Entity((Mention("Greta Quist", 0, (0, 2), "PER"), Mention("Quist", 1, (0, 1), "PER")))
    place = Entity((Mention("Falkirsk", 0, (5, 6), "LOC"), Mention("Falkirsk Istrana", 1, (3, 5), "LOC")))
    istrana = Entity((Mention("Istrana", 1, (4, 5), "LOC"),))
    return DocredDocument("t", sents, [greta, place, istrana], [Fact(0, 1, "P19", (0,))])


def test_mentions_are_wrapped_in_markers_and_located_by_their_opening_one():
    tokenizer = load_tokenizer(demo_docred_path("bert_tokenizer"))
    features = rcp_features.featurize_document(doc(), tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(features.ids)
    assert tokens == ["*", "greta", "quist", "*", "was", "born", "in", "*", "falkirsk", "*", ".",
                      "*", "quist", "*", "was", "in", "*", "falkirsk", "*", "istrana", "*", "."]
    # One marker per position, as in ATLOP: "Istrana" and "Falkirsk Istrana" share their closing `*`.
    assert features.mention_positions == [[0, 11], [7, 16], [18]]
    assert features.pairs == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert features.labels == [1, 0, 0, 0, 0, 0]
    arrays = rcp_features.pad_documents([features], max_length=12, max_entities=4, max_mentions=2)
    assert arrays["mention_positions"][0].tolist() == [[0, 11], [7, -1], [-1, -1], [-1, -1]]  # past 12: dropped
    assert arrays["pair_mask"][0].sum() == 6 and arrays["pair_labels"][0, :6].tolist() == [1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="3 entities; max_entities is 2"):
        rcp_features.pad_documents([features], 32, 2, 2)


def test_chunk_starts_cover_the_document():
    assert rcp.chunk_starts(10, 16, 8) == [0]
    assert rcp.chunk_starts(20, 8, 4) == [0, 4, 8, 12]
    assert rcp.chunk_starts(21, 8, 6) == [0, 6, 12, 13]


def test_long_documents_merge_chunk_states_and_attention_as_atlop():
    rng = np.random.default_rng(0)
    b, length, window, stride, heads, dim = 2, 11, 6, 3, 2, 4
    ids = jnp.asarray(rng.integers(5, 50, (b, length)))
    mask = jnp.ones((b, length), jnp.int32).at[1, 9:].set(0)
    table = rng.normal(size=(64, dim)).astype(np.float32)

    def encode(chunk_ids, chunk_mask):  # a state depends on token and position; attention on the pair
        n, width = chunk_ids.shape
        states = jnp.asarray(table)[chunk_ids] + jnp.arange(width)[None, :, None]
        logits = jnp.sin(chunk_ids[:, None, :, None] * 1.0 + chunk_ids[:, None, None, :] * 0.3 + jnp.arange(heads)[
            None, :, None, None])
        logits = jnp.where(chunk_mask[:, None, None, :] > 0, logits, -1e9)
        return states, jax.nn.softmax(logits, -1)

    states, attention = rcp.encode_long(encode, ids, mask, 1, 2, window, stride)
    # Independently: run each chunk through `encode` with [CLS] / [SEP] and average / sum-and-renormalise.
    ids_np, mask_np = np.asarray(ids), np.asarray(mask)
    for row in range(b):
        sum_states = np.zeros((length, dim))
        sum_att = np.zeros((heads, length, length))
        count = np.zeros(length)
        for s in rcp.chunk_starts(length, window, stride):
            real = int(mask_np[row, s:s + window].sum())
            chunk = np.array([[1, *ids_np[row, s:s + real], 2] + [0] * (window - real)])
            chunk_mask = np.array([[1] * (real + 2) + [0] * (window - real)])
            st, att = (np.asarray(x)[0] for x in encode(jnp.asarray(chunk), jnp.asarray(chunk_mask)))
            sum_states[s:s + real] += st[1:real + 1]  # only real positions are compared below
            sum_att[:, s:s + real, s:s + real] += att[:, 1:real + 1, 1:real + 1]
            count[s:s + window] += 1
        real_rows = mask_np[row].astype(bool)
        expected_att = sum_att / (sum_att.sum(-1, keepdims=True) + 1e-10)
        np.testing.assert_allclose(np.asarray(attention)[row][:, real_rows][:, :, real_rows],
                                   expected_att[:, real_rows][:, :, real_rows], atol=1e-5)
        np.testing.assert_allclose(np.asarray(states)[row][real_rows], (sum_states / count[:, None])[real_rows],
                                   atol=1e-5)
    np.testing.assert_allclose(np.asarray(attention).sum(-1)[np.asarray(mask, bool)[:, None].repeat(heads, 1)],
                               1.0, atol=1e-5)


def test_localized_context_pooling_matches_a_numpy_derivation():
    rng = np.random.default_rng(1)
    b, length, dim, heads = 1, 7, 8, 2
    states = rng.normal(size=(b, length, dim)).astype(np.float32)
    attention = rng.dirichlet(np.ones(length), size=(b, heads, length)).astype(np.float32)
    positions = np.array([[[0, 3], [5, -1], [2, -1]]], np.int32)
    heads_idx, tails_idx = np.array([[0, 2]], np.int32), np.array([[1, 0]], np.int32)
    head = rcp.PairHead(dim, block_size=4)
    params = head.init(jax.random.PRNGKey(0), states, attention, positions, heads_idx, tails_idx)
    logits = np.asarray(head.apply(params, states, attention, positions, heads_idx, tails_idx))
    p = nn.unbox(params)["params"]
    w = {k: (np.asarray(p[k]["kernel"]), np.asarray(p[k]["bias"])) for k in ("head_extractor", "tail_extractor",
                                                                               "bilinear")}
    ent, ent_att = [], []
    for mentions in positions[0]:
        real = mentions[mentions >= 0]
        ent.append(np.log(np.exp(states[0, real]).sum(0)))
        ent_att.append(attention[0][:, real].mean(1))  # [heads, L]
    for pair, (h, t) in enumerate(zip(heads_idx[0], tails_idx[0])):
        q = (ent_att[h] * ent_att[t]).mean(0)
        q = q / (q.sum() + 1e-5)
        context = q @ states[0]
        z_h = np.tanh(np.concatenate([ent[h], context]) @ w["head_extractor"][0] + w["head_extractor"][1])
        z_t = np.tanh(np.concatenate([ent[t], context]) @ w["tail_extractor"][0] + w["tail_extractor"][1])
        bilinear = np.concatenate([np.outer(z_h[g:g + 4], z_t[g:g + 4]).ravel() for g in range(0, dim, 4)])
        np.testing.assert_allclose(logits[0, pair], bilinear @ w["bilinear"][0] + w["bilinear"][1], rtol=1e-4,
                                   atol=1e-5)


def test_adaptive_threshold_loss_equals_binary_cross_entropy_for_two_classes():
    logits = jax.random.normal(jax.random.PRNGKey(0), (50, 2)) * 3
    labels = jax.random.bernoulli(jax.random.PRNGKey(1), 0.3, (50,)).astype(jnp.int32)
    atl = rcp.adaptive_threshold_loss(logits, jax.nn.one_hot(labels, 2))
    s = rcp.related_score(logits)
    bce = -(labels * jax.nn.log_sigmoid(s) + (1 - labels) * jax.nn.log_sigmoid(-s))
    np.testing.assert_allclose(atl, bce, rtol=1e-5, atol=1e-6)
    # Multi-class by hand: positives {1, 2} must each beat the threshold; the threshold must beat class 3.
    multi = jnp.array([[0.0, 1.0, 2.0, -1.0]])
    expected = (-(jax.nn.log_softmax(jnp.array([0.0, 1.0, 2.0]))[1:]).sum()
                - jax.nn.log_softmax(jnp.array([0.0, -1.0]))[0])
    np.testing.assert_allclose(rcp.adaptive_threshold_loss(multi, jnp.array([[0.0, 1.0, 1.0, 0.0]]))[0], expected,
                               rtol=1e-6)


def test_candidate_metrics_by_hand():
    labels = np.array([1, 1, 0, 0, 1, 0])
    proposed = np.array([True, False, True, False, True, False])
    assert rcp.candidate_metrics(labels, proposed) == {"candidate_recall": 2 / 3, "candidate_precision": 2 / 3,
                                                       "fraction_kept": 0.5}


@pytest.mark.slow
def test_method_trains_a_step_and_proposes_pairs_above_the_threshold(tmp_path):
    config = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, add_pooler=False)
    method = rcp.RelationCandidateProposal(
        train_file=demo_docred_path("dev.json"), eval_file=demo_docred_path("dev.json"),
        tokenizer_dir=demo_docred_path("bert_tokenizer"), encoder_config=config, max_length=126, window=64,
        stride=32, max_entities=14, max_mentions=8, block_size=16, threshold=0.4, eval_batch_size=16,
        candidates_file=str(tmp_path / "candidates.json"))
    batch = {k: v[:2] for k, v in method.train_examples().items()}
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch))
    loss, metrics = method.loss(params, batch, jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and 0 <= float(metrics["pair_accuracy"]) <= 1
    docs = method.eval_documents[:3]
    features = method.featurize(docs)
    probabilities = np.asarray(method.probabilities(params, features))
    proposed = method.propose(params, docs)
    for i, pairs in enumerate(proposed):
        real = features["pair_mask"][i]
        expected = {(int(h), int(t)) for h, t, p in zip(features["pair_heads"][i][real], features["pair_tails"][i][real],
                                                        probabilities[i][real]) if p > 0.4}
        assert set(pairs) == expected and all(h != t for h, t in pairs)
    metrics = method.evaluate(params)
    assert set(metrics) == {"candidate_recall", "candidate_precision", "fraction_kept"}
    # Evaluation hands its proposals to stage 2 through the candidates file.
    written = read_candidate_pairs(tmp_path / "candidates.json", method.eval_documents)
    assert written == method.propose(params, method.eval_documents)
    total = sum(len(d.entities) * (len(d.entities) - 1) for d in method.eval_documents)
    assert sum(map(len, written)) / total == pytest.approx(metrics["fraction_kept"])


def test_the_docred_rcp_task_feeds_the_trainer_the_methods_own_examples(assert_same_rows):
    """demo_rcp.gin trains from `demo_docred_rcp`: its rows are the method's own featurized documents."""
    import gin
    import tasks.docred  # noqa: F401  (registers the tasks)
    from kipjax.data.feed import SeqioFeed
    shape = dict(max_length=126, max_entities=14, max_mentions=8)
    config = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, add_pooler=False)
    method = rcp.RelationCandidateProposal(
        train_file=demo_docred_path("train_annotated.json"), eval_file=demo_docred_path("dev.json"),
        tokenizer_dir=demo_docred_path("bert_tokenizer"), encoder_config=config, window=64, stride=32,
        block_size=16, **shape)
    for name, value in shape.items():
        gin.bind_parameter(f"demo_docred_rcp_settings.{name}", value)
    own = method.train_examples()
    batch = method.batch_from_features(SeqioFeed("demo_docred_rcp", len(own["input_ids"])).peek())
    assert batch["pair_mask"].dtype == own["pair_mask"].dtype == bool
    assert_same_rows(batch, own)
