"""What TACO's dual encoder reads: the text mappings of section 4.3.1 and the multi-task batch composition of
Appendix B.2, with the values of the authors' KILT runs (WenzhengZhang/TACO, scripts/kilt/shells/ance_mt.sh).

Queries of task k read `"<PREFIX> <extra_id_1> " + query`, the prefix being the task's upper-case name (NQ, TQA,
HOPO, WOW, TREX, FEVER, ZSRE, AIDA: the authors' `kilt_set^^`); a `[SEP]` inside a query (T-REx / zsRE write
"subject [SEP] relation") becomes `</s>` as in the authors' build_train.py. Passages read
`"Title: <title> Text: <text>"` with no prefix, so the corpus is encoded once for every task. A query keeps at
most L + 4 tokens (L of Table B.1, the 4 for the prefix: the authors' 36 / 68 / 132 / 260), a passage 160.

Ablations (Table 4.3): no prefix; or one of 5 task-type markers instead of the 8 task names. The chapter does
not spell the markers; kipjax uses QA, DIALOGUE, SF (slot filling), FC (fact checking) and EL (entity linking).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

TASK_TOKEN = "<extra_id_1>"
PREFIX_TOKENS = 4  # room the prefix takes in a query's token budget
PASSAGE_TOKENS = 160
PREFIX_MODES = ("task", "type", "none")


@dataclasses.dataclass(frozen=True)
class KiltTask:
    name: str  # kipjax's key for the task, also its SeqIO task suffix
    prefix: str  # the task marker of the queries
    task_type: str  # the marker of the task-type ablation
    query_length: int  # L of Table B.1: query tokens, the prefix excluded
    train_size: int = 0  # training examples the chapter trained on (Table B.1; T-REx and zsRE downsampled)


KILT_TASKS: dict[str, KiltTask] = {task.name: task for task in (
    KiltTask("nq", "NQ", "QA", 32, 76_000),
    KiltTask("tqa", "TQA", "QA", 32, 53_000),
    KiltTask("hopo", "HOPO", "QA", 32, 69_000),
    KiltTask("wow", "WOW", "DIALOGUE", 256, 80_000),
    KiltTask("trex", "TREX", "SF", 32, 95_000),
    KiltTask("fever", "FEVER", "FC", 64, 71_000),
    KiltTask("zsre", "ZSRE", "SF", 32, 100_000),
    KiltTask("aida", "AIDA", "EL", 128, 18_000),
)}

# The bundled demo's four tasks (kipjax/data/demo_kilt.py), one per KILT task type it has; query budgets fit
# its longest queries (12, 16, 11 and 46 tokens with the EOS).
DEMO_TASKS: dict[str, KiltTask] = {task.name: task for task in (
    KiltTask("qa", "QA", "QA", 16),
    KiltTask("fc", "FC", "FC", 20),
    KiltTask("sf", "SF", "SF", 16),
    KiltTask("el", "EL", "EL", 48),
)}


def marker(task: KiltTask, mode: str) -> str | None:
    """The marker a query of `task` starts with: its name ('task'), its type ('type') or none ('none')."""
    if mode not in PREFIX_MODES:
        raise ValueError(f"prefix mode must be one of {PREFIX_MODES}, got {mode!r}")
    return {"task": task.prefix, "type": task.task_type, "none": None}[mode]


def query_text(query: str, prefix: str | None) -> str:
    """text_X(x): the prefix and the task token, then the query with `[SEP]` read as `</s>`."""
    text = query.replace("[SEP]", "</s>")
    return f"{prefix} {TASK_TOKEN} {text}" if prefix else text


def passage_text(title: str, text: str) -> str:
    """text_Y(y): the same for every task."""
    return f"Title: {title} Text: {text}"


def query_tokens(task: KiltTask, mode: str) -> int:
    """The query's token budget (end-of-sequence included, as the authors' truncation counts it)."""
    return task.query_length + (PREFIX_TOKENS if mode != "none" else 0)


def task_batch_sizes(sizes: Sequence[int], total: int, temperature: float = 4.0) -> list[int]:
    """Per-task batch sizes B_k ~ (N_k / sum N)^(1 / temperature), each at least 1, summing to `total`.

    As the authors' `_get_int_mixture`: each task first gets 1, the remaining total - T rows go by the floor of
    total * r_k - 1, and what is left one row at a time to the largest remainders. With the chapter's N_k and
    total 120 this is Table B.1's 16, 14, 15, 16, 16, 15, 17, 11.
    """
    if total < len(sizes):
        raise ValueError(f"a total batch of {total} cannot give each of {len(sizes)} tasks a row")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"every task needs training examples, got sizes {list(sizes)}")
    rates = [math.pow(n / sum(sizes), 1.0 / temperature) for n in sizes]
    rates = [r / sum(rates) for r in rates]
    wanted = [total * r - 1.0 for r in rates]
    extra = [max(int(w), 0) for w in wanted]
    while sum(extra) < total - len(sizes):
        remainders = [w - e for w, e in zip(wanted, extra)]
        extra[remainders.index(max(remainders))] += 1
    return [e + 1 for e in extra]
