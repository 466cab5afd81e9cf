"""SeqIO tasks over Zeshel-format data: registration, a stream that round-trips the featurized arrays."""
import numpy as np
import pytest
import seqio

import tasks.zeshel as zeshel_tasks
from tasks.token_tasks import materialize_split
from kipjax.data.demo import bundled_demo_dir
from kipjax.data.zeshel import read_mentions


def test_both_tasks_are_registered():
    names = seqio.TaskRegistry.names()
    assert {zeshel_tasks.ZESHEL_TASK, zeshel_tasks.DEMO_ZESHEL_TASK} <= set(names)


def test_demo_task_stream_equals_the_featurized_arrays():
    mentions, entities, worlds = zeshel_tasks.split_arrays(zeshel_tasks.DEMO_ZESHEL_TASK, "val")
    streamed = materialize_split(zeshel_tasks.DEMO_ZESHEL_TASK, "val")
    assert len(streamed["gold_entity"]) == len(read_mentions(bundled_demo_dir(), "val"))
    np.testing.assert_array_equal(streamed["mention_input_ids"], mentions["input_ids"])
    np.testing.assert_array_equal(streamed["mention_attention_mask"], mentions["attention_mask"])
    np.testing.assert_array_equal(streamed["gold_entity"], mentions["gold_entity"])
    np.testing.assert_array_equal(streamed["mention_index"], np.arange(len(streamed["gold_entity"])))
    # Gold ids index the split's entity table, and the entity lies in the mention's world.
    assert (streamed["gold_entity"] < len(entities["input_ids"])).all()
    np.testing.assert_array_equal(entities["entity_world"][streamed["gold_entity"]], streamed["world"])
    assert worlds == ["mirror_fens"]


def test_shuffled_stream_is_a_permutation():
    task = seqio.get_mixture_or_task(zeshel_tasks.DEMO_ZESHEL_TASK)
    dataset = task.get_dataset(sequence_length=None, split="val", shuffle=True, seed=3)
    order = np.array([int(ex["mention_index"]) for ex in dataset.as_numpy_iterator()])
    assert sorted(order.tolist()) == list(range(len(order))) and (order != np.arange(len(order))).any()


def test_real_task_without_a_data_dir_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv(zeshel_tasks.ZESHEL_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="zeshel_settings.data_dir"):
        zeshel_tasks.split_arrays(zeshel_tasks.ZESHEL_TASK, "val")


def test_real_task_reads_a_directory_from_the_environment(monkeypatch):
    monkeypatch.setenv(zeshel_tasks.ZESHEL_DIR_ENV, bundled_demo_dir())  # same layout as the real dataset
    real = materialize_split(zeshel_tasks.ZESHEL_TASK, "test")
    demo = materialize_split(zeshel_tasks.DEMO_ZESHEL_TASK, "test")
    np.testing.assert_array_equal(real["mention_input_ids"], demo["mention_input_ids"])
