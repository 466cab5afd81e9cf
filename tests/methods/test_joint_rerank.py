"""JOINT reranker: pair packing, training candidates, candidate files, evaluation, pretrained start, learning."""
import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from kipjax.data import candidates as candidate_files
from kipjax.data.demo import bundled_demo_dir
from kipjax.data.featurize import load_zeshel_split
from kipjax.methods.joint_rerank import JointReranker, pack_pairs, training_candidates
from kipjax.models import hf
from kipjax.models.bert import BertConfig
from kipjax.trainer import Trainer

TINY = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, add_pooler=False)


def test_pack_pairs_matches_a_list_reference():
    rng = np.random.default_rng(0)
    lm, le, b, c = 6, 5, 3, 4
    m_len = np.array([6, 3, 4])
    e_len = rng.integers(2, le + 1, size=(b, c))
    m_ids = np.where(np.arange(lm) < m_len[:, None], rng.integers(10, 99, (b, lm)), 0)
    e_ids = np.where(np.arange(le) < e_len[..., None], rng.integers(100, 199, (b, c, le)), 0)
    ids, mask, types = (np.asarray(x) for x in pack_pairs(
        jnp.asarray(m_ids), jnp.asarray(np.arange(lm) < m_len[:, None], jnp.int32),
        jnp.asarray(e_ids), jnp.asarray(np.arange(le) < e_len[..., None], jnp.int32)))
    assert ids.shape == (b, c, lm + le - 1)
    for i in range(b):
        for j in range(c):
            mention = m_ids[i, :m_len[i]].tolist()
            entity = e_ids[i, j, 1:e_len[i, j]].tolist()  # the entity's own [CLS] is dropped
            expected = mention + entity
            pad = lm + le - 1 - len(expected)
            assert ids[i, j].tolist() == expected + [0] * pad
            assert mask[i, j].tolist() == [1] * len(expected) + [0] * pad
            assert types[i, j].tolist() == [0] * len(mention) + [1] * len(entity) + [0] * pad


def test_training_candidates_put_gold_first_and_keep_retriever_order():
    retrieved = np.array([[5, 3, 7, 9], [2, 4, 6, 8], [1, 0, 0, 0]])
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]], bool)
    gold = np.array([3, 1, 1])
    rows, mask = training_candidates(retrieved, valid, gold, num_candidates=4)
    # mention 0: gold retrieved at rank 2 -> dropped from the negatives; mention 1: gold not retrieved;
    # mention 2: the retriever found only the gold, so every negative column is masked.
    np.testing.assert_array_equal(rows, [[3, 5, 7, 9], [1, 2, 4, 6], [1, 1, 1, 1]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]])


def test_candidate_files_round_trip_and_name_the_bad_line(tmp_path):
    path = tmp_path / "candidates_val.json"
    entity_ids = ["e0", "e1", "e2"]
    candidate_files.write_candidates(path, ["m0", "m1"], np.array([[2, 0, -1], [1, -1, -1]]), entity_ids)
    rows, valid = candidate_files.read_candidates(path, ["m1", "m0"], {e: i for i, e in enumerate(entity_ids)}, 3)
    np.testing.assert_array_equal(rows, [[1, 0, 0], [2, 0, 0]])
    np.testing.assert_array_equal(valid, [[1, 0, 0], [1, 1, 0]])
    row = {e: i for i, e in enumerate(entity_ids)}
    bad_lines = {
        "unknown mention": ('{"mention_id": "m9", "candidates": []}', "candidates_val.json:2: mention_id 'm9'"),
        "unknown entity": ('{"mention_id": "m1", "candidates": ["zz"]}', r"candidates_val.json:2: candidates \['zz'\]"),
        "duplicate": ('{"mention_id": "m0", "candidates": []}', "candidates_val.json:2: duplicate mention_id 'm0'"),
        "wrong type": ('{"mention_id": "m1", "candidates": "e0"}', "candidates_val.json:2: field 'candidates' must be list"),
    }
    for line, message in bad_lines.values():
        path.write_text('{"mention_id": "m0", "candidates": ["e0"]}\n' + line + "\n")
        with pytest.raises(ValueError, match=message):
            candidate_files.read_candidates(path, ["m0", "m1"], row, 3)
    path.write_text('{"mention_id": "m0", "candidates": ["e0"]}\n')
    with pytest.raises(ValueError, match="no candidates for 1 mentions"):
        candidate_files.read_candidates(path, ["m0", "m1"], row, 3)
    with pytest.raises(FileNotFoundError, match="kipjax.index"):
        candidate_files.read_candidates(tmp_path / "absent.json", ["m0"], row, 3)


