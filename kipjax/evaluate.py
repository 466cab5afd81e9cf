"""Evaluate a trained checkpoint with the method of a gin config.

    python -m kipjax.evaluate --gin_file=gin_configs/quickstart.gin --checkpoint=/tmp/kipjax_quickstart

`--checkpoint` is a MODEL_DIR (its newest checkpoint is used) or a checkpoints directory. The metrics are
printed as JSON and written to `eval_metrics.json` next to the checkpoints.
"""
from __future__ import annotations

import json
from typing import Sequence

from kipjax import cli, runner
from kipjax.methods.base import Metrics


def main(argv: Sequence[str] | None = None) -> Metrics:
    parser = cli.gin_argument_parser(__doc__)
    cli.add_checkpoint_argument(parser)
    args = cli.parse_command_line(__doc__, argv, parser)
    cli.require_checkpoint(args.checkpoint)
    cli.initialize_distributed()
    metrics = runner.evaluate(args.checkpoint)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
