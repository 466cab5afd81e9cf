"""Open-domain QA metrics (used by the ImpRAG method): exact match of the generated answer and answer recall@k of
the retrieved passages.

Files are JSON lines. Gold: {"id", "answers": [str, ...], "task"?: str}. Predictions: {"id", "prediction": str,
"passages"?: [str, ...]}, the passages in rank order. Ids are compared as stripped `str(id)`, so 12 and " 12" match.

  - exact_match: SQuAD v1.1's EM (its evaluate-v1.1.py): both strings normalized (lower case, ASCII punctuation
    removed, the words a / an / the removed, whitespace squeezed; `kipjax.metrics.kilt.normalize_answer`, which is
    the same function), 1 if the prediction equals any gold answer. So "The" normalizes to "" and is matched by an
    empty prediction or by "a".
  - answer_recall@k: DPR's retrieval accuracy (facebookresearch/DPR dpr/data/qa_validation.py, has_answer with
    match_type "string", and dpr/utils/tokenizers.py, SimpleTokenizer): 1 if a gold answer occurs in one of the
    first k passages, fewer when there are fewer. Passage and answer are unicode NFD-normalized and split into the
    tokens of `[\\p{L}\\p{N}\\p{M}]+|[^\\p{Z}\\p{C}]` (runs of letters, digits and combining marks; any other
    visible character alone), lower-cased; the answer matches if its tokens are a contiguous run of the passage's.
    So token boundaries count ("cat" is not in "concatenate", "hello world" is not in "hello, world") and an accent
    stays part of its word: NFD turns "é" into "e" plus a combining mark, which is \\p{M}, so "Beyoncé" is the
    token "beyonce\\u0301" and does not match "Beyonce"; the precomposed and decomposed spellings do match each
    other. As in DPR, an answer without tokens (blank) matches every passage.
    Reported only when predictions have "passages": if none has, there is no answer_recall; if some have and some
    do not, that is an error (a missing list would silently count as a miss).

Validation. Gold ids and prediction ids must each be unique and every gold id needs a prediction (an error naming
it, as KILT's evaluation does, rather than SQuAD's silent 0: a missing prediction is almost always a broken run);
a prediction whose id is not a gold id is dropped with a warning. Gold answers must be a non-empty list of strings
(EM's maximum over no answers is undefined). Malformed JSON, missing or mistyped fields and duplicate ids are a
ValueError naming the file and line (for in-memory rows, "gold[i]" / "predictions[i]").

Averaging. Without "task" fields every metric is the mean over the gold examples (micro average). When gold lines
carry "task" (then every gold line must), each task is scored on its own under "per_task" and the top-level
metrics are the unweighted mean over tasks (macro average), so a large task does not drown the others, as in
multi-task QA reporting; "count" is always the number of examples (the total at the top level). With no examples
every metric is 0.

CLI:
  python -m kipjax.metrics.qa --gold G --pred P [--ks 1,10] [--json]
--json prints one object {"exact_match", "answer_recall@k" per k, "count", "per_task"?} with values in [0, 1];
otherwise a table in percent. Errors print "error: ..." to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import regex

from kipjax.data.jsonl import json_lines, required_field
from kipjax.metrics.by_id import pair_by_id, unique_by_id
from kipjax.metrics.kilt import normalize_answer, normalize_ks

DEFAULT_KS = (1, 10)
EXACT_MATCH = "exact_match"
COUNT = "count"
PER_TASK = "per_task"

# DPR's SimpleTokenizer (ALPHA_NUM | NON_WS), compiled with the same flags.
_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
                       flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Record:
    """One row and where it came from: `source` is the file (or "gold" / "predictions"), `where` "path:line"."""
    source: str
    where: str
    data: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class GoldExample:
    id: str
    answers: list[str]
    task: str | None
    where: str


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: str
    prediction: str
    passages: list[str] | None
    where: str


# ------------------------------------------------------------------------------------------------ metrics


def _answer_list(answers: Iterable[str]) -> list[str]:
    """The answers as a list; a bare string is refused (it would be read as single characters)."""
    if isinstance(answers, str):
        raise TypeError(f"answers must be a list of strings, not the string {answers!r:.60}")
    return list(answers)


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """SQuAD EM: 1.0 if the normalized prediction equals a normalized answer, else 0.0."""
    answers = _answer_list(answers)
    if not answers:
        raise ValueError("exact_match needs at least one gold answer")
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(answer) for answer in answers))


def tokenize(text: str) -> list[str]:
    """DPR's uncased SimpleTokenizer words of the NFD-normalized text."""
    return [match.group().lower() for match in _TOKEN.finditer(unicodedata.normalize("NFD", text))]


