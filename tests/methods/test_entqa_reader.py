"""EntQA's reader on the bundled demo with candidate files the tests write: the training arrays, the candidate
composition, the loss against labels built independently from the passages' mentions, evaluation, an ELECTRA
import, and linking over two hosts."""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax.data import candidates as candidate_files
from kipjax.data.demo_entqa import demo_entqa_path
from kipjax.data.entity_kb import read_kilt_entities
from kipjax.methods.entqa import reader_objective
from kipjax.methods.entqa.data import SplitDocuments, passage_id
from kipjax.methods.entqa.reader import EntqaReader
from kipjax.methods.joint_rerank import pack_pairs
from kipjax.models import hf
from kipjax.models.bert import BertConfig, BertEncoder
from local_hosts import free_port, run_hosts

TINY = BertConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, add_pooler=False)
FILES = dict(kb_file=demo_entqa_path("kb.jsonl"), train_file=demo_entqa_path("aida_testb.tsv"),
             eval_file=demo_entqa_path("aida_testa.tsv"), train_split="testb", eval_split="testa")
NUM_RETRIEVED = 20
WORKER = Path(__file__).with_name("entqa_reader_worker.py")


def retrieved_rows(example, index, num_entities):
    """A fake retriever's list: 20 fixed entities with the passage's golds at ranks 3 and 4."""
    rows = [(7 * index + 13 * j) % num_entities for j in range(NUM_RETRIEVED)]
    rows = [r for r in rows if r not in example.gold_entities]
    return (rows[:3] + list(example.gold_entities) + rows[3:])[:NUM_RETRIEVED]


def write_candidate_files(directory):
    """Candidate files of both splits, for the passages the reader will cut (the same settings)."""
    kb = read_kilt_entities(FILES["kb_file"])
    documents = SplitDocuments(kb, hf.load_tokenizer(demo_entqa_path("tokenizer")),
                               {"testb": (FILES["train_file"], "testb"), "testa": (FILES["eval_file"], "testa")},
                               None, dict(length=32, stride=16, topic_mode="first_token"))
    for split in ("testb", "testa"):
        examples = documents.passages(split)
        table = np.array([retrieved_rows(e, i, len(kb)) for i, e in enumerate(examples)])
        candidate_files.write_candidates(candidate_files.candidates_path(directory, split),
                                         [passage_id(e.passage) for e in examples], table, kb.titles)


@pytest.fixture(scope="module")
def method(tmp_path_factory):
    directory = tmp_path_factory.mktemp("entqa_candidates")
    write_candidate_files(directory)
    return EntqaReader(**FILES, candidates_dir=str(directory), encoder_config=TINY, num_candidates=12,
                       eval_num_candidates=NUM_RETRIEVED, entity_tokens=24, max_tokens=64, eval_batch_size=8)


def batch_of(method, rows):
    examples = method.train_examples()
    return {**{k: jnp.asarray(v[rows]) for k, v in examples.items()}, "tables": method.tables()}


def test_training_arrays_hold_golds_spans_and_the_retrieved_non_golds(method):
    arrays = method.train_examples()
    assert arrays["first_input_ids"].shape == (len(method.train), 64 - 24 + 1)
    for p, example in enumerate(method.train[:40]):
        golds = list(example.gold_entities)
        assert arrays["gold_entities"][p, :len(golds)].tolist() == golds
        assert (arrays["gold_entities"][p, len(golds):] == -1).all()
        for g, spans in enumerate(example.gold_spans):
            assert set(np.flatnonzero(arrays["gold_starts"][p, g])) == {first + 1 for first, _ in spans}
            assert set(np.flatnonzero(arrays["gold_ends"][p, g])) == {last + 1 for _, last in spans}
        expected_pool = [r for r in retrieved_rows(example, p_index(method, example), len(method.kb))
                         if r not in golds]
        pool = arrays["negative_pool"][p]
        assert pool[:len(expected_pool)].tolist() == expected_pool and (pool[len(expected_pool):] == -1).all()
        n = len(example.passage.piece_ids)
        assert arrays["passage_length"][p] == n
        assert arrays["first_input_ids"][p, 1:n + 1].tolist() == list(example.passage.piece_ids)


def p_index(method, example):
    """The passage's index among all passages of the split (the fake retriever's seed)."""
    return [passage_id(e.passage) for e in method.documents.passages("testb")].index(passage_id(example.passage))


def test_candidates_are_the_golds_then_draws_from_the_retrieved_pool(method):
    rows = np.arange(16)
    batch = batch_of(method, rows)
    cands, gold, valid = (np.asarray(x) for x in method.candidates(batch, jax.random.PRNGKey(0)))
    width = method.max_golds
    for i in rows:
        golds = [g for g in batch["gold_entities"][i].tolist() if g >= 0]
        assert cands[i, :len(golds)].tolist() == golds and gold[i, :len(golds)].all() and not gold[i, width:].any()
        assert valid[i].sum() == len(golds) + 12 - width
        negatives = cands[i, width:]
        pool = set(np.asarray(batch["negative_pool"][i]).tolist()) - {-1}
        assert set(negatives.tolist()) <= pool and len(set(negatives.tolist())) == len(negatives)
    other = np.asarray(method.candidates(batch, jax.random.PRNGKey(1))[0])
    assert (other[:, width:] != cands[:, width:]).any()  # fresh draws every step


