"""ImpRAG's prompt templates (Table 5.1, Table C.4): every training and evaluation task is rendered into a
prompt, which ends with the answer cue, and the response the model learns to generate after it.

A template's last part is its response slot ({answer}, {summary}, {sentence}); the prompt is everything before
it, filled in, so "Q: {question} A: {answer}" gives the prompt "Q: who wrote X ? A:" and the response "Y". The
full text is `prompt + " " + response`; joining and tokenizing them is the caller's job. A template's parts are
joined by exactly one space, as the tables print them. User text goes in stripped of outer whitespace and is
otherwise untouched (the word-level demo tokenizer needs "?" etc. where the data has them), except for entity
linking's mention markers.

Where the chapter is silent, kipjax chooses:
  * the cue: the prompt ends with "A:" (summarization: "Summarize this article:") and the response starts
    without a space;
  * entity linking: KILT's AIDA marks the mention `[START_ENT] ... [END_ENT]` and the template names `[START]`
    and `[END]`, so the markers are replaced; exactly one marked mention is required, as in KILT. The context
    (a whole AIDA document) is not truncated here;
  * fact checking: KILT's FEVER labels SUPPORTS / REFUTES become "True" / "False", the answer strings of
    section 5.4.1;
  * slot filling: KILT's "{entity} [SEP] {relation}" input is split at its one [SEP] and filled back in;
  * dialogue (oasst1): the prompt is every turn but the last, joined by single spaces, the response the last
    turn; no speaker names are added (Table C.4 shows none);
  * sentence generation: Table 5.1's "next/previous sentence" is the relation "next sentence" or "previous
    sentence";
  * phrase denoising: the context must mark at least one phrase with [START] ... [END]; how several original
    phrases make one answer is up to the data's generator;
  * `answers`: tasks with one reference (summaries, dialogue, the synthetic tasks) have the response as their
    only answer.
Only the knowledge-intensive kinds (QA, entity linking, fact checking, slot filling) retrieve: "We only use
retrieval for knowledge-intensive tasks" (Table 5.1).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

# Template kinds.
QA = "qa"
ENTITY_LINKING = "entity_linking"
FACT_CHECK = "fact_check"
SLOT_FILLING = "slot_filling"
READING_COMPREHENSION = "reading_comprehension"
SUMMARIZATION = "summarization"
DIALOGUE = "dialogue"
PHRASE_DENOISING = "phrase_denoising"
SENTENCE_GENERATION = "sentence_generation"

# The chapter's templates, verbatim (Table 5.1; Table C.4 repeats the instruction-tuning ones).
QA_TEMPLATE = "Q: {question} A: {answer}"
ENTITY_LINKING_TEMPLATE = ("{context} Output the Wikipedia page title of the entity mentioned between [START] and "
                           "[END] in the given text A: {answer}")
FACT_CHECK_TEMPLATE = "Is this statement true? {statement} A: {answer}"
SLOT_FILLING_TEMPLATE = ("{entity} [SEP] {relation} Provide the answer corresponding to the relation specified "
                         "after [SEP] for the entity mentioned before [SEP] A: {answer}")
READING_COMPREHENSION_TEMPLATE = "{context} Q: {question} A: {answer}"
SUMMARIZATION_TEMPLATE = "{context} Summarize this article: {summary}"
DIALOGUE_TEMPLATE = "{turn_1} {turn_2} {turn_3} ..."
PHRASE_DENOISING_TEMPLATE = ("{context} Recover the original phrases marked between [START] and [END] in the given "
                             "text A: {answer}")
SENTENCE_GENERATION_TEMPLATE = ("{context} [SEP] next/previous sentence Generate a sentence corresponding to the "
                                "relation specified after [SEP] for the context mentioned before [SEP] A: {sentence}")

TEMPLATES = {QA: QA_TEMPLATE, ENTITY_LINKING: ENTITY_LINKING_TEMPLATE, FACT_CHECK: FACT_CHECK_TEMPLATE,
             SLOT_FILLING: SLOT_FILLING_TEMPLATE, READING_COMPREHENSION: READING_COMPREHENSION_TEMPLATE,
             SUMMARIZATION: SUMMARIZATION_TEMPLATE, DIALOGUE: DIALOGUE_TEMPLATE,
             PHRASE_DENOISING: PHRASE_DENOISING_TEMPLATE, SENTENCE_GENERATION: SENTENCE_GENERATION_TEMPLATE}
RETRIEVAL_KINDS = frozenset({QA, ENTITY_LINKING, FACT_CHECK, SLOT_FILLING})

# KILT task names (the first part of KILT's file names, e.g. structured_zeroshot-dev-kilt.jsonl) and the bundled
# demo's (kipjax/data/demo_kilt.py) -> template kind. KILT names AIDA's files "aidayago2"; "aida" is kept too.
KILT_TASK_KINDS = {"nq": QA, "hotpotqa": QA, "triviaqa": QA, "fever": FACT_CHECK, "aidayago2": ENTITY_LINKING,
                   "aida": ENTITY_LINKING, "trex": SLOT_FILLING, "structured_zeroshot": SLOT_FILLING,
                   "qa": QA, "fc": FACT_CHECK, "sf": SLOT_FILLING, "el": ENTITY_LINKING}

KILT_MENTION_MARKERS = ("[START_ENT]", "[END_ENT]")
MENTION_MARKERS = ("[START]", "[END]")
SEP = "[SEP]"
FEVER_ANSWERS = {"SUPPORTS": "True", "REFUTES": "False"}
SENTENCE_DIRECTIONS = ("next", "previous")


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One rendered example: `prompt` up to and including the answer cue, `response` the gold text generated
    after it, `answers` every gold answer (exact match), `retrieve` whether the task retrieves passages."""

    id: str
    task: str
    prompt: str
    response: str
    answers: tuple[str, ...]
    retrieve: bool


