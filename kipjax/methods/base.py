"""The contract between a method and the trainer.

The trainer knows only this interface. A method owns its model, its loss and its evaluation; its training data
comes through SeqIO: a Task or Mixture named in gin (`Trainer.mixture_or_task_name`), whose batches
`batch_from_features` turns into the method's loss inputs, or, when none is named, the method's own
`train_examples()` arrays, which the trainer registers as a SeqIO Task. Model-dependent per-epoch work
(mining hard negatives, refreshing an index) happens in `on_epoch_start`.
A method that trains in stages (TACO's warmup, then ANCE episodes) lists them in `stages()`
(`kipjax.stages.Stage`); each stage is a run of its own that starts from the previous stage's final params
with a fresh optimizer and schedule, after `on_stage_start` (e.g. mining the stage's negatives).
Arrays the jitted step must read but that are not per-batch (an entity token table, mined negatives) are
returned by `tables()`; the trainer places them on the mesh and hands them to `loss` as `batch["tables"]`,
so a batch carries only ids and the step gathers on device.
A multi-task method (`num_tasks` > 0) also gives each task's loss on that task's own rows of the batch
(`task_loss`); a trainer with a gradient combiner (`kipjax.optim.task_combiners`) takes one gradient per task
and combines them, and without one it minimises `loss` as usual.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import jax
import numpy as np

if TYPE_CHECKING:  # kipjax.stages imports the trainer, which imports this module
    from kipjax.stages import Stage

Params = Any
Metrics = dict[str, Any]


class Method:
    """Base class with no-op defaults for the optional parts of the contract."""

    num_tasks: int = 0  # > 0: a multi-task method that implements `task_loss`

    def train_examples(self) -> Mapping[str, np.ndarray]:
        """Training examples as arrays with a common leading dimension, for runs that name no SeqIO task; the
        trainer serves them through SeqIO, with an `example_index` feature (the row)."""
        raise NotImplementedError

    def batch_from_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This host's rows of a batch of the SeqIO task's features -> the loss inputs (host-side numpy). The
        default passes them through, which fits the features of `train_examples()`."""
        return dict(features)

    def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
        """Parameters, boxed with logical axis names (`nn.with_logical_partitioning`)."""
        raise NotImplementedError

    def loss(self, params: Params, batch: Mapping[str, Any], rng: jax.Array) -> tuple[jax.Array, Metrics]:
        """Scalar loss and a dict of scalar metrics for one (micro)batch; traced under jit."""
        raise NotImplementedError

    def task_loss(self, params: Params, batch: Mapping[str, Any], task: int, rng: jax.Array
                  ) -> tuple[jax.Array, Metrics]:
        """Task `task`'s (a Python int, < num_tasks) scalar loss on its own rows of `batch`, and its metrics;
        traced under jit, once per task, so each task's forward and backward pass covers only its rows."""
        raise NotImplementedError

    def trainable_mask(self, params: Params) -> Any:
        """A pytree of bools like `params` (True = updated), e.g. only LoRA adapters; None trains everything.
        The trainer gives frozen parameters zero updates and no optimizer state."""
        return None

    def evaluate(self, params: Params) -> Metrics:
        """Evaluation metrics (host-side floats) on the method's evaluation data."""
        return {}

    def tables(self) -> dict[str, jax.Array]:
        """Device-resident arrays the loss reads through `batch['tables']`. The trainer re-reads them only after
        `on_epoch_start` (and at start or resume), so they may change there and in `load_state_dict` only."""
        return {}

    def on_epoch_start(self, params: Params, epoch: int, rng: jax.Array) -> None:
        """Model-dependent work before each epoch, e.g. re-mining hard negatives with `params`."""

    def stages(self) -> list[Stage] | None:
        """The stages of a staged run (`kipjax.stages.run_stages`), in order; None: one classic run."""
        return None

    def on_stage_start(self, params: Params, stage: int, rng: jax.Array) -> None:
        """Model-dependent work before stage `stage` (its index in `stages()`), e.g. mining the hard negatives of
        the whole stage with `params`: the previous stage's final params, and for stage 0 the freshly
        initialised ones (a method may also ignore them, e.g. for BM25 negatives). It runs before the stage's
        Trainer is built (so it may change `train_examples()` and `tables()`), once per stage: a stage that
        already has a checkpoint resumes with the method state (`state_dict`) saved there instead. The epoch
        hook still runs at each of the stage's epochs, epoch 0 included, after this one."""

    def state_dict(self) -> dict[str, Any]:
        """Per-run method state that a checkpoint must carry for an exact resume (e.g. mined negatives)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what `state_dict` returned."""
