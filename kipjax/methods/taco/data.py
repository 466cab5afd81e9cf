"""TACO's data: the shared passage knowledge base and each task's training and evaluation queries, featurized
once and shared by the method and its SeqIO tasks (tasks/kilt.py).

A training example's positive passage is the first passage of one of its gold pages that contains one of its
answers (normalized as KILT normalizes them); when none does (fact checking's SUPPORTS / REFUTES, entity
linking, dialogue), the first passage of a gold page. Its gold rows, which mining never returns as negatives,
are those answer-bearing passages, or all passages of its gold pages when none bears an answer (so entity
linking excludes whole pages). Examples none of whose gold pages is in the knowledge base are left out of
training (counted in the log), as DPR leaves out questions without a positive.

Queries and passages are tokenized without the tokenizer's special tokens and end with its EOS, truncated so
that the EOS fits (`inputs.query_tokens`, `inputs.PASSAGE_TOKENS`), as the authors' truncation counts it.
The passage tokens go straight into one zero-padded table (`kipjax.data.token_tables`), optionally cached as
a `.npy` under `cache_dir` and memory-mapped from there on later runs; a passage's mask is `ids != 0`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping, Sequence

import gin
import numpy as np

from kipjax.data import kilt as kilt_files
from kipjax.data.demo_kilt import demo_kilt_path, task_file
from kipjax.methods.taco import inputs
from kipjax.metrics.kilt import normalize_answer, read_kilt_file
from kipjax.models.hf import load_tokenizer
from kipjax.data.token_tables import cached_token_table, encode_texts

# kipjax task -> the stem of its KILT files ({stem}-train-kilt.jsonl, {stem}-dev-kilt.jsonl)
KILT_FILE_STEMS = {"nq": "nq", "tqa": "triviaqa", "hopo": "hotpotqa", "wow": "wow", "trex": "trex",
                   "fever": "fever", "zsre": "structured_zeroshot", "aida": "aidayago2"}
DOWNSAMPLED = {"trex": 100_000, "zsre": 100_000}  # the chapter's T-REx / zsRE training subsets


@dataclasses.dataclass(frozen=True)
class TacoDataSettings:
    """Where the data is and how it is read; hashable, so `load_taco_data` featurizes each setting once."""

    tasks: tuple[inputs.KiltTask, ...]
    train_files: tuple[str, ...]  # per task
    dev_files: tuple[str, ...]  # per task
    passages_file: str
    mapping_file: str | None
    tokenizer_dir: str
    prefix_mode: str = "task"
    train_limits: tuple[int | None, ...] = ()  # per task: downsample the training examples to this many
    seed: int = 42  # the downsampling's (the authors' random.seed(42))
    cache_dir: str | None = None  # where the passage token table is cached (module docstring)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("TACO needs at least one task")
        for name in ("train_files", "dev_files"):
            if len(getattr(self, name)) != len(self.tasks):
                raise ValueError(f"{name}: one file per task ({len(self.tasks)}), got {len(getattr(self, name))}")
        inputs.marker(self.tasks[0], self.prefix_mode)  # validates the mode


@gin.configurable
def kilt_data(data_dir: str = gin.REQUIRED, passages_file: str = gin.REQUIRED, tokenizer_dir: str = gin.REQUIRED,
              tasks: Sequence[str] = tuple(inputs.KILT_TASKS), mapping_file: str | None = None,
              prefix_mode: str = "task", train_files: Mapping[str, str] | None = None,
              dev_files: Mapping[str, str] | None = None, downsample: Mapping[str, int] | None = None,
              seed: int = 42, cache_dir: str | None = None) -> TacoDataSettings:
    """The eight KILT tasks (or some): files `data_dir/{stem}-{train,dev}-kilt.jsonl` unless given per task,
    the 100-word passage KB (`passages_file`, `mapping_file` when its pages are not inline) and the T5 tokenizer.
    T-REx and zsRE are downsampled to 100k training examples unless `downsample` says otherwise."""
    unknown = sorted(set(tasks) - set(inputs.KILT_TASKS))
    if unknown:
        raise ValueError(f"kilt_data.tasks: unknown {unknown}; KILT's are {list(inputs.KILT_TASKS)}")
    train_files, dev_files = dict(train_files or {}), dict(dev_files or {})
    limits = DOWNSAMPLED if downsample is None else dict(downsample)
    return TacoDataSettings(
        tasks=tuple(inputs.KILT_TASKS[t] for t in tasks),
        train_files=tuple(train_files.get(t, os.path.join(data_dir, f"{KILT_FILE_STEMS[t]}-train-kilt.jsonl"))
                          for t in tasks),
        dev_files=tuple(dev_files.get(t, os.path.join(data_dir, f"{KILT_FILE_STEMS[t]}-dev-kilt.jsonl"))
                        for t in tasks),
        passages_file=passages_file, mapping_file=mapping_file, tokenizer_dir=tokenizer_dir,
        prefix_mode=prefix_mode, train_limits=tuple(limits.get(t) for t in tasks), seed=seed, cache_dir=cache_dir)


@gin.configurable
def demo_kilt_data(prefix_mode: str = "task", tasks: Sequence[str] = tuple(inputs.DEMO_TASKS)) -> TacoDataSettings:
    """The bundled demo (kipjax/data/demo_kilt): its passages, four tasks and word-level T5 tokenizer."""
    unknown = sorted(set(tasks) - set(inputs.DEMO_TASKS))
    if unknown:
        raise ValueError(f"demo_kilt_data.tasks: unknown {unknown}; the demo's are {list(inputs.DEMO_TASKS)}")
    return TacoDataSettings(
        tasks=tuple(inputs.DEMO_TASKS[t] for t in tasks),
        train_files=tuple(demo_kilt_path(task_file(t, "train")) for t in tasks),
        dev_files=tuple(demo_kilt_path(task_file(t, "dev")) for t in tasks),
        passages_file=demo_kilt_path("passages.tsv"), mapping_file=demo_kilt_path("passage_to_page.tsv"),
        tokenizer_dir=demo_kilt_path("tokenizer"), prefix_mode=prefix_mode)


@dataclasses.dataclass
class TaskData:
    """One task's featurized queries. Training rows are the examples with a positive passage."""

    task: inputs.KiltTask
    train: list[kilt_files.KiltExample]
    train_query_ids: list[list[int]]
    positives: np.ndarray  # [N] passage row of each training example's positive
    gold_rows: list[np.ndarray]  # per training example: passage rows never used as its negatives
    dev: list[kilt_files.KiltExample]
    dev_rows: list[dict]  # the dev file's rows, as KILT's scorer reads them
    dev_query_ids: list[list[int]]