def write_world_candidates(directory, split, k, gold_rank, drop_gold_every=0):
    """Synthetic retriever output: random entities of the mention's world, the gold placed at `gold_rank`
    (or left out for every `drop_gold_every`-th mention)."""
    tokenizer = hf.load_tokenizer(f"{bundled_demo_dir()}/tokenizer")
    mentions, entities, _, mention_ids, entity_ids = load_zeshel_split(bundled_demo_dir(), split, tokenizer, 16)
    ranked = np.full((len(mention_ids), k), -1)
    rng = np.random.default_rng(0)
    for i, (gold, world) in enumerate(zip(mentions["gold_entity"], mentions["world"])):
        others = [r for r in rng.permutation(np.flatnonzero(entities["entity_world"] == world)) if r != gold][:k]
        if not (drop_gold_every and i % drop_gold_every == 0):
            others.insert(gold_rank, gold)
        ranked[i, :min(k, len(others))] = others[:k]
    candidate_files.write_candidates(candidate_files.candidates_path(directory, split), mention_ids, ranked,
                                     entity_ids)
    return mentions


def make_reranker(tmp_path, **kwargs):
    args = dict(data_dir=bundled_demo_dir(), candidates_dir=str(tmp_path), encoder_config=TINY,
                num_candidates=8, eval_num_candidates=8, max_len=48, eval_batch_size=16)
    args.update(kwargs)
    return JointReranker(**args)


def test_evaluation_normalizes_by_retriever_recall(tmp_path, monkeypatch):
    write_world_candidates(tmp_path, "train", 8, gold_rank=2)
    mentions = write_world_candidates(tmp_path, "val", 8, gold_rank=5, drop_gold_every=4)
    reranker = make_reranker(tmp_path)
    gold = mentions["gold_entity"]
    found = np.arange(len(gold)) % 4 != 0
    np.testing.assert_array_equal(((reranker.eval_candidates == gold[:, None]) & reranker.eval_candidate_mask)
                                  .any(1), found)
    # An oracle reranker (gold whenever it is a candidate) is perfect on the normalized metric; unnormalized
    # accuracy is then the retriever's recall (val is a single world, so the macro average is that world's).
    oracle = np.where(found, gold, reranker.eval_candidates[:, 0])
    monkeypatch.setattr(reranker, "rerank", lambda params: oracle)
    metrics = reranker.evaluate(params=None)
    assert metrics["normalized_accuracy"] == pytest.approx(1.0)
    assert metrics["unnormalized_accuracy"] == pytest.approx(found.mean())
    assert metrics["candidate_recall@8"] == pytest.approx(found.mean())


