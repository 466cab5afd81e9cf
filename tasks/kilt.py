"""SeqIO tasks for TACO: one per KILT task (`kilt_nq`, `kilt_tqa`, `kilt_hopo`, `kilt_wow`, `kilt_trex`,
`kilt_fever`, `kilt_zsre`, `kilt_aida`) and one per bundled demo task (`demo_kilt_qa`, `demo_kilt_fc`,
`demo_kilt_sf`, `demo_kilt_el`), with the mixtures `kilt_taco` and `demo_kilt_taco`.

An example is one training query as TACO reads it (`kipjax.methods.taco.data`): `query_input_ids` (prefix,
query, EOS; unpadded), `positive` (its positive passage's row in the knowledge base) and `query_index` (its
row among the task's training queries, which indexes the mined hard negatives). Passages are not streamed:
the method gathers the positive's and the negatives' tokens from the knowledge base it holds.

TACO trains on fixed per-task batch compositions: bind `SeqioFeed.batch_composition = @kilt_batch_composition()`
(Appendix B.2's sizes for the configured tasks). The real tasks read the settings of gin `kilt_data` when first
read, not at import; the demo tasks `demo_kilt_data`.
"""
from __future__ import annotations

import functools
from typing import Callable

import gin
import seqio

from kipjax.methods.taco import data as taco_data
from kipjax.methods.taco import inputs
from tasks.token_tasks import register_token_task

FEATURES = ("query_input_ids", "positive", "query_index")
PREFIXES: dict[str, tuple[Callable[[], taco_data.TacoDataSettings], tuple[str, ...]]] = {
    "kilt": (taco_data.kilt_data, tuple(inputs.KILT_TASKS)),
    "demo_kilt": (taco_data.demo_kilt_data, tuple(inputs.DEMO_TASKS)),
}


def task_name(prefix: str, task: str) -> str:
    return f"{prefix}_{task}"


def _task_data(prefix: str, task: str) -> taco_data.TaskData:
    data = taco_data.load_taco_data(PREFIXES[prefix][0]())
    for task_data in data.tasks:
        if task_data.task.name == task:
            return task_data
    raise ValueError(f"SeqIO task {task_name(prefix, task)!r}: {task!r} is not among the configured tasks "
                     f"{[t.task.name for t in data.tasks]} (gin {PREFIXES[prefix][0].__name__}.tasks)")


def _examples(prefix: str, task: str, split: str) -> list[tuple[list[int], int, int]]:
    if split != "train":
        raise ValueError(f"SeqIO task {task_name(prefix, task)!r} streams training queries only; TACO evaluates "
                         "the dev files itself")
    rows = _task_data(prefix, task)
    return [(ids, int(positive), index) for index, (ids, positive) in
            enumerate(zip(rows.train_query_ids, rows.positives))]


for _prefix, (_, _names) in PREFIXES.items():
    for _task in _names:
        register_token_task(task_name(_prefix, _task), functools.partial(_examples, _prefix, _task), FEATURES,
                            ("train",), scalars=("positive", "query_index"))
    if f"{_prefix}_taco" not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(f"{_prefix}_taco", [(task_name(_prefix, t), 1.0) for t in _names])


@gin.configurable
def kilt_batch_composition(data: taco_data.TacoDataSettings = gin.REQUIRED, total: int = gin.REQUIRED,
                           temperature: float = 4.0, prefix: str = "kilt") -> dict[str, int]:
    """{SeqIO task: rows per batch} for the configured tasks: B_k ~ (N_k / N)^(1 / temperature), summing to
    `total` (Table B.1 with the chapter's data and total 120)."""
    composition = taco_data.batch_composition(taco_data.load_taco_data(data), total, temperature)
    return {task_name(prefix, name): rows for name, rows in composition.items()}

