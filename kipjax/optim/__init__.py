"""Optimizers from gin: an optax chain of clipping, a learning-rate schedule and the update rule; and the
multi-task gradient combiners (task_combiners.py) that turn per-task gradients into the one it updates with."""
from __future__ import annotations

from typing import Any, Callable

import gin
import jax
import optax

from kipjax.optim.task_combiners import (TaskGradientCombiner, cgd_combiner, gradnorm_combiner,  # noqa: F401
                                         naive_combiner, pcgrad_combiner, task_sensitivity_combiner)


@gin.configurable
def learning_rate_schedule(
    peak_value: float = 2e-5,
    warmup_steps: int = 0,
    total_steps: int = gin.REQUIRED,
    decay: str = "linear",
    end_value: float = 0.0,
    warmup_fraction: float | None = None,
) -> optax.Schedule:
    """Linear warmup to `peak_value`, then `decay` ('constant', 'linear' or 'cosine') to `end_value`. The warmup
    is `warmup_steps` long, or `warmup_fraction` of `total_steps` when that is given (a stage of a multi-stage
    run, whose length comes from its epochs, warms up for its own share, as TACO's episodes do)."""
    if warmup_fraction is not None:
        warmup_steps = int(warmup_fraction * int(total_steps))
    if decay not in ("constant", "linear", "cosine"):
        raise ValueError(f"learning_rate_schedule.decay: expected 'constant', 'linear' or 'cosine', got {decay!r}")
    decay_steps = max(int(total_steps) - int(warmup_steps), 1)
    if decay == "constant":
        after = optax.constant_schedule(peak_value)
    elif decay == "linear":
        after = optax.linear_schedule(peak_value, end_value, decay_steps)
    else:
        after = optax.cosine_decay_schedule(peak_value, decay_steps, alpha=end_value / peak_value if peak_value else 0.0)
    if warmup_steps <= 0:
        return after
    warmup = optax.linear_schedule(0.0, peak_value, int(warmup_steps))
    return optax.join_schedules([warmup, after], [int(warmup_steps)])


@gin.configurable
def make_optimizer(
    schedule: optax.Schedule,
    name: str = "adamw",
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """The update rule named `name` ('adam', 'adamw', 'adafactor', 'sgd') with global-norm clipping."""
    if name == "adam":
        rule = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        rule = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    elif name == "adafactor":
        rule = optax.adafactor(schedule, weight_decay_rate=weight_decay or None)
    elif name == "sgd":
        rule = optax.sgd(schedule)
    else:
        raise ValueError(f"make_optimizer.name: expected 'adam', 'adamw', 'adafactor' or 'sgd', got {name!r}")
    if clip_norm:
        return optax.chain(optax.clip_by_global_norm(clip_norm), rule)
    return rule


def freeze_untrainable(optimizer: optax.GradientTransformation,
                       trainable_mask: Callable[[Any], Any]) -> optax.GradientTransformation:
    """`optimizer` on the parameters `trainable_mask(params)` marks True, zero updates (and no optimizer state)
    for the others; a mask of None trains everything. The mask is computed from the params the optimizer is
    initialised with, so it follows the model (e.g. LoRA adapters only)."""
    def labels(params: Any) -> Any:
        mask = trainable_mask(params)
        if mask is None:
            return jax.tree.map(lambda _: "train", params)
        return jax.tree.map(lambda trainable: "train" if trainable else "frozen", mask)

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
