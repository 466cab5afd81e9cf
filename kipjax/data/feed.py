"""Training batches through SeqIO: the one way training data reaches the trainer.

`SeqioFeed` reads a SeqIO Task or Mixture, on each host only the data shards that host owns
(`seqio.ShardInfo(shard, num_shards)`; by default one shard per host, `ShardInfo(process_index,
process_count)`), and yields that host's rows of each global batch as numpy arrays. Three modes:

- a Task: epoch by epoch, each epoch a fresh permutation (seeded by `seed` and the epoch) of every shard,
  cut into equal batches; every shard contributes `batch_size / num_shards` rows per batch, and every host
  gets the same number of batches per epoch (the smallest shard's), so hosts never disagree on an epoch's end;
- a Mixture: an endless stream sampled from its tasks at the Mixture's rates (`seqio.mixing_rate_num_examples`
  with a temperature and the like), each task reshuffled on every pass; epochs are not defined (epoch 0);
- a fixed composition (`batch_composition = {task: rows}`): every batch holds exactly that many rows of each
  task, in task order, with a `task_index` feature; an epoch is as many steps as the largest task needs, the
  others cycle (TACO's multi-task batches).

The global batch depends on `num_shards`, never on how many processes read the shards, so one process
reading two shards gives the same batches as two processes reading one each (tested). The whole state is
(`epoch`, `position`): the pipeline is deterministic, and a resumed run rebuilds it and skips `position`
batches, so the data after a restart is the data an uninterrupted run would have seen.

Variable-length features are trimmed and padded (with 0) to `task_feature_lengths`; the others must already
have one shape. `register_arrays_task` turns in-memory arrays (a method's featurized examples) into a Task.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Iterator, Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: keep its C++ logging quiet

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

try:  # tf.data only runs host-side input pipelines here; leave accelerators to JAX
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices elsewhere
    pass

TASK_INDEX = "task_index"
EXAMPLE_INDEX = "example_index"
_ARRAY_TASKS = itertools.count()


@dataclasses.dataclass
class FeedState:
    """How far the feed has read: whole epochs, then batches of the current epoch."""

    epoch: int = 0
    position: int = 0

    def to_json(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FeedState":
        return cls(epoch=int(d["epoch"]), position=int(d["position"]))


def register_arrays_task(arrays: Mapping[str, np.ndarray], prefix: str = "arrays") -> str:
    """Registers `arrays` (a common leading dimension) as a new SeqIO Task with one example per row and an
    `example_index` feature (the row), and returns its name."""
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all example arrays need the same leading size, got {sizes}")
    examples = {**{k: np.asarray(v) for k, v in arrays.items()},
                EXAMPLE_INDEX: np.arange(next(iter(sizes.values())), dtype=np.int32)}
    name = f"kipjax_{prefix}_{next(_ARRAY_TASKS)}"

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # one in-memory source; the feed shuffles
        return tf.data.Dataset.from_tensor_slices(examples)

    features = {k: seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.as_dtype(v.dtype),
                                 rank=v.ndim - 1) for k, v in examples.items()}
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
                           output_features=features)
    return name


def _global_min(value: int) -> int:
    """The smallest `value` over all processes (every process calls this with its own)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(np.min(multihost_utils.process_allgather(np.asarray(value, np.int64))))


