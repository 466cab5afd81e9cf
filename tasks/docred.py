"""SeqIO tasks for LMRC stage 2 (relation classification): `docred_rc` (any DocRED / Re-DocRED files) and
`demo_docred_rc` (the bundled demo corpus).

Each example is one prompt as the LLM sees it (`kipjax.methods.lmrc.rc_features`): `inputs`, `<bos>` and the
prompt (relation names, document, a group of pairs), and `targets`, the gold answer's tokens ending with EOS,
unpadded. The training split lists each document's related pairs plus `negative_ratio` random others per
related pair; the other splits list every ordered pair (the evaluation of RC without stage 1).

`docred_rc` finds its files when first read, not at import: gin `docred_task_settings.split_files` maps a
split to a file ({'train': '/data/docred/train_annotated.json', 'validation': '/data/docred/dev.json'}),
`docred_task_settings.tokenizer_dir` names the Llama tokenizer and `rel_info_file` / `rel2id_file` the
relation vocabulary.
"""
from __future__ import annotations

import functools
import random
from typing import Callable, Mapping, NamedTuple

import gin

from kipjax.data.demo_docred import demo_docred_path
from kipjax.data.docred import read_docred
from kipjax.methods.lmrc import rc_features
from kipjax.methods.lmrc.answer_constraint import encode_answer
from kipjax.methods.lmrc.rc import relation_names_of
from kipjax.models.hf import load_tokenizer
from tasks.token_tasks import register_token_task, split_file_pairs

DOCRED_TASK = "docred_rc"
DEMO_DOCRED_TASK = "demo_docred_rc"
SPLITS = ("train", "validation", "test")
FEATURES = ("inputs", "targets")


class DocredTaskSettings(NamedTuple):
    split_files: tuple[tuple[str, str], ...]  # (split, file) pairs: hashable, so featurized splits are cached
    tokenizer_dir: str
    rel_info_file: str
    rel2id_file: str | None = None
    group_size: int = 18
    negative_ratio: float = 1.0
    seed: int = 0


@gin.configurable
def docred_task_settings(split_files: Mapping[str, str] | None = None, tokenizer_dir: str | None = None,
                         rel_info_file: str | None = None, rel2id_file: str | None = None, group_size: int = 18,
                         negative_ratio: float = 1.0, seed: int = 0) -> DocredTaskSettings:
    """Where the corpus, relation vocabulary and tokenizer are, and how documents become prompts."""
    if not split_files or not tokenizer_dir or not rel_info_file:
        raise ValueError(f"task {DOCRED_TASK!r} needs docred_task_settings.split_files (split -> file), "
                         "docred_task_settings.tokenizer_dir and docred_task_settings.rel_info_file in gin")
    return DocredTaskSettings(split_file_pairs("docred_task_settings.split_files", split_files, SPLITS), tokenizer_dir, rel_info_file, rel2id_file,
                              group_size, negative_ratio, seed)


@gin.configurable
def demo_docred_task_settings(group_size: int = 18, negative_ratio: float = 1.0) -> DocredTaskSettings:
    """The bundled demo corpus with its Llama tokenizer, prompted like gin_configs/lmrc/demo_rc.gin."""
    files = (("train", "train_annotated.json"), ("validation", "dev.json"), ("test", "test.json"))
    return DocredTaskSettings(tuple((split, demo_docred_path(name)) for split, name in files),
                              demo_docred_path("llama_tokenizer"), demo_docred_path("rel_info.json"),
                              demo_docred_path("rel2id.json"), group_size, negative_ratio)


_SETTINGS: dict[str, Callable[[], DocredTaskSettings]] = {DOCRED_TASK: docred_task_settings,
                                                           DEMO_DOCRED_TASK: demo_docred_task_settings}


@functools.lru_cache(maxsize=8)
def _examples(settings: DocredTaskSettings, split: str) -> list[tuple[list[int], list[int]]]:
    files = dict(settings.split_files)
    if split not in files:
        raise ValueError(f"no file for split {split!r}; docred_task_settings.split_files has {sorted(files)}")
    tokenizer = load_tokenizer(settings.tokenizer_dir)
    names = relation_names_of(settings.rel_info_file, settings.rel2id_file)
    docs = read_docred(files[split], names.keys())
    rng = random.Random(settings.seed)
    pairs = [rc_features.training_pairs(d, settings.negative_ratio, rng) if split == "train"
             else rc_features.all_pairs(d) for d in docs]
    return [(rc_features.encode_prompt(tokenizer, docs[row.doc_index], row.pairs, names),
             encode_answer(tokenizer, docs[row.doc_index], row.pairs, names))
            for row in rc_features.prompt_rows(pairs, settings.group_size)]


def split_examples(task_name: str, split: str) -> list[tuple[list[int], list[int]]]:
    """The (inputs, targets) pairs behind the task's stream, featurized once."""
    return _examples(_SETTINGS[task_name](), split)


register_token_task(DOCRED_TASK, functools.partial(split_examples, DOCRED_TASK), FEATURES, SPLITS)
register_token_task(DEMO_DOCRED_TASK, functools.partial(split_examples, DEMO_DOCRED_TASK), FEATURES, SPLITS)