def _contains(tokens: Sequence[str], run: Sequence[str]) -> bool:
    """Whether `run` is a contiguous subsequence of `tokens` (an empty run always is, as in DPR)."""
    n = len(run)
    return any(list(tokens[i:i + n]) == list(run) for i in range(len(tokens) - n + 1))


def has_answer(passage: str, answers: Iterable[str]) -> bool:
    """DPR's has_answer (match_type "string"): an answer's tokens occur contiguously in the passage's tokens."""
    tokens = tokenize(passage)
    return any(_contains(tokens, tokenize(answer)) for answer in _answer_list(answers))


def first_hit(passages: Sequence[str], answers: Sequence[str]) -> int | None:
    """The 0-based rank of the first passage holding an answer, or None."""
    answer_tokens = [tokenize(answer) for answer in answers]
    for rank, passage in enumerate(passages):
        tokens = tokenize(passage)
        if any(_contains(tokens, run) for run in answer_tokens):
            return rank
    return None


def metric_names(ks: Sequence[int], with_recall: bool) -> list[str]:
    return [EXACT_MATCH, *(f"answer_recall@{k}" for k in ks if with_recall)]


def example_scores(gold: GoldExample, pred: Prediction, ks: Sequence[int], with_recall: bool) -> dict[str, float]:
    """exact_match and, when asked, answer_recall@k of one example (ks already normalized)."""
    scores = {EXACT_MATCH: exact_match(pred.prediction, gold.answers)}
    if with_recall:
        hit = first_hit((pred.passages or [])[:max(ks)], gold.answers)
        for k in ks:
            scores[f"answer_recall@{k}"] = float(hit is not None and hit < k)
    return scores


# ------------------------------------------------------------------------------------------------ reading


def read_records(path: str | Path) -> list[Record]:
    """The rows of a JSON-lines file with their "path:line"; malformed JSON is a ValueError naming them."""
    return [Record(str(path), f"{path}:{line}", data) for line, data in json_lines(path)]


def _as_records(rows: Iterable[Mapping[str, Any] | Record], name: str) -> list[Record]:
    """In-memory rows get the location "name[index]"; Records keep theirs."""
    records = []
    for i, row in enumerate(rows):
        if not isinstance(row, (Record, Mapping)):
            raise ValueError(f"{name}[{i}]: expected a JSON object, got {type(row).__name__}")
        records.append(row if isinstance(row, Record) else Record(name, f"{name}[{i}]", row))
    return records


def _id(record: Record) -> str:
    value = required_field(record.data, "id", object, record.where)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"{record.where}: field 'id' must be a string or an integer, got {value!r:.60}")
    return str(value).strip()


def _strings(record: Record, name: str, where: str) -> list[str]:
    """`record[name]`, checked to be a list of strings."""
    values = required_field(record.data, name, list, where)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{where}: {name}[{i}] must be a string, got {type(value).__name__} {value!r:.60}")
    return values


def gold_example(record: Record) -> GoldExample:
    id_ = _id(record)
    where = f"{record.where} (id {record.data['id']!r})"
    answers = _strings(record, "answers", where)
    if not answers:
        raise ValueError(f"{where}: 'answers' is empty; exact match needs at least one gold answer")
    task = required_field(record.data, "task", str, where) if "task" in record.data else None
    return GoldExample(id_, answers, task, record.where)


def prediction(record: Record) -> Prediction:
    id_ = _id(record)
    where = f"{record.where} (id {record.data['id']!r})"
    text = required_field(record.data, "prediction", str, where)
    passages = _strings(record, "passages", where) if "passages" in record.data else None
    return Prediction(id_, text, passages, record.where)


def align(gold_records: Sequence[Record], pred_records: Sequence[Record]) -> list[tuple[GoldExample, Prediction]]:
    """(gold, prediction) pairs in gold order, validated as the module docstring says."""
    source = pred_records[0].source if pred_records else "the predictions"
    return pair_by_id(unique_by_id((gold_example(r) for r in gold_records), "gold"),
                      unique_by_id((prediction(r) for r in pred_records), "prediction"), "prediction",
                      "prediction(s)", source)


def _with_recall(pairs: Sequence[tuple[GoldExample, Prediction]]) -> bool:
    """Whether the predictions have passages: all of them (True), none (False), else an error."""
    with_passages = [p for _, p in pairs if p.passages is not None]
    without = [p for _, p in pairs if p.passages is None]
    if with_passages and without:
        raise ValueError(f"{without[0].where} (id {without[0].id!r}): no 'passages', but other predictions have "
                         f"them (e.g. {with_passages[0].where}); give 'passages' in every prediction or in none")
    return bool(with_passages)