@pytest.mark.slow  # two reader compilations
def test_the_loss_is_eq_6_2_over_labels_from_the_passages_mentions(method):
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch_of(method, np.arange(1))))
    rows = np.arange(6)
    batch = batch_of(method, rows)
    loss, _ = jax.jit(method.loss)(params, batch, jax.random.PRNGKey(3))
    _, candidate_rng = jax.random.split(jax.random.PRNGKey(3))
    cands, gold, valid = method.candidates(batch, candidate_rng)
    start, end, rerank, answer = method.logits(params, batch, cands)
    length = start.shape[-1]
    starts = np.zeros((6, 12, length), bool)
    ends = np.zeros_like(starts)
    starts[:, :, 0] = ends[:, :, 0] = True  # every candidate's gold is [CLS] unless it is mentioned
    for i in rows:
        example = method.train[i]
        for slot, spans in enumerate(example.gold_spans):
            starts[i, slot] = ends[i, slot] = False
            for first, last in spans:
                starts[i, slot, first + 1] = ends[i, slot, last + 1] = True
    n = np.array([len(method.train[i].passage.piece_ids) for i in rows])
    assert (np.asarray(answer)[:, 0] == (np.arange(length)[None] <= n[:, None])).all()
    expected = reader_objective.reader_loss(start, end, rerank, answer, starts, ends, gold, valid, "code")
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow  # a reader compilation and a pass over testa
def test_evaluation_links_testa_and_scores_it(method):
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch_of(method, np.arange(1))))
    metrics = method.evaluate(params)
    assert metrics["candidate_recall@20"] == pytest.approx(1.0)  # the fake retriever lists every gold
    assert 0.0 <= metrics["f1"] <= metrics["calibrated_f1"] <= 1.0
    assert sum(metrics[f"passages_{c}"] for c in ("correct", "over", "under", "neither")) == len(method.eval)
    per_passage = method.passage_links(params, method.eval, method.eval_rows, method.eval_valid)
    assert len(per_passage) == len(method.eval)
    for example, links in zip(method.eval, per_passage):
        titles = {method.kb.titles[r] for r, ok in zip(method.eval_rows[method.eval.index(example)],
                                                          method.eval_valid[method.eval.index(example)]) if ok}
        for link in links:  # each link is a candidate's span inside its passage, scored as a probability
            first, last = example.passage.char_spans[0][0], example.passage.char_spans[-1][1]
            assert link.entity in titles and first <= link.start < link.end <= last and 0 < link.score <= 1


def test_a_missing_candidate_file_says_how_to_write_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="kipjax.index"):
        EntqaReader(**FILES, candidates_dir=str(tmp_path), encoder_config=TINY, num_candidates=12,
                    eval_num_candidates=NUM_RETRIEVED, entity_tokens=24, max_tokens=64)
    with pytest.raises(ValueError, match="leaves the passage segment"):
        EntqaReader(**FILES, candidates_dir=str(tmp_path), encoder_config=TINY, entity_tokens=48, max_tokens=64)


@pytest.mark.slow  # a second reader over the demo KB and a torch model: 11 s of the fast suite's budget
def test_a_squad_electra_checkpoint_initialises_the_cross_encoder(tmp_path, method):
    """What the AIDA config loads: an ElectraForQuestionAnswering directory (its encoder under `electra.`); the
    reader's encoder then computes what transformers' ElectraModel does on the same packed pair, and the span
    and rerank heads start fresh."""
    import torch
    import transformers
    tokenizer_dir = demo_entqa_path("tokenizer")
    vocab = hf.load_tokenizer(tokenizer_dir).vocab_size
    config = transformers.ElectraConfig(vocab_size=vocab, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    qa = transformers.ElectraForQuestionAnswering(config).eval()
    qa.save_pretrained(tmp_path / "electra_squad2")
    reader = EntqaReader(**FILES, candidates_dir=method.candidates_dir, pretrained=str(tmp_path / "electra_squad2"),
                         tokenizer_dir=tokenizer_dir, num_candidates=12, eval_num_candidates=NUM_RETRIEVED,
                         entity_tokens=24, max_tokens=64)
    batch = batch_of(reader, np.arange(2))
    params = nn.unbox(reader.init(jax.random.PRNGKey(0), batch))
    assert set(params) == {"encoder", "span_head", "rerank_head"}
    rows = jnp.asarray([[5, 9], [7, 11]])
    ids, mask, types = pack_pairs(batch["first_input_ids"], batch["first_attention_mask"],
                                  batch["tables"]["entity_input_ids"][rows],
                                  batch["tables"]["entity_attention_mask"][rows])
    flat = [np.asarray(x).reshape(4, -1) for x in (ids, mask, types)]
    ours = BertEncoder(reader.model.config).apply({"params": params["encoder"]}, *flat).last_hidden_state
    with torch.no_grad():
        theirs = qa.electra(input_ids=torch.tensor(flat[0]), attention_mask=torch.tensor(flat[1]),
                            token_type_ids=torch.tensor(flat[2])).last_hidden_state.numpy()
    real = flat[1].astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=1e-4)


@pytest.mark.slow  # three processes, each building the reader and compiling it
def test_two_hosts_link_the_passages_as_one(tmp_path):
    """2 processes x 4 devices share out testa's passages (each host reads its own rows) and get the same links
    as one process over 8 devices."""
    (tmp_path / "candidates").mkdir()
    write_candidate_files(tmp_path / "candidates")
    links = {}
    for processes in (1, 2):
        port = free_port()
        codes, outputs = run_hosts([[sys.executable, str(WORKER), str(tmp_path), str(i), str(processes), str(port)]
                                    for i in range(processes)])
        assert codes == [0] * processes, "\n".join(o[-3000:] for o in outputs)
        links[processes] = json.loads((tmp_path / "links.json").read_text())
    assert sum(map(len, links[1])) > 0
    for one, two in zip(links[1], links[2], strict=True):
        assert [link[:3] for link in two] == [link[:3] for link in one]
        np.testing.assert_allclose([link[3] for link in two], [link[3] for link in one], rtol=1e-4)