def _text(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field '{name}' must be str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field '{name}' is empty; expected non-blank text")
    return value.strip()


def _render(template: str, **fields: str) -> tuple[str, str]:
    """(prompt, response): the template up to its last part (the response slot) filled in, and that slot's field."""
    head, slot = template.rsplit(" ", 1)
    values = {name: _text(name, value) for name, value in fields.items()}
    return head.format(**values), values[slot.strip("{}")]


def render_qa(question: str, answer: str) -> tuple[str, str]:
    return _render(QA_TEMPLATE, question=question, answer=answer)


def mark_mention(text: str) -> str:
    """KILT's `[START_ENT] ... [END_ENT]` mention markers as the template's `[START] ... [END]`; the text must
    mark exactly one mention."""
    start, end = KILT_MENTION_MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one mention marked {start} ... {end}, got {text!r:.80}")
    return text.replace(start, MENTION_MARKERS[0]).replace(end, MENTION_MARKERS[1])


def render_entity_linking(context: str, answer: str) -> tuple[str, str]:
    """`context` in KILT's form, with its mention in [START_ENT] ... [END_ENT]."""
    return _render(ENTITY_LINKING_TEMPLATE, context=mark_mention(_text("context", context)), answer=answer)


def fever_answer(label: str) -> str:
    """KILT's FEVER label as the fact-checking answer: SUPPORTS -> "True", REFUTES -> "False"."""
    if label not in FEVER_ANSWERS:
        raise ValueError(f"FEVER label must be one of {sorted(FEVER_ANSWERS)}, got {label!r:.60}")
    return FEVER_ANSWERS[label]


def render_fact_check(statement: str, answer: str) -> tuple[str, str]:
    """`answer` is "True" or "False" (see `fever_answer`)."""
    if answer not in FEVER_ANSWERS.values():
        raise ValueError(f"fact-checking answer must be one of {sorted(FEVER_ANSWERS.values())}, got {answer!r:.60}")
    return _render(FACT_CHECK_TEMPLATE, statement=statement, answer=answer)


def split_slot_query(text: str) -> tuple[str, str]:
    """KILT's slot-filling input "{entity} [SEP] {relation}" as (entity, relation)."""
    if text.count(SEP) != 1:
        raise ValueError(f"expected '{{entity}} {SEP} {{relation}}' with one {SEP}, got {text!r:.80}")
    entity, relation = text.split(SEP)
    return entity, relation


def render_slot_filling(entity: str, relation: str, answer: str) -> tuple[str, str]:
    return _render(SLOT_FILLING_TEMPLATE, entity=entity, relation=relation, answer=answer)


def render_reading_comprehension(context: str, question: str, answer: str) -> tuple[str, str]:
    return _render(READING_COMPREHENSION_TEMPLATE, context=context, question=question, answer=answer)


def render_summarization(context: str, summary: str) -> tuple[str, str]:
    return _render(SUMMARIZATION_TEMPLATE, context=context, summary=summary)


def render_dialogue(turns: Sequence[str]) -> tuple[str, str]:
    """Every turn but the last, joined by single spaces, and the last turn."""
    if len(turns) < 2:
        raise ValueError(f"a dialogue needs at least 2 turns, got {len(turns)}")
    texts = [_text(f"turn_{i}", turn) for i, turn in enumerate(turns, start=1)]
    return " ".join(texts[:-1]), texts[-1]


def render_phrase_denoising(context: str, answer: str) -> tuple[str, str]:
    """`context` marks the phrases to recover with [START] ... [END]."""
    context = _text("context", context)
    if any(marker not in context for marker in MENTION_MARKERS):
        raise ValueError(f"expected phrases marked {' ... '.join(MENTION_MARKERS)}, got {context!r:.80}")
    return _render(PHRASE_DENOISING_TEMPLATE, context=context, answer=answer)


def render_sentence_generation(context: str, direction: str, sentence: str) -> tuple[str, str]:
    """`sentence` is the one after (`direction` "next") or before ("previous") `context`."""
    if direction not in SENTENCE_DIRECTIONS:
        raise ValueError(f"direction must be one of {SENTENCE_DIRECTIONS}, got {direction!r:.60}")
    template = SENTENCE_GENERATION_TEMPLATE.replace("next/previous sentence", f"{direction} sentence")
    return _render(template, context=context, sentence=sentence)


def prompt_example(example_id: str, task: str, kind: str, rendered: tuple[str, str],
                   answers: Sequence[str] = ()) -> PromptExample:
    """A rendered (prompt, response) as a PromptExample of `kind`; `answers` are stripped and deduplicated in
    order, and default to the response alone."""
    if kind not in TEMPLATES:
        raise ValueError(f"unknown template kind {kind!r}; expected one of {sorted(TEMPLATES)}")
    prompt, response = rendered
    gold = tuple(dict.fromkeys(_text("answer", answer) for answer in answers)) or (response,)
    return PromptExample(example_id, task, prompt, response, gold, kind in RETRIEVAL_KINDS)
