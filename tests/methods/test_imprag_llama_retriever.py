"""RA-DIT-Llama's retriever on the bundled demo corpus: Llama's bottom layers as a separately trained retriever,
its warmup and LM-supervised losses, a frozen reader, and the rankings it writes for the RA-IT recipe."""
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
from kipjax.methods.imprag import data
from kipjax.methods.imprag.in_context import InContextRag
from kipjax.methods.imprag.llama_retriever import LlamaRetriever
from kipjax.methods.imprag.model import ImpragModel, LayerGroups
from kipjax.methods.imprag.objectives import in_batch_nce_loss, self_distillation_loss
from kipjax.methods.imprag.pseudo_labels import pseudo_label_path
from kipjax.models.llama import LlamaConfig

QA, FC = f"kilt:{demo_kilt_path('qa-train-kilt.jsonl')}", f"kilt:{demo_kilt_path('fc-dev-kilt.jsonl')}"
QA_DEV = f"kilt:{demo_kilt_path('qa-dev-kilt.jsonl')}"
PER_DATASET = 6
CONFIG = LlamaConfig(vocab_size=1680, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pseudo_labels")
    ids = [str(i) for i in read_passages(demo_kilt_path("passages.tsv")).ids]
    with open(demo_kilt_path("qa-train-kilt.jsonl")) as f:
        lines = [json.dumps({"id": json.loads(line)["id"], "passages": [ids[(3 * i + r) % len(ids)] for r in range(60)]})
                 for i, line in enumerate(f)]
    pseudo_label_path(out, QA).write_text("\n".join(lines) + "\n")
    return out


def make_retriever(labels_dir, **kwargs):
    settings = dict(passages_file=demo_kilt_path("passages.tsv"), train_files=[QA], eval_files=[QA_DEV, FC],
                    pseudo_labels_dir=str(labels_dir), tokenizer_dir=demo_imprag_path("tokenizer"),
                    model_config=CONFIG, bottom_end=0, examples_per_dataset=PER_DATASET, positives=2,
                    hard_negatives=2, warmup_epochs=1, max_prompt_tokens=48, max_response_tokens=8,
                    passage_tokens=32, passage_separator=" . ", top_k=3, eval_limit=4, encode_batch_size=8,
                    rankings_depth=5)
    settings.update(kwargs)
    return LlamaRetriever(**settings)


@pytest.fixture(scope="module")
def retriever(labels_dir):
    return make_retriever(labels_dir)


def batch_of(method, epoch, rows=4):
    method.on_epoch_start(None, epoch, jax.random.PRNGKey(0))
    arrays = method.train_examples()
    return {k: jnp.asarray(v) for k, v in method.batch_from_features({k: v[:rows] for k, v in arrays.items()}).items()}


def test_the_retriever_is_the_bottom_layers_of_the_reader_and_alone_is_trained(retriever):
    batch = batch_of(retriever, 0)
    params = nn.unbox(retriever.init(jax.random.PRNGKey(0), batch))
    assert set(params["retriever"]) == {"embed_tokens", "layer_0"}
    for name in ("embed_tokens", "layer_0"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, params["retriever"][name], params["reader"][name])
    mask = retriever.trainable_mask(params)
    assert all(jax.tree_util.tree_leaves(mask["retriever"])) and not any(jax.tree_util.tree_leaves(mask["reader"]))
    # The embeddings are ImpRAG's bottom-group embeddings of the retriever's params.
    model = ImpragModel(retriever.llama, LayerGroups(0, 0))
    expected = model.query_embeddings(params["reader"], batch["query_ids"], batch["query_mask"])
    np.testing.assert_allclose(retriever._encode_queries(params, batch["query_ids"], batch["query_mask"]), expected,
                               rtol=1e-6)


def test_reader_sequences_put_one_candidate_before_the_prompt(retriever):
    batch = batch_of(retriever, 0, rows=2)
    tokenizer = retriever.tokenizer
    row, slot = 1, 2
    candidate = int(batch["candidate_ids"][row, slot])
    row_tokens = retriever.passage_table[candidate].tolist()
    passage = row_tokens[:row_tokens.index(tokenizer.eos_token_id)]  # no EOS, no pads
    example = retriever.training[row]
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    response = tokenizer(" " + example.response, add_special_tokens=False)["input_ids"]
    expected = passage + retriever.separator + prompt + response + [tokenizer.eos_token_id]
    width = int(batch["reader_mask"][row, slot].sum())
    assert batch["reader_ids"][row, slot, :width].tolist() == expected[:-1]
    assert batch["reader_targets"][row, slot, :width].tolist() == expected[1:]
    assert int(batch["reader_loss_mask"][row, slot].sum()) == len(response) + 1


@pytest.mark.slow
def test_losses_are_eq_5_3_then_eq_5_6_with_the_frozen_readers_likelihoods(retriever):
    warm = batch_of(retriever, 0)
    params = nn.unbox(retriever.init(jax.random.PRNGKey(1), warm))
    model = ImpragModel(retriever.llama, LayerGroups(0, 0))

    def embeddings(batch):
        rows, count, l_max = batch["passage_ids"].shape
        passages = model.passage_embeddings(params["reader"], batch["passage_ids"].reshape(-1, l_max),
                                            batch["passage_mask"].reshape(-1, l_max)).reshape(rows, count, -1)
        return model.query_embeddings(params["reader"], batch["query_ids"], batch["query_mask"]), passages

    loss, _ = retriever.loss(params, warm, jax.random.PRNGKey(0))
    queries, passages = embeddings(warm)
    expected = in_batch_nce_loss(queries, passages, warm["candidate_ids"], warm["candidate_valid"], warm["positive"])
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)

    distill = batch_of(retriever, 1)
    loss, _ = retriever.loss(params, distill, jax.random.PRNGKey(0))
    rows, count, width = distill["reader_ids"].shape
    likelihoods = np.zeros((rows, count))
    for r in range(rows):  # each candidate's sequence alone, through the whole reader
        for c in range(count):
            n = int(distill["reader_mask"][r, c].sum())
            logits = retriever.llama.apply({"params": params["reader"]}, distill["reader_ids"][r, c, None, :n]).logits
            log_probs = np.asarray(jax.nn.log_softmax(logits[0]), np.float64)
            targets = np.asarray(distill["reader_targets"][r, c, :n])
            picked = log_probs[np.arange(n), targets]
            mask = np.asarray(distill["reader_loss_mask"][r, c, :n], bool)
            likelihoods[r, c] = picked[mask].mean()
    queries, passages = embeddings(distill)
    expected = self_distillation_loss(queries, passages, distill["candidate_ids"], distill["candidate_valid"],
                                      jnp.asarray(likelihoods), 1.0, 1.0, True)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-4)
    grads = jax.grad(lambda p: retriever.loss(p, distill, jax.random.PRNGKey(0))[0])(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["reader"]))
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads["retriever"])) > 0


