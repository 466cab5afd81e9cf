"""SeqIO tasks for LMRC on DocRED-format files: stage 1, relation candidate proposal (`docred_rcp`,
`demo_docred_rcp`), and stage 2, relation classification (`docred_rc`, `demo_docred_rc`); the `demo_` tasks
read the bundled demo corpus.

A stage-1 example is one document as ATLOP's classifier reads it (`kipjax.methods.lmrc.rcp_features`):
`*`-marked word pieces, mention positions, and every ordered entity pair with its label, in fixed shapes.
A stage-2 example is one prompt and its gold answer as the LLM trains on them (`rc_features.training_sequences`):
`input_ids` (`<bos>`, prompt, answer), `attention_mask`, `targets` (the next tokens) and `loss_mask` (1 on the
answer and EOS), unpadded. Its training split lists each document's related pairs, the stage-1 candidates of
`train_candidates_file` if given, and `negative_ratio` random others per related pair, in `negative_draws`
independent draws; the other splits list every ordered pair (the evaluation of RC without stage 1).

The real tasks find their files when first read, not at import: gin `docred_rcp_settings.split_files` /
`docred_rc_settings.split_files` map a split to a file ({'train': '/data/docred/train_annotated.json',
'validation': '/data/docred/dev.json'}), `tokenizer_dir` names the tokenizer (the encoder's for stage 1, the
Llama's for stage 2), and stage 2's `rel_info_file` / `rel2id_file` the relation vocabulary. Each knob has the
default of the method's own (`RelationCandidateProposal`, `RelationClassification`); bind both from one macro.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, NamedTuple

import gin
import numpy as np

from kipjax.data.demo_docred import demo_docred_path
from kipjax.data.docred import read_docred
from kipjax.data.markers import ensure_marker_tokens
from kipjax.methods.lmrc import rc_features, rcp_features
from kipjax.methods.lmrc.rc import read_stage1_candidates, relation_names_of
from kipjax.models.hf import load_tokenizer
from tasks.token_tasks import register_array_task, register_token_task, split_file_pairs

DOCRED_RC_TASK = "docred_rc"
DEMO_DOCRED_RC_TASK = "demo_docred_rc"
DOCRED_RCP_TASK = "docred_rcp"
DEMO_DOCRED_RCP_TASK = "demo_docred_rcp"
SPLITS = ("train", "validation", "test")
_DEMO_FILES = (("train", "train_annotated.json"), ("validation", "dev.json"), ("test", "test.json"))


def _demo_split_files() -> tuple[tuple[str, str], ...]:
    return tuple((split, demo_docred_path(name)) for split, name in _DEMO_FILES)


def _split_file(split_files: tuple[tuple[str, str], ...], split: str, setting: str) -> str:
    files = dict(split_files)
    if split not in files:
        raise ValueError(f"no file for split {split!r}; {setting}.split_files has {sorted(files)}")
    return files[split]


# ------------------------------------------------------------------------------------ stage 1: candidates


class RcpTaskSettings(NamedTuple):
    split_files: tuple[tuple[str, str], ...]  # (split, file) pairs: hashable, so featurized splits are cached
    tokenizer_dir: str
    max_length: int = 1024
    max_entities: int = 42
    max_mentions: int = 23


@gin.configurable
def docred_rcp_settings(split_files: Mapping[str, str] | None = None, tokenizer_dir: str | None = None,
                        max_length: int = 1024, max_entities: int = 42, max_mentions: int = 23) -> RcpTaskSettings:
    """Where the corpus and the encoder's tokenizer are, and the padded shapes (`RelationCandidateProposal`'s)."""
    if not split_files or not tokenizer_dir:
        raise ValueError(f"task {DOCRED_RCP_TASK!r} needs docred_rcp_settings.split_files (split -> file) and "
                         "docred_rcp_settings.tokenizer_dir in gin")
    return RcpTaskSettings(split_file_pairs("docred_rcp_settings.split_files", split_files, SPLITS), tokenizer_dir,
                           max_length, max_entities, max_mentions)


@gin.configurable
def demo_docred_rcp_settings(max_length: int = 1024, max_entities: int = 42, max_mentions: int = 23
                             ) -> RcpTaskSettings:
    """The bundled demo corpus with its BERT tokenizer (gin_configs/lmrc/demo_rcp.gin binds the shapes)."""
    return RcpTaskSettings(_demo_split_files(), demo_docred_path("bert_tokenizer"), max_length, max_entities,
                           max_mentions)


_RCP_SETTINGS: dict[str, Callable[[], RcpTaskSettings]] = {DOCRED_RCP_TASK: docred_rcp_settings,
                                                            DEMO_DOCRED_RCP_TASK: demo_docred_rcp_settings}


@functools.lru_cache(maxsize=8)
def _rcp_arrays(settings: RcpTaskSettings, split: str) -> dict[str, np.ndarray]:
    path = _split_file(settings.split_files, split, "docred_rcp_settings")
    tokenizer = ensure_marker_tokens(load_tokenizer(settings.tokenizer_dir))  # as the method's encoder setup
    return rcp_features.featurize_documents(read_docred(path), tokenizer, settings.max_length,
                                            settings.max_entities, settings.max_mentions)


def rcp_split_arrays(task_name: str, split: str) -> dict[str, np.ndarray]:
    """The fixed-shape document arrays behind a stage-1 task's stream, featurized once."""
    return _rcp_arrays(_RCP_SETTINGS[task_name](), split)


