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
  oasst1           OpenAssistant's message JSON lines (2023-04-12_oasst_ready.messages.jsonl, uncompressed; the
                   HF train/validation rows written as JSON lines read the same): one thread per conversation,
                   see `read_oasst1`
  coqa             CoQA's coqa-{train,dev}-v1.0.json: one example per question, the earlier turns in the context
  drop             DROP's drop_dataset_{train,dev}.json {passage_id: {"passage", "qa_pairs"}}, see `drop_answer`
  newsqa           Maluuba's combined-newsqa-data-v1.json (all splits in one file, chosen by `split`): the
                   consensus span; bad and unanswerable questions are skipped
  pubmedqa         PubMedQA's ori_pqal.json (ori_pqaa.json reads the same) {pmid: {"QUESTION", "CONTEXTS",
                   "final_decision", ...}}: the answer is yes / no / maybe
  quail            QuAIL's JSON lines (quail_v1.3/json/, e.g. challenge.jsonl; HF rows read the same): the
                   correct option's text
  phrase_denoising the LLM-written phrase-denoising JSON lines {"id", "context", "answer"}
  sentence_generation  next / previous sentence examples cut from a passage file in DPR's TSV layout (read by
                   `kipjax.data.kilt.read_passages`), see `sentence_generation_examples`

Every instruction-tuning example has `retrieve` False (Table 5.1: only knowledge-intensive tasks retrieve).
The reading-comprehension sets use Table C.4's "{context} Q: {question} A: {answer}"; QuAIL is not in that
table and is read the same way, without its options, as free-text generation like the others.

The readers keep file order, and `limit` takes the first n examples (the chapter's 5,000 per dataset are drawn
elsewhere). A malformed record raises ValueError naming the file and its line, list index or CSV row (KILT: the
example id, as `read_kilt_task` does not pass line numbers on; ids are unique in a KILT file), the field and
what was expected: a silently dropped example changes every score downstream.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from kipjax.data.jsonl import json_lines, required_field
from kipjax.data.kilt import KiltExample, PassageCorpus, read_kilt_task, read_passages
from kipjax.methods.imprag.templates import (
    DIALOGUE, ENTITY_LINKING, FACT_CHECK, KILT_TASK_KINDS, PHRASE_DENOISING, QA, READING_COMPREHENSION,
    SENTENCE_DIRECTIONS, SENTENCE_GENERATION, SLOT_FILLING, SUMMARIZATION, PromptExample, fever_answer,
    prompt_example, render_dialogue, render_entity_linking, render_fact_check, render_phrase_denoising, render_qa,
    render_reading_comprehension, render_sentence_generation, render_slot_filling, render_summarization,
    split_slot_query)


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


