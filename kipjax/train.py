"""Train a method configured by gin.

    python -m kipjax.train --gin_file=gin_configs/quickstart.gin [--gin_file=...] [--gin.KEY=VALUE ...]

Every runnable config binds `MODEL_DIR` and `TRAIN_STEPS`; `MODEL_DIR` receives checkpoints, TensorBoard
events, `metrics.jsonl` and the gin config of the run.
"""
from __future__ import annotations

from typing import Sequence

from kipjax import checkpoints, cli, runner
from kipjax.methods.base import Metrics
from kipjax.trainer import NonFiniteTraining


def main(argv: Sequence[str] | None = None) -> Metrics:
    cli.parse_command_line(__doc__, argv)
    cli.initialize_distributed()
    try:
        return runner.train()
    except (checkpoints.ModelDirError, NonFiniteTraining) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
