"""Readers that turn ImpRAG's datasets, in their released layouts, into `PromptExample`s (templates.py).

  kilt             KILT task files `{task}-{split}-kilt.jsonl` (NQ, HotpotQA, FEVER, AIDA, T-REx, zsRE; the
                   bundled demo's qa / fc / sf / el), read by `kipjax.data.kilt.read_kilt_task`; the template kind
                   comes from the file's task name (`KILT_TASK_KINDS`) unless given
  nq_open          NQ-open JSON lines {"question": str, "answer": [str, ...]} (NQ-open.dev.jsonl); ids are the
                   line numbers unless a record has an "id"
  simpleqa         SimpleQA's CSV (simple_qa_test_set.csv: metadata, problem, answer; metadata is not read); ids
                   are the 1-based row numbers
  2wikimultihopqa  2WikiMultiHopQA's dev.json, a JSON list of {"_id", "question", "answer", ...}
  squad_v2         SQuAD v2 JSON; only answerable questions, as the chapter uses (Appendix C.4)
  cnn_dailymail    CNN/DailyMail as CSV (id, article, highlights); the highlights, one per line, are the summary
                   as they are (inner newlines kept)

The readers keep file order, and `limit` takes the first n examples (the chapter's 5,000 per dataset are drawn
elsewhere). A malformed record raises ValueError naming the file and its line, list index or CSV row (KILT: the
example id, as `read_kilt_task` does not pass line numbers on; ids are unique in a KILT file), the field and
what was expected: a silently dropped example changes every score downstream.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from kipjax.data.jsonl import json_lines, required_field
from kipjax.data.kilt import KiltExample, read_kilt_task
from kipjax.methods.imprag.templates import (
    ENTITY_LINKING, FACT_CHECK, KILT_TASK_KINDS, QA, READING_COMPREHENSION, SLOT_FILLING, SUMMARIZATION,
    PromptExample, fever_answer, prompt_example, render_entity_linking, render_fact_check, render_qa,
    render_reading_comprehension, render_slot_filling, render_summarization, split_slot_query)


@contextlib.contextmanager
def _at(where: str) -> Iterator[None]:
    """Prefixes a ValueError raised inside (a template's complaint) with the record's location."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def _first(examples: Iterable[PromptExample], limit: int | None) -> list[PromptExample]:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return list(itertools.islice(examples, limit))


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _required_text(record: dict[str, Any], name: str, where: str) -> str:
    """`record[name]` as non-blank text, stripped."""
    value = required_field(record, name, str, where)
    if not value.strip():
        raise ValueError(f"{where}: field '{name}' is empty; expected non-blank text")
    return value.strip()


def _load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from e


def _csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(1-based row number, location, row) for each CSV row after the header, which must have `columns` (others
    are ignored)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        where = f"{path}: header"
        try:
            found = reader.fieldnames or []
            missing = [c for c in columns if c not in found]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; expected {list(columns)}, found {found}")
            for row_number, row in enumerate(reader, start=1):
                where = f"{path}: row {row_number} (line {reader.line_num})"
                if None in row or None in row.values():
                    raise ValueError(f"{where}: expected {len(found)} columns, as the header has")
                yield row_number, where, row
        except csv.Error as e:
            raise ValueError(f"{where}: malformed CSV ({e})") from e


# ------------------------------------------------------------------------------------------------------ KILT

def kilt_file_task(path: str | Path) -> str:
    """The task name of a KILT file name: 'structured_zeroshot' for structured_zeroshot-dev-kilt.jsonl."""
    return Path(path).name.split("-", 1)[0]


def _kilt_answers(example: KiltExample) -> tuple[str, ...]:
    if not example.answers:
        raise ValueError("no answer in 'output' (KILT test inputs have none); expected a gold answer")
    return example.answers


def _kilt_qa(example: KiltExample, task: str) -> PromptExample:
    answers = _kilt_answers(example)
    return prompt_example(example.id, task, QA, render_qa(example.input, answers[0]), answers)


def _kilt_fact_check(example: KiltExample, task: str) -> PromptExample:
    answers = [fever_answer(label) for label in _kilt_answers(example)]
    return prompt_example(example.id, task, FACT_CHECK, render_fact_check(example.input, answers[0]), answers)


def _kilt_slot_filling(example: KiltExample, task: str) -> PromptExample:
    answers = _kilt_answers(example)
    entity, relation = split_slot_query(example.input)
    return prompt_example(example.id, task, SLOT_FILLING, render_slot_filling(entity, relation, answers[0]),
                          answers)


def _kilt_entity_linking(example: KiltExample, task: str) -> PromptExample:
    answers = _kilt_answers(example)
    return prompt_example(example.id, task, ENTITY_LINKING, render_entity_linking(example.input, answers[0]),
                          answers)


KILT_RENDERERS: dict[str, Callable[[KiltExample, str], PromptExample]] = {
    QA: _kilt_qa, FACT_CHECK: _kilt_fact_check, SLOT_FILLING: _kilt_slot_filling,
    ENTITY_LINKING: _kilt_entity_linking}


def _kilt_kind(path: Path, file_task: str) -> str:
    if file_task not in KILT_TASK_KINDS:
        raise ValueError(f"{path}: cannot tell the template kind from the file name (task {file_task!r}); known "
                         f"task names: {sorted(KILT_TASK_KINDS)}; or pass kind= one of {sorted(KILT_RENDERERS)}")
    return KILT_TASK_KINDS[file_task]


def read_kilt_prompts(path: str | Path, kind: str | None = None, task: str | None = None,
                      limit: int | None = None) -> list[PromptExample]:
    """A KILT task file's examples; `kind` defaults to the file name's (`KILT_TASK_KINDS`), `task` (the
    examples' task name) to the file name's task, e.g. "nq"."""
    path = Path(path)
    file_task = kilt_file_task(path)
    kind = kind or _kilt_kind(path, file_task)
    if kind not in KILT_RENDERERS:
        raise ValueError(f"kind {kind!r} is not a KILT task kind; expected one of {sorted(KILT_RENDERERS)}")
    render = KILT_RENDERERS[kind]
    examples = []
    for example in read_kilt_task(path, limit):
        with _at(f"{path}: id {example.id!r}"):
            examples.append(render(example, task or file_task))
    return examples


# ------------------------------------------------------------------------------------------- QA benchmarks

def _answer_list(record: dict[str, Any], name: str, where: str) -> list[str]:
    answers = required_field(record, name, list, where)
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: field '{name}' must be a non-empty list of non-blank strings, got "
                         f"{answers!r:.60}")
    return answers


