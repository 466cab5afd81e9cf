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
from typing import Callable, Mapping, NamedTuple

import gin

from kipjax.data.coref import read_document_files
from kipjax.data.demo_coref import demo_coref_path
from kipjax.methods.coref.featurize import training_examples
from kipjax.methods.coref.vocabulary import add_coref_tokens
from kipjax.models.hf import load_tokenizer
from tasks.token_tasks import register_token_task, split_file_pairs

COREF_TASK = "coref_seq2seq"
DEMO_COREF_TASK = "demo_coref_seq2seq"
SPLITS = ("train", "validation", "test")
FEATURES = ("inputs", "decoder_input_ids", "targets")


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
    return CorefTaskSettings(split_file_pairs("coref_task_settings.split_files", split_files, SPLITS), tokenizer_dir, representation, identity,
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


register_token_task(COREF_TASK, functools.partial(split_examples, COREF_TASK), FEATURES, SPLITS)
register_token_task(DEMO_COREF_TASK, functools.partial(split_examples, DEMO_COREF_TASK), FEATURES, SPLITS)
