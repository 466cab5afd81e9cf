"""TACO's text mappings and multi-task batch sizes (Appendix B.2, Table B.1)."""
import pytest

from kipjax.methods.taco import inputs
from kipjax.data.demo_coref import demo_coref_path
from kipjax.models.hf import load_tokenizer


def test_batch_sizes_reproduce_table_b1():
    tasks = list(inputs.KILT_TASKS.values())
    sizes = inputs.task_batch_sizes([t.train_size for t in tasks], total=120, temperature=4.0)
    assert dict(zip([t.name for t in tasks], sizes)) == {"nq": 16, "tqa": 14, "hopo": 15, "wow": 16, "trex": 16,
                                                         "fever": 15, "zsre": 17, "aida": 11}


def test_batch_sizes_give_every_task_a_row_and_sum_to_the_total():
    for sizes, total in (([1, 10_000, 10_000], 4), ([5, 5, 5], 7), ([100, 1], 2), ([3, 300, 30_000, 7], 50)):
        batch = inputs.task_batch_sizes(sizes, total)
        assert sum(batch) == total and min(batch) >= 1
        assert all(b1 <= b2 for n1, b1 in zip(sizes, batch) for n2, b2 in zip(sizes, batch) if n1 < n2)
    assert inputs.task_batch_sizes([10, 10, 10, 10], 4) == [1, 1, 1, 1]
    # temperature 1: proportional to size
    assert inputs.task_batch_sizes([300, 100], 8, temperature=1.0) == [6, 2]
    with pytest.raises(ValueError, match="cannot give each of 3 tasks"):
        inputs.task_batch_sizes([1, 2, 3], 2)


def test_query_and_passage_texts():
    task = inputs.KILT_TASKS["trex"]
    assert inputs.query_text("Paris [SEP] country", inputs.marker(task, "task")) == "TREX <extra_id_1> Paris </s> country"
    assert inputs.query_text("Is it?", inputs.marker(inputs.KILT_TASKS["fever"], "type")) == "FC <extra_id_1> Is it?"
    assert inputs.query_text("who", inputs.marker(task, "none")) == "who"
    assert inputs.passage_text("Oslo", "Oslo is a city.") == "Title: Oslo Text: Oslo is a city."
    assert [inputs.query_tokens(t, "task") for t in inputs.KILT_TASKS.values()] == [36, 36, 36, 260, 36, 68, 36, 132]
    assert inputs.query_tokens(task, "none") == 32
    assert len({t.task_type for t in inputs.KILT_TASKS.values()}) == 5
    with pytest.raises(ValueError, match="prefix mode"):
        inputs.marker(task, "dataset")


def test_the_separator_becomes_t5s_end_of_sequence_token():
    tokenizer = load_tokenizer(demo_coref_path("tokenizer"))  # a T5-style tokenizer: </s> is its eos
    ids = tokenizer(inputs.query_text("a [SEP] b", None), add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.eos_token_id) == 1
