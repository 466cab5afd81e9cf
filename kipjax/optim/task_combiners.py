"""Multi-task gradient combiners: T per-task gradients -> the one gradient the optax chain (clipping, Adam) sees.

Every combiner has `init(params) -> state` and `update(task_grads, state, params, task_losses) -> (grads,
state)`, where each leaf of `task_grads` has a leading task axis [T, ...] (task k's gradient of its own loss on
its own sub-batch, so per-task gradients cost no extra model FLOPs) and `task_losses` is [T]. All are pure and
jit-able; their state is a pytree the trainer checkpoints (exact resume), and a state leaf that mirrors a
parameter has the parameter's shape behind a task axis, so it shards like the parameter.

A factory (what gin binds, e.g. `Trainer.gradient_combiner = @task_sensitivity_combiner`) is called by the
trainer as `factory(num_tasks=T, total_steps=N)`, so neither has to be repeated in gin.

- `naive_combiner`: the sum of the task gradients (the authors' naive multi-task baseline), or their mean.
- `task_sensitivity_combiner`: TACO's adaptive learning (dissertation eq. 4.1, 4.2 and Algorithm 1), as the
  authors' code (WenzhengZhang/TACO, src/taco/trainer/mt_trainer.py, `taco_backward`) runs it:
    S_k = |g_k * theta|, elementwise, per task;
    S~_k = S_k / (median over every parameter element of S_k, zeros included, + eps), with torch's median:
      the lower of the two middle values when the count is even;
    I <- beta I + (1 - beta) S~, from I = 0, no bias correction, every step (burn-in included);
    U = softmax over tasks of I / tau, elementwise;  grad = sum_k U_k g_k / T.
  For the first `burn_in_steps` updates the gradient is the plain mean sum_k g_k / T (the authors' "burn in"
  of 10 % of the steps, during which I already accumulates). A negative tau discourages specialisation (the
  ablation of section 4.4.3.1). (The chapter's text writes the moving average with beta and 1 - beta swapped;
  Algorithm 1 and the code agree with the form above, and beta = 0.999 of Table B.2 only makes sense there.)
- `pcgrad_combiner`: PCGrad (Yu et al. 2020): for each task i, in a fresh random order of all T tasks (i
  itself included, as the authors' copy does), project pc_i off g_j when pc_i . g_j < 0; grad = sum_i pc_i / T.
- `cgd_combiner`: common gradient descent (Piratla et al. 2021) as the authors run it: with n_k = g_k / |g_k|
  (or g_k), r_i = sum_j (L_i L_j)^beta (n_i . n_j), w <- softmax(r / tau + log w) from w = 1/T (multiplicative
  weights), grad = sum_k w_k g_k.
- `gradnorm_combiner`: GradNorm (Chen et al. 2018): w = T softmax(a); grad = sum_k w_k g_k; G_k = w_k |g_k|,
  r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0)), and the logits a take an SGD step on
  sum_k |G_k - stop_gradient(mean_j G_j r_k^alpha)|. The authors' copy builds these weights as an
  `nn.Parameter` that no optimizer holds, so their GradNorm runs with fixed equal weights; here they learn.

PCGrad, CGD and GradNorm need only the T x T Gram matrix of the task gradients (PCGrad's projections stay
linear combinations of the g_k), so they cost one pass over the gradients, not T^2.
If any task gradient is not finite, every combiner returns the plain mean (not finite either, so the trainer
skips the step and counts it) and leaves its state as it was.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

Params = Any
TaskGrads = Any  # a pytree like the params, each leaf with a leading task axis [T, ...]


class TaskGradientCombiner(Protocol):
    def init(self, params: Params) -> Any: ...

    def update(self, task_grads: TaskGrads, state: Any, params: Params, task_losses: jax.Array
               ) -> tuple[Params, Any]: ...


# ----------------------------------------------------------------------------------------------- helpers


def per_task_zeros(params: Params, num_tasks: int) -> Params:
    """float32 zeros [T, *shape] for every parameter; a logically boxed parameter (`nn.Partitioned`) gets a box
    with an unsharded task axis in front of its own axis names, so the state shards like the parameter."""
    def zeros(p: Any) -> Any:
        if isinstance(p, nn.Partitioned):
            return p.replace(value=zeros(p.value), names=(None, *p.names))  # keeps the box's kind (logical)
        return jnp.zeros((num_tasks, *p.shape), jnp.float32)
    return jax.tree.map(zeros, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _num_tasks(task_grads: TaskGrads) -> int:
    return jax.tree.leaves(task_grads)[0].shape[0]


def _task_slices(x: jax.Array) -> list[jax.Array]:
    return [x[k] for k in range(x.shape[0])]


def _task_sum(x: jax.Array) -> jax.Array:
    """Sum over the leading task axis as element-wise adds of its T slices: XLA:CPU runs a reduction over a short
    leading axis many times slower (benchmarks/README.md, "TACO adaptive learning")."""
    return functools.reduce(jnp.add, _task_slices(x))


def _task_softmax(x: jax.Array) -> list[jax.Array]:
    """softmax over the leading task axis, slice by slice (as `_task_sum`); the T weight slices."""
    slices = _task_slices(x)
    top = functools.reduce(jnp.maximum, slices)
    exps = [jnp.exp(s - top) for s in slices]
    total = functools.reduce(jnp.add, exps)
    return [e / total for e in exps]


def _mean(task_grads: TaskGrads) -> Params:
    return jax.tree.map(lambda g: _task_sum(g) / g.shape[0], task_grads)


def all_finite(task_grads: TaskGrads) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(task_grads)]))


def _weighted(task_grads: TaskGrads, weights: jax.Array) -> Params:
    """sum_k weights[k] g_k, weights [T]."""
    return jax.tree.map(lambda g: functools.reduce(jnp.add, [weights[k].astype(g.dtype) * gk for k, gk in
                                                             enumerate(_task_slices(g))]), task_grads)


def _gram(task_grads: TaskGrads) -> jax.Array:
    """G[i, j] = g_i . g_j over every parameter element, in float32."""
    def leaf(g: jax.Array) -> jax.Array:
        flat = g.reshape(g.shape[0], -1).astype(jnp.float32)
        return flat @ flat.T
    return sum(leaf(g) for g in jax.tree.leaves(task_grads))


def _guarded(task_grads: TaskGrads, state: Any, combined: Params, new_state: Any) -> tuple[Params, Any]:
    """`combined` and `new_state` when every task gradient is finite, else the mean and the old state."""
    finite = all_finite(task_grads)
    grads = jax.tree.map(lambda c, m: jnp.where(finite, c, m), combined, _mean(task_grads))
    state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    return grads, state


def lower_median(values: TaskGrads) -> jax.Array:
    """Per task, the lower median (torch.median's) of every element of every leaf of `values` ([T, ...] leaves
    of non-negative floats): the k-th smallest, k = (d - 1) // 2 of d elements.

    Exact, and without sorting or concatenating the leaves: non-negative float32 values order as their int32
    bit patterns, so 31 bisection steps over the bit range, each counting the elements at or below the midpoint
    (a fused compare-and-sum per leaf, summed over leaves, which also works leaf-sharded), find it.
    """
    leaves = jax.tree.leaves(values)
    num_tasks = leaves[0].shape[0]
    total = sum(leaf[0].size for leaf in leaves)
    if total >= 2 ** 31:
        raise ValueError(f"lower_median counts in int32; {total} elements per task is too many")
    rank = (total - 1) // 2 + 1  # the answer is the smallest v with at least `rank` elements <= v

    def bits(leaf: jax.Array) -> jax.Array:
        return jax.lax.bitcast_convert_type(leaf.astype(jnp.float32), jnp.int32).reshape(num_tasks, -1)

    def step(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        low, high = bounds
        middle = low + (high - low) // 2
        count = sum(jnp.sum(bits(leaf) <= middle[:, None], axis=1, dtype=jnp.int32) for leaf in leaves)
        enough = count >= rank
        return jnp.where(enough, low, middle + 1), jnp.where(enough, middle, high)

    start = (jnp.zeros((num_tasks,), jnp.int32), jnp.full((num_tasks,), 0x7F800000, jnp.int32))  # [0, +inf]
    _, high = jax.lax.fori_loop(0, 31, step, start)
    return jax.lax.bitcast_convert_type(high, jnp.float32)


# ------------------------------------------------------------------------------------------------- naive


class NaiveCombiner(NamedTuple):
    reduction: str = "sum"

    def init(self, params: Params) -> tuple:
        return ()

    def update(self, task_grads: TaskGrads, state: tuple, params: Params, task_losses: jax.Array
               ) -> tuple[Params, tuple]:
        del params, task_losses
        if self.reduction == "mean":
            return _mean(task_grads), state
        return jax.tree.map(_task_sum, task_grads), state


@gin.configurable
def naive_combiner(num_tasks: int = 0, total_steps: int = 0, reduction: str = "sum") -> NaiveCombiner:
    """The sum (the authors' naive multi-task learning) or the mean of the task gradients (any task count and
    run length)."""
    del num_tasks, total_steps
    if reduction not in ("sum", "mean"):
        raise ValueError(f"naive_combiner.reduction: expected 'sum' or 'mean', got {reduction!r}")
    return NaiveCombiner(reduction)


# ------------------------------------------------------------------------------------------------- TACO


class SensitivityState(NamedTuple):
    count: jax.Array  # updates so far (burn-in is the first `burn_in_steps`)
    sensitivity: Params  # I: the moving average of median-normalised |g_k * theta|, [T, ...] leaves


class TaskSensitivityCombiner(NamedTuple):
    num_tasks: int
    tau: float = 2.0
    beta: float = 0.999
    burn_in_steps: int = 0
    eps: float = 1e-12

    def init(self, params: Params) -> SensitivityState:
        return SensitivityState(jnp.zeros((), jnp.int32), per_task_zeros(params, self.num_tasks))

    def update(self, task_grads: TaskGrads, state: SensitivityState, params: Params, task_losses: jax.Array
               ) -> tuple[Params, SensitivityState]:
        del task_losses
        raw = jax.tree.map(lambda g, p: jnp.abs(g.astype(jnp.float32) * p.astype(jnp.float32)[None]),
                           task_grads, params)
        scale = 1.0 / (lower_median(raw) + self.eps)  # [T]

        def average(old: jax.Array, s: jax.Array) -> jax.Array:
            normalised = s * scale.reshape(-1, *([1] * (s.ndim - 1)))
            return self.beta * old + (1.0 - self.beta) * normalised

        sensitivity = jax.tree.map(average, state.sensitivity, raw)

        def combine(g: jax.Array, importance: jax.Array) -> jax.Array:
            weights = _task_softmax(importance / self.tau)
            weighted = functools.reduce(jnp.add, [w * gk.astype(jnp.float32)
                                                  for w, gk in zip(weights, _task_slices(g))])
            return (weighted / self.num_tasks).astype(g.dtype)

        adaptive = jax.tree.map(combine, task_grads, sensitivity)
        burning_in = state.count < self.burn_in_steps
        combined = jax.tree.map(lambda a, m: jnp.where(burning_in, m, a), adaptive, _mean(task_grads))
        grads, kept = _guarded(task_grads, state.sensitivity, combined, sensitivity)
        return grads, SensitivityState(state.count + 1, kept)


@gin.configurable
def task_sensitivity_combiner(num_tasks: int = gin.REQUIRED, total_steps: int = 0, tau: float = 2.0,
                              beta: float = 0.999, burn_in_fraction: float = 0.1, burn_in_steps: int | None = None,
                              eps: float = 1e-12) -> TaskSensitivityCombiner:
    """TACO's adaptive learning (module docstring); defaults from Table B.2 (tau 2, beta 0.999) and B.3 (a
    burn-in of the first 10 % of the run's steps, or `burn_in_steps` if given)."""
    if burn_in_steps is None:
        burn_in_steps = int(burn_in_fraction * total_steps)
    if tau == 0:
        raise ValueError("task_sensitivity_combiner.tau must be non-zero (negative discourages specialisation)")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"task_sensitivity_combiner.beta must be in [0, 1], got {beta}")
    return TaskSensitivityCombiner(num_tasks, tau, beta, burn_in_steps, eps)


