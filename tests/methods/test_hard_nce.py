"""Hard-negative NCE retrieval: mining, negatives mixing, loss, evaluation, candidate files, sharding."""
import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax import partitioning
from kipjax.data.demo import bundled_demo_dir
from kipjax.data.zeshel import read_mentions
from kipjax.methods.hard_nce import HardNCERetrieval
from kipjax.models.bert import BertConfig
from kipjax.retrieval import index
from kipjax.trainer import Trainer

TINY = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, add_pooler=False)


def make_method(**kwargs):
    args = dict(data_dir=bundled_demo_dir(), encoder_config=TINY, num_candidates=8, max_len=32,
                eval_ks=(1, 4, 16), encode_batch_size=128, chunk_size=64)
    args.update(kwargs)
    return HardNCERetrieval(**args)


@pytest.fixture(scope="module")
def method_and_params():
    gin.clear_config()
    method = make_method(negatives="mixed", hard_fraction=0.5)
    trainer = Trainer(method, model_dir="/tmp/unused-hard-nce", train_steps=1, batch_size=8)
    state = trainer.initial_state(trainer.device_batch(trainer.peek_batch()))
    return method, state.params


def test_mined_negatives_are_distinct_and_never_gold(method_and_params):
    method, params = method_and_params
    mined = np.asarray(method.mine_hard_negatives(params, jax.random.PRNGKey(0)))
    gold = method.train_mentions["gold_entity"]
    assert mined.shape == (len(gold), 7)
    assert (mined >= 0).all() and (mined < method.num_train_entities).all()
    assert not (mined == gold[:, None]).any()
    assert all(len(set(row)) == len(row) for row in mined)


def test_greedy_mining_takes_the_top_scoring_non_gold_entities(method_and_params):
    method, params = method_and_params
    greedy = make_method(hard_sampling="topk")
    mined = np.asarray(greedy.mine_hard_negatives(params, jax.random.PRNGKey(0)))[:16]
    mention_vecs, _ = greedy.encode_table(params, {k: v[:16] for k, v in greedy.train_mentions.items()},
                                          entities=False)
    entity_vecs, _ = greedy.encode_table(params, greedy.train_entities, entities=True)
    scores = np.array(mention_vecs[:, 0] @ entity_vecs[:, 0].T)  # dual: [CLS] . [CLS]
    gold = greedy.train_mentions["gold_entity"][:16]
    scores[np.arange(16), gold] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(np.sort(mined, 1), np.sort(expected, 1))


def test_mixed_negatives_keep_the_hard_share(method_and_params):
    method, _ = method_and_params
    n = len(method.train_mentions["gold_entity"])
    method.hard_negatives = jnp.tile(jnp.arange(100, 107, dtype=jnp.int32), (n, 1))
    batch = {"gold_entity": jnp.zeros((4,), jnp.int32), "example_index": jnp.arange(4, dtype=jnp.int32),
             "tables": method.tables()}
    negs = np.asarray(method.sample_negatives(batch, jax.random.PRNGKey(1)))
    # round(0.5 * 7) = 4 leading hard negatives, then 3 random ones that are neither gold nor repeats.
    np.testing.assert_array_equal(negs[:, :4], np.tile(np.arange(100, 104), (4, 1)))
    assert not (negs[:, 4:] == 0).any()
    assert all(len(set(row)) == 7 for row in negs)


