"""EntQA end to end: raw documents in, entity links out, with a trained retriever and reader.

    python -m kipjax.methods.entqa.link --retriever_gin=gin_configs/entqa/demo_retriever.gin \\
        --retriever_checkpoint=/tmp/kipjax_entqa_retriever --gin_file=gin_configs/entqa/demo_reader.gin \\
        --checkpoint=/tmp/kipjax_entqa_reader --documents=DOCS --out=PRED.jsonl [--scored=S.jsonl] \\
        [--nif=PRED.ttl] [--threshold=G] [--candidates=K]
    python -m kipjax.methods.entqa.link ...same models... --serve [--host=H] [--port=P] [--uri_style=dbpedia]

DOCS is an AIDA-YAGO2 TSV file (.tsv), a NIF Turtle file (.ttl) or JSON lines (`{"id", "text"}`, optionally
with gold `links`). Every document is cut into passages; the retriever proposes each passage's top K (default:
the reader's `eval_num_candidates`) entities from the whole KB, encoded once on the devices; the reader keeps
the links scored above the threshold (default: the reader's `threshold`). Outputs: `--out`, the links in
`kipjax.metrics.el inkb`'s layout; `--scored`, every candidate link with its score before the threshold (the
input of `python -m kipjax.methods.entqa.calibrate`); `--nif`, NIF Turtle for GERBIL (one entity per span,
the best-scored: a NIF phrase has one). When the documents carry gold links, the InKB scores are printed.
`--serve` answers GERBIL's NIF web-service requests instead (`gerbil_server`).

The two configs are parsed one after the other (each with its own gin bindings: `--retriever_gin_bindings`,
and `--gin_bindings` or `--gin.KEY=VALUE` for the reader), so each method is built and restored under its own
configuration; they must read the same KB file and cut passages alike. Restoring the reader reads its
training candidate file (the train state's shapes come from a training batch), so CANDIDATES_DIR must hold it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import gin
import jax

from kipjax import cli, runner
from kipjax.data import aida, nif
from kipjax.data.jsonl import json_lines, required_field
from kipjax.methods.base import Params
from kipjax.methods.entqa import gerbil_server, linking
from kipjax.methods.entqa.data import corpus_examples
from kipjax.methods.entqa.reader import EntqaReader
from kipjax.methods.entqa.retriever import EntqaRetriever
from kipjax.run_log import atomic_write_text

def load_method(gin_files: Sequence[str], bindings: Sequence[str], checkpoint: str, kind: type) -> tuple[Any, Params]:
    """The `kind` method a config's METHOD builds and its newest params under `checkpoint`, under that config
    alone (gin is cleared first)."""
    gin.clear_config()
    cli.parse_gin(argparse.Namespace(gin_file=list(gin_files), gin_bindings=[*bindings, cli.METHOD_BINDING],
                                     gin_search_path=[]), [])
    method = cli.configured_method(kind, "EntQA", f"linking with {', '.join(gin_files)}")
    cli.require_checkpoint(checkpoint)
    params, step, _ = runner.restore_params(checkpoint, method)
    print(f"{kind.__name__}: step {step} of {checkpoint}", flush=True)
    return method, params


class EntqaLinker:
    """A trained retriever and reader linking documents; the KB is encoded once, when the linker is built."""

    def __init__(self, retriever: EntqaRetriever, retriever_params: Params, reader: EntqaReader,
                 reader_params: Params, num_candidates: int | None = None):
        if retriever.kb.titles != reader.kb.titles:
            raise ValueError("the retriever and the reader read different KBs; both configs must name one kb_file")
        self.retriever, self.retriever_params = retriever, retriever_params
        self.reader, self.reader_params = reader, reader_params
        self.num_candidates = num_candidates or reader.eval_num_candidates
        self.kb_encoding = retriever.encode_kb(retriever_params)

    def scored_links(self, records: Sequence[dict]) -> dict[str, list[linking.ScoredLink]]:
        """Every document's candidate links with their scores (before the threshold), [] for none."""
        examples = corpus_examples(records, self.reader.kb, self.reader.tokenizer,
                                   **self.reader.documents.settings).passages
        if not examples:
            return {str(r["id"]): [] for r in records}
        ids, mask = self.retriever.passage_arrays(examples)
        _, rows = self.retriever.retrieve(self.retriever_params, ids, mask, self.num_candidates, kb=self.kb_encoding)
        valid = rows >= 0
        per_passage = self.reader.passage_links(self.reader_params, examples, rows.clip(0), valid)
        return {str(r["id"]): [] for r in records} | linking.merge_passages(examples, per_passage)

    def annotate(self, text: str, threshold: float | None = None) -> list[tuple[int, int, str]]:
        """One text's links (the GERBIL server's callback)."""
        scored = self.scored_links([{"id": "text", "text": text, "links": []}])["text"]
        kept = linking.final_links(scored, self.resolve_threshold(threshold), self.reader.overlaps)
        return [link[:3] for link in linking.best_per_span(kept)]

    def resolve_threshold(self, threshold: float | None) -> float:
        """`threshold`, or the reader's when None."""
        return self.reader.threshold if threshold is None else threshold


