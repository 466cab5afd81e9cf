"""EntQA's retriever on the bundled demo: candidate composition (golds, random and hard negatives), the
multi-label NCE step, mining, and recall@k."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax.data.demo_entqa import demo_entqa_path
from kipjax.methods.entqa.retriever import EntqaRetriever
from kipjax.models.bert import BertConfig
from kipjax.retrieval import nce

TINY = BertConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, add_pooler=False)


@pytest.fixture(scope="module")
def method():
    return EntqaRetriever(kb_file=demo_entqa_path("kb.jsonl"), train_file=demo_entqa_path("aida_testb.tsv"),
                          eval_file=demo_entqa_path("aida_testa.tsv"), train_split="testb",
                          encoder_config=TINY, num_candidates=24, random_fraction=0.5, hard_pool=30,
                          entity_tokens=32, eval_ks=(1, 10, 100))


def batch_of(method, rows):
    examples = method.train_examples()
    batch = {k: jnp.asarray(v[rows]) for k, v in examples.items()}
    return {**batch, "example_index": jnp.asarray(rows), "tables": method.tables()}


def test_candidates_are_the_golds_then_random_and_hard_negatives(method):
    rows = np.arange(12)
    method.pool = jnp.asarray(np.stack([(np.arange(30) * 7 + 3 * i) % len(method.kb)
                                        for i in range(len(method.train))]), jnp.int32)
    cands, gold, valid = (np.asarray(x) for x in method.candidates(batch_of(method, rows), jax.random.PRNGKey(0)))
    golds = method.train_golds[rows]
    width = golds.shape[1]
    assert cands.shape == (12, 24) and width == method.max_golds
    pool = np.asarray(method.pool)
    for i in range(12):
        real = golds[i][golds[i] >= 0]
        assert cands[i, :len(real)].tolist() == real.tolist() and gold[i, :len(real)].all()
        assert not gold[i, len(real):].any() and valid[i].sum() == len(real) + 24 - width
        negatives = cands[i, width:]
        assert not set(negatives) & set(real.tolist()) and len(set(negatives)) == len(negatives)
        num_hard = round(0.5 * (24 - width))
        assert set(negatives[:num_hard]) <= set(pool[i].tolist())  # the leading ones come from the pool


@pytest.mark.slow  # two BERT compilations
def test_the_loss_is_multilabel_nce_over_the_candidates(method):
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch_of(method, np.arange(1))))
    batch = batch_of(method, np.arange(4))
    loss, metrics = jax.jit(method.loss)(params, batch, jax.random.PRNGKey(1))

    @jax.jit
    def reference(params, batch):  # the same candidates, scored and put through multi-label NCE
        _, candidate_rng = jax.random.split(jax.random.PRNGKey(1))
        rows, gold, valid = method.candidates(batch, candidate_rng)
        t = batch["tables"]
        scores = method.model.apply({"params": params}, batch["passage_input_ids"], batch["passage_attention_mask"],
                                    t["entity_input_ids"][rows], t["entity_attention_mask"][rows])
        return nce.multilabel_nce_loss(scores, gold, valid)

    assert float(loss) == pytest.approx(float(reference(params, batch)), rel=1e-5)
    assert 0.0 <= float(metrics["top1_is_gold"]) <= 1.0


def test_mining_and_recall_use_the_models_own_ranking(method):
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch_of(method, np.arange(1))))
    method.on_epoch_start(params, 0, jax.random.PRNGKey(2))
    pool = np.asarray(method.pool)
    assert pool.shape == (len(method.train), 30)
    for row, golds in zip(pool[:50], method.train_golds[:50]):
        assert not set(row.tolist()) & set(golds[golds >= 0].tolist()) and len(set(row.tolist())) == 30
    metrics = method.evaluate(params)
    assert 0.0 <= metrics["recall@1"] <= metrics["recall@10"] <= metrics["recall@100"] <= 1.0
    # recall@k counted by hand from a brute-force ranking of the same encodings
    labelled = [e for e in method.eval if e.gold_entities]
    ids, mask = method.passage_arrays(labelled)
    _, top = method.retrieve(params, ids, mask, 10)
    found = sum(len(set(e.gold_entities) & set(r.tolist())) for e, r in zip(labelled, top))
    assert metrics["recall@10"] == pytest.approx(found / sum(len(e.gold_entities) for e in labelled))


def test_configuration_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        EntqaRetriever(kb_file=demo_entqa_path("kb.jsonl"), train_file="x", eval_file="y", encoder_config=TINY,
                       loss="hinge")