# ------------------------------------------------------------------------------------------------ PCGrad


def pcgrad_orders(key: jax.Array, num_tasks: int) -> jax.Array:
    """[T, T]: row i is the random order in which task i's gradient is projected against every task."""
    return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(jax.random.split(key, num_tasks))


def pcgrad_coefficients(gram: jax.Array, orders: jax.Array) -> jax.Array:
    """C [T, T] with pc_i = sum_m C[i, m] g_m after PCGrad's projections, from the Gram matrix of the g_k.

    pc_i starts as g_i; for j in orders[i]: if pc_i . g_j < 0, pc_i -= (pc_i . g_j / |g_j|^2) g_j (a zero g_j
    is skipped). pc_i . g_j = C[i] . gram[:, j], so the projections never touch the gradients themselves.
    """
    num_tasks = gram.shape[0]

    def project(i: jax.Array) -> jax.Array:
        def step(coefficients: jax.Array, j: jax.Array) -> tuple[jax.Array, None]:
            dot = coefficients @ gram[:, j]
            norm = gram[j, j]
            shift = jnp.where((dot < 0) & (norm > 0), dot / jnp.where(norm > 0, norm, 1.0), 0.0)
            return coefficients - shift * jax.nn.one_hot(j, num_tasks, dtype=gram.dtype), None

        coefficients, _ = jax.lax.scan(step, jax.nn.one_hot(i, num_tasks, dtype=gram.dtype), orders[i])
        return coefficients

    return jax.vmap(project)(jnp.arange(num_tasks))