@dataclasses.dataclass
class TacoData:
    settings: TacoDataSettings
    tokenizer: Any
    corpus: kilt_files.PassageCorpus
    passage_ids: np.ndarray  # [P, <= PASSAGE_TOKENS] uint16 or int32, zero-padded (maybe memory-mapped)
    page_rows: dict[str, np.ndarray]  # wikipedia_id -> its passage rows, in corpus order
    tasks: list[TaskData]


def passage_tokens(settings: TacoDataSettings, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """The passages' token table (`kipjax.data.token_tables`), cached under `settings.cache_dir` if given."""
    return cached_token_table(tokenizer, texts, inputs.PASSAGE_TOKENS, source_file=settings.passages_file,
                              tokenizer_dir=settings.tokenizer_dir, cache_dir=settings.cache_dir,
                              desc="tokenize passages")


def _page_rows(wikipedia_ids: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(wikipedia_ids.astype(str), kind="stable")
    pages, starts = np.unique(wikipedia_ids[order].astype(str), return_index=True)
    return {page: rows for page, rows in zip(pages, np.split(order, starts[1:]))}


def positives_of(example: kilt_files.KiltExample, page_rows: Mapping[str, np.ndarray],
                 normalized_text: Callable[[int], str]) -> tuple[int | None, np.ndarray]:
    """(positive passage row or None, gold rows) of one training example (module docstring);
    `normalized_text(row)` is a passage's text as KILT normalizes answers."""
    rows = [int(r) for page in example.pages for r in page_rows.get(page, ())]
    if not rows:
        return None, np.zeros((0,), np.int64)
    answers = [a for a in (normalize_answer(x) for x in example.answers) if a]
    bearing = [r for r in rows if any(a in normalized_text(r) for a in answers)] if answers else []
    gold = np.asarray(bearing or rows, np.int64)
    return int(gold[0]), gold


def _load_task(task: inputs.KiltTask, train_file: str, dev_file: str, limit: int | None, data: TacoData,
               seed: int) -> TaskData:
    train = kilt_files.read_kilt_task(train_file)
    if limit is not None and len(train) > limit:
        train = kilt_files.downsample(train, limit, seed)
    normalized = functools.lru_cache(maxsize=None)(lambda row: normalize_answer(data.corpus.texts[row]))
    found = [(example, *positives_of(example, data.page_rows, normalized)) for example in train]
    kept = [(e, p, g) for e, p, g in found if p is not None]
    if len(kept) < len(train):
        print(f"TACO {task.name}: {len(train) - len(kept)} of {len(train)} training examples have no gold page in "
              f"{data.settings.passages_file} and are left out", flush=True)
    if not kept:
        raise ValueError(f"TACO {task.name}: no training example of {train_file} has a gold page in the passages")
    prefix = inputs.marker(task, data.settings.prefix_mode)
    length = inputs.query_tokens(task, data.settings.prefix_mode)
    dev = kilt_files.read_kilt_task(dev_file)
    return TaskData(
        task=task, train=[e for e, _, _ in kept],
        train_query_ids=encode_texts(data.tokenizer, [inputs.query_text(e.input, prefix) for e, _, _ in kept],
                                     length),
        positives=np.asarray([p for _, p, _ in kept], np.int32), gold_rows=[g for _, _, g in kept],
        dev=dev, dev_rows=read_kilt_file(dev_file),
        dev_query_ids=encode_texts(data.tokenizer, [inputs.query_text(e.input, prefix) for e in dev], length))


@functools.lru_cache(maxsize=4)
def load_taco_data(settings: TacoDataSettings) -> TacoData:
    """Reads and featurizes everything `settings` names (once per settings)."""
    tokenizer = load_tokenizer(settings.tokenizer_dir)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{settings.tokenizer_dir}: TACO's T5 tokenizer needs an EOS token")
    corpus = kilt_files.read_passages(settings.passages_file, settings.mapping_file)
    if corpus.wikipedia_ids is None:
        raise ValueError(f"{settings.passages_file}: no wikipedia_id per passage (no 4th column); give the mapping "
                         "file (kilt_data.mapping_file)")
    texts = [inputs.passage_text(t, x) for t, x in zip(corpus.titles, corpus.texts)]
    data = TacoData(settings, tokenizer, corpus, passage_tokens(settings, tokenizer, texts),
                    _page_rows(corpus.wikipedia_ids), [])
    limits = settings.train_limits or (None,) * len(settings.tasks)
    data.tasks = [_load_task(task, train, dev, limit, data, settings.seed) for task, train, dev, limit in
                  zip(settings.tasks, settings.train_files, settings.dev_files, limits)]
    return data


def batch_composition(data: TacoData, total: int, temperature: float = 4.0) -> dict[str, int]:
    """Rows per task in every batch (Appendix B.2), keyed by task name, in task order."""
    sizes = inputs.task_batch_sizes([len(t.train) for t in data.tasks], total, temperature)
    return {t.task.name: size for t, size in zip(data.tasks, sizes)}
