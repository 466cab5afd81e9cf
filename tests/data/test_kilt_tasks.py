"""TACO's featurized data (kipjax.methods.taco.data) and its SeqIO tasks (tasks/kilt.py) on the bundled demo."""
import dataclasses

import gin
import numpy as np
import pytest
import seqio

import tasks.kilt as kilt_tasks
from kipjax.data.feed import SeqioFeed
from kipjax.data import token_tables
from kipjax.methods.taco import data as taco_data
from kipjax.methods.taco import inputs
from kipjax.metrics.kilt import normalize_answer


@pytest.fixture(scope="module")
def demo():
    return taco_data.load_taco_data(taco_data.demo_kilt_data())


def test_positives_are_answer_bearing_passages_of_gold_pages(demo):
    pages = demo.corpus.wikipedia_ids
    for task in demo.tasks:
        for example, positive, gold in zip(task.train, task.positives, task.gold_rows):
            assert pages[positive] in example.pages and positive == gold[0]
            assert {pages[r] for r in gold} <= set(example.pages)
            answers = [normalize_answer(a) for a in example.answers]
            bearing = [r for p in example.pages for r in demo.page_rows[p]
                       if any(a and a in normalize_answer(demo.corpus.texts[r]) for a in answers)]
            # the answer-bearing passages when there are any, else every passage of the gold pages
            expected = bearing or [r for p in example.pages for r in demo.page_rows[p]]
            assert sorted(gold.tolist()) == sorted(expected)
    qa = demo.tasks[0]
    assert qa.task.name == "qa" and np.mean([len(g) for g in qa.gold_rows]) < 2  # answers pick passages


def test_queries_carry_the_task_prefix_and_fit_their_budget(demo):
    tokenizer = demo.tokenizer
    for task in demo.tasks:
        budget = inputs.query_tokens(task.task, "task")
        for ids, example in zip(task.train_query_ids[:50], task.train):
            assert len(ids) <= budget and ids[-1] == tokenizer.eos_token_id
            assert tokenizer.convert_ids_to_tokens(ids[:2]) == [task.task.prefix, inputs.TASK_TOKEN]
            assert tokenizer.unk_token_id not in ids
    lengths = (demo.passage_ids != 0).sum(1)
    assert demo.passage_ids.dtype == np.uint16 and demo.passage_ids.shape[1] <= inputs.PASSAGE_TOKENS
    assert (demo.passage_ids[np.arange(len(demo.passage_ids)), lengths - 1] == tokenizer.eos_token_id).all()
    assert demo.passage_ids[0, :lengths[0]].tolist() == token_tables.encode_texts(
        tokenizer, [inputs.passage_text(demo.corpus.titles[0], demo.corpus.texts[0])], inputs.PASSAGE_TOKENS)[0]


def test_the_passage_token_table_is_cached_and_memory_mapped(demo, tmp_path):
    settings = dataclasses.replace(demo.settings, cache_dir=str(tmp_path))
    texts = ["Title: A Text: alpha beta", "Title: B Text: gamma"]
    built = taco_data.passage_tokens(settings, demo.tokenizer, texts)
    assert [p.name for p in tmp_path.iterdir()][0].startswith("passage_tokens-")
    cached = taco_data.passage_tokens(settings, demo.tokenizer, ["ignored: read from the cache"] * 2)
    assert isinstance(cached, np.memmap) and cached.tolist() == built.tolist()
    expected = token_tables.encode_texts(demo.tokenizer, texts, inputs.PASSAGE_TOKENS)
    assert [row[row != 0].tolist() for row in built] == expected
    with pytest.raises(ValueError, match="2 cached passages, but .* has 3"):
        taco_data.passage_tokens(settings, demo.tokenizer, texts + ["a third"])


def test_each_task_streams_its_training_queries(demo):
    for task in demo.tasks:
        streamed = list(seqio.get_mixture_or_task(kilt_tasks.task_name("demo_kilt", task.task.name)).get_dataset(
            sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
        assert len(streamed) == len(task.train)
        for i in (0, len(streamed) - 1):
            assert streamed[i]["query_input_ids"].tolist() == task.train_query_ids[i]
            assert int(streamed[i]["positive"]) == task.positives[i] and int(streamed[i]["query_index"]) == i


@pytest.mark.slow
def test_the_composed_feed_holds_each_tasks_share_in_task_order(demo):
    gin.clear_config()
    composition = kilt_tasks.kilt_batch_composition(data=taco_data.demo_kilt_data(), total=32, prefix="demo_kilt")
    assert list(composition) == [f"demo_kilt_{t}" for t in ("qa", "fc", "sf", "el")]
    assert list(composition.values()) == inputs.task_batch_sizes([1400, 1000, 1000, 500], 32)
    gin.bind_parameter("SeqioFeed.batch_composition", composition)
    gin.bind_parameter("SeqioFeed.task_feature_lengths", {"query_input_ids": 52})
    feed = SeqioFeed("demo_kilt_taco", 32)
    gin.clear_config()
    batch = next(feed)
    assert np.bincount(batch["task_index"]).tolist() == list(composition.values())
    # an epoch: as many steps as the largest task needs; the others cycle
    assert feed.steps_per_epoch == max(n // b for n, b in zip([1400, 1000, 1000, 500], composition.values()))
    for row in range(32):
        task = demo.tasks[batch["task_index"][row]]
        ids = task.train_query_ids[batch["query_index"][row]]
        assert batch["query_input_ids"][row, :len(ids)].tolist() == ids
        assert batch["positive"][row] == task.positives[batch["query_index"][row]]


def test_settings_errors_name_the_setting():
    with pytest.raises(ValueError, match="demo_kilt_data.tasks: unknown"):
        taco_data.demo_kilt_data(tasks=("qa", "nq"))
    with pytest.raises(ValueError, match="kilt_data.tasks: unknown"):
        taco_data.kilt_data(data_dir="/d", passages_file="p", tokenizer_dir="t", tasks=("qa",))
    settings = taco_data.kilt_data(data_dir="/d", passages_file="p", tokenizer_dir="t", tasks=("tqa", "zsre"))
    assert settings.train_files == ("/d/triviaqa-train-kilt.jsonl", "/d/structured_zeroshot-train-kilt.jsonl")
    assert settings.train_limits == (None, 100_000)
