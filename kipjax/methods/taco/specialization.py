"""TACO's task-specialization analysis (dissertation sec. 4.4.3.2, Figures 4.1 and 4.2) of a trained checkpoint.

    python -m kipjax.methods.taco.specialization --gin_file=gin_configs/taco/demo.gin --checkpoint=MODEL_DIR \\
        --out=DIR [--batches N] [--tasks qa,fc,...] [--label NAME] [--compare OTHER/specialization.json ...]

Restores the checkpoint (a staged MODEL_DIR means its newest stage, as `kipjax.evaluate` does) with the
method state saved with it (the hard negatives of its last epoch), runs the training feed's first `--batches`
batches through each task's gradient of `TacoRetrieval.task_loss` (with dropout, as training takes them), and
measures, per parameter element i and task k:

- the raw sensitivity |g_k,i theta_i| (eq. 4.1), averaged over the batches;
- the normalised sensitivity of eq. 4.2: the same |g_k theta| divided, per task and batch, by its lower median
  over every parameter element (+ eps), averaged over the batches. `TaskSensitivityCombiner.update` computes it
  (so it is the combiner's definition, not a copy of it) with beta = n / (n + 1) after n batches, which turns its
  moving average into the running mean; tau and eps are the config's `task_sensitivity_combiner` bindings.

Figure 4.1: the histogram of each element's task entropy (natural log) of q = softmax_k(I_k / tau), with two
special bins: "not activated" (raw sensitivity below 1e-8 for every task; left out of the other bins) and "task
specific" (entropy below 0.3, the entropy of 95 % on one of eight tasks and 5 % spread over the other seven);
the rest in `--bins` equal bins up to log T. Fractions are of all parameter elements, so they sum to 1.
Figure 4.2: per task (`--tasks`, default the first four), a Gaussian KDE of the (`--density`) normalised or
raw sensitivity of `--sample` elements drawn at random (the same elements for every task), of those activated
for the task (raw sensitivity at least 1e-8: where most elements get no gradient, as the demo's embedding rows,
the zeros would otherwise be the median and leave no spread), after dropping the outliers: values farther than
`--outlier_mads` median absolute deviations from the task's median. The JSON keeps the fraction of sampled
elements left out as not activated, per task.

Writes DIR/specialization.json (histogram, KDE curves, settings, checkpoint step), DIR/task_entropy.png and
DIR/sensitivity_density.png. `--compare` (repeatable) overlays the results of earlier runs (their
specialization.json) in both figures, e.g. TACO against the naive multi-task model as the thesis does: each
variant needs its own gin file, so each is analysed by its own run. Single host.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kipjax import cli, partitioning, runner
from kipjax.methods.base import Params
from kipjax.methods.taco.retrieval import METHOD_BINDING, TacoRetrieval, configured_taco
from kipjax.optim.task_combiners import (SensitivityState, TaskGrads, TaskSensitivityCombiner, all_finite,
                                         per_task_zeros, task_sensitivity_combiner)
from kipjax.run_log import atomic_write_text, track
from kipjax.trainer import Trainer

TASK_SPECIFIC_ENTROPY = 0.3  # the thesis' threshold: ~ the entropy of (0.95, 0.05/7, ..., 0.05/7)
NOT_ACTIVATED_BELOW = 1e-8
DENSITY_QUANTITIES = ("normalised", "raw")
RESULT_FILE = "specialization.json"


# ------------------------------------------------------------------------------------------- sensitivity


class Sensitivities(NamedTuple):
    """Per-element, per-task sensitivities averaged over training batches."""

    batches: jax.Array  # int32 []: batches averaged so far (those whose task gradients are all finite)
    normalised: Params  # mean median-normalised |g_k * theta| (what eq. 4.2 takes), [T, ...] leaves
    raw: Params  # mean |g_k * theta| (eq. 4.1), [T, ...] leaves


def init_sensitivities(params: Params, num_tasks: int) -> Sensitivities:
    """No batch yet: zeros shaped (and, for boxed params, sharded) like the combiner's state."""
    zeros = functools.partial(per_task_zeros, params, num_tasks)
    return Sensitivities(jnp.zeros((), jnp.int32), zeros(), zeros())


