"""SeqIO tasks over Zeshel-format data: `zeshel_retrieval` (the real dataset) and `demo_zeshel_retrieval`.

Each task streams featurized mentions (`mention_input_ids`, `mention_attention_mask`, `gold_entity`, `world`,
`mention_index`); the entity table a retriever scores them against is not a stream but a device-resident
table, available from `split_arrays` (the same cached arrays the stream is cut from, so `gold_entity` rows
and `world` ids agree with it).

`zeshel_retrieval` finds its data when first read, not at import: gin `zeshel_settings.data_dir` or the
environment variable KIPJAX_ZESHEL_DIR (and likewise the tokenizer: `zeshel_settings.tokenizer_dir`,
KIPJAX_ZESHEL_TOKENIZER, or DATA_DIR/tokenizer). Pretrained vocabularies get the marker tokens added.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: keep its C++ logging quiet

import gin
import numpy as np
import seqio
import tensorflow as tf

from kipjax.data.demo import bundled_demo_dir
from kipjax.data.featurize import load_zeshel_split
from kipjax.data.markers import ensure_marker_tokens
from kipjax.data.zeshel import SPLITS
from kipjax.models.hf import load_tokenizer

tf.get_logger().setLevel("ERROR")
try:  # tf.data only runs host-side input pipelines here; leave accelerators to JAX
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices elsewhere
    pass


class _DropUncachedSourceWarning(logging.Filter):
    """seqio warns that an uncached FunctionDataSource shuffles poorly across restarts; ours is in memory and
    the Task shuffles it with a buffer larger than any Zeshel split, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedSourceWarning())

ZESHEL_DIR_ENV = "KIPJAX_ZESHEL_DIR"
ZESHEL_TOKENIZER_ENV = "KIPJAX_ZESHEL_TOKENIZER"
ZESHEL_TASK = "zeshel_retrieval"
DEMO_ZESHEL_TASK = "demo_zeshel_retrieval"
SHUFFLE_BUFFER_SIZE = 65536  # more than Zeshel's 49k training mentions: a full shuffle

# feature name -> (key in load_zeshel_split's mention arrays, rank)
_FEATURES = {"mention_input_ids": ("input_ids", 1), "mention_attention_mask": ("attention_mask", 1),
             "gold_entity": ("gold_entity", 0), "world": ("world", 0), "mention_index": ("mention_index", 0)}
# Inputs arrive as wordpiece ids already, so the vocabulary only passes them through (its size is unused).
OUTPUT_FEATURES = {name: seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32,
                                       rank=rank)
                   for name, (_, rank) in _FEATURES.items()}


class ZeshelSettings(NamedTuple):
    data_dir: str
    tokenizer_dir: str
    max_len: int


@gin.configurable
def zeshel_settings(data_dir: str | None = None, tokenizer_dir: str | None = None,
                    max_len: int = 128) -> ZeshelSettings:
    """Where the real Zeshel data and its tokenizer are; resolved when a split is first read."""
    data_dir = data_dir or os.environ.get(ZESHEL_DIR_ENV)
    if not data_dir:
        raise ValueError(f"task {ZESHEL_TASK!r} needs the Zeshel directory: bind zeshel_settings.data_dir "
                         f"in gin or set ${ZESHEL_DIR_ENV}")
    tokenizer_dir = tokenizer_dir or os.environ.get(ZESHEL_TOKENIZER_ENV) or os.path.join(data_dir, "tokenizer")
    return ZeshelSettings(data_dir, tokenizer_dir, max_len)


@gin.configurable
def demo_zeshel_settings(max_len: int = 128) -> ZeshelSettings:
    """The bundled demo data with its own tokenizer."""
    data_dir = bundled_demo_dir()
    return ZeshelSettings(data_dir, os.path.join(data_dir, "tokenizer"), max_len)


_SETTINGS: dict[str, Callable[[], ZeshelSettings]] = {ZESHEL_TASK: zeshel_settings,
                                                       DEMO_ZESHEL_TASK: demo_zeshel_settings}


@functools.lru_cache(maxsize=8)
def _load(settings: ZeshelSettings, split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    tokenizer = ensure_marker_tokens(load_tokenizer(settings.tokenizer_dir))
    mentions, entities, world_names, *_ = load_zeshel_split(settings.data_dir, split, tokenizer, settings.max_len)
    return mentions, entities, world_names


def split_arrays(task_name: str, split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """`load_zeshel_split`'s (mentions, entities, world_names) behind the task's stream, featurized once."""
    return _load(_SETTINGS[task_name](), split)


def _dataset_fn(task_name: str) -> Callable[..., tf.data.Dataset]:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory source; Task.get_dataset(shuffle=True) shuffles examples
        mentions = split_arrays(task_name, split)[0]
        return tf.data.Dataset.from_tensor_slices({name: mentions[key] for name, (key, _) in _FEATURES.items()})
    return dataset_fn


def _register(task_name: str) -> None:
    if task_name in seqio.TaskRegistry.names():  # re-import (e.g. importlib.reload) keeps the registration
        return
    seqio.TaskRegistry.add(task_name, source=seqio.FunctionDataSource(_dataset_fn(task_name), splits=SPLITS),
                           output_features=OUTPUT_FEATURES, shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)


def materialize_split(task_name: str, split: str) -> dict[str, np.ndarray]:
    """All examples of a split, read through `task.get_dataset` in file order, as int32 numpy arrays."""
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False)
    batches = list(dataset.batch(4096).as_numpy_iterator())
    if not batches:
        return {name: np.zeros((0, *[d or 0 for d in spec.shape]), np.int32)
                for name, spec in dataset.element_spec.items()}
    return {name: np.concatenate([b[name] for b in batches]) for name in _FEATURES}


_register(ZESHEL_TASK)
_register(DEMO_ZESHEL_TASK)