@pytest.mark.slow
def test_evaluation_writes_rankings_that_the_in_context_baseline_reads(labels_dir, tmp_path):
    method = make_retriever(labels_dir, rankings_out=str(tmp_path))
    params = nn.unbox(method.init(jax.random.PRNGKey(2), batch_of(method, 0)))
    with partitioning.activate(partitioning.make_mesh(), partitioning.DEFAULT_RULES):
        metrics = method.evaluate(params)
    assert set(metrics) == {"qa/answer_recall@1", "qa/answer_recall@3", "average/answer_recall@1",
                            "average/answer_recall@3"}
    # Exact search by hand: dot products of the retriever's embeddings, best first.
    table = method.passage_table
    passages = np.asarray(method._encode_passages(params, jnp.asarray(table), jnp.asarray((table != 0).astype(np.int32))))
    ids = [str(i) for i in read_passages(demo_kilt_path("passages.tsv")).ids]
    for source, prompts, examples in ((QA_DEV, method.eval_sets[0].prompts, method.eval_sets[0].examples),
                                      (QA, [s.ids[:s.prompt_length] for s in method.sequences], method.training)):
        written = [json.loads(line) for line in pseudo_label_path(tmp_path, source).open()]
        assert [w["id"] for w in written] == [e.id for e in examples]
        for prompt, line in zip(prompts, written):
            query = np.asarray(method._encode_queries(params, jnp.asarray([prompt]), jnp.ones((1, len(prompt)), jnp.int32)))
            scores = passages @ query[0]
            ranked = [ids[r] for r in np.argsort(-scores, kind="stable")[:5]]
            assert line["passages"][:3] == ranked[:3]  # allow float ties to reorder lower ranks
    assert data.read_pseudo_labels(pseudo_label_path(tmp_path, FC), {p: i for i, p in enumerate(ids)})
    InContextRag(passages_file=demo_kilt_path("passages.tsv"), train_files=[QA], eval_files=[QA_DEV, FC],
                 rankings_dir=str(tmp_path), tokenizer_dir=demo_imprag_path("tokenizer"), model_config=CONFIG,
                 examples_per_dataset=PER_DATASET, eval_limit=4)


def test_bad_bottom_end_is_named(labels_dir):
    with pytest.raises(ValueError, match="bottom_end must be in"):
        make_retriever(labels_dir, bottom_end=2)