def add_batch(sensitivities: Sensitivities, task_grads: TaskGrads, params: Params,
              combiner: TaskSensitivityCombiner) -> Sensitivities:
    """The running means with one more batch's task gradients ([T, ...] leaves). The combiner's moving average
    with beta = n / (n + 1) is the mean of n + 1 batches; a batch with a non-finite gradient is left out (the
    combiner then keeps its state, and n stays)."""
    count = sensitivities.batches.astype(jnp.float32)
    running = combiner._replace(beta=count / (count + 1.0))
    num_tasks = jax.tree.leaves(task_grads)[0].shape[0]
    _, state = running.update(task_grads, SensitivityState(sensitivities.batches, sensitivities.normalised),
                              params, jnp.zeros((num_tasks,), jnp.float32))
    finite = all_finite(task_grads)

    def mean_raw(mean: jax.Array, g: jax.Array, p: jax.Array) -> jax.Array:
        raw = jnp.abs(g.astype(jnp.float32) * p.astype(jnp.float32)[None])
        return jnp.where(finite, mean + (raw - mean) / (count + 1.0), mean)

    raw = jax.tree.map(mean_raw, sensitivities.raw, task_grads, params)
    return Sensitivities(sensitivities.batches + finite.astype(jnp.int32), state.sensitivity, raw)


def task_sensitivities(task_gradients: Callable[[Params, Any], TaskGrads], params: Params, batches: Iterable[Any],
                       combiner: TaskSensitivityCombiner) -> Sensitivities:
    """The mean sensitivities over `batches`, with `task_gradients(params, batch)` -> [T, ...] gradient leaves;
    one jitted step (gradients and means together) serves every batch."""
    step = jax.jit(lambda s, p, b: add_batch(s, task_gradients(p, b), p, combiner), donate_argnums=0)
    sensitivities = init_sensitivities(params, combiner.num_tasks)
    for batch in batches:
        sensitivities = step(sensitivities, params, batch)
    return sensitivities


# --------------------------------------------------------------------------------------- Figure 4.1


def task_entropy(sensitivity: jax.Array, tau: float) -> jax.Array:
    """Per element [...], the entropy (nats) of q = softmax over the task axis 0 of sensitivity / tau (eq. 4.2)."""
    logits = jnp.asarray(sensitivity, jnp.float32) / tau
    log_q = jax.nn.log_softmax(logits, axis=0)
    return -jnp.sum(jnp.exp(log_q) * log_q, axis=0)


@functools.partial(jax.jit, static_argnames="bins")
def _bin_counts(normalised: Params, raw: Params, tau: float, bins: int, task_specific_below: float,
                not_activated_below: float) -> jax.Array:
    """[leaves, 2 + bins] element counts of each [T, ...] leaf: not activated, task specific, the regular bins
    (summed on the host, in int64: int32 would overflow past 2^31 elements)."""
    def leaf(n: jax.Array, r: jax.Array) -> jax.Array:
        activated = jnp.any(r >= not_activated_below, axis=0)
        entropy = task_entropy(n, tau)
        top = math.log(n.shape[0])
        regular = jnp.clip(jnp.floor((entropy - task_specific_below) / (top - task_specific_below) * bins), 0,
                           bins - 1).astype(jnp.int32)
        category = jnp.where(~activated, 0, jnp.where(entropy < task_specific_below, 1, 2 + regular))
        return jnp.bincount(category.ravel(), length=2 + bins)
    return jnp.stack([leaf(n, r) for n, r in zip(jax.tree.leaves(normalised), jax.tree.leaves(raw))])


def entropy_edges(num_tasks: int, bins: int, task_specific_below: float = TASK_SPECIFIC_ENTROPY) -> list[float]:
    """The regular bins' edges: `bins` equal bins from `task_specific_below` to log T (the uniform q's entropy)."""
    top = math.log(num_tasks)
    if bins < 1 or not 0 < task_specific_below < top:
        raise ValueError(f"entropy bins: need bins >= 1 and 0 < task_specific_below < log T = {top:.3f} "
                         f"(T = {num_tasks}), got bins={bins}, task_specific_below={task_specific_below}")
    return np.linspace(task_specific_below, top, bins + 1).tolist()


