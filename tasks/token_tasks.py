"""Registration of SeqIO tasks whose examples are featurized in memory as unpadded token-id lists (the coref
and DocRED tasks): one source, a pass-through vocabulary, no preprocessing left for SeqIO."""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: keep its C++ logging quiet

import numpy as np
import seqio
import tensorflow as tf

Examples = Callable[[str], Sequence[Sequence[Sequence[int]]]]  # split -> examples, each one id list per feature


def token_features(names: Sequence[str]) -> dict[str, seqio.Feature]:
    """Already-featurized int32 id features (the vocabulary only passes them through; its size is unused)."""
    return {name: seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32)
            for name in names}


def register_token_task(task_name: str, examples: Examples, features: Sequence[str], splits: Sequence[str]) -> None:
    """Registers `task_name` streaming `examples(split)` as {feature: ids}; a re-import keeps the registration."""
    if task_name in seqio.TaskRegistry.names():
        return

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory source; Task.get_dataset(shuffle=True) shuffles examples
        rows = examples(split)

        def generate():
            for example in rows:
                yield {name: np.asarray(ids, np.int32) for name, ids in zip(features, example)}

        signature = {name: tf.TensorSpec([None], tf.int32) for name in features}
        return tf.data.Dataset.from_generator(generate, output_signature=signature)

    seqio.TaskRegistry.add(task_name, source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
                           output_features=token_features(features), shuffle_buffer_size=65536)


def split_file_pairs(setting: str, split_files: Mapping[str, str], splits: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`split_files` (split -> file) as sorted, hashable pairs; a split not in `splits` is an error naming
    the gin `setting`."""
    unknown = sorted(set(split_files) - set(splits))
    if unknown:
        raise ValueError(f"{setting}: unknown splits {unknown}; expected some of {tuple(splits)}")
    return tuple(sorted(split_files.items()))
