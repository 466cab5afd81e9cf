"""Training runs made of stages: TACO's warmup stage, then its ANCE episodes.

A method whose `stages()` is not None trains as a chain of ordinary `Trainer` runs, stage i in
`MODEL_DIR/<stage.name>/` with its own checkpoints, `metrics.jsonl` and TensorBoard events. Stage i

- starts from stage i-1's final params (stage 0 from `method.init`'s), with a fresh optimizer, a fresh
  learning-rate schedule over the stage's own steps (its shape, e.g. warmup, from gin's
  `learning_rate_schedule`), the stage's gradient combiner (None: the plain loss) and a fresh feed (the data
  from its beginning, epoch 0, so the epoch hook runs at each of the stage's epochs);
- lasts `steps` steps, or `epochs` epochs of its feed (`Trainer.train_epochs`);
- is preceded by `method.on_stage_start(params, i, rng)` with those starting params (stage 0: the freshly
  initialised ones, which a throwaway Trainer of stage 0 computes with `Trainer.init_params`, reading one
  batch; stage 0 then starts from exactly those params) and `rng = fold_in(PRNGKey(Trainer.seed + 2), i)`,
  before the stage's Trainer is built, so the hook may change the training examples or tables (e.g. mine the
  stage's hard negatives).

Each stage's Trainer takes `train_steps`, `train_epochs`, `gradient_combiner` and `initial_params` from the
stage (explicit arguments override gin's `Trainer` bindings, so configs that bind `Trainer.train_steps` still
work) and everything else from gin; a stage without a combiner trains without one even where gin binds
`Trainer.gradient_combiner`. Every stage has the same `Trainer.seed` (so the same data order and dropout
stream, as separate runs with one seed would). Only stage 0 evaluates before training (the later stages pass
`eval_at_start=False`), and each stage prints one line with its last eval metrics when it is done.

Resume: stages before the last one with a checkpoint are finished (a stage starts only when the previous one
is) and are skipped without being loaded. The last stage with a checkpoint resumes through its Trainer (which
restores the method state saved with it, so `on_stage_start` is not run again), or, if that checkpoint is at
its final step, its params and method state are restored and handed on. A stage without a checkpoint (also
one killed before its first save) runs its `on_stage_start` afresh; as every piece is deterministic, a killed run ends bit for bit where an
uninterrupted one does (provided the method's `state_dict` holds what its hooks computed).

`MODEL_DIR/stages.json` (rewritten atomically at each stage's start and end) lists the stages, their lengths
(`train_steps` once known), status (`pending`, `running`, `done`) and newest checkpoint step as of that
moment, and names the current stage; the stage's own `metrics.jsonl` has its live progress. Training never
reads it back (the checkpoints are the truth); `kipjax.sweep --reuse_stages` reads the stage order and status.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax

from kipjax import checkpoints, partitioning
from kipjax.run_log import atomic_write_text
from kipjax.trainer import Trainer, _format_metrics

if TYPE_CHECKING:
    from kipjax.methods.base import Method

STAGES_FILE = "stages.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a staged run: `name` (its subdirectory of MODEL_DIR), its length as exactly one of `epochs`
    and `steps`, and an optional `gradient_combiner` factory (as `Trainer.gradient_combiner` takes, e.g.
    `task_sensitivity_combiner` for TACO's adaptive multi-task learning in the last episode)."""

    name: str
    epochs: int | None = None
    steps: int | None = None
    gradient_combiner: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or "/" in self.name or (os.sep in self.name):
            raise ValueError(f"Stage name {self.name!r} must be a plain directory name")
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"Stage {self.name!r} needs exactly one of epochs and steps, got epochs={self.epochs} "
                             f"and steps={self.steps}")
        length = self.steps if self.epochs is None else self.epochs
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"Stage {self.name!r}: {'steps' if self.epochs is None else 'epochs'} must be a "
                             f"positive int, got {length!r}")


