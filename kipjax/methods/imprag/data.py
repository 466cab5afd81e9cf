"""ImpRAG's inputs: task files named as "format:path", token sequences of prompt + response, passage token
tables, and the teacher's pseudo-labels with the candidate sets drawn from them (5.3.2.1).

A training sequence is [BOS] prompt response EOS (BOS only when the tokenizer has one); the loss covers the
response and EOS. The prompt is cut from the left when too long (its end holds the question and the answer cue),
the response from the right. The query embedding is taken at the prompt's last token, the cue, "at the end of
the input prompt" (5.3.3).

Pseudo-label files (written by `pseudo_labels`): JSON lines {"id": str, "passages": [passage id, ...]}, the
teacher's ranking of the corpus for that example, best first, ids as in the passage file's `id` column. Each
epoch a retrieving example's candidates C are its top `positives` as pseudo-positives and `hard_negatives`
drawn without replacement from ranks `hard_ranks` (1-based, inclusive: 10-50 in the chapter).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kipjax.data.jsonl import json_lines, required_field
from kipjax.data.token_tables import row_mask
from kipjax.methods.imprag.task_readers import READERS, read_prompts
from kipjax.methods.imprag.templates import PromptExample

CANDIDATE_PAD = -1  # a candidate slot without a passage


def split_source(source: str) -> tuple[str, str]:
    """"format:path" -> (format, path), the format one of the readers'."""
    fmt, sep, path = source.partition(":")
    if not sep or fmt not in READERS or not path:
        raise ValueError(f"task file {source!r} must be 'FORMAT:PATH' with FORMAT one of {sorted(READERS)}")
    return fmt, path


def read_sources(sources: Sequence[str], limit: int | None) -> list[PromptExample]:
    """The examples of every "format:path" source, the first `limit` of each (the chapter: 5,000 a dataset)."""
    examples: list[PromptExample] = []
    for source in sources:
        fmt, path = split_source(source)
        examples += read_prompts(path, fmt, limit=limit)
    return examples


def sample_examples(examples: Sequence[PromptExample], count: int | None, rng: np.random.Generator
                    ) -> list[PromptExample]:
    """`count` of `examples` drawn without replacement, kept in file order (the chapter trains on 5,000
    examples of each dataset); all of them when `count` is None or not smaller."""
    if count is None or count >= len(examples):
        return list(examples)
    return [examples[i] for i in np.sort(rng.choice(len(examples), size=count, replace=False))]


@dataclasses.dataclass(frozen=True)
class TokenSequence:
    """One tokenized example: `ids` = [BOS] prompt response EOS and the prompt's length in `ids`."""

    ids: list[int]
    prompt_length: int


def tokenize_example(tokenizer: Any, example: PromptExample, max_prompt_tokens: int, max_response_tokens: int
                     ) -> TokenSequence:
    """The example's training sequence (module docstring); the response is tokenized with its leading space,
    as it follows the prompt in the text."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
    prompt = bos + prompt[max(0, len(prompt) - (max_prompt_tokens - len(bos))):]
    response = tokenizer(" " + example.response, add_special_tokens=False)["input_ids"][:max_response_tokens - 1]
    return TokenSequence(prompt + response + [tokenizer.eos_token_id], len(prompt))


def prompt_tokens(tokenizer: Any, example: PromptExample, max_prompt_tokens: int) -> list[int]:
    """The prompt part of `tokenize_example`: what generation starts from."""
    sequence = tokenize_example(tokenizer, dataclasses.replace(example, response=""), max_prompt_tokens, 1)
    return sequence.ids[:sequence.prompt_length]


def context_tokens(passages: np.ndarray, eos_id: int, separator: Sequence[int]) -> list[int]:
    """The rows of a passage token table ([k, l_max], each ending with EOS, then zero padding) as in-context text
    for the retrieve-then-generate baselines: each passage's tokens without EOS and padding, then `separator`."""
    tokens: list[int] = []
    for row, mask in zip(passages, row_mask(passages, eos_id)):
        tokens += row[:mask.sum() - 1].tolist() + list(separator)
    return tokens


def insert_context(sequence: TokenSequence, context: Sequence[int], has_bos: bool) -> TokenSequence:
    """`sequence` with `context` (`context_tokens`) between its BOS (if any) and its prompt: a prompt that
    reads the passages, as RA-IT's does."""
    start = 1 if has_bos else 0
    return TokenSequence(sequence.ids[:start] + list(context) + sequence.ids[start:],
                         sequence.prompt_length + len(context))


def training_arrays(sequences: Sequence[TokenSequence], max_length: int) -> dict[str, np.ndarray]:
    """Right-padded next-token arrays [N, max_length]: `input_ids` (the sequence but its last token), `targets`
    (the sequence shifted by one), `loss_mask` (targets in the response or EOS), `query_index` (the prompt's
    last token in `input_ids`, 0 for a sequence without a prompt)."""
    n = len(sequences)
    arrays = {name: np.zeros((n, max_length), np.int32)
              for name in ("input_ids", "attention_mask", "targets", "loss_mask")}
    arrays["query_index"] = np.zeros((n,), np.int32)
    for row, seq in enumerate(sequences):
        ids = seq.ids[:max_length + 1]
        width = len(ids) - 1
        arrays["input_ids"][row, :width], arrays["targets"][row, :width] = ids[:-1], ids[1:]
        arrays["attention_mask"][row, :width] = 1
        arrays["loss_mask"][row, max(seq.prompt_length - 1, 0):width] = 1
        arrays["query_index"][row] = max(seq.prompt_length - 1, 0)
    return arrays


def read_pseudo_labels(path: str | Path, passage_rows: Mapping[str, int]) -> dict[str, list[int]]:
    """example id -> the teacher's ranking as passage rows; an unknown passage id is an error naming the line."""
    path = Path(path)
    rankings: dict[str, list[int]] = {}
    for line, record in json_lines(path):
        where = f"{path}:{line}"
        example_id = str(required_field(record, "id", (str, int), where)).strip()
        passages = required_field(record, "passages", list, where)
        rows = []
        for passage in passages:
            if str(passage) not in passage_rows:
                raise ValueError(f"{where}: passage id {passage!r} is not in the passage file")
            rows.append(passage_rows[str(passage)])
        if example_id in rankings:
            raise ValueError(f"{where}: duplicate id {example_id!r}")
        rankings[example_id] = rows
    return rankings


def draw_candidates(ranking: Sequence[int], positives: int, hard_negatives: int, hard_ranks: tuple[int, int],
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows [positives + hard_negatives], positive mask): the top `positives` of `ranking`, then hard negatives
    drawn without replacement from ranks hard_ranks[0]..hard_ranks[1]; slots a short ranking cannot fill are
    CANDIDATE_PAD."""
    size = positives + hard_negatives
    rows = np.full(size, CANDIDATE_PAD, np.int64)
    top = list(ranking[:positives])
    rows[:len(top)] = top
    pool = np.asarray(ranking[hard_ranks[0] - 1:hard_ranks[1]], np.int64)
    drawn = rng.choice(pool, size=min(hard_negatives, len(pool)), replace=False) if len(pool) else pool
    rows[positives:positives + len(drawn)] = drawn
    return rows, np.arange(size) < len(top)
