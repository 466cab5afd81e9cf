import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax.data.demo_docred import RELATIONS, demo_docred_path
from kipjax.data.docred import (DocredDocument, Entity, Fact, Mention, read_docred, read_predictions,
                                write_candidate_pairs)
from kipjax.methods.lmrc import prompts, rc_features
from kipjax.methods.lmrc.answer_constraint import encode_pair_lists
from kipjax.methods.lmrc.rc import RelationClassification, relation_names_of
from kipjax.methods.lmrc.type_baseline import fit_type_rules, predict_by_type
from kipjax.models.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=1024)


def make_method(tmp_path, **overrides):
    kwargs = dict(train_file=demo_docred_path("train_annotated.json"), eval_file=demo_docred_path("dev.json"),
                  rel_info_file=demo_docred_path("rel_info.json"), rel2id_file=demo_docred_path("rel2id.json"),
                  tokenizer_dir=demo_docred_path("llama_tokenizer"), model_config=TINY, eval_max_documents=3,
                  max_length=1024, eval_batch_size=4)
    return RelationClassification(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def method(tmp_path_factory):
    return make_method(tmp_path_factory.mktemp("rc"))


@pytest.fixture(scope="module")
def params(method):
    batch = {k: v[:1] for k, v in method.train_examples().items()}
    return nn.unbox(method.init(jax.random.PRNGKey(0), batch))


def small_doc() -> DocredDocument:
    entities = [Entity((Mention("Ann", 0, (0, 1), "PER"),)), Entity((Mention("Bo", 0, (2, 3), "PER"),)),
                Entity((Mention("Rome", 0, (4, 5), "LOC"),)), Entity((Mention("Oslo", 0, (6, 7), "LOC"),))]
    facts = [Fact(0, 2, "P19"), Fact(1, 3, "P19"), Fact(0, 1, "P26")]
    return DocredDocument("d", [["Ann", "and", "Bo", "in", "Rome", "and", "Oslo", "."]], entities, facts)


def test_relation_names_follow_rel2id_order():
    names = relation_names_of(demo_docred_path("rel_info.json"), demo_docred_path("rel2id.json"))
    rel2id = json.load(open(demo_docred_path("rel2id.json")))
    assert list(names) == sorted((r for r in rel2id if r != "Na"), key=rel2id.get)
    assert names == {r: RELATIONS[r] for r in names}


def test_training_pairs_hold_every_related_pair_and_the_asked_negatives():
    doc = small_doc()
    pairs = rc_features.training_pairs(doc, 1.0, random.Random(0))
    related = {(0, 2), (1, 3), (0, 1)}
    assert related <= set(pairs) and len(pairs) == 6 and pairs == sorted(set(pairs))
    assert len(rc_features.training_pairs(doc, 0.0, random.Random(0), candidates=[(3, 2)])) == 4
    assert len(rc_features.training_pairs(doc, 100.0, random.Random(0))) == 12  # capped at every pair
    assert rc_features.all_pairs(doc)[:3] == [(0, 1), (0, 2), (0, 3)]


def test_prompt_rows_group_each_documents_sorted_pairs():
    rows = rc_features.prompt_rows([[(1, 0), (0, 1), (2, 0)], [], [(0, 1)]], group_size=2)
    assert rows == [rc_features.PromptRow(0, ((0, 1), (1, 0))), rc_features.PromptRow(0, ((2, 0),)),
                    rc_features.PromptRow(2, ((0, 1),))]


def test_training_arrays_put_the_loss_on_the_answer_and_eos_only(method):
    tokenizer = method.tokenizer
    docs = read_docred(demo_docred_path("dev.json"))[:2]
    rows = rc_features.prompt_rows([rc_features.all_pairs(d)[:5] for d in docs], group_size=3)
    arrays = rc_features.training_arrays(rc_features.training_sequences(tokenizer, docs, rows, RELATIONS, 1024), 1024)
    assert arrays["input_ids"].shape[1] % 8 == 0
    for i, row in enumerate(rows):
        doc = docs[row.doc_index]
        answer_ids = arrays["targets"][i][arrays["loss_mask"][i] == 1].tolist()
        assert answer_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(answer_ids[:-1]) == prompts.build_answer(doc, row.pairs, RELATIONS)
        n = arrays["attention_mask"][i].sum()
        prompt_length = int((arrays["loss_mask"][i][:n] == 0).sum()) + 1  # the cue predicts the first answer token
        prompt = tokenizer.decode(arrays["input_ids"][i][:prompt_length])
        assert prompt == "<s> " + prompts.build_prompt(doc, row.pairs, RELATIONS)
        # inputs are the targets shifted by one
        np.testing.assert_array_equal(arrays["input_ids"][i][1:n], arrays["targets"][i][:n - 1])


def test_training_arrays_drop_rows_too_long_and_refuse_when_none_fit(method, capsys):
    docs = read_docred(demo_docred_path("dev.json"))[:2]
    rows = [rc_features.PromptRow(0, ((0, 1),)), rc_features.PromptRow(1, tuple(rc_features.all_pairs(docs[1])[:18]))]
    short = len(rc_features.encode_prompt(method.tokenizer, docs[0], [(0, 1)], RELATIONS)) + 20
    sequences = rc_features.training_sequences(method.tokenizer, docs, rows, RELATIONS, max_length=short)
    assert len(sequences) == 1 and "1 of 2 prompts" in capsys.readouterr().out
    width = rc_features.training_arrays(sequences, short)["input_ids"].shape[1]
    assert len(sequences[0]["input_ids"]) <= width <= short and (width % 8 == 0 or width == short)
    with pytest.raises(ValueError, match="no prompt fits"):
        rc_features.training_sequences(method.tokenizer, docs, rows, RELATIONS, max_length=10)


def test_type_baseline_by_hand():
    doc = small_doc()
    rules = fit_type_rules([doc])
    assert rules == {("PER", "LOC"): "P19", ("PER", "PER"): "P26"}
    predicted = predict_by_type(rules, [doc], [[(0, 2), (2, 0), (1, 0)]])
    assert [(p.h_idx, p.t_idx, p.r) for p in predicted] == [(0, 2, "P19"), (1, 0, "P26")]


def test_loss_counts_only_answer_tokens(method, params):
    batch = {k: v[:2] for k, v in method.train_examples().items()}
    loss, metrics = method.loss(params, batch, jax.random.PRNGKey(0))
    logits = Llama(method.model.config).apply({"params": params}, batch["input_ids"], batch["attention_mask"]).logits
    log_probs = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["loss_mask"]
    np.testing.assert_allclose(loss, -(picked * mask).sum() / mask.sum(), rtol=1e-5)
    assert 0.0 <= metrics["answer_token_accuracy"] <= 1.0


def reference_greedy(method, params, prompt, row, steps):
    """Greedy decoding by full forward passes over the growing sequence (no cache, no left padding: the
    sequence is right-padded to one length, which causal attention ignores), masking with the same constraint:
    the independent reference for the cached, left-padded batch decoder."""
    affixes = encode_pair_lists(method.tokenizer, [row], max_pairs=method.group_size)
    state = method.constraint.init_state(**affixes, max_length=steps)
    width = len(prompt) + steps
    last_logits = jax.jit(lambda ids, n: method.model.apply({"params": params}, ids).logits[0, n - 1])
    process, update = jax.jit(method.constraint.process_logits), jax.jit(method.constraint.update)
    ids, out = list(prompt), []
    for _ in range(steps):
        logits = last_logits(jnp.asarray([ids + [0] * (width - len(ids))]), len(ids))
        token = int(jnp.argmax(process(state, logits[None]), -1)[0])
        out.append(token)
        if token == method.tokenizer.eos_token_id:
            break
        state = update(state, jnp.asarray([token]))
        ids.append(token)
    return out


@pytest.mark.slow
def test_cached_batched_decoding_equals_full_pass_greedy_decoding(method, params):
    docs = method.eval_documents
    rows = [rc_features.PromptRow(0, tuple(rc_features.all_pairs(docs[0])[:4])),
            rc_features.PromptRow(1, tuple(rc_features.all_pairs(docs[1])[5:7])),
            rc_features.PromptRow(2, ((1, 0),))]
    # Perturb the params so the random model's choices are not all alike.
    params = jax.tree_util.tree_map(lambda x: x * 3.0, params)
    texts = method.answer(params, docs, rows)
    budget = method.decode_budget(encode_pair_lists(method.tokenizer, [(docs[r.doc_index], r.pairs) for r in rows]))
    for row, text in zip(rows, texts):
        doc = docs[row.doc_index]
        prompt = rc_features.encode_prompt(method.tokenizer, doc, row.pairs, method.relation_names)
        expected = reference_greedy(method, params, prompt, (doc, row.pairs), budget)
        assert expected[-1] == method.tokenizer.eos_token_id
        assert text == method.tokenizer.decode(expected[:-1], skip_special_tokens=True)
        assert prompts.parse_answer(text, doc, row.pairs, method.relation_names).malformed == 0


def test_evaluate_with_gold_answers_scores_perfectly_and_writes_the_submission(tmp_path, monkeypatch):
    method = make_method(tmp_path, predictions_file=str(tmp_path / "result.json"))

    def gold_answers(params, docs, rows):
        return [prompts.build_answer(docs[r.doc_index], r.pairs, method.relation_names) for r in rows]

    monkeypatch.setattr(method, "answer", gold_answers)
    metrics = method.evaluate(None)
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == 1.0
    assert metrics["malformed_parts"] == 0 and metrics["related_pair_coverage"] == 1.0
    pairs = sum(len(d.entities) * (len(d.entities) - 1) for d in method.eval_documents)
    assert metrics["pairs_classified"] == pairs and metrics["prompts"] >= pairs / 18
    assert metrics["type_baseline_all_pairs_f1"] == metrics["type_baseline_same_pairs_f1"] < 1.0
    written = {(p.title, p.h_idx, p.t_idx, p.r) for p in read_predictions(tmp_path / "result.json")}
    assert written == {(d.title, f.h, f.t, f.r) for d in method.eval_documents for f in d.facts}


def test_candidates_restrict_the_pairs_and_garbled_answers_are_counted(tmp_path, monkeypatch):
    docs = read_docred(demo_docred_path("dev.json"))[:3]
    kept = [sorted({(f.h, f.t) for f in d.facts})[:2] for d in docs]
    write_candidate_pairs(tmp_path / "candidates.json", docs, kept)
    method = make_method(tmp_path, eval_candidates_file=str(tmp_path / "candidates.json"))
    assert method.eval_pairs == kept

    def garbled(params, docs, rows):
        return ["oops " + prompts.build_answer(docs[r.doc_index], r.pairs, method.relation_names) + " ( x | y"
                for r in rows]

    monkeypatch.setattr(method, "answer", garbled)
    metrics = method.evaluate(None)
    assert metrics["precision"] == 1.0 and metrics["malformed_parts"] == 2 * len(docs)
    covered = sum(len(k) for k in kept) / sum(len({(f.h, f.t) for f in d.facts}) for d in docs)
    assert metrics["related_pair_coverage"] == pytest.approx(covered)


def test_lora_on_a_pretrained_checkpoint_trains_only_the_adapters(tmp_path):
    from kipjax.models import hf
    model = Llama(TINY)
    base = nn.unbox(model.init(jax.random.PRNGKey(1), jnp.ones((1, 4), jnp.int32))["params"])
    hf.save_pretrained(model, base, tmp_path / "llama")
    method = make_method(tmp_path, model_config=None, pretrained=str(tmp_path / "llama"), lora_rank=2,
                         lora_targets=("q", "v"))
    params = method.init(jax.random.PRNGKey(0), {k: v[:1] for k, v in method.train_examples().items()})
    mask = method.trainable_mask(params)
    flat = jax.tree_util.tree_leaves_with_path(mask)
    trained = ["/".join(str(getattr(k, "key", k)) for k in path) for path, leaf in flat if leaf]
    assert trained and all("/lora/" in name and ("query" in name or "value" in name) for name in trained)
    np.testing.assert_array_equal(nn.unbox(params)["embed_tokens"]["embedding"], base["embed_tokens"]["embedding"])


def test_negative_draws_give_separate_prompt_sets(tmp_path):
    one = make_method(tmp_path, negative_ratio=0.0)
    three = make_method(tmp_path, negative_ratio=0.0, negative_draws=3)  # no negatives: three equal sets
    rows = len(one.train_examples()["input_ids"])
    np.testing.assert_array_equal(three.train_examples()["input_ids"],
                                  np.concatenate([one.train_examples()["input_ids"]] * 3))
    varied = make_method(tmp_path, negative_ratio=1.0, negative_draws=2).train_examples()["input_ids"]
    half = len(varied) // 2
    assert len(varied) > 2 * rows and not np.array_equal(varied[:half], varied[half:])  # two different draws


def test_a_missing_candidates_file_says_to_run_stage_1(tmp_path):
    with pytest.raises(FileNotFoundError, match="run stage 1 first"):
        make_method(tmp_path, eval_candidates_file=str(tmp_path / "nowhere.json"))


def test_the_docred_rc_task_feeds_the_trainer_the_methods_own_examples(tmp_path, assert_same_rows):
    """demo_rc.gin trains from `demo_docred_rc`: with the method's knobs bound to the task too (negative draws,
    stage-1 training candidates included), the feed's zero-padded rows are the method's own padded rows."""
    import gin
    import tasks.docred  # noqa: F401  (registers the tasks)
    from kipjax.data.feed import SeqioFeed
    docs = read_docred(demo_docred_path("train_annotated.json"))
    rng = random.Random(1)
    candidates = tmp_path / "candidates_train.json"
    write_candidate_pairs(candidates, docs, [rng.sample(rc_features.all_pairs(d), 2) for d in docs])
    knobs = dict(group_size=6, negative_ratio=0.5, negative_draws=2, train_candidates_file=str(candidates),
                 max_length=1024, seed=3)
    own = make_method(tmp_path, **knobs).train_examples()
    for name, value in knobs.items():
        gin.bind_parameter(f"demo_docred_rc_settings.{name}", value)
    gin.bind_parameter("SeqioFeed.task_feature_lengths",
                       {name: own["input_ids"].shape[1] for name in rc_features.SEQUENCE_FEATURES})
    n = len(own["input_ids"])
    method = make_method(tmp_path, **knobs)
    batch = method.batch_from_features(SeqioFeed("demo_docred_rc", n).peek())  # what the trainer does
    assert_same_rows(batch, own)
