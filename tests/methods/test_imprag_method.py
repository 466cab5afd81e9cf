"""The Imprag method on the bundled demo corpus: training sequences, candidate sets drawn from the pseudo-labels,
the batch's passages, the objective's switch from warmup to self-distillation, a trainer run, and evaluation
with and without retrieval."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax import partitioning
from kipjax.data.demo_imprag import demo_imprag_path
from kipjax.data.demo_kilt import demo_kilt_path
from kipjax.data.kilt import read_passages
from kipjax.methods.imprag.method import Imprag
from kipjax.methods.imprag.model import LayerGroups
from kipjax.methods.imprag.pseudo_labels import pseudo_label_path
from kipjax.models.llama import LlamaConfig

QA, FC = f"kilt:{demo_kilt_path('qa-train-kilt.jsonl')}", f"kilt:{demo_kilt_path('fc-dev-kilt.jsonl')}"
PER_DATASET = 12
POOL = 60  # the fake teacher ranks 60 passages for every query


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory):
    """A teacher ranking the passages of the query on line i as rows 3*i, 3*i + 1, ... (each list differs)."""
    out = tmp_path_factory.mktemp("pseudo_labels")
    ids = [str(i) for i in read_passages(demo_kilt_path("passages.tsv")).ids]
    lines = []
    with open(demo_kilt_path("qa-train-kilt.jsonl")) as f:
        for i, line in enumerate(f):
            ranking = [ids[(3 * i + r) % len(ids)] for r in range(POOL)]
            lines.append(json.dumps({"id": json.loads(line)["id"], "passages": ranking}))
    pseudo_label_path(out, QA).write_text("\n".join(lines) + "\n")
    return out


def qa_lines():
    """The demo's qa training records and each id's line number."""
    with open(demo_kilt_path("qa-train-kilt.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return records, {r["id"]: i for i, r in enumerate(records)}


def make_method(labels_dir, **kwargs):
    config = LlamaConfig(vocab_size=1680, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    settings = dict(passages_file=demo_kilt_path("passages.tsv"), train_files=[QA], eval_files=[QA, FC],
                    pseudo_labels_dir=str(labels_dir), tokenizer_dir=demo_imprag_path("tokenizer"),
                    model_config=config, groups=LayerGroups(bottom_end=0, middle_end=1),
                    examples_per_dataset=PER_DATASET, positives=2, hard_negatives=3, hard_ranks=(10, 50),
                    warmup_epochs=1, plain_text_share=0.25, max_prompt_tokens=48, max_response_tokens=8,
                    passage_tokens=64, top_k=3, eval_limit=4, eval_batch_size=4, max_new_tokens=4)
    settings.update(kwargs)
    return Imprag(**settings)


@pytest.fixture(scope="module")
def method(labels_dir):
    return make_method(labels_dir)


def test_training_rows_are_prompt_response_and_plain_text(method):
    arrays = method.train_examples()
    tokenizer = method.tokenizer
    assert len(method.training) == PER_DATASET + 4  # 25% plain text: 4 of 16 rows
    first = method.training[0]
    records, line_of = qa_lines()
    record = records[line_of[first.id]]
    assert first.prompt == f"Q: {record['input']} A:" and first.response == record["output"][0]["answer"]
    row = arrays["input_ids"][0][arrays["attention_mask"][0] > 0]
    targets = arrays["targets"][0][arrays["loss_mask"][0] > 0]
    assert tokenizer.decode(row.tolist()) == f"{first.prompt} {first.response}"
    assert tokenizer.decode(targets.tolist()) == f"{first.response} </s>"
    assert tokenizer.decode([int(row[arrays["query_index"][0]])]) == "A:"  # the cue: the query embedding's token
    plain = method.training[-1]
    assert plain.task == "plain_text" and not plain.retrieve and plain.prompt == ""
    assert arrays["loss_mask"][-1].sum() == arrays["attention_mask"][-1].sum()  # every next token is a target


def test_each_training_file_gives_a_seeded_random_subset_in_file_order(labels_dir, method):
    records, _ = qa_lines()
    drawn = np.sort(np.random.default_rng([0, 0]).choice(len(records), size=PER_DATASET, replace=False))
    assert [e.id for e in method.training[:PER_DATASET]] == [records[i]["id"] for i in drawn]
    first = make_method(labels_dir, subset_seed=None)
    assert [e.id for e in first.training[:PER_DATASET]] == [r["id"] for r in records[:PER_DATASET]]
    other = make_method(labels_dir, subset_seed=1)
    assert [e.id for e in other.training[:PER_DATASET]] != [e.id for e in method.training[:PER_DATASET]]


def test_epochs_draw_candidates_from_the_ranking_and_switch_objectives(method):
    method.on_epoch_start(None, 0, jax.random.PRNGKey(0))
    first_draw = method.candidates.copy()
    _, line_of = qa_lines()
    for i in range(PER_DATASET):
        line = line_of[method.training[i].id]
        ranking = [(3 * line + r) % len(method.passage_ids) for r in range(POOL)]
        assert list(method.candidates[i, :2]) == ranking[:2]
        assert set(method.candidates[i, 2:]) <= set(ranking[9:50]) and len(set(method.candidates[i, 2:])) == 3
        assert list(method.positive[i]) == [True, True, False, False, False]
    assert (method.candidates[PER_DATASET:] == -1).all() and not method.positive[PER_DATASET:].any()
    assert not method.distill
    method.on_epoch_start(None, 1, jax.random.PRNGKey(0))
    assert method.distill and not (method.candidates[:PER_DATASET, 2:] == first_draw[:PER_DATASET, 2:]).all()
    np.testing.assert_array_equal(method.candidates[:PER_DATASET, :2], first_draw[:PER_DATASET, :2])


def test_candidates_restored_from_a_checkpoint_are_redrawn_at_the_next_epoch(labels_dir, method):
    """A resumed run gets its method state back as jax arrays (replicated, as checkpoints hold it; numpy reads
    them read-only), and its next epoch redraws the candidates in place as an uninterrupted run does."""
    method.on_epoch_start(None, 0, jax.random.PRNGKey(0))
    resumed = make_method(labels_dir)
    resumed.load_state_dict(partitioning.put_replicated(method.state_dict(), partitioning.make_mesh()))
    for _ in range(2):
        for name, value in method.state_dict().items():
            np.testing.assert_array_equal(resumed.state_dict()[name], value)
            assert resumed.state_dict()[name].dtype == value.dtype
        for run in (method, resumed):
            run.on_epoch_start(None, 1, jax.random.PRNGKey(0))
    assert resumed.distill


def test_batches_carry_the_candidates_passage_tokens(method):
    method.on_epoch_start(None, 0, jax.random.PRNGKey(0))
    arrays = method.train_examples()
    rows = np.array([3, PER_DATASET + 1])
    batch = method.batch_from_features({k: v[rows] for k, v in arrays.items()})
    np.testing.assert_array_equal(batch["passage_ids"][0, 1], method.passage_table[method.candidates[3, 1]])
    assert batch["candidate_valid"][0].all() and not batch["candidate_valid"][1].any()
    assert (batch["passage_ids"][1] == 0).all() and (batch["passage_mask"][1] == 0).all()
    assert batch["distill"].tolist() == [0, 0]


@pytest.mark.parametrize("distill", [False, True], ids=["warmup", "self_distillation"])
def test_loss_is_finite_and_differentiable_in_both_phases(method, distill):
    method.on_epoch_start(None, int(distill), jax.random.PRNGKey(0))
    arrays = method.train_examples()
    batch = {k: jnp.asarray(v) for k, v in method.batch_from_features({k: v[:6] for k, v in arrays.items()}).items()}
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch))
    (loss, metrics), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(params, batch,
                                                                                  jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and float(metrics["retrieval_loss"]) > 0
    np.testing.assert_allclose(float(loss), float(metrics["generation_loss"]) + float(metrics["retrieval_loss"]),
                               rtol=1e-5)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_evaluation_reports_each_task_with_and_without_retrieval(method, tmp_path):
    method.predictions_dir = str(tmp_path)
    arrays = method.train_examples()
    params = nn.unbox(method.init(jax.random.PRNGKey(0), {k: jnp.asarray(v[:1]) for k, v in arrays.items()}))
    with partitioning.activate(partitioning.make_mesh(), partitioning.DEFAULT_RULES):
        metrics = method.evaluate(params)
    assert set(metrics) == {"qa/exact_match", "qa/answer_recall@1", "qa/answer_recall@3",
                            "qa/no_retrieval_exact_match", "fc/exact_match", "fc/no_retrieval_exact_match",
                            "average/exact_match", "average/answer_recall@3", "average/no_retrieval_exact_match"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    rows = [json.loads(line) for line in (tmp_path / "qa-train-kilt.jsonl.predictions.jsonl").open()]
    assert len(rows) == 4 and all(len(r["passages"]) == 3 for r in rows)
    assert all(p in method.passage_texts for r in rows for p in r["passages"])


def test_missing_pseudo_labels_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="kipjax.methods.imprag.pseudo_labels"):
        make_method(tmp_path)


def test_the_corpus_token_table_is_cached_and_memory_mapped(labels_dir, method, tmp_path):
    first = make_method(labels_dir, token_cache_dir=str(tmp_path))
    second = make_method(labels_dir, token_cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("passage_tokens-*.npy"))) == 1
    assert isinstance(second.passage_table, np.memmap)
    np.testing.assert_array_equal(second.passage_table, method.passage_table)
    np.testing.assert_array_equal(first.passage_table, method.passage_table)


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["heavy_hitter", "product_quantization"])
def test_evaluation_reads_compressed_passage_states(labels_dir, compression):
    method = make_method(labels_dir, passage_kv_compression=compression, pq_subquantizers=4, pq_bits=4,
                         pq_training_passages=16, eval_limit=2)
    arrays = method.train_examples()
    params = nn.unbox(method.init(jax.random.PRNGKey(0), {k: jnp.asarray(v[:1]) for k, v in arrays.items()}))
    prompts, top = method.eval_sets[0].prompts, np.array([[0, 1, 2], [3, 4, 5]])
    tokens = method.passage_table[top].astype(np.int32)
    ids, mask = jnp.asarray(tokens), jnp.asarray((tokens != 0).astype(np.int32))
    quantizers = method.train_quantizers(params) if compression == "product_quantization" else None
    states = method._reading_states(params, ids, mask, quantizers)
    plain = method.model.passage_states(params, ids, mask)
    for layer, (keys, values, slots) in states.items():
        if compression == "heavy_hitter":  # half of each passage's tokens, per passage
            np.testing.assert_array_equal(np.asarray(slots).reshape(2, 3, -1).sum(-1),
                                          np.ceil((tokens != 0).sum(-1) / 2))
        else:  # the decoded codes: near the states, not equal to them
            error = np.abs(np.asarray(keys) - np.asarray(plain[layer][0]))[np.asarray(slots) > 0]
            assert 0 < error.mean() < 0.5 * np.abs(np.asarray(plain[layer][0])).mean()
    with partitioning.activate(partitioning.make_mesh(), partitioning.DEFAULT_RULES):
        metrics = method.evaluate(params)
    assert "qa/exact_match" in metrics and "average/no_retrieval_exact_match" in metrics
    assert len(method.answer(params, prompts, top, quantizers)) == 2


def test_unknown_compression_is_named(labels_dir):
    with pytest.raises(ValueError, match="passage_kv_compression must be one of"):
        make_method(labels_dir, passage_kv_compression="zip")
