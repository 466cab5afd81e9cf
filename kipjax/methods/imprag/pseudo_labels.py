"""Pseudo-labels for ImpRAG's retrieval warmup (5.3.2.1): a teacher retriever ranks the passage corpus for each
retrieving training example, and its ranking, best first, is what `data.read_pseudo_labels` reads (the top 5 as
pseudo-positives, hard negatives from ranks 10-50).

Teachers:
  dense  the chapter's Contriever-MSMARCO, from a local Hugging Face directory (facebook/contriever-msmarco is a
         plain BertModel): the mean of the last hidden states over the non-pad tokens, not normalized, scored by
         dot product. The corpus is encoded on every device, resumably under OUT/teacher_corpus.
  bm25   bm25s, where no such checkpoint is at hand (the bundled demo). Only passages sharing a term with the
         query are ranked: a zero score is no evidence, and bm25s orders those passages arbitrarily.
Both read the whole templated prompt as the query ("we utilize the entire input prompts as queries for the
retrievers") and a passage as f"{title} {text}", as Contriever's BEIR and DPR evaluations join them.

Each task file gets OUT/<its file name>.pseudo_labels.jsonl (`pseudo_label_path`), one line {"id", "passages":
[passage id, ...]} per retrieving example in file order; instruction-tuning formats do not retrieve and get none.

    python -m kipjax.methods.imprag.pseudo_labels --passages psgs_w100.tsv --task kilt:nq-train-kilt.jsonl \\
        --out pseudo_labels --teacher dense --teacher_dir contriever-msmarco
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import bm25s
import jax
import jax.numpy as jnp
import numpy as np

from kipjax import partitioning
from kipjax.data.kilt import PassageCorpus, read_passages
from kipjax.methods.imprag.data import read_sources, split_source
from kipjax.methods.imprag.templates import PromptExample
from kipjax.methods.taco.retrieval import params_fingerprint
from kipjax.models import hf
from kipjax.retrieval.corpus_encoding import EncodeFn, encode_corpus, encode_everywhere, search_corpus
from kipjax.run_log import atomic_write_text, track

TEACHERS = ("bm25", "dense")
CORPUS_DIR = "teacher_corpus"  # under --out: the dense teacher's resumable corpus encoding

Rankings = list[list[int]]  # per query, passage rows best first


def pseudo_label_path(out_dir: str | Path, source: str) -> Path:
    """Where the pseudo-labels of the task file `source` ("format:path") are written and read."""
    _, path = split_source(source)
    return Path(out_dir) / f"{Path(path).name}.pseudo_labels.jsonl"


def passage_texts(corpus: PassageCorpus) -> list[str]:
    """What the teachers read of each passage: "title text" (module docstring)."""
    return [f"{title} {text}" for title, text in zip(corpus.titles, corpus.texts)]


# ------------------------------------------------------------------------------------------------- BM25

def bm25_rankings(corpus: PassageCorpus, queries: Sequence[str], top: int, query_batch: int = 1024) -> Rankings:
    """Each query's top `top` passage rows by BM25 over `passage_texts`, only those scoring above zero."""
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its index build logs at DEBUG
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(passage_texts(corpus), stopwords="en", show_progress=False), show_progress=False)
    rankings: Rankings = []
    for start in track(range(0, len(queries), query_batch), total=len(queries), desc="bm25 search", unit="queries",
                       rows_per_item=query_batch):
        tokens = bm25s.tokenize(list(queries[start:start + query_batch]), stopwords="en", show_progress=False)
        rows, scores = retriever.retrieve(tokens, k=min(top, len(corpus)), show_progress=False)
        rankings += [[int(r) for r, s in zip(row, score) if s > 0] for row, score in zip(rows, scores)]
    return rankings


# ------------------------------------------------------------------------------------------------ dense

def padded_tokens(tokenizer: Any, texts: Sequence[str], max_tokens: int, desc: str, chunk: int = 4096
                ) -> tuple[np.ndarray, np.ndarray]:
    """int32 token ids [N, width] (the tokenizer's special tokens included, cut to `max_tokens`) padded with its
    pad id, and the uint8 mask of the real tokens; width is the longest row."""
    ids = np.full((len(texts), max_tokens), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(texts), max_tokens), np.uint8)
    width = 1
    for start in track(range(0, len(texts), chunk), total=len(texts), desc=desc, rows_per_item=chunk):
        batch = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_tokens)["input_ids"]
        for i, row in enumerate(batch, start):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
            width = max(width, len(row))
    return ids[:, :width], mask[:, :width]