def _nq_open(path: Path) -> Iterator[PromptExample]:
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        example_id = _required_text(record, "id", where) if "id" in record else str(line_number)
        question = _required_text(record, "question", where)
        answers = _answer_list(record, "answer", where)
        yield prompt_example(example_id, "nq", QA, render_qa(question, answers[0]), answers)


def read_nq_open(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    return _first(_nq_open(Path(path)), limit)


def _simpleqa(path: Path) -> Iterator[PromptExample]:
    for row_number, where, row in _csv_rows(path, ("problem", "answer")):
        rendered = render_qa(_required_text(row, "problem", where), _required_text(row, "answer", where))
        yield prompt_example(str(row_number), "simpleqa", QA, rendered)


def read_simpleqa(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    return _first(_simpleqa(Path(path)), limit)


def _two_wiki(path: Path) -> Iterator[PromptExample]:
    records = _load_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of examples, got {type(records).__name__}")
    for i, record in enumerate(records):
        where = f"{path}: [{i}]"
        _object(record, where)
        rendered = render_qa(_required_text(record, "question", where), _required_text(record, "answer", where))
        yield prompt_example(_required_text(record, "_id", where), "2wikimultihopqa", QA, rendered)


def read_2wikimultihopqa(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    return _first(_two_wiki(Path(path)), limit)


# ---------------------------------------------------------------------------------- instruction tuning

def _squad_question(qa: dict[str, Any], context: str, where: str) -> PromptExample | None:
    """An answerable question's example; None for an unanswerable one."""
    if required_field(qa, "is_impossible", bool, where):
        return None
    answers = [_required_text(_object(answer, f"{where}.answers[{i}]"), "text", f"{where}.answers[{i}]")
               for i, answer in enumerate(required_field(qa, "answers", list, where))]
    if not answers:
        raise ValueError(f"{where}: field 'answers' is empty; expected an answer (is_impossible is false)")
    rendered = render_reading_comprehension(context, _required_text(qa, "question", where), answers[0])
    return prompt_example(_required_text(qa, "id", where), "squad_v2", READING_COMPREHENSION, rendered, answers)


def _squad_v2(path: Path) -> Iterator[PromptExample]:
    articles = required_field(_object(_load_json(path), str(path)), "data", list, str(path))
    for i, article in enumerate(articles):
        at = f"{path}: data[{i}]"
        for j, paragraph in enumerate(required_field(_object(article, at), "paragraphs", list, at)):
            at_paragraph = f"{at}.paragraphs[{j}]"
            context = _required_text(_object(paragraph, at_paragraph), "context", at_paragraph)
            for k, qa in enumerate(required_field(paragraph, "qas", list, at_paragraph)):
                example = _squad_question(_object(qa, f"{at_paragraph}.qas[{k}]"), context,
                                          f"{at_paragraph}.qas[{k}]")
                if example is not None:
                    yield example


def read_squad_v2(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    return _first(_squad_v2(Path(path)), limit)


def _cnn_dailymail(path: Path) -> Iterator[PromptExample]:
    for _, where, row in _csv_rows(path, ("id", "article", "highlights")):
        rendered = render_summarization(_required_text(row, "article", where),
                                        _required_text(row, "highlights", where))
        yield prompt_example(_required_text(row, "id", where), "cnn_dailymail", SUMMARIZATION, rendered)


def read_cnn_dailymail(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    return _first(_cnn_dailymail(Path(path)), limit)


READERS: dict[str, Callable[..., list[PromptExample]]] = {
    "kilt": read_kilt_prompts, "nq_open": read_nq_open, "simpleqa": read_simpleqa,
    "2wikimultihopqa": read_2wikimultihopqa, "squad_v2": read_squad_v2, "cnn_dailymail": read_cnn_dailymail}


def read_prompts(path: str | Path, format: str, limit: int | None = None, **kw: Any) -> list[PromptExample]:
    """The examples of `path` in `format` (a READERS key); `kw` goes to the reader (kilt: kind, task)."""
    if format not in READERS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(READERS)}")
    return READERS[format](path, limit=limit, **kw)
