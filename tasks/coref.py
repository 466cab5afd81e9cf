"""SeqIO tasks for seq2seq coreference: `coref_seq2seq` (any CoNLL-2012 / jsonlines / PreCo files) and
`demo_coref_seq2seq` (the bundled demo corpus).

Each example is one training segment of a document as the model sees it (`kipjax.methods.coref.featurize`):
`inputs` (encoder ids ending with eos), `decoder_input_ids` (z: the decoder start token, then the
linearization) and `targets` (y: the action sequence ending with eos), unpadded.

`coref_seq2seq` finds its files when first read, not at import: gin `coref_task_settings.split_files` maps a
split to a file ({'train': '/data/ontonotes/train.english.v4_gold_conll', 'validation': ...}), and
`coref_task_settings.tokenizer_dir` names the T5 tokenizer; the representation and segmenting knobs are the
method's (full linearization with copy actions, 2048-piece segments with stride 1024, by default).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Mapping, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: keep its C++ logging quiet

import gin
import numpy as np
import seqio
import tensorflow as tf

from kipjax.data.coref import read_document_files
from kipjax.data.demo_coref import demo_coref_path
from kipjax.methods.coref.featurize import training_examples
from kipjax.methods.coref.vocabulary import add_coref_tokens
from kipjax.models.hf import load_tokenizer

COREF_TASK = "coref_seq2seq"
DEMO_COREF_TASK = "demo_coref_seq2seq"
SPLITS = ("train", "validation", "test")
FEATURES = ("inputs", "decoder_input_ids", "targets")
# Ids come featurized, so the vocabulary only passes them through (its size is unused).
OUTPUT_FEATURES = {name: seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32)
                   for name in FEATURES}


class CorefTaskSettings(NamedTuple):
    split_files: tuple[tuple[str, str], ...]  # (split, file) pairs: hashable, so featurized splits are cached
    tokenizer_dir: str
    representation: str = "full"
    identity: str = "after"
    actions: str = "copy"
    max_segment_length: int = 2048
    segment_stride: int = 1024
    max_clusters: int = 100


@gin.configurable
def coref_task_settings(split_files: Mapping[str, str] | None = None, tokenizer_dir: str | None = None,
                        representation: str = "full", identity: str = "after", actions: str = "copy",
                        max_segment_length: int = 2048, segment_stride: int = 1024,
                        max_clusters: int = 100) -> CorefTaskSettings:
    """Where the corpus and tokenizer are, and how documents become examples."""
    if not split_files or not tokenizer_dir:
        raise ValueError(f"task {COREF_TASK!r} needs coref_task_settings.split_files (split -> file) and "
                         "coref_task_settings.tokenizer_dir in gin")
    unknown = sorted(set(split_files) - set(SPLITS))
    if unknown:
        raise ValueError(f"coref_task_settings.split_files: unknown splits {unknown}; expected some of {SPLITS}")
    return CorefTaskSettings(tuple(sorted(split_files.items())), tokenizer_dir, representation, identity,
                             actions, max_segment_length, segment_stride, max_clusters)


@gin.configurable
def demo_coref_task_settings(max_segment_length: int = 128, segment_stride: int = 64) -> CorefTaskSettings:
    """The bundled demo corpus and its tokenizer, segmented like gin_configs/coref/demo.gin."""
    files = (("train", "train.jsonlines"), ("validation", "dev.jsonlines"), ("test", "test.jsonlines"))
    return CorefTaskSettings(tuple((split, demo_coref_path(name)) for split, name in files),
                             demo_coref_path("tokenizer"), max_segment_length=max_segment_length,
                             segment_stride=segment_stride)


_SETTINGS: dict[str, Callable[[], CorefTaskSettings]] = {COREF_TASK: coref_task_settings,
                                                          DEMO_COREF_TASK: demo_coref_task_settings}


@functools.lru_cache(maxsize=8)
def _examples(settings: CorefTaskSettings, split: str) -> list[tuple[list[int], list[int], list[int]]]:
    files = dict(settings.split_files)
    if split not in files:
        raise ValueError(f"no file for split {split!r}; coref_task_settings.split_files has {sorted(files)}")
    tokenizer = load_tokenizer(settings.tokenizer_dir)
    symbols = add_coref_tokens(tokenizer, settings.max_clusters if settings.identity == "free" else 0)
    return training_examples(read_document_files(files[split]), tokenizer, symbols, settings.max_segment_length,
                             settings.segment_stride, settings.representation, settings.identity,
                             settings.actions)


def split_examples(task_name: str, split: str) -> list[tuple[list[int], list[int], list[int]]]:
    """The (inputs, decoder_input_ids, targets) triples behind the task's stream, featurized once."""
    return _examples(_SETTINGS[task_name](), split)


def _dataset_fn(task_name: str) -> Callable[..., tf.data.Dataset]:
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory source; Task.get_dataset(shuffle=True) shuffles examples
        examples = split_examples(task_name, split)

        def generate():
            for example in examples:
                yield {name: np.asarray(ids, np.int32) for name, ids in zip(FEATURES, example)}

        signature = {name: tf.TensorSpec([None], tf.int32) for name in FEATURES}
        return tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset_fn


def _register(task_name: str) -> None:
    if task_name in seqio.TaskRegistry.names():  # re-import (e.g. importlib.reload) keeps the registration
        return
    seqio.TaskRegistry.add(task_name, source=seqio.FunctionDataSource(_dataset_fn(task_name), splits=SPLITS),
                           output_features=OUTPUT_FEATURES, shuffle_buffer_size=65536)


_register(COREF_TASK)
_register(DEMO_COREF_TASK)