def run_stages(method: Method, model_dir: str, stages: Sequence[Stage]) -> tuple[Any, dict, dict]:
    """Runs (or resumes) `stages` of `method` in `model_dir` (see the module docstring); returns the last
    stage's final params, its last logged metrics, and stage 0's eval metrics before training ({} when not
    evaluated)."""
    stages = list(stages)
    if not stages:
        raise ValueError(f"{type(method).__name__}.stages() lists no stages")
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{type(method).__name__}.stages() repeats a stage name: {names}")
    os.makedirs(model_dir, exist_ok=True)
    dirs = [os.path.join(model_dir, stage.name) for stage in stages]
    saved = [_latest_step(d) for d in dirs]
    # The last stage with a checkpoint is where the run is; the ones before it are done.
    current = max((i for i, step in enumerate(saved) if step is not None), default=0)
    status = _StagesFile(os.path.join(model_dir, STAGES_FILE), stages, primary=jax.process_index() == 0)
    for i in range(current):
        status.records[i].update(status="done", train_steps=saved[i], checkpoint_step=saved[i])
    status.update(current, status="pending" if saved[current] is None else "running",
                  checkpoint_step=saved[current])
    for i in range(current):
        _report(i, stages, _last_eval(_logged(dirs[i])), "already done")
    params: Any = None
    metrics: dict = {}
    initial_eval: dict = {}
    context: Trainer | None = None  # the last Trainer built: its mesh, rules and seed serve the stage hooks
    for i in range(current, len(stages)):
        stage, stage_dir = stages[i], dirs[i]
        if saved[i] is None:  # a fresh stage: its hook, then its Trainer from the params so far
            if params is None:  # stage 0 (nothing saved yet): the freshly initialised params
                context = _stage_trainer(method, stage, i, stage_dir, None)
                params = context.init_params()
            status.update(i, status="running")
            hook_rng = jax.random.fold_in(jax.random.PRNGKey(context.seed + 2), i)
            with partitioning.activate(context.mesh, context.rules):
                method.on_stage_start(params, i, hook_rng)
            trainer = _stage_trainer(method, stage, i, stage_dir, params)
        else:  # resumes from its own checkpoint (which holds the method state): no initial params, no hook
            trainer = _stage_trainer(method, stage, i, stage_dir, None)
        params, context = None, trainer  # (the Trainer keeps its initial params, copied onto the mesh in fit)
        status.update(i, status="running", train_steps=trainer.train_steps)
        if saved[i] is not None and saved[i] >= trainer.train_steps:  # finished: hand its params on
            params = trainer.restore_state(os.path.join(stage_dir, "checkpoints"), saved[i],
                                           load_method_state=True).params
            records = _logged(stage_dir)
            metrics = {k: v for k, v in (records[-1] if records else {}).items() if k != "step"}
            how, final_step = "already done", saved[i]
        else:
            state, metrics = trainer.fit()
            params = state.params
            how, final_step = "done", trainer.train_steps
        if i == 0:
            initial_eval = trainer.initial_eval
        status.update(i, status="done", checkpoint_step=final_step)
        _report(i, stages, _last_eval(_logged(stage_dir)) or _evals(metrics), how)
    return params, metrics, initial_eval or _initial_eval(_logged(dirs[0]))


def staged_checkpoint(path: str, stages: Sequence[Stage]) -> tuple[str, Stage | None]:
    """Where the checkpoints of a staged run are: a stage's directory (or its `checkpoints`) -> itself; a
    staged MODEL_DIR -> its newest stage with a checkpoint; with that Stage (None for any other path)."""
    by_name = {stage.name: stage for stage in stages}
    here = os.path.normpath(path)
    if os.path.basename(here) == "checkpoints" and os.path.basename(os.path.dirname(here)) in by_name:
        return path, by_name[os.path.basename(os.path.dirname(here))]
    if os.path.basename(here) in by_name and os.path.isdir(os.path.join(here, "checkpoints")):
        return path, by_name[os.path.basename(here)]
    for stage in reversed(list(stages)):
        if os.path.isdir(os.path.join(path, stage.name)) and _latest_step(os.path.join(path, stage.name)) is not None:
            return os.path.join(path, stage.name), stage
    return path, None


def _stage_trainer(method: Method, stage: Stage, index: int, stage_dir: str,
                   initial_params: Any) -> Trainer:
    kwargs = dict(model_dir=stage_dir, train_steps=stage.steps, train_epochs=stage.epochs,
                  gradient_combiner=stage.gradient_combiner, initial_params=initial_params)
    if index > 0:  # only the first stage evaluates before training (as gin says: by default it does)
        kwargs["eval_at_start"] = False
    return Trainer(method, **kwargs)


def _latest_step(stage_dir: str) -> int | None:
    directory = os.path.join(stage_dir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    ckpt = checkpoints.Checkpointer(directory)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _logged(stage_dir: str) -> list[dict]:
    """The stage's metrics.jsonl records ([] where this host wrote none)."""
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _evals(record: dict) -> dict:
    return {k: v for k, v in record.items() if k.startswith("eval/")}


def _last_eval(records: list[dict]) -> dict:
    return next((_evals(r) for r in reversed(records) if _evals(r)), {})


def _initial_eval(records: list[dict]) -> dict:
    return next((_evals(r) for r in records if r["step"] == 0), {})


def _report(index: int, stages: list[Stage], evals: dict, how: str) -> None:
    if jax.process_index() == 0:
        stage = stages[index]
        print(f"stage {index + 1}/{len(stages)} {stage.name} {how}: "
              + (_format_metrics(evals) if evals else "no eval metrics logged"), flush=True)


def _combiner_name(factory: Callable[..., Any] | None) -> str | None:
    if factory is None:
        return None
    return getattr(factory, "__name__", None) or repr(factory)


class _StagesFile:
    """MODEL_DIR/stages.json: where a staged run is (written by the primary host only)."""

    def __init__(self, path: str, stages: list[Stage], primary: bool):
        self.path, self.primary = path, primary
        self.records = [{"name": s.name, "epochs": s.epochs, "steps": s.steps,
                         "gradient_combiner": _combiner_name(s.gradient_combiner), "train_steps": s.steps,
                         "status": "pending", "checkpoint_step": None} for s in stages]

    def update(self, index: int, **fields: Any) -> None:
        self.records[index].update(fields)
        if self.primary:
            current = next((r["name"] for r in self.records if r["status"] != "done"), None)
            atomic_write_text(self.path, json.dumps({"current": current, "stages": self.records}, indent=2) + "\n")
