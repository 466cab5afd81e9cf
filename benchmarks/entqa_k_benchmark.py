"""EntQA's speed-accuracy dial (sec. 6.3.2): linking time per document and InKB F1 against K, the number of
candidate entities the reader reads per passage.

With a trained demo retriever and reader (README, EntQA), for each K: the documents are linked end to end
(`kipjax.methods.entqa.link.EntqaLinker`: retrieval of the top K over the KB encoded once, then the reader's
batches of passages x K pairs on device, span selection on the host), once to compile, then `--repeats` timed
runs (the median is reported). The reader's share is timed on its own (`EntqaReader.passage_links` on the
same candidates, already compiled). A least-squares line through the reader's seconds against K shows the
linear cost (its R^2 and the intercept's share); the F1 at each K is the reader's threshold's. Candidate
recall is over the documents' (passage, gold entity) pairs, as the reader's evaluation counts it.

  python benchmarks/entqa_k_benchmark.py --retriever_gin=gin_configs/entqa/demo_retriever.gin \\
      --retriever_checkpoint=/tmp/kipjax_entqa_retriever --gin_file=gin_configs/entqa/demo_reader.gin \\
      --checkpoint=/tmp/kipjax_entqa_reader --out=benchmarks/results/entqa_k.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any, Sequence

import numpy as np

from kipjax.data.demo_entqa import demo_entqa_path
from kipjax.methods.entqa import linking
from kipjax.methods.entqa.data import corpus_examples, gold_recall
from kipjax.methods.entqa.link import EntqaLinker, load_method, read_documents
from kipjax.methods.entqa.reader import EntqaReader
from kipjax.methods.entqa.retriever import EntqaRetriever
from kipjax.run_log import atomic_write_text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--retriever_gin", action="append", required=True)
    parser.add_argument("--retriever_checkpoint", required=True)
    parser.add_argument("--gin_file", action="append", required=True, help="the reader's gin file(s)")
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--checkpoint", required=True, help="the reader's MODEL_DIR")
    parser.add_argument("--documents", default=demo_entqa_path("aida_testa.tsv"))
    parser.add_argument("--max_documents", type=int, default=None)
    parser.add_argument("--ks", default="20,50,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def timed(fn: Any, repeats: int, warm_up: bool = True) -> tuple[float, Any]:
    """(median seconds of `repeats` calls, after one untimed call unless `warm_up` is False; the last result)."""
    result = fn() if warm_up else None
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def line_fit(ks: Sequence[int], seconds: Sequence[float]) -> dict[str, float]:
    """seconds = intercept + slope K by least squares, with R^2 and the intercept's share at the largest K."""
    k, s = np.asarray(ks, float), np.asarray(seconds, float)
    slope, intercept = np.polyfit(k, s, 1)
    residual = s - (intercept + slope * k)
    total = np.sum((s - s.mean()) ** 2)
    return {"slope_s_per_k": float(slope), "intercept_s": float(intercept),
            "r_squared": float(1 - np.sum(residual ** 2) / total) if total > 0 else 1.0,
            "intercept_share_at_max_k": float(intercept / (intercept + slope * k.max()))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    records = read_documents(args.documents)[:args.max_documents]
    retriever, retriever_params = load_method(args.retriever_gin, [], args.retriever_checkpoint, EntqaRetriever)
    reader, reader_params = load_method(args.gin_file, args.gin_bindings, args.checkpoint, EntqaReader)
    linker = EntqaLinker(retriever, retriever_params, reader, reader_params)
    examples = corpus_examples(records, reader.kb, reader.tokenizer, **reader.documents.settings).passages
    ids, mask = retriever.passage_arrays(examples)
    _, ranked = retriever.retrieve(retriever_params, ids, mask, max(ks), kb=linker.kb_encoding)
    rows = []
    for k in ks:
        linker.num_candidates = k
        total_s, scored = timed(lambda: linker.scored_links(records), args.repeats)
        candidates = ranked[:, :k]
        reader_s, _ = timed(lambda: reader.passage_links(reader_params, examples, candidates.clip(0),
                                                          candidates >= 0), args.repeats, warm_up=False)
        metrics = linking.link_metrics(scored, records, reader.threshold, reader.overlaps)
        rows.append({"k": k, "seconds": total_s, "ms_per_document": 1e3 * total_s / len(records),
                     "reader_seconds": reader_s, "pairs_per_second": len(examples) * k / reader_s,
                     "f1": metrics["f1"], "calibrated_f1": metrics["calibrated_f1"],
                     "candidate_recall": gold_recall(examples, (r[:k] for r in ranked))})
        print(f"K={k}: {rows[-1]['ms_per_document']:.1f} ms/document (reader {reader_s:.2f} s), "
              f"F1 {metrics['f1']:.4f}, candidate recall {rows[-1]['candidate_recall']:.4f}", flush=True)
    result = {"documents": len(records), "passages": len(examples), "machine": platform.processor() or
              platform.machine(), "ks": rows, "reader_fit": line_fit(ks, [r["reader_seconds"] for r in rows]),
              "time_ratio_to_smallest_k": [r["seconds"] / rows[0]["seconds"] for r in rows]}
    print(json.dumps(result["reader_fit"]))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
