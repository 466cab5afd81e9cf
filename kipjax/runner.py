"""The gin-configurable entry points behind the `train`, `evaluate` and `index` CLIs.

They live apart from the CLI modules so that `python -m kipjax.train` (module `__main__`) does not register
a second `train` configurable when a gin file imports kipjax modules.
"""
from __future__ import annotations

import json
import os
from typing import Any

import gin
import jax

from kipjax import checkpoints
from kipjax.data.candidates import candidates_path
from kipjax.methods.base import Method, Metrics
from kipjax.run_log import atomic_write_text
from kipjax.stages import run_stages, staged_checkpoint
from kipjax.trainer import Trainer


@gin.configurable
def train(method: Method = gin.REQUIRED, model_dir: str = gin.REQUIRED) -> Metrics:
    """Builds the trainer for `method`, records the config next to the checkpoints, trains, returns metrics.
    A method with `stages()` trains them one after the other (`kipjax.stages.run_stages`), each stage in its
    own subdirectory of `model_dir`."""
    primary = jax.process_index() == 0  # one writer per shared MODEL_DIR on multi-host runs
    checkpoints.check_model_dir(model_dir)  # before config.gin is written; the trainer checks the space too
    if primary:
        atomic_write_text(os.path.join(model_dir, "config.gin"), gin.config_str())
    stages = method.stages()
    if stages is None:
        trainer = Trainer(method, model_dir=model_dir)
        _, metrics = trainer.fit()
        initial_eval = trainer.initial_eval
    else:
        _, metrics, initial_eval = run_stages(method, model_dir, stages)
    if primary:
        atomic_write_text(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())
    if initial_eval:
        print("eval before -> after training: " + ", ".join(
            f"{k[len('eval/'):]} {v:.4f} -> {metrics[k]:.4f}" for k, v in sorted(initial_eval.items())
            if k in metrics), flush=True)
    return metrics


def restore_params(checkpoint: str, method: Method, load_method_state: bool = False) -> tuple[Any, int, str]:
    """(params, step, model_dir) of the newest checkpoint under `checkpoint`, placed on the configured mesh. For
    a staged method, a staged MODEL_DIR means its newest stage with a checkpoint (model_dir: that stage's). With
    `load_method_state`, the method also gets the checkpoint's method state (e.g. TACO's mined negatives)."""
    stage = None
    stages = method.stages()
    if stages:
        checkpoint, stage = staged_checkpoint(checkpoint, stages)
    directory, step = checkpoints.find_checkpoint_dir(checkpoint)
    # The stage's combiner, if any, is part of its checkpoints' train state.
    combiner = {} if stage is None else {"gradient_combiner": stage.gradient_combiner}
    trainer = Trainer(method, model_dir=os.path.dirname(directory), train_steps=max(step, 1), train_epochs=None,
                      **combiner)
    return (trainer.restore_state(directory, step, load_method_state=load_method_state).params, step,
            os.path.dirname(directory))


@gin.configurable
def evaluate(checkpoint: str, method: Method = gin.REQUIRED) -> Metrics:
    """Restores the newest checkpoint under `checkpoint` and evaluates it; also writes eval_metrics.json."""
    params, step, model_dir = restore_params(checkpoint, method)
    metrics = {"step": step, **method.evaluate(params)}
    atomic_write_text(os.path.join(model_dir, "eval_metrics.json"), json.dumps(metrics, indent=2))
    return metrics


@gin.configurable("index")
def build_index(checkpoint: str, split: str, out_dir: str | None = None, candidates_dir: str | None = None,
                method: Method = gin.REQUIRED) -> dict:
    """With the checkpoint's encoder: builds the ANN index of `split`'s entities into `out_dir` and/or writes
    `candidates_dir/candidates_{split}.json` (the retriever's top-64 per mention, for the JOINT reranker)."""
    params, _, _ = restore_params(checkpoint, method)
    report = method.export_index(params, split, out_dir) if out_dir else {"split": split}
    if candidates_dir:
        os.makedirs(candidates_dir, exist_ok=True)
        path = candidates_path(candidates_dir, split)
        method.write_candidates(params, split, str(path))
        report["candidates_file"] = str(path)
    return report
