"""SeqIO tasks for seq2seq coreference: registration, a stream of well-formed (inputs, z, y) segments."""
import gin
import pytest
import seqio

import tasks.coref as coref_tasks
from kipjax.data.coref import read_jsonlines
from kipjax.data.demo_coref import demo_coref_path
from kipjax.methods.coref.featurize import segment_bounds
from kipjax.methods.coref.linearize import rebuild_linearization
from kipjax.methods.coref.vocabulary import add_coref_tokens
from kipjax.models.hf import load_tokenizer


def test_both_tasks_are_registered():
    assert {coref_tasks.COREF_TASK, coref_tasks.DEMO_COREF_TASK} <= set(seqio.TaskRegistry.names())


def test_demo_stream_holds_every_segment_with_actions_that_rebuild_the_decoder_input():
    task = seqio.get_mixture_or_task(coref_tasks.DEMO_COREF_TASK)
    streamed = list(task.get_dataset(sequence_length=None, split="validation", shuffle=False).as_numpy_iterator())
    docs = read_jsonlines(demo_coref_path("dev.jsonlines"))
    tokenizer = load_tokenizer(demo_coref_path("tokenizer"))
    symbols = add_coref_tokens(tokenizer)
    # The demo's words are single pieces, so segments follow the word-level sentence lengths.
    expected = sum(len(segment_bounds([len(s) for s in d.sentences], 128, 64)) for d in docs)
    assert len(streamed) == expected == len(coref_tasks.split_examples(coref_tasks.DEMO_COREF_TASK, "validation"))
    for example, doc in zip(streamed, docs):
        inputs, z, y = (example[name].tolist() for name in coref_tasks.FEATURES)
        assert inputs[-1] == symbols.eos and inputs[:-1] == tokenizer(doc.tokens, is_split_into_words=True,
                                                                       add_special_tokens=False)["input_ids"]
        assert len(z) == len(y) and y[-1] == symbols.eos and y.count(symbols.copy) == len(inputs) - 1
        assert rebuild_linearization(y, inputs[:-1], symbols) == z[1:]


def test_the_general_task_needs_its_files_in_gin():
    gin.clear_config()
    with pytest.raises(ValueError, match="split_files"):
        coref_tasks.coref_task_settings()
    with pytest.raises(ValueError, match="unknown splits"):
        coref_tasks.coref_task_settings(split_files={"dev": "x"}, tokenizer_dir="t")
    settings = coref_tasks.coref_task_settings(split_files={"train": "a.jsonlines"}, tokenizer_dir="t")
    with pytest.raises(ValueError, match="no file for split 'test'"):
        coref_tasks._examples(settings, "test")
