"""Export a trained TACO encoder as Hugging Face T5 directories.

    python -m kipjax.methods.taco.export --gin_file=gin_configs/taco/demo.gin --checkpoint=/tmp/kipjax_taco_demo \\
        --out=/tmp/taco_hf

`--checkpoint` is a MODEL_DIR (a staged one means its newest stage) or a checkpoints directory. OUT holds the
shared encoder, or with `TacoRetrieval.query_encoder = 'per_task'` OUT/passages and OUT/queries_<task>: each a
T5 directory (`encoder.save_st5_encdec`: `transformers.T5Model` run one decoder step from token 0 gives the
embedding) with the tokenizer, plus OUT/taco_export.json naming the checkpoint, its step, the prefix mode and
each task's query marker: a query must be written as training wrote it (`inputs.query_text`).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

from kipjax import cli, runner
from kipjax.methods.taco import inputs
from kipjax.methods.taco.encoder import save_st5_encdec
from kipjax.methods.taco.retrieval import METHOD_BINDING, PASSAGE_ENCODER, TacoRetrieval, configured_taco
from kipjax.run_log import atomic_write_text

EXPORT_FILE = "taco_export.json"


def export(method: TacoRetrieval, checkpoint: str, out_dir: str) -> dict:
    """Writes OUT (module docstring) from the newest checkpoint under `checkpoint`; returns the export record."""
    params, step, model_dir = runner.restore_params(checkpoint, method)
    encoders = {"": params} if method.query_encoder == "shared" else dict(params)
    out = Path(out_dir)
    for name, encoder_params in encoders.items():
        target = out / name if name else out
        save_st5_encdec(method.model, encoder_params, target)
        method.data.tokenizer.save_pretrained(str(target))
    mode = method.data.settings.prefix_mode
    record = {"checkpoint": model_dir, "step": step, "query_encoder": method.query_encoder, "prefix_mode": mode,
              "encoders": sorted(name or "." for name in encoders),
              "passage_encoder": "." if method.query_encoder == "shared" else PASSAGE_ENCODER,
              "query_markers": {t.task.name: inputs.marker(t.task, mode) for t in method.data.tasks}}
    atomic_write_text(os.path.join(out_dir, EXPORT_FILE), json.dumps(record, indent=2) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> dict:
    parser = cli.gin_argument_parser(__doc__)
    cli.add_checkpoint_argument(parser)
    parser.add_argument("--out", required=True, help="directory to write")
    args = cli.parse_command_line(__doc__, [METHOD_BINDING, *(sys.argv[1:] if argv is None else argv)], parser)
    cli.require_checkpoint(args.checkpoint)
    record = export(configured_taco("the export"), args.checkpoint, args.out)
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