def _optional(record: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """`record[name]` checked to be of type `kind`, or None when absent or null."""
    return None if record.get(name) is None else required_field(record, name, kind, where)


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


@dataclasses.dataclass(frozen=True)
class _Message:
    """An oasst1 message, as much of it as a thread needs."""

    id: str
    role: str
    text: str
    rank: int | None


OASST_ROLES = ("prompter", "assistant")


def _oasst_rank(record: dict[str, Any], where: str) -> int | None:
    """The message's rank among its siblings (0 is best), None when unranked; HF's rows exported to JSON lines
    write it as a float (0.0), as pandas does a nullable integer."""
    rank = record.get("rank")
    if rank is None:
        return None
    if type(rank) not in (int, float) or not float(rank).is_integer() or rank < 0:
        raise ValueError(f"{where}: field 'rank' must be a non-negative integer or null, got {rank!r:.60}")
    return int(rank)


def _oasst_messages(path: Path, lang: str | None) -> tuple[list[_Message], dict[str, list[_Message]]]:
    """(root messages, usable replies by parent id), both in file order; only usable messages are kept: not
    deleted, not failed in review (`review_result` false; null, not yet reviewed, is kept) and in `lang`."""
    roots: list[_Message] = []
    replies: dict[str, list[_Message]] = {}
    seen: dict[str, int] = {}
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        message_id = _required_text(record, "message_id", where)
        if message_id in seen:
            raise ValueError(f"{where}: duplicate message_id {message_id!r}, first at line {seen[message_id]}")
        seen[message_id] = line_number
        if "parent_id" not in record:
            raise ValueError(f"{where}: missing field 'parent_id' (null for a conversation's first message)")
        parent_id = _optional(record, "parent_id", str, where)
        role = required_field(record, "role", str, where)
        if role not in OASST_ROLES:
            raise ValueError(f"{where}: field 'role' must be one of {OASST_ROLES}, got {role!r:.60}")
        if (_optional(record, "deleted", bool, where) or _optional(record, "review_result", bool, where) is False
                or (lang is not None and required_field(record, "lang", str, where) != lang)):
            continue
        message = _Message(message_id, role, _required_text(record, "text", where), _oasst_rank(record, where))
        (roots if parent_id is None else replies.setdefault(parent_id, [])).append(message)
    return roots, replies


def _best_reply(replies: list[_Message]) -> _Message:
    """The top-ranked reply (rank 0 is best; unranked replies after ranked ones; ties in file order)."""
    return min(replies, key=lambda m: (m.rank is None, m.rank or 0))


def _oasst1(path: Path, lang: str | None) -> Iterator[PromptExample]:
    roots, replies = _oasst_messages(path, lang)
    for root in roots:
        thread = [root]
        while thread[-1].id in replies:
            thread.append(_best_reply(replies[thread[-1].id]))
        while thread and thread[-1].role != "assistant":
            thread.pop()
        if len(thread) >= 2:
            yield prompt_example(thread[-1].id, "oasst1", DIALOGUE, render_dialogue([m.text for m in thread]))


def read_oasst1(path: str | Path, limit: int | None = None, lang: str | None = "en") -> list[PromptExample]:
    """One example per conversation (root message), in the roots' file order: the thread follows the top-ranked
    reply at every turn (what instruction tuning on oasst1 usually takes) down to a leaf and ends at its last
    assistant turn; the prompt is the turns before it, the response that turn, the id its message_id.
    Conversations without a usable assistant reply give none. Messages that are deleted, failed review, or not
    in `lang` (None: any language), and their replies, are left out, as are messages whose parent is not in the
    file."""
    return _first(_oasst1(Path(path), lang), limit)


def _coqa_story(story: dict[str, Any], where: str) -> Iterator[PromptExample]:
    """The story's questions in turn order; each one's context is the story followed by the earlier turns, as
    "Q: {question} A: {answer}" (the QA template), so the prompt reads as the conversation so far."""
    story_id = _required_text(story, "id", where)
    text = _required_text(story, "story", where)
    questions = required_field(story, "questions", list, where)
    answers = required_field(story, "answers", list, where)
    if len(questions) != len(answers):
        raise ValueError(f"{where}: {len(questions)} questions but {len(answers)} answers; expected one per turn")
    additional = _optional(story, "additional_answers", dict, where) or {}
    for name in additional:
        if len(required_field(additional, name, list, f"{where}.additional_answers")) != len(questions):
            raise ValueError(f"{where}.additional_answers[{name!r}]: {len(additional[name])} answers for "
                             f"{len(questions)} questions; expected one per turn")
    history = [text]
    for j, (question, answer) in enumerate(zip(questions, answers)):
        at = f"{where}.questions[{j}]"
        turn = required_field(_object(question, at), "turn_id", int, at)
        at_answer = f"{where}.answers[{j}]"
        if required_field(_object(answer, at_answer), "turn_id", int, at_answer) != turn:
            raise ValueError(f"{at_answer}: turn_id {answer['turn_id']} does not match the question's {turn}")
        question_text = _required_text(question, "input_text", at)
        gold = [_required_text(answer, "input_text", at_answer)]
        for name, others in additional.items():
            at_other = f"{where}.additional_answers[{name!r}][{j}]"
            gold.append(_required_text(_object(others[j], at_other), "input_text", at_other))
        rendered = render_reading_comprehension(" ".join(history), question_text, gold[0])
        yield prompt_example(f"{story_id}_{turn}", "coqa", READING_COMPREHENSION, rendered, gold)
        history.append(" ".join(render_qa(question_text, gold[0])))


def _coqa(path: Path) -> Iterator[PromptExample]:
    stories = required_field(_object(_load_json(path), str(path)), "data", list, str(path))
    for i, story in enumerate(stories):
        yield from _coqa_story(_object(story, f"{path}: data[{i}]"), f"{path}: data[{i}]")


def read_coqa(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    """One example per question, id "{story id}_{turn_id}"; answers are the free-form `input_text` ("unknown"
    for CoQA's unanswerable turns, kept as CoQA scores it), with the dev file's additional answers after the
    main one. The gold answers of earlier turns make the history."""
    return _first(_coqa(Path(path)), limit)


def drop_answer(answer: dict[str, Any], where: str) -> str | None:
    """A DROP answer object as text, as DROP's evaluation reads it: the number if there is one, else the spans
    (joined by ", "), else the date as "day month year" (its non-empty parts); None when all are empty."""
    number = required_field(answer, "number", str, where).strip()
    spans = required_field(answer, "spans", list, where)
    if not all(isinstance(span, str) for span in spans):
        raise ValueError(f"{where}: field 'spans' must be a list of strings, got {spans!r:.60}")
    date = required_field(answer, "date", dict, where)
    parts = [required_field(date, part, str, f"{where}.date").strip() for part in ("day", "month", "year")]
    text = number or ", ".join(s.strip() for s in spans if s.strip()) or " ".join(p for p in parts if p)
    return text or None


def _drop(path: Path) -> Iterator[PromptExample]:
    passages = _object(_load_json(path), str(path))
    for passage_id, entry in passages.items():
        where = f"{path}: [{passage_id!r}]"
        passage = _required_text(_object(entry, where), "passage", where)
        for j, qa in enumerate(required_field(entry, "qa_pairs", list, where)):
            at = f"{where}.qa_pairs[{j}]"
            answer = drop_answer(required_field(_object(qa, at), "answer", dict, at), f"{at}.answer")
            if answer is None:
                continue
            validated = [drop_answer(_object(v, f"{at}.validated_answers[{k}]"), f"{at}.validated_answers[{k}]")
                         for k, v in enumerate(_optional(qa, "validated_answers", list, at) or [])]
            rendered = render_reading_comprehension(passage, _required_text(qa, "question", at), answer)
            yield prompt_example(_required_text(qa, "query_id", at), "drop", READING_COMPREHENSION, rendered,
                                 [answer] + [v for v in validated if v is not None])


def read_drop(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    """One example per question with an answer (`drop_answer`), id its query_id; `answers` adds the
    validated answers."""
    return _first(_drop(Path(path)), limit)


def _newsqa_answer(consensus: dict[str, Any], text: str, where: str) -> str | None:
    """The consensus span text[s:e] (end exclusive), None for {"badQuestion": true} or {"noAnswer": true}."""
    if consensus.get("badQuestion") or consensus.get("noAnswer"):
        return None
    start, end = (required_field(consensus, name, int, where) for name in ("s", "e"))
    if not 0 <= start < end <= len(text):
        raise ValueError(f"{where}: span s={start} e={end} is not within the story's {len(text)} characters")
    if not text[start:end].strip():
        raise ValueError(f"{where}: span s={start} e={end} is blank")
    return text[start:end].strip()


def _newsqa(path: Path, split: str | None) -> Iterator[PromptExample]:
    stories = required_field(_object(_load_json(path), str(path)), "data", list, str(path))
    types: set[str] = set()
    for i, story in enumerate(stories):
        where = f"{path}: data[{i}]"
        _object(story, where)
        if split is not None:
            types.add(required_field(story, "type", str, where))
            if story["type"] != split:
                continue
        story_id = _required_text(story, "storyId", where)
        text = required_field(story, "text", str, where)
        for k, question in enumerate(required_field(story, "questions", list, where)):
            at = f"{where}.questions[{k}]"
            consensus = required_field(_object(question, at), "consensus", dict, at)
            answer = _newsqa_answer(consensus, text, f"{at}.consensus")
            if answer is not None:
                rendered = render_reading_comprehension(text, _required_text(question, "q", at), answer)
                yield prompt_example(f"{story_id}_{k}", "newsqa", READING_COMPREHENSION, rendered)
    if split is not None and split not in types:
        raise ValueError(f"{path}: no story has type {split!r}; the file's types are {sorted(types)}")


def read_newsqa(path: str | Path, limit: int | None = None, split: str | None = "train") -> list[PromptExample]:
    """The questions of the stories of `type` `split` ("train", "dev" or "test"; None: all) that have a
    consensus answer, id "{storyId}_{question index}"."""
    return _first(_newsqa(Path(path), split), limit)


PUBMEDQA_DECISIONS = ("yes", "no", "maybe")


def _pubmedqa(path: Path) -> Iterator[PromptExample]:
    for pmid, record in _object(_load_json(path), str(path)).items():
        where = f"{path}: [{pmid!r}]"
        contexts = required_field(_object(record, where), "CONTEXTS", list, where)
        if not contexts or not all(isinstance(c, str) and c.strip() for c in contexts):
            raise ValueError(f"{where}: field 'CONTEXTS' must be a non-empty list of non-blank strings, got "
                             f"{contexts!r:.60}")
        decision = required_field(record, "final_decision", str, where)
        if decision not in PUBMEDQA_DECISIONS:
            raise ValueError(f"{where}: field 'final_decision' must be one of {PUBMEDQA_DECISIONS}, got "
                             f"{decision!r:.60}")
        rendered = render_reading_comprehension(" ".join(c.strip() for c in contexts),
                                                _required_text(record, "QUESTION", where), decision)
        yield prompt_example(pmid, "pubmedqa", READING_COMPREHENSION, rendered)


def read_pubmedqa(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    """One example per PMID: the abstract's CONTEXTS joined by spaces, the question, and the final_decision as
    the answer. LONG_ANSWER (the abstract's conclusion) is not used: in the context it would give the answer
    away, and as the response it would make the short yes / no / maybe answer a paragraph."""
    return _first(_pubmedqa(Path(path)), limit)


def _quail(path: Path) -> Iterator[PromptExample]:
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        options = _answer_list(record, "answers", where)
        if "correct_answer_id" not in record:
            raise ValueError(f"{where}: missing field 'correct_answer_id' (the release's question-only files keep "
                             f"the answers in a separate key file)")
        correct = record["correct_answer_id"]  # the release writes "0", HF 0
        digits = type(correct) is int or (isinstance(correct, str) and correct.isdigit())
        index = int(correct) if digits else -1
        if not 0 <= index < len(options):
            raise ValueError(f"{where}: field 'correct_answer_id' must index the {len(options)} answers (an int "
                             f"or a digit string), got {correct!r:.60}")
        rendered = render_reading_comprehension(_required_text(record, "context", where),
                                                _required_text(record, "question", where), options[index])
        yield prompt_example(_required_text(record, "id", where), "quail", READING_COMPREHENSION, rendered)


def read_quail(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    """One example per question, the answer the correct option's text. The options stay out of the prompt:
    Table C.4 has no multiple-choice template, and the answer is generated as in the other reading-comprehension
    sets."""
    return _first(_quail(Path(path)), limit)


# ----------------------------------------------------------------------------------------- synthetic tasks

PHRASE_DENOISING_FIELDS = ("id", "context", "answer")


def _phrase_denoising(path: Path) -> Iterator[PromptExample]:
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        missing = [name for name in PHRASE_DENOISING_FIELDS if name not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; expected phrase-denoising records "
                             f'{{"id": str, "context": str (phrases marked [START] ... [END]), "answer": str}}, '
                             f"found {sorted(record)}")
        example_id, context, answer = (_required_text(record, name, where) for name in PHRASE_DENOISING_FIELDS)
        with _at(where):
            rendered = render_phrase_denoising(context, answer)
        yield prompt_example(example_id, "phrase_denoising", PHRASE_DENOISING, rendered)


def read_phrase_denoising(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    """The generator's records as they are: the context marks the phrases to recover, the answer holds them."""
    return _first(_phrase_denoising(Path(path)), limit)


DEFAULT_SENTENCE_SEED = 0
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?$")


def split_sentences(text: str) -> list[str]:
    """The complete sentences of a passage. A sentence ends at ".", "!" or "?" (and a closing quote or bracket
    right after it) followed by white space, unless the next piece starts with a lower-case letter ("e.g. the").
    A 100-word passage is cut mid-sentence at both ends, so a first piece starting in lower case and a last one
    not ending a sentence are dropped. Abbreviations before a capital ("Mr. Smith") still split."""
    sentences: list[str] = []
    for piece in _SENTENCE_BREAK.split(text.strip()):
        if sentences and piece[:1].islower():
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    if sentences and sentences[0][:1].islower():
        sentences.pop(0)
    if sentences and not _SENTENCE_END.search(sentences[-1]):
        sentences.pop()
    return sentences


def sentence_generation_examples(corpus: PassageCorpus, seed: int = DEFAULT_SENTENCE_SEED
                                 ) -> Iterator[PromptExample]:
    """One example per passage with at least 2 sentences (`split_sentences`), in file order, id the passage id.
    A generator seeded by (seed, passage id) picks the relation, next or previous, and the target sentence; the
    context is every sentence of the passage before it (next) or after it (previous). The choice for a
    passage depends on nothing else, so it is the same whatever `limit` or the passages around it."""
    for passage_id, text in zip(corpus.ids, corpus.texts):
        sentences = split_sentences(text)
        if len(sentences) < 2:
            continue
        rng = random.Random(f"{seed}:{passage_id}")
        direction = rng.choice(SENTENCE_DIRECTIONS)
        if direction == "next":
            target = rng.randrange(1, len(sentences))
            context = sentences[:target]
        else:
            target = rng.randrange(len(sentences) - 1)
            context = sentences[target + 1:]
        rendered = render_sentence_generation(" ".join(context), direction, sentences[target])
        yield prompt_example(str(passage_id), "sentence_generation", SENTENCE_GENERATION, rendered)


def read_sentence_generation(path: str | Path, limit: int | None = None, seed: int = DEFAULT_SENTENCE_SEED
                             ) -> list[PromptExample]:
    """Sentence-generation examples from a passage file in DPR's TSV layout (the whole file is read)."""
    return _first(sentence_generation_examples(read_passages(path), seed), limit)


READERS: dict[str, Callable[..., list[PromptExample]]] = {
    "kilt": read_kilt_prompts, "nq_open": read_nq_open, "simpleqa": read_simpleqa,
    "2wikimultihopqa": read_2wikimultihopqa, "squad_v2": read_squad_v2, "cnn_dailymail": read_cnn_dailymail,
    "oasst1": read_oasst1, "coqa": read_coqa, "drop": read_drop, "newsqa": read_newsqa, "pubmedqa": read_pubmedqa,
    "quail": read_quail, "phrase_denoising": read_phrase_denoising,
    "sentence_generation": read_sentence_generation}


def read_prompts(path: str | Path, format: str, limit: int | None = None, **kw: Any) -> list[PromptExample]:
    """The examples of `path` in `format` (a READERS key); `kw` goes to the reader (kilt: kind, task; oasst1:
    lang; newsqa: split; sentence_generation: seed)."""
    if format not in READERS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(READERS)}")
    return READERS[format](path, limit=limit, **kw)