def entropy_histogram(normalised: Params, raw: Params, tau: float, bins: int = 10,
                      task_specific_below: float = TASK_SPECIFIC_ENTROPY,
                      not_activated_below: float = NOT_ACTIVATED_BELOW) -> dict[str, Any]:
    """Figure 4.1's histogram over every element of the [T, ...] leaves: the fractions `not_activated` (raw
    sensitivity below `not_activated_below` for every task), `task_specific` (the others with entropy below
    `task_specific_below`) and `fractions` of the rest in the bins between `edges` (`entropy_edges`). All are
    fractions of all elements: they sum to 1."""
    edges = entropy_edges(jax.tree.leaves(normalised)[0].shape[0], bins, task_specific_below)
    counts = np.asarray(jax.device_get(_bin_counts(normalised, raw, tau, bins, task_specific_below,
                                                   not_activated_below)), np.int64).sum(axis=0)
    fractions = counts / counts.sum()
    return {"edges": edges, "fractions": fractions[2:].tolist(),
            "not_activated": float(fractions[0]), "task_specific": float(fractions[1]), "elements": int(counts.sum())}


# --------------------------------------------------------------------------------------- Figure 4.2


def sample_elements(tree: Params, size: int, seed: int = 0) -> np.ndarray:
    """[T, n]: every task's value at the same n = min(size, elements) elements drawn without replacement from
    all the [T, ...] leaves (a uniform sample of the parameter elements, for a KDE that stays cheap)."""
    leaves = [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(tree)]
    starts = np.cumsum([0] + [leaf.shape[1] for leaf in leaves])
    picked = np.sort(np.random.default_rng(seed).choice(starts[-1], min(size, starts[-1]), replace=False))
    parts = [np.asarray(leaf[:, picked[(picked >= start) & (picked < stop)] - start])
             for leaf, start, stop in zip(leaves, starts, starts[1:])]
    return np.concatenate(parts, axis=1)


def drop_outliers(values: np.ndarray, max_mads: float) -> np.ndarray:
    """`values` within `max_mads` median absolute deviations of their median (the long tail would otherwise
    squeeze the bulk of the density into one spike)."""
    median = np.median(values)
    distance = np.abs(values - median)
    return values[distance <= max_mads * np.median(distance)]


def sensitivity_density(values: np.ndarray, max_mads: float = 5.0, points: int = 200) -> dict[str, Any] | None:
    """A Gaussian KDE (Scott's bandwidth) of `values` after `drop_outliers`, on `points` x values from 3
    bandwidths below the smallest kept value to 3 above the largest (so the curve holds ~all the mass); None
    when the kept values do not vary (no density to estimate)."""
    from scipy.stats import gaussian_kde

    kept = drop_outliers(np.asarray(values, np.float64), max_mads)
    if kept.size < 2 or np.ptp(kept) == 0:
        return None
    kde = gaussian_kde(kept)
    bandwidth = float(np.sqrt(kde.covariance[0, 0]))
    x = np.linspace(kept.min() - 3 * bandwidth, kept.max() + 3 * bandwidth, points)
    return {"x": x.tolist(), "density": kde(x).tolist(), "kept": int(kept.size),
            "dropped": int(values.size - kept.size)}


# -------------------------------------------------------------------------------------------- figures


def _save_figure(fig: Any, path: str) -> None:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    tmp = f"{path}.tmp.{os.getpid()}"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _pyplot() -> Any:
    # Imported here so that the analysis alone never loads matplotlib; Agg must be chosen before pyplot.
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    return plt


def plot_task_entropy(results: Sequence[dict], path: str) -> None:
    """Figure 4.1 as a PNG: the entropy histograms of `results` (one bar per variant and bin)."""
    plt = _pyplot()
    edges = results[0]["histogram"]["edges"]
    names = ["not\nactivated", f"task\nspecific\n(<{edges[0]:g})",
             *(f"{low:.2f}-\n{high:.2f}" for low, high in zip(edges, edges[1:]))]
    x = np.arange(len(names))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names)), 4))
    for i, result in enumerate(results):
        histogram = result["histogram"]
        percent = 100 * np.array([histogram["not_activated"], histogram["task_specific"], *histogram["fractions"]])
        ax.bar(x + (i - (len(results) - 1) / 2) * width, percent, width, label=result["label"])
    ax.set_xticks(x, names, fontsize=7)
    ax.set(xlabel="task entropy (nats)", ylabel="% of parameters", title="Task entropy histogram")
    ax.legend()
    _save_figure(fig, path)


