"""Train a method configured by gin.

    python -m kipjax.train --gin_file=gin_configs/quickstart.gin [--gin_file=...] [--gin.KEY=VALUE ...]

Every runnable config binds `MODEL_DIR` and `TRAIN_STEPS`; `MODEL_DIR` receives checkpoints, TensorBoard
events, `metrics.jsonl` and the gin config of the run.
"""
from __future__ import annotations

from typing import Sequence

from kipjax import cli, runner
from kipjax.methods.base import Metrics


def main(argv: Sequence[str] | None = None) -> Metrics:
    cli.parse_command_line(__doc__, argv)
    cli.initialize_distributed()
    return runner.train()


if __name__ == "__main__":
    main()
