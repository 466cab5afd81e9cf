"""SeqioFeed: epochs are seeded permutations, shards are host-count invariant, mixtures follow their rates, fixed
compositions hold their rows, padding, and a restored feed continues exactly where it stopped."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from kipjax.data import feed as feed_module
from kipjax.data.feed import EXAMPLE_INDEX, TASK_INDEX, FeedState, SeqioFeed, register_arrays_task


def arrays_task(n: int, offset: int = 0) -> str:
    return register_arrays_task({"x": (np.arange(n, dtype=np.int32) + offset), "pair": np.zeros((n, 2), np.float32)})


def take(feed: SeqioFeed, n: int, key: str = EXAMPLE_INDEX) -> list[np.ndarray]:
    return [next(feed)[key] for _ in range(n)]


def test_each_epoch_is_a_seeded_permutation_cut_into_equal_batches():
    name = arrays_task(22)  # 5 batches of 4 per epoch; 2 examples dropped, different ones each epoch
    feed = SeqioFeed(name, 4, seed=1)
    assert feed.steps_per_epoch == 5
    epochs = [np.concatenate(take(feed, 5)) for _ in range(3)]
    assert feed.state == FeedState(epoch=3, position=0)
    for order in epochs:
        assert len(set(order)) == 20 and set(order) <= set(range(22))
    assert not np.array_equal(epochs[0], epochs[1])
    again = SeqioFeed(name, 4, seed=1)
    np.testing.assert_array_equal(np.concatenate(take(again, 5)), epochs[0])
    other_seed = SeqioFeed(name, 4, seed=2)
    assert not np.array_equal(np.concatenate(take(other_seed, 5)), epochs[0])
    batch = SeqioFeed(name, 4, seed=1).peek()
    np.testing.assert_array_equal(batch["x"], batch[EXAMPLE_INDEX])
    assert batch["pair"].shape == (4, 2) and batch["pair"].dtype == np.float32


@pytest.mark.parametrize("mode", ["task", "mixture", "composition"])
def test_a_restored_feed_continues_exactly(mode):
    def make():
        if mode == "task":
            return SeqioFeed(arrays_task_cached["a"], 4, seed=5)
        if mode == "mixture":
            return SeqioFeed(arrays_task_cached["mixture"], 4, seed=5)
        return SeqioFeed(arrays_task_cached["mixture"], 6, seed=5, batch_composition={
            arrays_task_cached["a"]: 4, arrays_task_cached["b"]: 2})

    uninterrupted = make()
    expected = [next(uninterrupted)["x"] for _ in range(17)]
    first = make()
    for _ in range(7):
        next(first)
    resumed = make()
    resumed.restore(FeedState.from_json(first.state.to_json()))
    got = [next(resumed)["x"] for _ in range(10)]
    for a, b in zip(got, expected[7:]):
        np.testing.assert_array_equal(a, b)


arrays_task_cached = {"a": arrays_task(24), "b": arrays_task(6, offset=1000)}
seqio.MixtureRegistry.add("kipjax_test_feed_mixture", [(arrays_task_cached["a"], 3.0), (arrays_task_cached["b"], 1.0)])
arrays_task_cached["mixture"] = "kipjax_test_feed_mixture"


def test_shards_give_the_same_global_batch_whatever_the_number_of_processes(monkeypatch):
    name = arrays_task(40)
    one_process = SeqioFeed(name, 8, seed=3, num_shards=2)
    expected = take(one_process, 6)
    # Shard 0 holds the even rows, shard 1 the odd ones; each fills its half of every batch.
    assert all((b[:4] % 2 == 0).all() and (b[4:] % 2 == 1).all() for b in expected)
    monkeypatch.setattr(feed_module.jax, "process_count", lambda: 2)
    monkeypatch.setattr(feed_module, "_global_min", lambda value: value)
    halves = []
    for process in (0, 1):
        monkeypatch.setattr(feed_module.jax, "process_index", lambda process=process: process)
        halves.append(take(SeqioFeed(name, 8, seed=3), 6))  # one shard per process by default
    for i, batch in enumerate(expected):
        np.testing.assert_array_equal(np.concatenate([halves[0][i], halves[1][i]]), batch)


def test_a_mixture_samples_its_tasks_at_their_rates():
    feed = SeqioFeed(arrays_task_cached["mixture"], 8, seed=0)
    assert feed.mode == "mixture" and feed.steps_per_epoch is None
    rows = np.concatenate(take(feed, 200, key="x"))
    share_b = np.mean(rows >= 1000)
    assert abs(share_b - 0.25) < 0.03  # rates 3:1 over 1600 draws (std ~0.011)
    assert set(rows[rows >= 1000]) == set(range(1000, 1006))  # the small task cycles
    assert feed.state == FeedState(epoch=0, position=200)


def test_rate_functions_of_seqio_apply():
    name = "kipjax_test_feed_by_size"
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, [arrays_task_cached["a"], arrays_task_cached["b"]],
                                  default_rate=lambda task: {arrays_task_cached["a"]: 24, arrays_task_cached["b"]: 6}[task.name])
    rows = np.concatenate(take(SeqioFeed(name, 10, seed=1), 150, key="x"))
    assert abs(np.mean(rows >= 1000) - 0.2) < 0.03  # 24 : 6 examples


def test_a_fixed_composition_holds_exactly_its_rows_of_each_task():
    a, b = arrays_task_cached["a"], arrays_task_cached["b"]
    feed = SeqioFeed(arrays_task_cached["mixture"], 6, seed=2, batch_composition={a: 4, b: 2})
    assert feed.steps_per_epoch == 6  # task a needs 24 / 4 steps; b (6 / 2 = 3 steps) cycles twice
    batches = [next(feed) for _ in range(6)]
    for batch in batches:
        np.testing.assert_array_equal(batch[TASK_INDEX], [0, 0, 0, 0, 1, 1])
        assert (batch["x"][:4] < 1000).all() and (batch["x"][4:] >= 1000).all()
    first_epoch_a = np.concatenate([batch["x"][:4] for batch in batches])
    assert sorted(first_epoch_a) == list(range(24))
    b_rows = np.concatenate([batch["x"][4:] for batch in batches])
    assert sorted(b_rows[:6]) == sorted(b_rows[6:]) == list(range(1000, 1006))  # two passes over b
    assert feed.state == FeedState(epoch=1, position=0)


def test_composition_mistakes_are_named():
    a, b = arrays_task_cached["a"], arrays_task_cached["b"]
    with pytest.raises(ValueError, match="sums to 5 rows, but the batch size is 6"):
        SeqioFeed(arrays_task_cached["mixture"], 6, batch_composition={a: 3, b: 2})
    with pytest.raises(ValueError, match=r"names \['nope'\], which are not tasks"):
        SeqioFeed(arrays_task_cached["mixture"], 6, batch_composition={a: 6, "nope": 0})
    with pytest.raises(ValueError, match="must be positive multiples of the 2 data shards"):
        SeqioFeed(arrays_task_cached["mixture"], 6, num_shards=2, batch_composition={a: 3, b: 3})


def ragged_task() -> str:
    name = "kipjax_test_feed_ragged"
    if name not in seqio.TaskRegistry.names():
        def dataset_fn(split, shuffle_files, seed=None):
            return tf.data.Dataset.from_generator(
                lambda: ({"ids": np.arange(1, n + 1, dtype=np.int32)} for n in (1, 5, 3, 2)),
                output_signature={"ids": tf.TensorSpec([None], tf.int32)})
        seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
                               output_features={"ids": seqio.Feature(seqio.PassThroughVocabulary(0), add_eos=False,
                                                                     dtype=tf.int32)})
    return name


def test_variable_length_features_are_trimmed_and_padded_to_their_lengths():
    feed = SeqioFeed(ragged_task(), 4, task_feature_lengths={"ids": 4}, shuffle_buffer_size=1)
    assert feed.steps_per_epoch == 1  # a generator's size is counted
    np.testing.assert_array_equal(feed.peek()["ids"], [[1, 0, 0, 0], [1, 2, 3, 4], [1, 2, 3, 0], [1, 2, 0, 0]])
    with pytest.raises(ValueError, match=r"feature\(s\) \['ids'\] vary in length; give their lengths in "
                                         r"SeqioFeed.task_feature_lengths"):
        SeqioFeed(ragged_task(), 4).peek()


def test_too_little_data_is_reported():
    with pytest.raises(ValueError, match="fewer than 8 examples per data shard"):
        SeqioFeed(arrays_task(10), 16, num_shards=2)