def plot_sensitivity_density(results: Sequence[dict], path: str) -> None:
    """Figure 4.2 as a PNG: per task of the first result, every variant's sensitivity density."""
    plt = _pyplot()
    tasks = list(results[0]["densities"])
    columns = min(4, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.5 * columns, 3 * rows), squeeze=False)
    quantity = results[0]["settings"]["density"]
    for ax, task in zip(axes.ravel(), tasks):
        for result in results:
            curve = result["densities"].get(task)
            if curve is not None:
                ax.plot(curve["x"], curve["density"], label=result["label"])
        ax.set(title=task, xlabel=f"{quantity} sensitivity", ylabel="density")
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # every variant's kept values were constant (sensitivity_density)
            ax.text(0.5, 0.5, "no spread", ha="center", transform=ax.transAxes)
    for ax in axes.ravel()[len(tasks):]:
        ax.axis("off")
    _save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ CLI


def taco_task_gradients(method: TacoRetrieval) -> Callable[[Params, Any], TaskGrads]:
    """(params, (batch, tables, rng)) -> each task's gradient of its loss on its rows, stacked [T, ...], with
    the task rngs the trainer's combined step uses."""
    def gradients(params: Params, inputs: tuple[dict, dict, jax.Array]) -> TaskGrads:
        batch, tables, rng = inputs
        grads = [jax.grad(lambda p, k=k: method.task_loss(p, {**batch, "tables": tables}, k,
                                                         jax.random.fold_in(rng, k))[0])(params)
                 for k in range(method.num_tasks)]
        return jax.tree.map(lambda *g: jnp.stack(g), *grads)
    return gradients


def analyse(method: TacoRetrieval, checkpoint: str, batches: int, density_tasks: Sequence[int],
            args: argparse.Namespace) -> dict[str, Any]:
    """The JSON result of one checkpoint (module docstring)."""
    # with the method state, so that the batches hold the negatives (pools and draws) training used
    params, step, model_dir = runner.restore_params(checkpoint, method, load_method_state=True)
    trainer = Trainer(method, model_dir=model_dir, train_steps=batches, train_epochs=None)
    combiner = task_sensitivity_combiner(num_tasks=method.num_tasks)
    tau = combiner.tau if args.tau is None else args.tau
    tables = trainer.device_tables()
    rng = jax.random.PRNGKey(args.seed)
    inputs = ((trainer.device_batch(trainer.next_batch()), tables, jax.random.fold_in(rng, i))
              for i in track(range(batches), total=batches, desc="task gradients", unit="batches"))
    with partitioning.activate(trainer.mesh, trainer.rules):
        sensitivities = task_sensitivities(taco_task_gradients(method), params, inputs, combiner)
        histogram = entropy_histogram(sensitivities.normalised, sensitivities.raw, tau, args.bins,
                                      args.task_specific_entropy)
        sample = sample_elements(getattr(sensitivities, args.density), args.sample, args.seed)
        activated = sample_elements(sensitivities.raw, args.sample, args.seed) >= NOT_ACTIVATED_BELOW  # same elements
    names = [task.task.name for task in method.data.tasks]
    return {
        "label": variant_label(args), "checkpoint": checkpoint,
        "model_dir": model_dir, "step": step, "gin_files": args.gin_file, "tasks": names,
        "batches": int(sensitivities.batches), "skipped_batches": batches - int(sensitivities.batches),
        "settings": {"tau": tau, "eps": combiner.eps, "bins": args.bins, "batch_size": trainer.batch_size,
                     "task_specific_entropy": args.task_specific_entropy, "not_activated_below": NOT_ACTIVATED_BELOW,
                     "density": args.density, "outlier_mads": args.outlier_mads, "sample": int(sample.shape[1]),
                     "seed": args.seed},
        "histogram": histogram,
        "densities": {names[k]: sensitivity_density(sample[k][activated[k]], args.outlier_mads) for k in density_tasks},
        "sample_not_activated": {names[k]: float(1.0 - activated[k].mean()) for k in density_tasks},
    }


def variant_label(args: argparse.Namespace) -> str:
    """This run's name in the figures: --label, else the checkpoint directory's name."""
    return args.label or os.path.basename(os.path.normpath(args.checkpoint))