def mean_pooling_encoder(model: Any) -> EncodeFn:
    """Contriever's embedding: the last hidden states averaged over the mask's tokens."""
    def encode(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
        hidden = model.apply({"params": params}, ids, attention_mask=mask).last_hidden_state.astype(jnp.float32)
        weights = mask[..., None].astype(jnp.float32)
        return (hidden * weights).sum(1) / weights.sum(1)

    return encode


def dense_rankings(teacher_dir: str | Path, corpus: PassageCorpus, queries: Sequence[str], top: int, *,
                   batch_size: int = 64, max_tokens: int = 256, corpus_dir: str | None = None,
                   corpus_fingerprint: str = "") -> Rankings:
    """Each query's top `top` passage rows by the dense teacher (module docstring), searched exactly over the
    devices of every host. With `corpus_dir` the corpus encoding is kept there and a killed run resumes it; its
    fingerprint covers the teacher's weights and vocabulary, `max_tokens` and `corpus_fingerprint` (what names
    the passages)."""
    model, params = hf.load_pretrained(teacher_dir)
    tokenizer = hf.load_tokenizer(teacher_dir)
    mesh = partitioning.current_mesh()
    fingerprint = json.dumps([params_fingerprint(params), len(tokenizer), max_tokens, corpus_fingerprint])
    params = partitioning.put_replicated(params, mesh)
    encode = mean_pooling_encoder(model)
    ids, mask = padded_tokens(tokenizer, passage_texts(corpus), max_tokens, "tokenize passages")
    local, layout = encode_corpus(encode, params, ids, mask, mesh=mesh, batch_size=batch_size, out_dir=corpus_dir,
                                  fingerprint=fingerprint, desc="encode passages")
    query_ids, query_mask = padded_tokens(tokenizer, queries, max_tokens, "tokenize queries")
    embedded = encode_everywhere(encode, params, query_ids, query_mask, mesh=mesh, batch_size=batch_size,
                                 desc="encode queries")
    _, rows = search_corpus("exact", embedded, local, layout, mesh, top, query_batch=batch_size)
    return rows.tolist()


# ----------------------------------------------------------------------------------------------- output

def write_pseudo_labels(path: str | Path, examples: Sequence[PromptExample], rankings: Sequence[Sequence[int]],
                        passage_ids: np.ndarray) -> None:
    """Writes (atomically) one line {"id", "passages": [passage id as str, ...]} per example, `rankings` giving
    each example's passage rows best first."""
    if len(examples) != len(rankings):
        raise ValueError(f"{len(examples)} examples but {len(rankings)} rankings")
    lines = [json.dumps({"id": example.id, "passages": [str(passage_ids[row]) for row in ranking]}) + "\n"
             for example, ranking in zip(examples, rankings)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(path), "".join(lines))


def write_sources(out_dir: str, retrieving: dict[str, list[PromptExample]], rankings: Rankings,
                  passage_ids: np.ndarray) -> dict[str, int]:
    """Each source's file (`pseudo_label_path`) from `rankings`, which follow the sources' examples in order;
    sources without examples are left out. Returns file path -> examples. Only the first host writes."""
    files, start = {}, 0
    for source, examples in retrieving.items():
        if examples:
            path = pseudo_label_path(out_dir, source)
            if jax.process_index() == 0:  # one writer per shared output directory
                write_pseudo_labels(path, examples, rankings[start:start + len(examples)], passage_ids)
            files[str(path)] = len(examples)
            start += len(examples)
    return files


def file_fingerprint(path: str | Path) -> str:
    """Names a file's version: its absolute path, size and modification time."""
    stat = os.stat(path)
    return json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])


def teacher_ranker(args: argparse.Namespace, corpus: PassageCorpus) -> Callable[[Sequence[str]], Rankings]:
    """queries -> rankings, by the teacher the command line names."""
    if args.teacher == "bm25":
        return lambda queries: bm25_rankings(corpus, queries, args.top)
    return lambda queries: dense_rankings(
        args.teacher_dir, corpus, queries, args.top, batch_size=args.batch_size, max_tokens=args.max_tokens,
        corpus_dir=os.path.join(args.out, CORPUS_DIR), corpus_fingerprint=file_fingerprint(args.passages))


# -------------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kipjax.methods.imprag.pseudo_labels",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", required=True, help="passage TSV (DPR layout: id, text, title)")
    parser.add_argument("--task", action="append", required=True, metavar="FORMAT:PATH",
                        help="a training task file (repeatable)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--teacher", choices=TEACHERS, default="bm25")
    parser.add_argument("--teacher_dir", default=None, help="the dense teacher's Hugging Face directory")
    parser.add_argument("--top", type=int, default=50, help="passages kept per example")
    parser.add_argument("--limit", type=int, default=None, help="the first N examples of each task file")
    parser.add_argument("--batch_size", type=int, default=64, help="dense teacher: rows per encoding step")
    parser.add_argument("--max_tokens", type=int, default=256, help="dense teacher: tokens per query or passage")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.teacher == "dense" and args.teacher_dir is None:
        parser.error("--teacher dense needs --teacher_dir (a Hugging Face directory, e.g. contriever-msmarco)")
    for name in ("top", "batch_size", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        paths = [pseudo_label_path(args.out, source) for source in args.task]
    except ValueError as e:
        parser.error(str(e))
    if len(set(paths)) != len(paths):
        parser.error(f"two task files share a file name, so their pseudo-label files would collide: {args.task}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        corpus = read_passages(args.passages)
        retrieving = {source: [e for e in read_sources([source], args.limit) if e.retrieve] for source in args.task}
    except (OSError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    for source in (source for source, examples in retrieving.items() if not examples):
        print(f"note: {source} has no retrieving examples; no pseudo-labels written for it", file=sys.stderr)
    examples = [example for source_examples in retrieving.values() for example in source_examples]
    rankings = teacher_ranker(args, corpus)([example.prompt for example in examples]) if examples else []
    files = write_sources(args.out, retrieving, rankings, corpus.ids)
    summary = {"teacher": args.teacher, "teacher_dir": args.teacher_dir, "top": args.top, "files": files,
               "examples": len(examples)}
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