def read_documents(path: str) -> list[dict]:
    """Gold-link records (`id`, `text`, `links`) of an AIDA TSV, NIF Turtle or JSON-lines file."""
    if path.endswith(".tsv"):
        return [aida.gold_links(d) for d in aida.read_aida(path)]
    if path.endswith(".ttl"):
        return [nif.gold_links(d) for d in nif.read_nif(path)]
    records = []
    for line, record in json_lines(path):
        where = f"{path}:{line}"
        links = record.get("links", [])
        if not isinstance(links, list) or not all(isinstance(l, list) and len(l) == 3 for l in links):
            raise ValueError(f"{where}: 'links' must be a list of [start, end, title]")
        records.append({"id": str(required_field(record, "id", str, where)),
                        "text": required_field(record, "text", str, where), "links": links})
    return records


def write_outputs(args: argparse.Namespace, records: Sequence[dict], scored: dict[str, list[linking.ScoredLink]],
                  final: dict[str, list[linking.ScoredLink]]) -> None:
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps({"id": r["id"], "links": [list(l[:3]) for l in
                                                                                  final[r["id"]]]}) + "\n"
                                            for r in records))
    if args.scored:
        atomic_write_text(args.scored, "".join(json.dumps({"id": r["id"], "links": [list(l) for l in
                                                                                     scored[r["id"]]]}) + "\n"
                                               for r in records))
    if args.nif:
        nif.write_nif([nif.NifDocument(r["id"], r["text"], [link[:3] for link in
                                                             linking.best_per_span(final[r["id"]])])
                       for r in records], args.nif)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = cli.gin_argument_parser(__doc__)
    cli.add_checkpoint_argument(parser)
    parser.add_argument("--retriever_gin", action="append", required=True, help="the retriever's gin file(s)")
    parser.add_argument("--retriever_gin_bindings", action="append", default=[])
    parser.add_argument("--retriever_checkpoint", required=True)
    parser.add_argument("--documents", help="AIDA .tsv, NIF .ttl or JSON lines to link")
    parser.add_argument("--out", help="links, one JSON line per document")
    parser.add_argument("--scored", help="every candidate link with its score, one JSON line per document")
    parser.add_argument("--nif", help="the links as NIF Turtle")
    parser.add_argument("--threshold", type=float, default=None, help="gamma (default: the reader's)")
    parser.add_argument("--candidates", type=int, default=None, help="K retrieved per passage")
    parser.add_argument("--serve", action="store_true", help="serve GERBIL's NIF web-service requests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--uri_style", choices=sorted(gerbil_server.URI_STYLES), default="wikipedia")
    rest, overrides = cli.split_gin_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    if args.serve == bool(args.documents):
        parser.error("give either --documents (with --out, --scored and/or --nif) or --serve")
    if args.documents and not (args.out or args.scored or args.nif):
        parser.error("nothing to write: give --out, --scored and/or --nif")
    for path in [*args.retriever_gin, *args.gin_file]:
        if not os.path.exists(path):
            raise SystemExit(f"error: gin file {path!r} does not exist")
    try:
        records = read_documents(args.documents) if args.documents else []
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    cli.initialize_distributed()
    retriever, retriever_params = load_method(args.retriever_gin, args.retriever_gin_bindings,
                                              args.retriever_checkpoint, EntqaRetriever)
    reader, reader_params = load_method(args.gin_file, [*args.gin_bindings, *overrides], args.checkpoint,
                                        EntqaReader)
    linker = EntqaLinker(retriever, retriever_params, reader, reader_params, args.candidates)
    if args.serve:
        gerbil_server.serve(lambda text: linker.annotate(text, args.threshold), args.host, args.port,
                            args.uri_style)
        return None
    threshold = linker.resolve_threshold(args.threshold)
    scored = linker.scored_links(records)
    final = {doc: linking.final_links(links, threshold, reader.overlaps) for doc, links in scored.items()}
    if jax.process_index() == 0:
        write_outputs(args, records, scored, final)
    report: dict[str, Any] = {"documents": len(records), "links": sum(len(v) for v in final.values()),
                              "threshold": threshold}
    if any(r["links"] for r in records):
        report.update(linking.link_metrics(scored, records, threshold, reader.overlaps))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
