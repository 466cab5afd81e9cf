"""Registration of SeqIO tasks whose examples are featurized in memory: one source, a pass-through vocabulary, no
preprocessing left for SeqIO. `register_token_task` streams unpadded token-id lists (the coref and LMRC stage 2
tasks), `register_array_task` rows of fixed-shape arrays (the Zeshel and LMRC stage 1 tasks)."""
from __future__ import annotations

import logging
import os
from typing import Callable, Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: keep its C++ logging quiet

import numpy as np
import seqio
import tensorflow as tf

Examples = Callable[[str], Sequence[Sequence[Sequence[int] | int]]]  # split -> examples: per feature ids or an int
SplitArrays = Callable[[str], Mapping[str, np.ndarray]]  # split -> {feature: [N, ...] array}
SHUFFLE_BUFFER_SIZE = 65536  # more than any in-memory split here (Zeshel: 49k training mentions): a full shuffle


class _DropUncachedSourceWarning(logging.Filter):
    """seqio warns that an uncached FunctionDataSource shuffles poorly across restarts; these sources are in
    memory and shuffled with a buffer larger than the split, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedSourceWarning())


def token_features(ranks: Mapping[str, int]) -> dict[str, seqio.Feature]:
    """Already-featurized int32 features of the given ranks (the vocabulary only passes them through; its size
    is unused)."""
    return {name: seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32, rank=rank)
            for name, rank in ranks.items()}


def register_token_task(task_name: str, examples: Examples, features: Sequence[str], splits: Sequence[str],
                        scalars: Sequence[str] = ()) -> None:
    """Registers `task_name` streaming `examples(split)` as {feature: ids}, each example one value per feature:
    an id list, or an int for the features named in `scalars`; a re-import keeps the registration."""
    if task_name in seqio.TaskRegistry.names():
        return
    ranks = {name: 0 if name in scalars else 1 for name in features}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory source; Task.get_dataset(shuffle=True) shuffles examples
        rows = examples(split)

        def generate():
            for example in rows:
                yield {name: np.asarray(ids, np.int32) for name, ids in zip(features, example)}

        signature = {name: tf.TensorSpec([None] * rank, tf.int32) for name, rank in ranks.items()}
        return tf.data.Dataset.from_generator(generate, output_signature=signature)

    seqio.TaskRegistry.add(task_name, source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
                           output_features=token_features(ranks), shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)


def register_array_task(task_name: str, arrays: SplitArrays, ranks: Mapping[str, int], splits: Sequence[str]) -> None:
    """Registers `task_name` streaming the rows of `arrays(split)` (features `ranks`, cast to int32); a re-import
    keeps the registration."""
    if task_name in seqio.TaskRegistry.names():
        return

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory source; Task.get_dataset(shuffle=True) shuffles examples
        rows = arrays(split)
        return tf.data.Dataset.from_tensor_slices({name: np.asarray(rows[name], np.int32) for name in ranks})

    seqio.TaskRegistry.add(task_name, source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
                           output_features=token_features(ranks), shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)


def materialize_split(task_name: str, split: str) -> dict[str, np.ndarray]:
    """All examples of a fixed-shape task's split, read through `task.get_dataset` in file order, as numpy."""
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False)
    batches = list(dataset.batch(4096).as_numpy_iterator())
    if not batches:
        return {name: np.zeros((0, *[d or 0 for d in spec.shape]), spec.dtype.as_numpy_dtype)
                for name, spec in dataset.element_spec.items()}
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def split_file_pairs(setting: str, split_files: Mapping[str, str], splits: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`split_files` (split -> file) as sorted, hashable pairs; a split not in `splits` is an error naming
    the gin `setting`."""
    unknown = sorted(set(split_files) - set(splits))
    if unknown:
        raise ValueError(f"{setting}: unknown splits {unknown}; expected some of {tuple(splits)}")
    return tuple(sorted(split_files.items()))