def test_loss_is_nce_over_gold_and_negatives(method_and_params):
    method, params = method_and_params
    examples = method.train_examples()
    batch = {k: jnp.asarray(v[:4]) for k, v in examples.items()}
    batch["example_index"] = jnp.arange(4, dtype=jnp.int32)
    batch["tables"] = method.tables()
    loss, metrics = method.loss(params, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert 0.0 <= float(metrics["candidate_accuracy"]) <= 1.0


def test_evaluate_restricts_retrieval_to_the_mentions_world(method_and_params):
    method, params = method_and_params
    ranked = method.retrieve(params, method.eval_mentions, method.eval_entities, 16)
    worlds = method.eval_entities["entity_world"]
    valid = ranked >= 0
    assert (worlds[ranked[valid]] == np.broadcast_to(method.eval_mentions["world"][:, None], ranked.shape)[valid]).all()
    metrics = method.evaluate(params)
    assert metrics["recall@1"] <= metrics["recall@4"] <= metrics["recall@16"] <= 1.0
    assert metrics["unnormalized_accuracy"] >= 0.0


def test_write_candidates_names_documents(method_and_params, tmp_path):
    method, params = method_and_params
    path = tmp_path / "candidates_val.json"
    method.write_candidates(params, "val", str(path), k=5)
    lines = [json.loads(line) for line in open(path)]
    mentions = read_mentions(bundled_demo_dir(), "val")
    assert [r["mention_id"] for r in lines] == [m.mention_id for m in mentions]
    assert all(len(r["candidates"]) == 5 and isinstance(r["candidates"][0], str) for r in lines)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["poly", "som"])
def test_other_score_functions_train(kind, tmp_path):
    method = make_method(score_kind=kind, num_vectors=4, negatives="hard")
    trainer = Trainer(method, model_dir=str(tmp_path), train_steps=2, batch_size=8, eval_at_start=False)
    _, metrics = trainer.fit()
    assert np.isfinite(metrics["loss"])


@pytest.mark.slow
def test_sharded_bi_encoder_step_matches_single_device(tmp_path):
    def run(mesh, name):
        method = make_method(negatives="random")
        trainer = Trainer(method, model_dir=str(tmp_path / name), train_steps=2, batch_size=8, mesh=mesh,
                          eval_at_start=False)
        state, metrics = trainer.fit()
        return jax.device_get(state.params), metrics["loss"]

    p1, l1 = run(partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1]), "one")
    p8, l8 = run(partitioning.make_mesh({"data": 2, "fsdp": 1, "tensor": 4}), "eight")
    assert l1 == pytest.approx(l8, abs=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_export_index_matches_exact_search(method_and_params, tmp_path):
    method, params = method_and_params
    report = method.export_index(params, "val", str(tmp_path), k=10)
    embeddings = np.load(tmp_path / "embeddings.npy")
    entities = json.load(open(tmp_path / "entities.json"))
    assert embeddings.shape == (len(entities), TINY.hidden_size) == (report["num_entities"], 32)
    # Few hundred entities: ScaNN falls back to brute force, so its top-10 scores equal exact search's
    # (ids may differ only between near-tied entities of an untrained model, hence the loose id overlap).
    assert report["scann_recall@10_vs_exact"] >= 0.98
    mentions, _, _, _ = method._split_records("val")
    queries = np.asarray(method.encode_table(params, mentions, entities=False)[0][:, 0], np.float32)
    scores, ids = index.ScannIndex.load(str(tmp_path / "scann")).search(queries, 10)
    exact = -np.sort(-(queries @ embeddings.T), axis=1)[:, :10]
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(queries @ embeddings.T, ids, 1), scores, rtol=1e-5, atol=1e-4)


def test_the_zeshel_task_feeds_the_trainer_the_methods_own_examples():
    """quickstart.gin trains from `demo_zeshel_retrieval`: its rows, looked up by `mention_index`, are the
    method's featurized mentions, so mined negatives (indexed by row) line up with them."""
    import tasks.zeshel  # noqa: F401  (registers the tasks)
    gin.clear_config()
    gin.bind_parameter("demo_zeshel_settings.max_len", 32)
    method = make_method()
    trainer = Trainer(method, model_dir="/tmp/unused-hard-nce", train_steps=1, batch_size=8,
                      mixture_or_task_name="demo_zeshel_retrieval")
    examples = method.train_examples()
    for _ in range(3):
        batch = trainer.next_batch()
        assert set(batch) == {"mention_input_ids", "mention_attention_mask", "gold_entity", "example_index"}
        for key, values in batch.items():
            if key != "example_index":
                np.testing.assert_array_equal(values, examples[key][batch["example_index"]])
    gin.clear_config()
