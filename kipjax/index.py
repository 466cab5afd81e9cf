"""Encode an entity corpus with a trained retriever and build a ScaNN index over it.

    python -m kipjax.index --gin_file=gin_configs/quickstart.gin --checkpoint=/tmp/kipjax_quickstart \\
        --split=val [--out=/tmp/kipjax_index] [--candidates=DIR]

Writes `OUT/embeddings.npy` (one vector per entity), `OUT/entities.json` (document id and world per row),
`OUT/scann/` (the index) and `OUT/index_report.json`, which compares ScaNN's top-10 with exact search for
the split's mentions (recall@10 of ScaNN against exact, and queries/s of both). `--candidates=DIR`
writes `DIR/candidates_{split}.json` (top-64 per mention, restricted to the mention's world) for the JOINT
reranker.
"""
from __future__ import annotations

import json
from typing import Sequence

from kipjax import cli, runner


def main(argv: Sequence[str] | None = None) -> dict:
    parser = cli.gin_argument_parser(__doc__)
    cli.add_checkpoint_argument(parser)
    parser.add_argument("--split", default="val", help="Zeshel split whose worlds' entities are indexed")
    parser.add_argument("--out", default=None, help="output directory for embeddings and the index")
    parser.add_argument("--candidates", default=None, help="directory for candidates_{split}.json")
    args = cli.parse_command_line(__doc__, argv, parser)
    if not (args.out or args.candidates):
        parser.error("nothing to do: give --out (an index) and/or --candidates (a candidates file)")
    cli.require_checkpoint(args.checkpoint)
    cli.initialize_distributed()
    report = runner.build_index(args.checkpoint, args.split, args.out, args.candidates)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