def _tasks(pairs: Sequence[tuple[GoldExample, Prediction]]) -> dict[str, list[tuple[GoldExample, Prediction]]]:
    """Pairs by gold task, in first-seen order ({} without tasks); a gold line lacking the task is an error."""
    tagged = [g for g, _ in pairs if g.task is not None]
    if not tagged:
        return {}
    by_task: dict[str, list[tuple[GoldExample, Prediction]]] = {}
    for gold, pred in pairs:
        if gold.task is None:
            raise ValueError(f"{gold.where} (id {gold.id!r}): missing field 'task' (other gold lines have one, "
                             f"e.g. {tagged[0].where}); give it on every gold line or on none")
        by_task.setdefault(gold.task, []).append((gold, pred))
    return by_task


# ---------------------------------------------------------------------------------------------- averaging


def micro_average(pairs: Sequence[tuple[GoldExample, Prediction]], ks: Sequence[int],
                  with_recall: bool) -> dict[str, float | int]:
    """Each metric's mean over the examples, and their count."""
    totals = dict.fromkeys(metric_names(ks, with_recall), 0.0)
    for gold, pred in pairs:
        for name, value in example_scores(gold, pred, ks, with_recall).items():
            totals[name] += value
    return {**{name: total / len(pairs) if pairs else 0.0 for name, total in totals.items()}, COUNT: len(pairs)}


def macro_average(per_task: Mapping[str, Mapping[str, float | int]]) -> dict[str, float | int]:
    """Each metric's unweighted mean over the tasks; count is the total."""
    names = [name for name in next(iter(per_task.values())) if name != COUNT]
    average: dict[str, float | int] = {name: sum(s[name] for s in per_task.values()) / len(per_task)
                                       for name in names}
    average[COUNT] = sum(s[COUNT] for s in per_task.values())
    return average


def evaluate(gold_rows: Iterable[Mapping[str, Any] | Record], pred_rows: Iterable[Mapping[str, Any] | Record],
             ks: Iterable[int] = DEFAULT_KS) -> dict[str, Any]:
    """{"exact_match", "answer_recall@k"..., "count"} plus "per_task" when the gold rows have tasks (then the
    top level is the macro average); rows are dicts or Records (from read_records, for file:line errors)."""
    ks = normalize_ks(ks)
    pairs = align(_as_records(gold_rows, "gold"), _as_records(pred_rows, "predictions"))
    with_recall = _with_recall(pairs)
    by_task = _tasks(pairs)
    if not by_task:
        return micro_average(pairs, ks, with_recall)
    per_task = {task: micro_average(task_pairs, ks, with_recall) for task, task_pairs in by_task.items()}
    return {**macro_average(per_task), PER_TASK: per_task}


def evaluate_files(gold_path: str | Path, pred_path: str | Path, ks: Iterable[int] = DEFAULT_KS) -> dict[str, Any]:
    return evaluate(read_records(gold_path), read_records(pred_path), ks)


# ---------------------------------------------------------------------------------------------------- CLI


def format_table(result: Mapping[str, Any]) -> str:
    """Metrics as rows in percent (count as a number); columns: each task and "average", or one "all" column."""
    columns = {**result[PER_TASK], "average": result} if PER_TASK in result else {"all": result}
    names = [name for name in result if name != PER_TASK]
    width = max(8, *(len(name) for name in columns))
    name_width = max(len(name) for name in ["metric", *names])
    lines = [" ".join([f"{'metric':{name_width}s}", *(f"{name:>{width}s}" for name in columns)])]
    for name in names:
        cells = (f"{scores[name]:{width}d}" if name == COUNT else f"{100 * scores[name]:{width}.2f}"
                 for scores in columns.values())
        lines.append(" ".join([f"{name:{name_width}s}", *cells]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m kipjax.metrics.qa", description=__doc__.split("\n")[0])
    parser.add_argument("--gold", required=True, help='gold JSON lines {"id", "answers": [...], "task"?}')
    parser.add_argument("--pred", required=True, help='prediction JSON lines {"id", "prediction", "passages"?}')
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)),
                        help="comma-separated answer-recall cut-offs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        ks = normalize_ks(part.strip() for part in args.ks.split(",") if part.strip())
        result = evaluate_files(args.gold, args.pred, ks)
    except (OSError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(result) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