class PcgradCombiner(NamedTuple):
    seed: int = 0

    def init(self, params: Params) -> jax.Array:
        return jax.random.key_data(jax.random.PRNGKey(self.seed))

    def update(self, task_grads: TaskGrads, state: jax.Array, params: Params, task_losses: jax.Array
               ) -> tuple[Params, jax.Array]:
        del params, task_losses
        key, next_key = jax.random.split(jax.random.wrap_key_data(state))
        num_tasks = _num_tasks(task_grads)
        coefficients = pcgrad_coefficients(_gram(task_grads), pcgrad_orders(key, num_tasks))
        combined = _weighted(task_grads, coefficients.sum(0) / num_tasks)
        grads, _ = _guarded(task_grads, state, combined, state)
        return grads, jax.random.key_data(next_key)  # the key advances either way: skipped steps draw too


@gin.configurable
def pcgrad_combiner(num_tasks: int = 0, total_steps: int = 0, seed: int = 0) -> PcgradCombiner:
    """PCGrad with projection orders drawn from `seed` (module docstring; any task count and run length)."""
    del num_tasks, total_steps
    return PcgradCombiner(seed)


# --------------------------------------------------------------------------------------------------- CGD


class CgdCombiner(NamedTuple):
    num_tasks: int
    beta: float = 0.25
    tau: float = 100.0
    normalize: bool = True

    def init(self, params: Params) -> jax.Array:
        return jnp.full((self.num_tasks,), 1.0 / self.num_tasks, jnp.float32)

    def update(self, task_grads: TaskGrads, state: jax.Array, params: Params, task_losses: jax.Array
               ) -> tuple[Params, jax.Array]:
        del params
        gram = _gram(task_grads)
        if self.normalize:
            norms = jnp.sqrt(jnp.diagonal(gram))
            gram = gram / (norms[:, None] * norms[None, :])
        losses = jax.lax.stop_gradient(task_losses).astype(jnp.float32)
        loss_weights = jnp.power(losses[:, None] * losses[None, :], self.beta)
        rewards = jnp.sum(loss_weights * gram, axis=-1)
        weights = jax.nn.softmax(rewards / self.tau + jnp.log(state))
        return _guarded(task_grads, state, _weighted(task_grads, weights), weights)


