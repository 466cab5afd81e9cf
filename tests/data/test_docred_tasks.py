"""SeqIO tasks for LMRC stage 2: registration, and a stream of (prompt, gold answer) token lists."""
import gin
import pytest
import seqio

import tasks.docred as docred_tasks
from kipjax.data.demo_docred import RELATIONS, demo_docred_path
from kipjax.data.docred import read_docred
from kipjax.methods.lmrc import prompts
from kipjax.models.hf import load_tokenizer


def test_both_tasks_are_registered():
    assert {docred_tasks.DOCRED_TASK, docred_tasks.DEMO_DOCRED_TASK} <= set(seqio.TaskRegistry.names())


def test_demo_validation_stream_asks_about_every_pair_with_the_gold_answer():
    task = seqio.get_mixture_or_task(docred_tasks.DEMO_DOCRED_TASK)
    streamed = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator())
    docs = read_docred(demo_docred_path("dev.json"))
    tokenizer = load_tokenizer(demo_docred_path("llama_tokenizer"))
    groups = [(d, g) for d in docs for g in prompts.group_pairs(
        [(h, t) for h in range(len(d.entities)) for t in range(len(d.entities)) if h != t])]
    assert len(streamed) == len(groups)
    for example, (doc, pairs) in zip(streamed, groups):
        inputs, targets = example["inputs"].tolist(), example["targets"].tolist()
        assert inputs[0] == tokenizer.bos_token_id and targets[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(inputs[1:]) == prompts.build_prompt(doc, pairs, RELATIONS)
        assert tokenizer.decode(targets[:-1]) == prompts.build_answer(doc, pairs, RELATIONS)


def test_demo_training_stream_lists_every_related_pair():
    examples = docred_tasks.split_examples(docred_tasks.DEMO_DOCRED_TASK, "train")
    tokenizer = load_tokenizer(demo_docred_path("llama_tokenizer"))
    docs = read_docred(demo_docred_path("train_annotated.json"))
    answers = " ".join(tokenizer.decode(targets[:-1]) for _, targets in examples)
    facts = sum(len(d.facts) for d in docs)
    related_pairs = sum(len({(f.h, f.t) for f in d.facts}) for d in docs)
    assert sum(answers.count(f"| {name} |") for name in RELATIONS.values()) == facts
    assert answers.count("| none |") == related_pairs  # negative_ratio 1: as many negatives as related pairs


def test_the_general_task_needs_its_files_in_gin():
    gin.clear_config()
    with pytest.raises(ValueError, match="split_files"):
        docred_tasks.docred_task_settings()
    with pytest.raises(ValueError, match="unknown splits"):
        docred_tasks.docred_task_settings(split_files={"dev": "x"}, tokenizer_dir="t", rel_info_file="r")
    settings = docred_tasks.docred_task_settings(split_files={"train": "a.json"}, tokenizer_dir="t",
                                                 rel_info_file="r")
    with pytest.raises(ValueError, match="no file for split 'test'"):
        docred_tasks._examples(settings, "test")
