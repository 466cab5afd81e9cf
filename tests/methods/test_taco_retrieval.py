"""TACO's method on the bundled demo: batch layout, negatives, the per-task loss, mining, evaluation."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from kipjax.methods.taco import data as taco_data
from kipjax.methods.taco.retrieval import TacoRetrieval, pick_negatives, task_rows
from kipjax.metrics.kilt import retrieval_scores
from kipjax.models.t5 import T5Config

TINY = T5Config(vocab_size=1664, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, dropout_rate=0.0)


@pytest.fixture(scope="module")
def method():
    return TacoRetrieval(data=taco_data.demo_kilt_data(), batch_size=16, model_config=TINY, negative_pool=4,
                         hard_negatives=2, warmup_epochs=1, episodes=2, episode_epochs=1, eval_max_queries=20)


@pytest.fixture(scope="module")
def params(method):
    return nn.unbox(method.init(jax.random.PRNGKey(0), {"query_input_ids": jnp.ones((1, 8), jnp.int32)}))


def test_task_rows_follow_the_host_major_task_minor_layout():
    assert task_rows([4, 2], 0, 1).tolist() == [0, 1, 2, 3] and task_rows([4, 2], 1, 1).tolist() == [4, 5]
    # two hosts, each holding 2 + 1 rows: [h0: t0 t0 t1][h1: t0 t0 t1]
    assert task_rows([4, 2], 0, 2).tolist() == [0, 1, 3, 4] and task_rows([4, 2], 1, 2).tolist() == [2, 5]


def test_negatives_come_from_the_pool_and_are_topped_up_outside_the_gold():
    rng = np.random.default_rng(0)
    pool = np.array([[5, 6, 7, -1], [9, -1, -1, -1], [-1, -1, -1, -1]])
    gold = [np.array([1]), np.array([2, 3]), np.array([0, 1, 2, 3, 4, 5, 6, 7])]
    picked = pick_negatives(pool, 2, 10, gold, rng)
    assert set(picked[0]) <= {5, 6, 7} and len(set(picked[0])) == 2
    assert 9 in picked[1] and len(set(picked[1])) == 2 and not set(picked[1]) & {2, 3}
    assert set(picked[2]) <= {8, 9} and len(set(picked[2])) == 2


def test_stages_are_warmup_then_episodes_with_adaptive_learning_last(method):
    stages = method.stages()
    assert [s.name for s in stages] == ["warmup", "episode_1", "episode_2"]
    assert [s.epochs for s in stages] == [1, 1, 1]
    assert stages[0].gradient_combiner is None and stages[1].gradient_combiner is None
    combiner = stages[2].gradient_combiner(num_tasks=4, total_steps=100)
    assert combiner.tau == 2.0 and combiner.burn_in_steps == 10
    method.adaptive_episodes, method.tau_decay = 2, 3.0  # two adaptive episodes, the earlier one hotter
    combiners = [s.gradient_combiner for s in method.stages()]
    method.adaptive_episodes, method.tau_decay = 1, 1.0
    assert combiners[0] is None and combiners[1](num_tasks=4).tau == 6.0 and combiners[2](num_tasks=4).tau == 2.0


def test_bm25_pools_leave_out_the_gold_rows(method):
    pools = method.bm25_pools()
    for pool, task in zip(pools, method.data.tasks):
        assert pool.shape == (len(task.train), 4)
        for row, gold in zip(pool[:200], task.gold_rows):
            assert (row >= 0).all() and not set(row.tolist()) & set(gold.tolist())
    # BM25 finds lexically close passages: mostly other passages sharing query words, so non-trivial negatives
    texts = method.data.corpus.texts
    task = method.data.tasks[0]
    overlap = np.mean([len(set(task.train[i].input.lower().split()) & set(texts[pools[0][i, 0]].lower().split()))
                       for i in range(100)])
    assert overlap >= 2


def test_the_batch_gathers_positive_and_picked_negative_tokens(method):
    method.pools = method.bm25_pools()
    method.on_epoch_start(None, 0, jax.random.PRNGKey(3))
    features = {"query_input_ids": np.array([[5, 1, 0], [6, 7, 1], [8, 1, 0]]), "positive": np.array([10, 11, 12]),
                "query_index": np.array([4, 0, 7]), "task_index": np.array([1, 0, 0])}
    batch = method.batch_from_features(features)
    # rows reordered task after task (stable): the task-0 rows first
    assert batch["query_input_ids"].tolist() == [[6, 7, 1], [8, 1, 0], [5, 1, 0]]
    expected_rows = [[11, *method.picked[0][0]], [12, *method.picked[0][7]], [10, *method.picked[1][4]]]
    tokens = method.data.passage_ids[np.array(expected_rows)]
    np.testing.assert_array_equal(batch["passage_input_ids"], tokens)
    assert batch["passage_input_ids"].dtype == np.int32 and batch["passage_mask"].dtype == np.int32
    np.testing.assert_array_equal(batch["passage_mask"], tokens != 0)


@pytest.mark.slow
def test_task_loss_is_nce_over_the_tasks_own_passages(method, params):
    rng = np.random.default_rng(1)
    sizes = method.batch_sizes
    total = sum(sizes)
    length, group = 52, 3
    queries = np.where(np.arange(length) < 6, rng.integers(3, 1600, (total, length)), 0)
    queries[:, 5] = 1
    passages = method.data.passage_ids[rng.integers(0, 1051, (total, group))]
    masks = passages != 0  # passage tokens are never the pad id
    batch = {"query_input_ids": jnp.asarray(queries), "passage_input_ids": jnp.asarray(passages),
             "passage_mask": jnp.asarray(masks.astype(np.int32))}
    task = 1

    @jax.jit
    def losses_of(params, batch, rng):  # the mean loss and each task's, in one compilation
        mean, metrics = method.loss(params, batch, rng)
        return mean, metrics, jnp.stack([method.task_loss(params, batch, k, jax.random.fold_in(rng, k))[0]
                                         for k in range(4)])

    mean_loss, metrics, losses = losses_of(params, batch, jax.random.PRNGKey(0))
    loss = losses[task]
    rows = task_rows(sizes, task, 1)
    q = np.asarray(jax.jit(method._encode)(params, jnp.asarray(queries[rows, :20]), jnp.asarray((queries[rows, :20] != 0)
                                                                                        .astype(np.int32))))
    flat = passages[rows].reshape(-1, passages.shape[-1])
    p = np.asarray(jax.jit(method._encode)(params, jnp.asarray(flat), jnp.asarray(masks[rows].reshape(len(flat), -1)
                                                                          .astype(np.int32))))
    scores = q @ p.T
    log_probs = scores - np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1, keepdims=True)) - \
        scores.max(1, keepdims=True)
    expected = -np.mean(log_probs[np.arange(len(rows)), np.arange(len(rows)) * group])
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert float(mean_loss) == pytest.approx(float(np.mean(np.asarray(losses))), rel=1e-5) and "task_3/accuracy" in metrics


@pytest.mark.slow
def test_mined_pools_are_the_models_top_non_gold_passages(method, params):
    pools = method.mine_pools(params)
    passages = method.encode_passages(params)[0][:len(method.data.passage_ids)]
    task = method.data.tasks[2]
    queries = np.asarray(method.encode_queries(params, 2, task.train_query_ids[:20], "q"))
    for i in range(20):
        scores = passages @ queries[i]
        scores[task.gold_rows[i]] = -np.inf
        best = np.argsort(-scores, kind="stable")[:4]
        np.testing.assert_allclose(scores[pools[2][i]], scores[best], rtol=1e-5)


def test_evaluation_scores_kilt_guesses_of_the_retrieved_pages(method, params, tmp_path):
    method.guess_dir = str(tmp_path)
    method.encoding_dir = str(tmp_path / "corpus")
    metrics = method.evaluate(params)
    method.guess_dir = None
    blocks = sorted((tmp_path / "corpus" / "host_00000-of-00001").glob("block_*.npy"))
    written = [b.stat().st_mtime_ns for b in blocks]
    guesses = method.guesses(params)  # the same passage encoder: its corpus encoding is read back, not redone
    method.encoding_dir = None
    assert len(blocks) == 1 and [b.stat().st_mtime_ns for b in blocks] == written
    assert set(metrics) == {"rprec_avg", *(f"{m}_{t}" for t in ("qa", "fc", "sf", "el")
                                           for m in ("rprec", "success_rate@5"))}
    for task in method.data.tasks:
        rows = guesses[task.task.name]
        assert len(rows) == 20 and len(rows[0]["output"][0]["provenance"]) == 100
        assert metrics[f"rprec_{task.task.name}"] == retrieval_scores(task.dev_rows[:20], rows)["Rprec"]
        assert (tmp_path / f"{task.task.name}-dev-guess.jsonl").read_text().count("\n") == 20
    assert metrics["rprec_avg"] == pytest.approx(np.mean([metrics[f"rprec_{t}"] for t in ("qa", "fc", "sf", "el")]))


def test_configuration_errors(method):
    gin.clear_config()
    with pytest.raises(ValueError, match="exactly one of"):
        TacoRetrieval(data=taco_data.demo_kilt_data(), batch_size=16)
    with pytest.raises(ValueError, match="vocab_size 64 is smaller"):
        TacoRetrieval(data=taco_data.demo_kilt_data(), batch_size=16,
                      model_config=T5Config(**{**TINY.__dict__, "vocab_size": 64}))
    with pytest.raises(ValueError, match="query_encoder must be one of"):
        TacoRetrieval(data=taco_data.demo_kilt_data(), batch_size=16, model_config=TINY, query_encoder="tied")


@pytest.mark.slow
def test_scann_search_retrieves_what_exact_search_does(method, params):
    """The demo's 1,051 passages are below ScaNN's brute-force threshold: both searches must agree."""
    passages = method.encode_passages(params)
    task = method.data.tasks[3]
    queries = method.encode_queries(params, 3, task.train_query_ids[:16], "q")
    gold = method.gold[3][:16]
    exact = method.search(queries, passages, 8, gold)
    method.search_kind = "scann"
    approximate = method.search(queries, passages, 8, gold)
    method.search_kind = "exact"
    np.testing.assert_allclose(approximate[0], exact[0], rtol=1e-5)
    # the same passages, up to the order of near-ties (the two compute dot products in different orders)
    rescored = np.einsum("qh,qkh->qk", queries, passages[0][approximate[1]])
    np.testing.assert_allclose(rescored, exact[0], rtol=1e-5)
    assert (approximate[1] == exact[1]).mean() > 0.9


@pytest.mark.slow
def test_per_task_query_encoders_are_copies_each_trained_only_by_its_task(method):
    """Table 4.3's task query encoder: one query encoder per task plus a shared passage encoder, all starting
    from the same weights; a task's loss reaches only its own query encoder and the passage encoder."""
    per_task = TacoRetrieval(data=taco_data.demo_kilt_data(), batch_size=16, model_config=TINY,
                             query_encoder="per_task")
    params = nn.unbox(per_task.init(jax.random.PRNGKey(0), {"query_input_ids": jnp.ones((1, 8), jnp.int32)}))
    names = [t.task.name for t in per_task.data.tasks]
    assert sorted(params) == sorted(["passages"] + [f"queries_{n}" for n in names])
    for key in params:  # each a copy of the single shared model's initial weights
        jax.tree.map(np.testing.assert_array_equal, params[key], nn.unbox(method.init(
            jax.random.PRNGKey(0), {"query_input_ids": jnp.ones((1, 8), jnp.int32)})))
    rng = np.random.default_rng(0)
    total = sum(per_task.batch_sizes)
    queries = np.where(np.arange(52) < 6, rng.integers(3, 1600, (total, 52)), 0)
    passages = per_task.data.passage_ids[rng.integers(0, 1051, (total, 3))]
    batch = {"query_input_ids": jnp.asarray(queries), "passage_input_ids": jnp.asarray(passages),
             "passage_mask": jnp.asarray((passages != 0).astype(np.int32))}
    grads = jax.grad(lambda p: per_task.task_loss(p, batch, 1, jax.random.PRNGKey(1))[0])(params)
    norms = {key: float(optax.global_norm(g)) for key, g in grads.items()}
    assert norms["passages"] > 0 and norms[f"queries_{names[1]}"] > 0
    assert all(norms[f"queries_{n}"] == 0 for i, n in enumerate(names) if i != 1)
    # encoding a task's queries uses that task's encoder: perturbing another task's leaves changes nothing
    ids = per_task.data.tasks[1].train_query_ids[:4]
    before = np.asarray(per_task.encode_queries(params, 1, ids, "q"))
    shifted = {**params, f"queries_{names[0]}": jax.tree.map(lambda x: x + 1.0, params[f"queries_{names[0]}"])}
    np.testing.assert_array_equal(np.asarray(per_task.encode_queries(shifted, 1, ids, "q")), before)
    shifted = {**params, f"queries_{names[1]}": jax.tree.map(lambda x: x + 1.0, params[f"queries_{names[1]}"])}
    assert not np.allclose(np.asarray(per_task.encode_queries(shifted, 1, ids, "q")), before)