@gin.configurable
def cgd_combiner(num_tasks: int = gin.REQUIRED, total_steps: int = 0, beta: float = 0.25, tau: float = 100.0,
                 normalize: bool = True) -> CgdCombiner:
    """CGD with the authors' KILT settings (beta 0.25, tau 100, normalised gradients)."""
    del total_steps
    return CgdCombiner(num_tasks, beta, tau, normalize)


# ---------------------------------------------------------------------------------------------- GradNorm


class GradNormState(NamedTuple):
    logits: jax.Array  # [T]: weights = T softmax(logits)
    initial_losses: jax.Array  # [T]: L_k(0), set at the first update
    count: jax.Array


class GradNormCombiner(NamedTuple):
    num_tasks: int
    alpha: float = 1.5
    learning_rate: float = 0.025

    def init(self, params: Params) -> GradNormState:
        return GradNormState(jnp.zeros((self.num_tasks,), jnp.float32), jnp.ones((self.num_tasks,), jnp.float32),
                             jnp.zeros((), jnp.int32))

    def update(self, task_grads: TaskGrads, state: GradNormState, params: Params, task_losses: jax.Array
               ) -> tuple[Params, GradNormState]:
        del params
        losses = jax.lax.stop_gradient(task_losses).astype(jnp.float32)
        initial = jnp.where(state.count == 0, losses, state.initial_losses)
        norms = jnp.sqrt(jnp.diagonal(_gram(task_grads)))
        ratios = losses / initial
        relative = ratios / jnp.mean(ratios)

        def balance_loss(logits: jax.Array) -> jax.Array:
            weighted_norms = self.num_tasks * jax.nn.softmax(logits) * norms
            target = jax.lax.stop_gradient(jnp.mean(weighted_norms) * relative ** self.alpha)
            return jnp.sum(jnp.abs(weighted_norms - target))

        weights = self.num_tasks * jax.nn.softmax(state.logits)
        logits = state.logits - self.learning_rate * jax.grad(balance_loss)(state.logits)
        new_state = GradNormState(logits, initial, state.count + 1)
        return _guarded(task_grads, state, _weighted(task_grads, weights), new_state)


@gin.configurable
def gradnorm_combiner(num_tasks: int = gin.REQUIRED, total_steps: int = 0, alpha: float = 1.5,
                      learning_rate: float = 0.025) -> GradNormCombiner:
    """GradNorm with learned task weights (alpha 1.5 as the authors' KILT runs; SGD on the weight logits)."""
    del total_steps
    return GradNormCombiner(num_tasks, alpha, learning_rate)