def load_comparisons(paths: Sequence[str]) -> list[dict]:
    """Earlier results to overlay, checked to exist and to hold this command's output."""
    results = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"error: --compare {path!r}: {e}") from None
        if not {"label", "histogram", "densities", "settings"} <= set(result):
            raise SystemExit(f"error: --compare {path!r} is not a {RESULT_FILE} written by this command")
        results.append(result)
    return results


def check_comparable(label: str, edges: Sequence[float], density: str, others: Sequence[dict]) -> None:
    """Overlaid variants must share this run's entropy bins (`edges`) and density quantity; checked before the
    analysis, so that a mismatch costs nothing."""
    for other in others:
        theirs = other["histogram"]["edges"]
        if len(theirs) != len(edges) or not np.allclose(theirs, edges):
            raise SystemExit(f"error: cannot overlay {other['label']!r} on {label!r}: different entropy bins "
                             f"{theirs} and {list(edges)}")
        if other["settings"]["density"] != density:
            raise SystemExit(f"error: cannot overlay {other['label']!r} on {label!r}: densities of "
                             f"{other['settings']['density']} and {density} sensitivity")


def density_task_indices(names: Sequence[str], requested: str | None) -> list[int]:
    """The Figure 4.2 tasks: `requested` (comma-separated names) or the first four."""
    if requested is None:
        return list(range(min(4, len(names))))
    wanted = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown or not wanted:
        raise SystemExit(f"error: --tasks {requested!r}: unknown task(s) {unknown}; this config's tasks are {names}")
    return [names.index(name) for name in wanted]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = cli.gin_argument_parser(__doc__)
    cli.add_checkpoint_argument(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batches", type=int, default=20, help="training batches the sensitivities average")
    parser.add_argument("--tasks", default=None, help="Figure 4.2's tasks, comma-separated (default: first four)")
    parser.add_argument("--label", default=None, help="this variant's name in the figures (default: MODEL_DIR's)")
    parser.add_argument("--compare", action="append", default=[], help="an earlier run's specialization.json to "
                        "overlay (repeatable)")
    parser.add_argument("--tau", type=float, default=None, help="eq. 4.2's temperature (default: the config's)")
    parser.add_argument("--bins", type=int, default=10, help="regular entropy bins")
    parser.add_argument("--task_specific_entropy", type=float, default=TASK_SPECIFIC_ENTROPY)
    parser.add_argument("--density", choices=DENSITY_QUANTITIES, default="normalised",
                        help="the sensitivity whose density Figure 4.2 shows")
    parser.add_argument("--outlier_mads", type=float, default=5.0, help="Figure 4.2 drops values farther than "
                        "this many median absolute deviations from the median")
    parser.add_argument("--sample", type=int, default=50_000, help="elements Figure 4.2's KDE is fitted on")
    parser.add_argument("--seed", type=int, default=0, help="dropout and sample seed")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = cli.parse_command_line(__doc__, [METHOD_BINDING, *argv], parser)
    if args.batches < 1:
        parser.error(f"--batches must be at least 1, got {args.batches}")
    cli.require_checkpoint(args.checkpoint)
    comparisons = load_comparisons(args.compare)
    method = configured_taco("the specialization analysis")
    density_tasks = density_task_indices([task.task.name for task in method.data.tasks], args.tasks)
    try:
        edges = entropy_edges(method.num_tasks, args.bins, args.task_specific_entropy)
    except ValueError as e:
        raise SystemExit(f"error: --bins / --task_specific_entropy: {e}") from None
    check_comparable(variant_label(args), edges, args.density, comparisons)
    result = analyse(method, args.checkpoint, args.batches, density_tasks, args)
    results = [result, *comparisons]
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, RESULT_FILE), json.dumps(result, indent=1))
    plot_task_entropy(results, os.path.join(args.out, "task_entropy.png"))
    plot_sensitivity_density(results, os.path.join(args.out, "sensitivity_density.png"))
    histogram = result["histogram"]
    print(f"{result['label']} (step {result['step']}, {result['batches']} batches, {histogram['elements']} "
          f"parameter elements): task specific {histogram['task_specific']:.1%}, not activated "
          f"{histogram['not_activated']:.1%}; wrote {args.out}/{RESULT_FILE}, task_entropy.png, "
          "sensitivity_density.png", flush=True)
    return result


if __name__ == "__main__":
    main()