@gin.configurable
class SeqioFeed:
    """This host's rows of every global batch of `mixture_or_task_name` (see the module docstring)."""

    def __init__(self, mixture_or_task_name: str, batch_size: int, seed: int = 0, split: str = "train",
                 task_feature_lengths: Mapping[str, int] | None = None, num_shards: int | None = None,
                 batch_composition: Mapping[str, int] | None = None, shuffle_buffer_size: int = 65536):
        self.name = mixture_or_task_name
        self.split = split
        self.seed = seed
        self.lengths = dict(task_feature_lengths or {})
        self.shuffle_buffer_size = shuffle_buffer_size
        self._shards: dict[tuple[str, int], tf.data.Dataset] = {}
        processes, process = jax.process_count(), jax.process_index()
        self.num_shards = num_shards or processes
        if self.num_shards % processes:
            raise ValueError(f"SeqioFeed.num_shards={self.num_shards} must be a multiple of the {processes} processes")
        per_host = self.num_shards // processes
        self.shards = range(process * per_host, (process + 1) * per_host)
        provider = seqio.get_mixture_or_task(mixture_or_task_name)
        self.composition = self._composition(provider, batch_composition, batch_size)
        if self.composition is None and batch_size % self.num_shards:
            raise ValueError(f"batch_size {batch_size} is not divisible by SeqioFeed.num_shards={self.num_shards}")
        self.rows_per_shard = batch_size // self.num_shards
        if isinstance(provider, seqio.Mixture) and self.composition is None:
            self.mode, self.tasks = "mixture", list(provider.tasks)
            self.rates = [float(provider.get_rate(task)) for task in self.tasks]
            self.steps_per_epoch = None
        elif self.composition is None:
            self.mode, self.tasks = "task", [provider]
            self.steps_per_epoch = self._steps_per_epoch(provider, self.rows_per_shard)
        else:
            self.mode, self.tasks = "composition", list(self.composition)
            self.steps_per_epoch = max(self._steps_per_epoch(task, rows // self.num_shards)
                                       for task, rows in self.composition.items())
        self.state = FeedState()
        self._iterator: Iterator[dict[str, np.ndarray]] | None = None
        self._lookahead: dict[str, np.ndarray] | None = None

    # -------------------------------------------------------------------------------------------- setup

    def _composition(self, provider: Any, composition: Mapping[str, int] | None,
                     batch_size: int) -> dict[seqio.Task, int] | None:
        if not composition:
            return None
        members = {t.name for t in provider.tasks} if isinstance(provider, seqio.Mixture) else {provider.name}
        unknown = sorted(set(composition) - members)
        if unknown:
            raise ValueError(f"SeqioFeed.batch_composition names {unknown}, which are not tasks of {self.name!r} "
                             f"({sorted(members)})")
        if sum(composition.values()) != batch_size:
            raise ValueError(f"SeqioFeed.batch_composition sums to {sum(composition.values())} rows, but the "
                             f"batch size is {batch_size}")
        uneven = {k: v for k, v in composition.items() if v <= 0 or v % self.num_shards}
        if uneven:
            raise ValueError(f"SeqioFeed.batch_composition rows {uneven} must be positive multiples of the "
                             f"{self.num_shards} data shards")
        return {seqio.get_mixture_or_task(k): v for k, v in composition.items()}

    def _shard(self, task: seqio.Task, shard: int) -> tf.data.Dataset:
        """One shard of `task`'s split in file order, features trimmed and padded to their lengths; built once
        (for counting, then reshuffled every epoch) rather than through seqio again at each epoch start."""
        key = (task.name, shard)
        if key not in self._shards:
            self._shards[key] = self._build_shard(task, shard)
        return self._shards[key]

    def _build_shard(self, task: seqio.Task, shard: int) -> tf.data.Dataset:
        lengths = {k: v for k, v in self.lengths.items() if k in task.output_features}
        ds = task.get_dataset(sequence_length=lengths or None, split=self.split, shuffle=False, num_epochs=1,
                              shard_info=seqio.ShardInfo(shard, self.num_shards), trim_output_features=True)
        if lengths:
            ds = seqio.utils.trim_and_pad_dataset(ds, lengths)
        ragged = sorted(k for k, spec in ds.element_spec.items() if not spec.shape.is_fully_defined())
        if ragged:
            raise ValueError(f"task {task.name!r}: feature(s) {ragged} vary in length; give their lengths in "
                             "SeqioFeed.task_feature_lengths (e.g. --gin.SeqioFeed.task_feature_lengths=...)")
        return ds

    def _steps_per_epoch(self, task: seqio.Task, rows: int) -> int:
        """Whole batches of `rows` in the smallest shard of `task` over all hosts."""
        def size(ds: tf.data.Dataset) -> int:
            n = int(ds.cardinality())
            return n if n >= 0 else int(ds.reduce(np.int64(0), lambda count, _: count + 1))

        steps = _global_min(min(size(self._shard(task, s)) for s in self.shards)) // rows
        if steps == 0:
            raise ValueError(f"task {task.name!r} split {self.split!r} has fewer than {rows} examples per data shard "
                             f"({self.num_shards} shards): lower the batch size or add data")
        return steps

    # ------------------------------------------------------------------------------------------ streams

    def _shuffled(self, ds: tf.data.Dataset, seed: int, repeat: bool) -> tf.data.Dataset:
        ds = ds.shuffle(self.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=repeat)
        return ds.repeat() if repeat else ds

    def _shard_stream(self, shard: int, epoch: int) -> tf.data.Dataset:
        """Batches of one shard: this epoch's (task mode) or all of them from the start (endless modes)."""
        seed = _seed(self.seed, shard, epoch if self.mode == "task" else 0)
        if self.mode == "task":
            ds = self._shuffled(self._shard(self.tasks[0], shard), seed, repeat=False)
            return ds.batch(self.rows_per_shard, drop_remainder=True).take(self.steps_per_epoch)
        streams = [self._shuffled(self._shard(task, shard), seed + i, repeat=True)
                   for i, task in enumerate(self.tasks)]
        if self.mode == "mixture":
            ds = tf.data.Dataset.sample_from_datasets(streams, weights=self.rates, seed=seed)
            return ds.batch(self.rows_per_shard, drop_remainder=True)
        parts = []
        for i, (stream, rows) in enumerate(zip(streams, self.composition.values())):
            parts.append(stream.map(lambda x, i=i: {**x, TASK_INDEX: tf.constant(i, tf.int32)})
                         .batch(rows // self.num_shards, drop_remainder=True))
        return tf.data.Dataset.zip(tuple(parts)).map(lambda *batches: _concat(batches))

    def _host_stream(self) -> Iterator[dict[str, np.ndarray]]:
        """This host's batches from the current state on."""
        epoch = self.state.epoch if self.mode == "task" else 0
        ds = tf.data.Dataset.zip(tuple(self._shard_stream(s, epoch) for s in self.shards)).map(
            lambda *parts: _concat(parts))
        skip = self.state.position if self.mode == "task" else self._global_position()
        # One input thread and no autotuning: host batches are tiny next to the step, and tf.data's own thread
        # pools would otherwise compete with XLA for the host's cores (visible on 2-core machines).
        options = tf.data.Options()
        options.autotune.enabled = False
        options.threading.private_threadpool_size = 1
        return ds.skip(skip).prefetch(1).with_options(options).as_numpy_iterator()

    def _global_position(self) -> int:
        return self.state.epoch * (self.steps_per_epoch or 0) + self.state.position

    # -------------------------------------------------------------------------------------------- access

    def restore(self, state: FeedState) -> None:
        """Continue from `state` (as saved by a checkpoint): the next batch is the one after it."""
        self.state = state
        self._iterator, self._lookahead = None, None

    def peek(self) -> dict[str, np.ndarray]:
        """The next batch, without advancing."""
        if self._lookahead is None:
            if self._iterator is None:
                self._iterator = self._host_stream()
            self._lookahead = next(self._iterator)
        return self._lookahead

    def __iter__(self) -> "SeqioFeed":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.peek()
        self._lookahead = None
        self.state.position += 1
        if self.steps_per_epoch is not None and self.state.position >= self.steps_per_epoch:
            self.state = FeedState(epoch=self.state.epoch + 1, position=0)
            if self.mode == "task":
                self._iterator = None  # the next epoch is a new permutation
        return batch


def _seed(*parts: int) -> int:
    """A tf.data seed that is a pure function of `parts` (the same in every process and run)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] % (2 ** 31))


def _concat(parts: tuple[dict[str, tf.Tensor], ...]) -> dict[str, tf.Tensor]:
    return {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0]}