@pytest.mark.parametrize("scan_layers", [pytest.param(False, marks=pytest.mark.slow), True])
def test_reranker_starts_from_a_hugging_face_checkpoint(scan_layers, tmp_path):
    write_world_candidates(tmp_path, "train", 8, gold_rank=0)
    write_world_candidates(tmp_path, "val", 8, gold_rank=0)
    tokenizer_dir = f"{bundled_demo_dir()}/tokenizer"
    vocab = len(hf.load_tokenizer(tokenizer_dir))
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=vocab - 3, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64), add_pooling_layer=False)
    bert.save_pretrained(tmp_path / "bert")
    reranker = make_reranker(tmp_path, encoder_config=None, pretrained=str(tmp_path / "bert"),
                             tokenizer_dir=tokenizer_dir, scan_layers=scan_layers, remat=scan_layers)
    trainer = Trainer(reranker, model_dir=str(tmp_path / "run"), train_steps=1, batch_size=8)
    params = trainer.initial_state(trainer.device_batch(trainer.peek_batch())).params
    table = np.asarray(params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
    hf_table = bert.embeddings.word_embeddings.weight.detach().numpy()
    assert table.shape == (vocab, 32)
    np.testing.assert_allclose(table[:vocab - 3], hf_table, atol=1e-7)
    np.testing.assert_allclose(table[vocab - 3:], np.repeat(hf_table.mean(0, keepdims=True), 3, 0), atol=1e-6)
    assert ("layers" in params["encoder"]) == scan_layers  # one stacked subtree vs layer_0, layer_1, ...
    batch = trainer.device_batch(trainer.peek_batch())
    loss, _ = reranker.loss(params, {**batch, "tables": reranker.tables()}, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))


@pytest.mark.slow
def test_reranker_learns_on_the_demo_worlds(tmp_path):
    """Gold hidden at rank 3 of 8 in every candidate list: the trained reranker must read the texts to beat the
    retriever's order (whose top-1 accuracy is 0 here) by a wide margin."""
    write_world_candidates(tmp_path, "train", 8, gold_rank=3)
    write_world_candidates(tmp_path, "val", 8, gold_rank=3)
    config = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, add_pooler=False,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reranker = make_reranker(tmp_path, encoder_config=config, max_len=64, head_dropout=0.0)
    gin.parse_config(["learning_rate_schedule.peak_value = 1e-3", "learning_rate_schedule.warmup_steps = 20"])
    trainer = Trainer(reranker, model_dir=str(tmp_path / "run"), train_steps=1500, batch_size=16, eval_every=500)
    _, metrics = trainer.fit()
    history = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    before = history[0]["eval/normalized_accuracy"]
    assert metrics["eval/normalized_accuracy"] > max(0.35, before + 0.2), (before, metrics)


def test_the_rerank_task_feeds_the_trainer_the_methods_own_examples(tmp_path):
    """demo_rerank.gin trains from `demo_zeshel_rerank`: each row, looked up by its `mention_index`, is the
    method's own (mention tokens, gold then the retriever's negatives, their mask)."""
    import tasks.zeshel  # noqa: F401  (registers the tasks)
    from kipjax.methods.joint_rerank import RERANK_INPUTS
    write_world_candidates(tmp_path, "train", 8, gold_rank=2, drop_gold_every=3)
    write_world_candidates(tmp_path, "val", 8, gold_rank=0)
    reranker = make_reranker(tmp_path)
    for name, value in dict(candidates_dir=str(tmp_path), max_len=48, num_candidates=8).items():
        gin.bind_parameter(f"demo_zeshel_rerank_settings.{name}", value)
    trainer = Trainer(reranker, model_dir=str(tmp_path / "run"), train_steps=1, batch_size=8,
                      mixture_or_task_name="demo_zeshel_rerank")
    own = reranker.train_examples()
    for _ in range(3):
        rows = trainer.feed.peek()["mention_index"]
        batch = trainer.next_batch()
        assert set(batch) == set(RERANK_INPUTS)
        for key in RERANK_INPUTS:
            np.testing.assert_array_equal(batch[key], own[key][rows])


def test_the_rerank_task_needs_a_candidates_directory():
    import tasks.zeshel as zeshel_tasks
    with pytest.raises(ValueError, match="demo_zeshel_rerank_settings.candidates_dir"):
        zeshel_tasks.rerank_arrays(zeshel_tasks.DEMO_ZESHEL_RERANK_TASK, "train")
