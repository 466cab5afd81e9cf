"""SeqIO tasks over Zeshel-format data: mention retrieval (`zeshel_retrieval`, `demo_zeshel_retrieval`) and
reranking a retriever's candidates (`zeshel_rerank`, `demo_zeshel_rerank`).

A retrieval example is a featurized mention (`mention_input_ids`, `mention_attention_mask`, `gold_entity`,
`world`, `mention_index`); a rerank example adds its training candidates (`candidates`: the gold entity row,
then the retriever's best non-gold rows; `candidate_mask`), read from the retriever's `candidates_{split}.json`.
The entity table the rows index is not a stream but a device-resident table, available from `split_arrays`
(the same cached arrays the stream is cut from, so entity rows and `world` ids agree with it).

The real tasks find their data when first read, not at import: gin `zeshel_settings.data_dir` or the
environment variable KIPJAX_ZESHEL_DIR (and likewise the tokenizer: `zeshel_settings.tokenizer_dir`,
KIPJAX_ZESHEL_TOKENIZER, or DATA_DIR/tokenizer), and for reranking `zeshel_rerank_settings.candidates_dir`.
Pretrained vocabularies get the marker tokens added.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: keep its C++ logging quiet

import gin
import numpy as np
import tensorflow as tf

from kipjax.data.demo import bundled_demo_dir
from kipjax.data.featurize import ZeshelSplit, load_zeshel_split
from kipjax.data.markers import ensure_marker_tokens
from kipjax.data.zeshel import SPLITS
from kipjax.methods.joint_rerank import rerank_training_examples
from kipjax.models.hf import load_tokenizer
from tasks.token_tasks import register_array_task

tf.get_logger().setLevel("ERROR")
try:  # tf.data only runs host-side input pipelines here; leave accelerators to JAX
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices elsewhere
    pass

ZESHEL_DIR_ENV = "KIPJAX_ZESHEL_DIR"
ZESHEL_TOKENIZER_ENV = "KIPJAX_ZESHEL_TOKENIZER"
ZESHEL_TASK = "zeshel_retrieval"
DEMO_ZESHEL_TASK = "demo_zeshel_retrieval"
ZESHEL_RERANK_TASK = "zeshel_rerank"
DEMO_ZESHEL_RERANK_TASK = "demo_zeshel_rerank"

# feature name -> (key in load_zeshel_split's mention arrays, rank)
_FEATURES = {"mention_input_ids": ("input_ids", 1), "mention_attention_mask": ("attention_mask", 1),
             "gold_entity": ("gold_entity", 0), "world": ("world", 0), "mention_index": ("mention_index", 0)}
RERANK_FEATURES = {"mention_input_ids": 1, "mention_attention_mask": 1, "candidates": 1, "candidate_mask": 1,
                   "mention_index": 0}


class ZeshelSettings(NamedTuple):
    data_dir: str
    tokenizer_dir: str
    max_len: int


class RerankSettings(NamedTuple):
    data: ZeshelSettings  # max_len: each side's length, half the pair's (JointReranker.max_len // 2)
    candidates_dir: str
    num_candidates: int


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


def _rerank_settings(task: str, data: ZeshelSettings, candidates_dir: str | None, max_len: int,
                     num_candidates: int) -> RerankSettings:
    if not candidates_dir:
        raise ValueError(f"task {task!r} needs the retriever's candidate files: bind {task}_settings.candidates_dir "
                         "in gin (the directory `python -m kipjax.index --candidates=DIR` wrote)")
    return RerankSettings(data._replace(max_len=max_len // 2), candidates_dir, num_candidates)


@gin.configurable
def zeshel_rerank_settings(candidates_dir: str | None = None, max_len: int = 256,
                           num_candidates: int = 64) -> RerankSettings:
    """The real data (as `zeshel_settings` finds it) with a retriever's candidates; `max_len` and
    `num_candidates` as `JointReranker`'s (the pair length, and the gold plus K-1 negatives)."""
    return _rerank_settings(ZESHEL_RERANK_TASK, zeshel_settings(), candidates_dir, max_len, num_candidates)


@gin.configurable
def demo_zeshel_rerank_settings(candidates_dir: str | None = None, max_len: int = 256,
                                num_candidates: int = 64) -> RerankSettings:
    """The bundled demo data with the candidates of a retriever trained on it (the quickstart's)."""
    return _rerank_settings(DEMO_ZESHEL_RERANK_TASK, demo_zeshel_settings(), candidates_dir, max_len,
                            num_candidates)


_SETTINGS: dict[str, Callable[[], ZeshelSettings]] = {ZESHEL_TASK: zeshel_settings,
                                                       DEMO_ZESHEL_TASK: demo_zeshel_settings}
_RERANK_SETTINGS: dict[str, Callable[[], RerankSettings]] = {ZESHEL_RERANK_TASK: zeshel_rerank_settings,
                                                              DEMO_ZESHEL_RERANK_TASK: demo_zeshel_rerank_settings}


@functools.lru_cache(maxsize=8)
def _load(settings: ZeshelSettings, split: str) -> ZeshelSplit:
    tokenizer = ensure_marker_tokens(load_tokenizer(settings.tokenizer_dir))
    return load_zeshel_split(settings.data_dir, split, tokenizer, settings.max_len)


def split_arrays(task_name: str, split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """`load_zeshel_split`'s (mentions, entities, world_names) behind a retrieval task's stream, featurized once."""
    loaded = _load(_SETTINGS[task_name](), split)
    return loaded.mentions, loaded.entities, loaded.world_names


def _retrieval_rows(task_name: str, split: str) -> dict[str, np.ndarray]:
    mentions = split_arrays(task_name, split)[0]
    return {name: mentions[key] for name, (key, _) in _FEATURES.items()}


@functools.lru_cache(maxsize=8)
def _rerank_rows(settings: RerankSettings, split: str) -> dict[str, np.ndarray]:
    loaded = _load(settings.data, split)
    rows = rerank_training_examples(loaded, settings.candidates_dir, split, settings.num_candidates)
    return {**rows, "mention_index": loaded.mentions["mention_index"]}


def rerank_arrays(task_name: str, split: str) -> dict[str, np.ndarray]:
    """The rows behind a rerank task's stream; entity rows index `load_zeshel_split(...).entities` of the split."""
    return _rerank_rows(_RERANK_SETTINGS[task_name](), split)


for _task in (ZESHEL_TASK, DEMO_ZESHEL_TASK):
    register_array_task(_task, functools.partial(_retrieval_rows, _task),
                        {name: rank for name, (_, rank) in _FEATURES.items()}, SPLITS)
for _task in (ZESHEL_RERANK_TASK, DEMO_ZESHEL_RERANK_TASK):
    register_array_task(_task, functools.partial(rerank_arrays, _task), RERANK_FEATURES, SPLITS)
