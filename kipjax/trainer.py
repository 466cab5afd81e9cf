"""The one generic training loop.

A jit-compiled step with explicit in/out shardings over the device mesh, gradient accumulation, evaluation
every N steps, per-epoch method hooks, progress on stdout, `metrics.jsonl` + TensorBoard, and orbax
checkpoints from which a killed run resumes bit for bit (params, optimizer state, step, rng, data position
and method state are all restored). Training data comes only through SeqIO (`kipjax.data.feed`): each host
reads its own shards and feeds its rows of every global batch.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from kipjax import checkpoints, optim, partitioning
from kipjax.data.feed import FeedState, SeqioFeed, register_arrays_task
from kipjax.methods.base import Method
from kipjax.optim.task_combiners import TaskGradientCombiner
from kipjax.run_log import MetricsLog, Progress


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped_steps: jax.Array  # updates skipped because the loss or a gradient was not finite, in all
    skip_streak: jax.Array  # ... and in a row, up to this step
    combiner_state: Any = ()  # the gradient combiner's state (multi-task methods only)


class NonFiniteTraining(RuntimeError):
    """The loss or gradients stayed non-finite for `Trainer.max_consecutive_skips` steps in a row."""


def split_microbatches(batch: Mapping[str, jax.Array], num: int) -> dict[str, jax.Array]:
    """[B, ...] -> [num, B/num, ...], each microbatch strided over the whole batch.

    Striding (row r goes to microbatch r % num) keeps every microbatch spread over all data-parallel
    devices, instead of living on the few devices that hold a contiguous block of rows.
    """
    def split(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, dict(batch))


@gin.configurable
class Trainer:
    """Trains `method` for `train_steps` steps of `batch_size` examples (global, across all devices).

    `mixture_or_task_name` names the SeqIO Task or Mixture to train on (gin `MIXTURE_OR_TASK_NAME` in the
    method configs); None serves the method's `train_examples()` through SeqIO instead. A step whose loss or
    gradient is not finite updates nothing (`skipped_steps` counts them); `max_consecutive_skips` of them in a
    row (checked at log and checkpoint steps; 0: never) stop the run before it saves another checkpoint.
    `gradient_combiner` (a factory from `kipjax.optim.task_combiners`, e.g. `@task_sensitivity_combiner`) makes
    a multi-task method's step take one gradient per task (`Method.task_loss`) and combine them.

    The run's length is `train_steps`, or `train_epochs` whole epochs of the feed (`train_epochs *
    feed.steps_per_epoch`; a sampled Mixture has no epochs); give exactly one. `initial_params` (a params pytree
    like `method.init`'s, unboxed, host or device arrays; the caller's arrays are copied, never donated) is
    where a run from scratch starts instead of `method.init`'s values; the optimizer and combiner states are
    still initialised fresh (from those params), and the rng is a scratch run's. A `model_dir` holding a
    checkpoint resumes from it and ignores `initial_params`. (`kipjax.stages` chains runs this way.)
    """

    def __init__(
        self,
        method: Method,
        model_dir: str = gin.REQUIRED,
        train_steps: int | None = None,
        batch_size: int = 8,
        grad_accum_steps: int = 1,
        eval_every: int = 0,
        eval_at_start: bool = True,
        log_every: int = 10,
        max_consecutive_skips: int = 10,
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
        mixture_or_task_name: str | None = None,
        gradient_combiner: Callable[..., TaskGradientCombiner] | None = None,
        train_epochs: int | None = None,
        initial_params: Any = None,
    ):
        if batch_size % grad_accum_steps:
            raise ValueError(f"Trainer.batch_size {batch_size} is not divisible by grad_accum_steps "
                             f"{grad_accum_steps}")
        self.method = method
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.grad_accum_steps = grad_accum_steps
        self.eval_every = eval_every
        self.eval_at_start = eval_at_start
        self.log_every = log_every
        self.max_consecutive_skips = max_consecutive_skips
        self.seed = seed
        self.mesh = mesh if mesh is not None else partitioning.make_mesh()
        self.rules = partitioning.logical_axis_rules()
        dp = partitioning.data_parallel_size(self.mesh)
        if (batch_size // grad_accum_steps) % dp:
            raise ValueError(f"Trainer.batch_size / grad_accum_steps = {batch_size // grad_accum_steps} must be "
                             f"divisible by the {dp} data-parallel devices of mesh {dict(self.mesh.shape)}")
        if mixture_or_task_name is None:
            mixture_or_task_name = register_arrays_task(method.train_examples(), prefix=type(method).__name__)
        self.feed = SeqioFeed(mixture_or_task_name, batch_size, seed=seed)
        self.train_epochs = train_epochs
        self.train_steps = self._run_length(train_steps, train_epochs)
        self.initial_params = initial_params
        self.combiner = None
        if gradient_combiner is not None:
            if method.num_tasks < 1:
                raise ValueError(f"Trainer.gradient_combiner needs a multi-task method; {type(method).__name__} "
                                 "has no tasks (num_tasks = 0)")
            if grad_accum_steps != 1:
                raise ValueError("Trainer.gradient_combiner combines whole-batch task gradients; "
                                 f"grad_accum_steps must be 1, got {grad_accum_steps}")
            self.combiner = gradient_combiner(num_tasks=method.num_tasks, total_steps=self.train_steps)
        self.schedule = optim.learning_rate_schedule(total_steps=self.train_steps)
        self.optimizer = optim.make_optimizer(self.schedule)
        if type(method).trainable_mask is not Method.trainable_mask:  # the method freezes some parameters
            self.optimizer = optim.freeze_untrainable(self.optimizer, method.trainable_mask)
        self.batch_sharding = partitioning.batch_sharding(self.mesh)
        self.replicated = partitioning.replicated(self.mesh)
        self.hooked_epoch = -1  # the last epoch whose on_epoch_start has run
        self.initial_eval: dict = {}  # eval metrics before the first step (when this run started at step 0)

    def _run_length(self, train_steps: int | None, train_epochs: int | None) -> int:
        if (train_steps is None) == (train_epochs is None):
            raise ValueError(
                "Trainer needs exactly one of train_steps and train_epochs, got "
                f"train_steps={train_steps} and train_epochs={train_epochs}" +
                ("" if train_steps is None else " (to count epochs when a config binds Trainer.train_steps, also "
                 "bind Trainer.train_steps = None)"))
        if train_steps is not None:
            return train_steps
        if self.feed.steps_per_epoch is None:
            raise ValueError(f"Trainer.train_epochs={train_epochs}: {self.feed.name!r} is fed as a sampled Mixture, "
                             "an endless stream without epochs; give Trainer.train_steps instead (or a "
                             "SeqioFeed.batch_composition, whose epochs are defined)")
        if train_epochs < 1:
            raise ValueError(f"Trainer.train_epochs must be at least 1, got {train_epochs}")
        return train_epochs * self.feed.steps_per_epoch

    # ----------------------------------------------------------------------------------------------- setup

    def _init_fn(self, rng: jax.Array, batch: Mapping[str, Any], initial_params: Any = None) -> TrainState:
        """Boxed (logically annotated) initial state; the optimizer state inherits the params' annotations.
        With `initial_params` (unboxed) the params take those values inside `method.init`'s boxes (XLA drops the
        unused random init) and the optimizer and combiner states are initialised from them."""
        init_rng, state_rng = jax.random.split(rng)
        params = self.method.init(init_rng, {**batch, "tables": self.method.tables()})
        if initial_params is not None:
            params = jax.tree.map(lambda box, value: box.replace_boxed(value) if _is_box(box) else value,
                                  params, initial_params, is_leaf=_is_box)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=params, opt_state=self.optimizer.init(params), rng=state_rng,
                          skipped_steps=zero, skip_streak=zero,
                          combiner_state=() if self.combiner is None else self.combiner.init(params))

    def _state_shardings(self, batch: Mapping[str, Any]) -> Any:
        abstract = jax.eval_shape(self._init_fn, jax.random.PRNGKey(self.seed), batch)
        specs = nn.get_partition_spec(abstract)
        return partitioning.logical_to_sharding(specs, self.mesh, self.rules, shapes=nn.unbox(abstract))

    def _abstract_state(self, batch: Mapping[str, Any]) -> TrainState:
        return jax.eval_shape(lambda r, b: nn.unbox(self._init_fn(r, b)), jax.random.PRNGKey(self.seed), batch)

    def initial_state(self, batch: Mapping[str, Any], params: Any = None) -> TrainState:
        """The state of a run from scratch, placed on the mesh: `method.init`'s params, or `params` (unboxed, host
        or device arrays, copied; see `initial_params`) with fresh optimizer and combiner states."""
        shardings = self._state_shardings(batch)
        if params is None:
            init = jax.jit(lambda r, b: nn.unbox(self._init_fn(r, b)), out_shardings=shardings)
            with partitioning.activate(self.mesh, self.rules):
                return init(jax.random.PRNGKey(self.seed), batch)
        placed = self._place_params(params, self._abstract_state(batch).params, shardings.params)
        # `placed` is this trainer's own copy: donating it lets the state's params alias it instead of copying.
        init = jax.jit(lambda r, b, p: nn.unbox(self._init_fn(r, b, p)), out_shardings=shardings,
                       donate_argnums=(2,))
        with partitioning.activate(self.mesh, self.rules):
            return init(jax.random.PRNGKey(self.seed), batch, placed)

    def init_params(self) -> Any:
        """The params a run from scratch (without `initial_params`) starts from, placed on the mesh, without the
        optimizer state; reads (peeks) the first batch for the shapes."""
        batch = self.device_batch(self.peek_batch())
        init = jax.jit(lambda r, b: nn.unbox(self._init_fn(r, b)).params,
                       out_shardings=self._state_shardings(batch).params)
        with partitioning.activate(self.mesh, self.rules):
            return init(jax.random.PRNGKey(self.seed), batch)

    @staticmethod
    def _place_params(params: Any, abstract: Any, shardings: Any) -> Any:
        """A copy of `params` on `shardings`, after checking it matches the model's params (`abstract`)."""
        params = nn.unbox(params)
        if jax.tree.structure(params) != jax.tree.structure(abstract):
            raise ValueError("Trainer.initial_params do not have the structure of the method's params: got "
                             f"{jax.tree.structure(params)}, expected {jax.tree.structure(abstract)}")
        for (path, want), value in zip(jax.tree_util.tree_flatten_with_path(abstract)[0], jax.tree.leaves(params)):
            if tuple(np.shape(value)) != tuple(want.shape) or np.dtype(value.dtype) != np.dtype(want.dtype):
                raise ValueError(f"Trainer.initial_params{jax.tree_util.keystr(path)} is "
                                 f"{np.dtype(value.dtype).name}{list(np.shape(value))}, but the method's parameter "
                                 f"is {np.dtype(want.dtype).name}{list(want.shape)}")
        return jax.tree.map(lambda x, s: jax.device_put(x, s, may_alias=False), params, shardings)

    def restore_state(self, directory: str, step: int, load_method_state: bool = False) -> TrainState:
        """Loads the train state of checkpoint `step` from `directory` onto this trainer's mesh; with
        `load_method_state`, also hands the checkpoint's method state to `method.load_state_dict`."""
        batch0 = self.device_batch(self.peek_batch())
        target = checkpoints.abstract_with_shardings(self._abstract_state(batch0), self._state_shardings(batch0))
        ckpt = checkpoints.Checkpointer(directory)
        state, _, method_state = ckpt.restore(step, target, self._abstract_method_state())
        ckpt.close()
        if load_method_state:
            self.method.load_state_dict(method_state)
        return state

    def peek_batch(self) -> dict[str, np.ndarray]:
        """This host's rows of the next batch as loss inputs, without advancing the feed."""
        return self.method.batch_from_features(self.feed.peek())

    def next_batch(self) -> dict[str, np.ndarray]:
        return self.method.batch_from_features(next(self.feed))

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's rows -> global arrays split over the data-parallel axes (hosts hold equal row counts)."""
        n = jax.process_count()
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v, (v.shape[0] * n, *v.shape[1:]))
                for k, v in batch.items()}

    def _abstract_method_state(self) -> Any:
        """Restore target of the method state: replicated over the mesh, as it is saved (so that every host
        of a multi-host run holds it whole)."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=self.replicated),
                            self.method.state_dict())

    def device_tables(self) -> dict[str, jax.Array]:
        return partitioning.put_replicated(self.method.tables(), self.mesh)

    # ------------------------------------------------------------------------------------------------ step

    def _train_step(self, state: TrainState, batch: dict, tables: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params: Any, microbatch: dict, r: jax.Array) -> tuple[jax.Array, dict]:
            return self.method.loss(params, {**microbatch, "tables": tables}, r)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        combiner_state = state.combiner_state
        if self.combiner is not None:
            loss, metrics, grads, combiner_state = self._combined_gradient(state, batch, tables, rng)
        elif self.grad_accum_steps == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, rng)
        else:
            micro = split_microbatches(batch, self.grad_accum_steps)
            first = jax.tree.map(lambda x: x[0], micro)
            (_, metric_shapes), _ = jax.eval_shape(grad_fn, state.params, first, rng)
            zeros = (jnp.zeros(()), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
                     jax.tree.map(jnp.zeros_like, state.params))

            def accumulate(carry: tuple, xs: tuple) -> tuple[tuple, None]:
                index, microbatch = xs
                (l, m), g = grad_fn(state.params, microbatch, jax.random.fold_in(rng, index))
                return jax.tree.map(jnp.add, carry, (l, m, g)), None

            total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(self.grad_accum_steps), micro))
            loss, metrics, grads = jax.tree.map(lambda x: x / self.grad_accum_steps, total)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient skips the update: params and optimizer state stay as they were.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state),
                                         (state.params, state.opt_state))
        skipped = state.skipped_steps + (~finite).astype(jnp.int32)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "learning_rate": self.schedule(state.step),
                   "skipped_steps": skipped}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, skipped_steps=skipped,
                             skip_streak=jnp.where(finite, 0, state.skip_streak + 1),
                             combiner_state=combiner_state), metrics

    def _combined_gradient(self, state: TrainState, batch: dict, tables: dict, rng: jax.Array
                           ) -> tuple[jax.Array, dict, Any, Any]:
        """Each task's loss and gradient on its own rows, combined by the gradient combiner. The reported loss is
        the mean of the task losses; metrics are per task (`task_{k}/...`)."""
        losses, metrics, task_grads = [], {}, []
        for task in range(self.method.num_tasks):
            def loss_fn(params: Any) -> tuple[jax.Array, dict]:
                return self.method.task_loss(params, {**batch, "tables": tables}, task, jax.random.fold_in(rng, task))
            (loss, task_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            losses.append(loss)
            task_grads.append(grads)
            metrics.update({f"task_{task}/{k}": v for k, v in {**task_metrics, "loss": loss}.items()})
        losses = jnp.stack(losses)
        stacked = jax.tree.map(lambda *g: jnp.stack(g), *task_grads)
        grads, combiner_state = self.combiner.update(stacked, state.combiner_state, state.params, losses)
        return jnp.mean(losses), metrics, grads, combiner_state

    def compile_step(self, state_shardings: Any, batch: dict, tables: dict) -> Any:
        batch_shardings = jax.tree.map(lambda _: self.batch_sharding, batch)
        table_shardings = jax.tree.map(lambda _: self.replicated, tables)
        return jax.jit(self._train_step,
                       in_shardings=(state_shardings, batch_shardings, table_shardings),
                       out_shardings=(state_shardings, self.replicated),
                       donate_argnums=(0,))

    # ----------------------------------------------------------------------------------------------- loop

    def _maybe_start_epoch(self, state: TrainState) -> bool:
        """Runs the method's epoch hook at an epoch boundary not yet hooked; returns whether it ran."""
        epoch = self.feed.state.epoch
        if self.feed.state.position == 0 and self.hooked_epoch != epoch:
            hook_rng = jax.random.fold_in(jax.random.PRNGKey(self.seed + 1), epoch)
            with partitioning.activate(self.mesh, self.rules):
                self.method.on_epoch_start(state.params, epoch, hook_rng)
            self.hooked_epoch = epoch
            return True
        return False

    def _data_state(self) -> dict:
        return {**self.feed.state.to_json(), "hooked_epoch": self.hooked_epoch}

    def _evaluate(self, state: TrainState) -> dict:
        with partitioning.activate(self.mesh, self.rules):
            return {f"eval/{k}": v for k, v in self.method.evaluate(state.params).items()}

    def fit(self) -> tuple[TrainState, dict]:
        """Runs (or resumes) training to `train_steps`; returns the final state and last logged metrics."""
        batch0 = self.device_batch(self.peek_batch())
        abstract = self._abstract_state(batch0)
        checkpoints.check_model_dir(self.model_dir, checkpoints.tree_bytes(abstract))
        shardings = self._state_shardings(batch0)
        ckpt = checkpoints.Checkpointer(os.path.join(self.model_dir, "checkpoints"))
        resume_step = ckpt.latest_step()
        if resume_step is None:  # from scratch: method.init's params, or initial_params
            state = self.initial_state(batch0, self.initial_params)
        else:  # the checkpoint wins over initial_params
            state, data_state, method_state = ckpt.restore(
                resume_step, checkpoints.abstract_with_shardings(abstract, shardings),
                self._abstract_method_state())
            self.feed.restore(FeedState.from_json(data_state))
            self.hooked_epoch = int(data_state["hooked_epoch"])
            self.method.load_state_dict(method_state)
            print(f"resumed from {ckpt.directory} at step {resume_step}", flush=True)
        log = MetricsLog(self.model_dir, resume_step=resume_step, primary=jax.process_index() == 0)
        step = int(state.step)
        last: dict = {}
        if step == 0 and self.eval_at_start:
            last = self._evaluate(state)
            self.initial_eval = dict(last)
            log.write(0, last)
            print("before training: " + _format_metrics(last), flush=True)
        step_fn = None
        tables = None
        progress = Progress(self.train_steps, step, self.batch_size)
        while step < self.train_steps:
            # Tables change only in the epoch hook (or on restore): place them on the mesh then, not every step.
            if self._maybe_start_epoch(state) or tables is None:
                tables = self.device_tables()
            batch = self.device_batch(self.next_batch())
            if step_fn is None:
                step_fn = self.compile_step(shardings, batch, tables)
            with partitioning.activate(self.mesh, self.rules):
                state, metrics = step_fn(state, batch, tables)
            step += 1
            logged = {}
            if step % self.log_every == 0 or step == self.train_steps:
                logged = {k: float(v) for k, v in jax.device_get(metrics).items()}
                logged["examples_per_second"] = progress.report(
                    step, logged["loss"], {"lr": logged["learning_rate"]})
            if self.eval_every and (step % self.eval_every == 0 or step == self.train_steps):
                evals = self._evaluate(state)
                logged.update(evals)
                print(f"step {step} eval: " + _format_metrics(evals), flush=True)
            if logged:
                log.write(step, logged)
                last = logged
            saving = ckpt.should_save(step) or step == self.train_steps
            if logged or saving:
                self._stop_if_not_finite(state, step, ckpt)
            if saving:
                ckpt.save(step, state, self._data_state(),
                          partitioning.put_replicated(self.method.state_dict(), self.mesh))
        log.close()
        ckpt.close()
        return state, last


    def _stop_if_not_finite(self, state: TrainState, step: int, ckpt: checkpoints.Checkpointer) -> None:
        streak = int(state.skip_streak)
        if self.max_consecutive_skips and streak >= self.max_consecutive_skips:
            latest = ckpt.latest_step()
            ckpt.close()
            raise NonFiniteTraining(
                f"step {step}: the loss or gradient was not finite in each of the last {streak} steps (from step "
                f"{step - streak + 1}; Trainer.max_consecutive_skips={self.max_consecutive_skips}), so training "
                f"stops. Those updates were skipped: the newest checkpoint "
                f"({'none' if latest is None else f'step {latest}'}) holds the last good state.")


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
