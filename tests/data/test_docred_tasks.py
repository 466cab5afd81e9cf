"""SeqIO tasks for LMRC: registration; stage 2's stream of (prompt + answer) sequences with the loss on the
answer; stage 1's stream of featurized documents; settings errors."""
import gin
import numpy as np
import pytest
import seqio

import tasks.docred as docred_tasks
from kipjax.data.demo_docred import RELATIONS, demo_docred_path
from kipjax.data.docred import read_docred
from kipjax.methods.lmrc import prompts
from kipjax.models.hf import load_tokenizer
from tasks.token_tasks import materialize_split


def test_all_tasks_are_registered():
    assert {docred_tasks.DOCRED_RC_TASK, docred_tasks.DEMO_DOCRED_RC_TASK, docred_tasks.DOCRED_RCP_TASK,
            docred_tasks.DEMO_DOCRED_RCP_TASK} <= set(seqio.TaskRegistry.names())


def test_demo_validation_stream_asks_about_every_pair_with_the_gold_answer():
    task = seqio.get_mixture_or_task(docred_tasks.DEMO_DOCRED_RC_TASK)
    streamed = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator())
    docs = read_docred(demo_docred_path("dev.json"))
    tokenizer = load_tokenizer(demo_docred_path("llama_tokenizer"))
    groups = [(d, g) for d in docs for g in prompts.group_pairs(
        [(h, t) for h in range(len(d.entities)) for t in range(len(d.entities)) if h != t])]
    assert len(streamed) == len(groups)
    for example, (doc, pairs) in zip(streamed, groups):
        inputs, targets, loss_mask = (example[k].tolist() for k in ("input_ids", "targets", "loss_mask"))
        assert example["attention_mask"].tolist() == [1] * len(inputs) == [1] * len(targets)
        assert inputs[0] == tokenizer.bos_token_id and inputs[1:] == targets[:-1]  # targets: the next tokens
        answer = [t for t, m in zip(targets, loss_mask) if m]
        assert loss_mask == sorted(loss_mask) and answer[-1] == tokenizer.eos_token_id  # prompt 0s, answer 1s
        assert tokenizer.decode(answer[:-1]) == prompts.build_answer(doc, pairs, RELATIONS)
        assert tokenizer.decode(inputs[1:len(inputs) - len(answer) + 1]) == prompts.build_prompt(doc, pairs, RELATIONS)


def test_demo_training_stream_lists_every_related_pair():
    examples = docred_tasks.rc_split_examples(docred_tasks.DEMO_DOCRED_RC_TASK, "train")
    tokenizer = load_tokenizer(demo_docred_path("llama_tokenizer"))
    docs = read_docred(demo_docred_path("train_annotated.json"))
    answers = " ".join(tokenizer.decode([t for t, m in zip(targets, mask) if m][:-1])
                       for _, _, targets, mask in examples)
    facts = sum(len(d.facts) for d in docs)
    related_pairs = sum(len({(f.h, f.t) for f in d.facts}) for d in docs)
    assert sum(answers.count(f"| {name} |") for name in RELATIONS.values()) == facts
    assert answers.count("| none |") == related_pairs  # negative_ratio 1: as many negatives as related pairs


def test_demo_rcp_stream_marks_every_mention_and_labels_every_pair():
    gin.clear_config()
    gin.bind_parameter("demo_docred_rcp_settings.max_length", 126)
    gin.bind_parameter("demo_docred_rcp_settings.max_entities", 14)
    gin.bind_parameter("demo_docred_rcp_settings.max_mentions", 8)
    streamed = materialize_split(docred_tasks.DEMO_DOCRED_RCP_TASK, "validation")
    gin.clear_config()
    docs = read_docred(demo_docred_path("dev.json"))
    assert len(streamed["input_ids"]) == len(docs)
    star = load_tokenizer(demo_docred_path("bert_tokenizer")).convert_tokens_to_ids("*")
    for i, doc in enumerate(docs):
        positions = streamed["mention_positions"][i]
        assert (positions >= 0).sum() == sum(len(e.mentions) for e in doc.entities)
        assert (streamed["input_ids"][i][positions[positions >= 0]] == star).all()
        real = streamed["pair_mask"][i] == 1
        assert real.sum() == len(doc.entities) * (len(doc.entities) - 1)
        labelled = {(h, t) for h, t, y in zip(streamed["pair_heads"][i][real], streamed["pair_tails"][i][real],
                                              streamed["pair_labels"][i][real]) if y}
        assert labelled == {(f.h, f.t) for f in doc.facts}
    assert streamed["input_ids"].dtype == np.int32


def test_the_general_tasks_need_their_files_in_gin():
    gin.clear_config()
    with pytest.raises(ValueError, match="docred_rc_settings.split_files"):
        docred_tasks.docred_rc_settings()
    with pytest.raises(ValueError, match="docred_rcp_settings.split_files"):
        docred_tasks.docred_rcp_settings(split_files={"train": "a.json"})
    with pytest.raises(ValueError, match="unknown splits"):
        docred_tasks.docred_rc_settings(split_files={"dev": "x"}, tokenizer_dir="t", rel_info_file="r")
    settings = docred_tasks.docred_rc_settings(split_files={"train": "a.json"}, tokenizer_dir="t",
                                               rel_info_file="r")
    with pytest.raises(ValueError, match="no file for split 'test'"):
        docred_tasks._rc_examples(settings, "test")