# -------------------------------------------------------------------------------- stage 2: classification


class RcTaskSettings(NamedTuple):
    split_files: tuple[tuple[str, str], ...]
    tokenizer_dir: str
    rel_info_file: str
    rel2id_file: str | None = None
    group_size: int = 18
    negative_ratio: float = 1.0
    negative_draws: int = 1
    train_candidates_file: str | None = None
    max_length: int = 4096
    seed: int = 0


@gin.configurable
def docred_rc_settings(split_files: Mapping[str, str] | None = None, tokenizer_dir: str | None = None,
                       rel_info_file: str | None = None, rel2id_file: str | None = None, group_size: int = 18,
                       negative_ratio: float = 1.0, negative_draws: int = 1, train_candidates_file: str | None = None,
                       max_length: int = 4096, seed: int = 0) -> RcTaskSettings:
    """Where the corpus, relation vocabulary and tokenizer are, and how documents become prompts
    (`RelationClassification`'s knobs of the same names)."""
    if not split_files or not tokenizer_dir or not rel_info_file:
        raise ValueError(f"task {DOCRED_RC_TASK!r} needs docred_rc_settings.split_files (split -> file), "
                         "docred_rc_settings.tokenizer_dir and docred_rc_settings.rel_info_file in gin")
    return RcTaskSettings(split_file_pairs("docred_rc_settings.split_files", split_files, SPLITS), tokenizer_dir,
                          rel_info_file, rel2id_file, group_size, negative_ratio, negative_draws,
                          train_candidates_file, max_length, seed)


@gin.configurable
def demo_docred_rc_settings(group_size: int = 18, negative_ratio: float = 1.0, negative_draws: int = 1,
                            train_candidates_file: str | None = None, max_length: int = 4096,
                            seed: int = 0) -> RcTaskSettings:
    """The bundled demo corpus with its Llama tokenizer (gin_configs/lmrc/demo_rc.gin binds the prompting)."""
    return RcTaskSettings(_demo_split_files(), demo_docred_path("llama_tokenizer"), demo_docred_path("rel_info.json"),
                          demo_docred_path("rel2id.json"), group_size, negative_ratio, negative_draws,
                          train_candidates_file, max_length, seed)


_RC_SETTINGS: dict[str, Callable[[], RcTaskSettings]] = {DOCRED_RC_TASK: docred_rc_settings,
                                                          DEMO_DOCRED_RC_TASK: demo_docred_rc_settings}


@functools.lru_cache(maxsize=8)
def _rc_examples(settings: RcTaskSettings, split: str) -> list[tuple[list[int], ...]]:
    path = _split_file(settings.split_files, split, "docred_rc_settings")
    tokenizer = load_tokenizer(settings.tokenizer_dir)
    names = relation_names_of(settings.rel_info_file, settings.rel2id_file)
    docs = read_docred(path, names.keys())
    if split == "train":
        candidates = (read_stage1_candidates(settings.train_candidates_file, docs) if settings.train_candidates_file
                      else [[] for _ in docs])
        rows = rc_features.training_prompt_rows(docs, candidates, settings.negative_ratio, settings.negative_draws,
                                                settings.seed, settings.group_size)
    else:
        rows = rc_features.prompt_rows([rc_features.all_pairs(d) for d in docs], settings.group_size)
    sequences = rc_features.training_sequences(tokenizer, docs, rows, names, settings.max_length)
    return [tuple(s[name] for name in rc_features.SEQUENCE_FEATURES) for s in sequences]


def rc_split_examples(task_name: str, split: str) -> list[tuple[list[int], ...]]:
    """The stage-2 sequences (one id list per feature of `rc_features.SEQUENCE_FEATURES`) behind a task's stream."""
    return _rc_examples(_RC_SETTINGS[task_name](), split)


for _task in (DOCRED_RCP_TASK, DEMO_DOCRED_RCP_TASK):
    register_array_task(_task, functools.partial(rcp_split_arrays, _task), rcp_features.FEATURES, SPLITS)
for _task in (DOCRED_RC_TASK, DEMO_DOCRED_RC_TASK):
    register_token_task(_task, functools.partial(rc_split_examples, _task), rc_features.SEQUENCE_FEATURES, SPLITS)
