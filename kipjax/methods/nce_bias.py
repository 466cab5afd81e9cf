"""Synthetic check of the hard-negative NCE bias analysis (chapter 3, sec. 3.5.4, Figure 3.1).

A finite population: `num_inputs` points x with random features (uniform pop(x)), each with its own peaky
label distribution pop(y|x) = softmax(peakiness * z_x) over `num_labels` labels, z_x iid standard normal. A
feedforward net with one ReLU layer scores every label, s_theta(x, .). It is trained with Adam on the cross
entropy (3.2), exactly normalised, of 128 iid samples (x, y) ~ pop per update, so the trajectory does not depend
on the negatives. At each logged update J_CE and its gradient are exact (sums over every x and y), and
J_HARD / J_RANDOM (3.6) with K candidates (gold + K-1 negatives) are averaged over simulations:

- hard: negatives from the model distribution minus the gold, without replacement (eq. 3.9);
- random: negatives uniform over the labels minus the gold.

Only the negatives are simulated: every (x, y_1) pair is enumerated and weighted by pop(x, y_1), so the gold
term -s(x, y_1) is the same exact expectation in J_CE and J_NCE and adds no noise to the bias
b = grad J_CE - grad J_NCE (Theorem 3.3.1; the negatives are constants of the gradient). Losses are functions
of the score matrix s [X, Y]; their gradients are pulled back to the flattened parameters with one VJP.

What to expect: hard NCE tracks J_CE and its bias collapses once the model's mass fits in K candidates; random
NCE saturates (~0 loss, ~0 gradient), so its bias stays at about ||grad J_CE||, which the constant step size
keeps away from zero (`ce_grad` is recorded for that comparison).

    python -m kipjax.methods.nce_bias --out DIR [--steps N] [--seed S]

writes DIR/nce_bias.json (the curves) and DIR/nce_bias.png (losses and bias norms against updates).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.flatten_util import ravel_pytree

from kipjax.retrieval.negatives import sample_hard_negatives, sample_random_negatives
from kipjax.retrieval.nce import nce_loss
from kipjax.run_log import atomic_write_text

Array = jax.Array
TrainState = tuple[object, optax.OptState]  # (params, Adam state)
NEGATIVE_KINDS = ("hard", "random")


@dataclasses.dataclass(frozen=True)
class BiasConfig:
    """The synthetic experiment; defaults show Figure 3.1's trends in under a minute on two CPU cores."""

    num_labels: int = 1000
    num_inputs: int = 64
    feature_dim: int = 32
    hidden_dim: int = 256
    peakiness: float = 30.0
    batch_size: int = 128
    num_candidates: int = 5
    num_simulations: int = 10
    learning_rate: float = 1e-2
    steps: int = 500
    log_every: int = 10
    seed: int = 0


class Population(NamedTuple):
    """Input features [X, D] and log pop(y|x) [X, Y]; pop(x) is uniform over the X inputs."""

    features: Array
    log_probs: Array


class ScoreNet(nn.Module):
    """s_theta(x, .) for all labels: Dense -> ReLU -> Dense."""

    hidden_dim: int
    num_labels: int

    @nn.compact
    def __call__(self, features: Array) -> Array:
        return nn.Dense(self.num_labels)(nn.relu(nn.Dense(self.hidden_dim)(features)))


def make_population(key: Array, num_inputs: int, feature_dim: int, num_labels: int,
                    peakiness: float) -> Population:
    """Random features and pop(y|x) = softmax(peakiness * z_x): larger peakiness, smaller entropy."""
    feature_key, logit_key = jax.random.split(key)
    features = jax.random.normal(feature_key, (num_inputs, feature_dim))
    logits = peakiness * jax.random.normal(logit_key, (num_inputs, num_labels))
    return Population(features, jax.nn.log_softmax(logits, axis=-1))


def cross_entropy(scores: Array, log_pop: Array) -> Array:
    """Exact J_CE (3.2) = E_x sum_y pop(y|x) (log Z(x) - s(x, y)) for scores [X, Y]."""
    log_z = jax.nn.logsumexp(scores, axis=-1)
    return jnp.mean(log_z - jnp.sum(jnp.exp(log_pop) * scores, axis=-1))


def sample_candidates(key: Array, scores: Array, num_candidates: int, kind: str) -> Array:
    """One simulation's candidates for every (x, gold) pair: [X, Y, K], column 0 the gold y, then K-1 negatives.

    Hard: one Gumbel top-K draw per x ranks the labels as sampling without replacement from p_theta(.|x);
    deleting the gold from that ranking leaves a without-replacement sample from p_theta restricted to the other
    labels (eq. 3.9), so its first K-1 entries are exact hard negatives for every gold at once. Random: K-1
    labels uniform over Y minus the gold, iid, drawn for each pair.
    """
    num_inputs, num_labels = scores.shape
    gold = jnp.broadcast_to(jnp.arange(num_labels), (num_inputs, num_labels))
    if kind == "hard":
        nothing = jnp.zeros(scores.shape, bool)
        ranking = sample_hard_negatives(key, jax.lax.stop_gradient(scores), nothing, num_candidates)  # [X, K]
        is_gold = ranking[:, None, :] == gold[..., None]  # [X, Y, K]
        skip = jnp.where(jnp.any(is_gold, axis=-1), jnp.argmax(is_gold, axis=-1), num_candidates - 1)[..., None]
        slots = jnp.arange(num_candidates - 1)
        negatives = jnp.take_along_axis(ranking[:, None, :], slots + (slots >= skip), axis=-1)
    elif kind == "random":
        negatives = sample_random_negatives(key, gold.reshape(-1), num_labels, num_candidates - 1)
        negatives = negatives.reshape(num_inputs, num_labels, num_candidates - 1)
    else:
        raise ValueError(f"negatives must be one of {NEGATIVE_KINDS}, got {kind!r}")
    return jnp.concatenate([gold[..., None], negatives], axis=-1)


def nce_estimate(scores: Array, log_pop: Array, candidates: Array) -> Array:
    """J_NCE (3.6) given negatives: E_x sum_y pop(y|x) (-log pi_theta(1|x, candidates[x, y])), exact in x and y."""
    num_inputs, num_labels, num_candidates = candidates.shape
    candidate_scores = jnp.take_along_axis(scores, candidates.reshape(num_inputs, -1), axis=-1)
    per_pair = jax.vmap(nce_loss)(candidate_scores.reshape(-1, 1, num_candidates)).reshape(num_inputs, num_labels)
    return jnp.mean(jnp.sum(jnp.exp(log_pop) * per_pair, axis=-1))


@functools.partial(jax.jit, static_argnames=("num_candidates", "num_simulations", "kind"))
def score_bias(key: Array, scores: Array, log_pop: Array, num_candidates: int, num_simulations: int,
               kind: str) -> tuple[Array, Array, Array]:
    """(J_CE, Monte Carlo J_NCE, d(J_CE - J_NCE)/ds [X, Y]) at the score matrix, over `num_simulations`.

    By Theorem 3.3.1 the score gradient is pop(x) (p_theta(y|x) - gamma_theta(y|x)), with gamma estimated.
    """
    def one_simulation(sim_key: Array) -> tuple[Array, Array]:
        candidates = sample_candidates(sim_key, scores, num_candidates, kind)
        return jax.value_and_grad(nce_estimate)(scores, log_pop, candidates)

    nce_values, nce_grads = jax.vmap(one_simulation)(jax.random.split(key, num_simulations))
    ce, ce_grad = jax.value_and_grad(cross_entropy)(scores, log_pop)
    return ce, jnp.mean(nce_values), ce_grad - jnp.mean(nce_grads, axis=0)


def gradient_bias(key: Array, apply_fn: Callable[..., Array], params: object, pop: Population,
                  num_candidates: int, num_simulations: int, kind: str) -> tuple[Array, Array, Array]:
    """(J_CE, J_NCE estimate, b = grad J_CE - grad J_NCE over all parameters flattened)."""
    scores, pullback = jax.vjp(lambda p: apply_fn(p, pop.features), params)
    ce, nce, bias_scores = score_bias(key, scores, pop.log_probs, num_candidates, num_simulations, kind)
    return ce, nce, ravel_pytree(pullback(bias_scores)[0])[0]


def run(config: BiasConfig = BiasConfig()) -> dict[str, list[float]]:
    """Trains by cross entropy and returns the curves at updates 0, log_every, 2 log_every, ..., steps.

    Keys: updates; ce, hard_nce, random_nce (losses); hard_bias, random_bias, ce_grad (L2 norms of b and of
    grad J_CE); entropy (H(pop(y|x)), the least J_CE can be).
    """
    if config.steps < 0 or config.log_every < 1:
        raise ValueError(f"need steps >= 0 and log_every >= 1, got {config.steps} and {config.log_every}")
    pop_key, init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    pop = make_population(pop_key, config.num_inputs, config.feature_dim, config.num_labels, config.peakiness)
    model = ScoreNet(config.hidden_dim, config.num_labels)
    params = model.init(init_key, pop.features[:1])
    optimizer = optax.adam(config.learning_rate)

    @jax.jit
    def measure(params: object, key: Array) -> dict[str, Array]:
        ce_grad = jax.grad(lambda p: cross_entropy(model.apply(p, pop.features), pop.log_probs))(params)
        out = {"ce_grad": jnp.linalg.norm(ravel_pytree(ce_grad)[0])}
        for kind, kind_key in zip(NEGATIVE_KINDS, jax.random.split(key)):
            ce, nce, bias = gradient_bias(kind_key, model.apply, params, pop, config.num_candidates,
                                          config.num_simulations, kind)
            out.update({"ce": ce, f"{kind}_nce": nce, f"{kind}_bias": jnp.linalg.norm(bias)})
        return out

    def batch_loss(params: object, key: Array) -> Array:
        input_key, label_key = jax.random.split(key)
        inputs = jax.random.randint(input_key, (config.batch_size,), 0, config.num_inputs)
        labels = jax.random.categorical(label_key, pop.log_probs[inputs], axis=-1)
        scores = model.apply(params, pop.features[inputs])
        gold = jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(scores, axis=-1) - gold)

    def train_step(state: TrainState, key: Array) -> tuple[TrainState, None]:
        params, opt_state = state
        grads = jax.grad(batch_loss)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @functools.partial(jax.jit, static_argnums=2)
    def advance(state: TrainState, key: Array, num_steps: int) -> TrainState:
        return jax.lax.scan(train_step, state, jax.random.split(key, num_steps))[0]

    updates = list(range(0, config.steps, config.log_every)) + [config.steps]
    state = (params, optimizer.init(params))
    points = [measure(params, jax.random.fold_in(train_key, 0))]
    for point, (start, stop) in enumerate(zip(updates, updates[1:]), start=1):
        steps_key, measure_key = jax.random.split(jax.random.fold_in(train_key, point))
        state = advance(state, steps_key, stop - start)
        points.append(measure(state[0], measure_key))
    curves = {name: [float(p[name]) for p in points] for name in points[0]}
    curves["updates"] = updates
    curves["entropy"] = float(cross_entropy(pop.log_probs, pop.log_probs))
    return curves


def plot(curves: dict[str, list[float]], path: str) -> None:
    """Figure 3.1 as a PNG: losses (left) and gradient-bias norms (right) against updates; written atomically."""
    # Imported here so that `run` alone never loads matplotlib; Agg must be chosen before pyplot is imported.
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    updates = curves["updates"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(updates, curves["ce"], label="CE (exact)", color="black")
    left.plot(updates, curves["hard_nce"], label="hard NCE", color="tab:red", linestyle="--")
    left.plot(updates, curves["random_nce"], label="random NCE", color="tab:blue", linestyle="--")
    left.axhline(curves["entropy"], color="gray", linewidth=0.8, linestyle=":", label="H(pop) (min CE)")
    left.set(xlabel="update", ylabel="loss", title="Loss", yscale="log")
    left.legend()
    right.plot(updates, curves["ce_grad"], label=r"$\|\nabla J_{CE}\|$ (reference)", color="0.8", linewidth=4)
    right.plot(updates, curves["hard_bias"], label="hard", color="tab:red")
    right.plot(updates, curves["random_bias"], label="random", color="tab:blue")
    right.set(xlabel="update", ylabel=r"$\|\nabla J_{CE} - \nabla J_{NCE}\|$", title="Gradient bias", yscale="log")
    right.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp.{os.getpid()}"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: run the experiment and write nce_bias.json and nce_bias.png under --out."""
    defaults = BiasConfig()
    parser = argparse.ArgumentParser(prog="python -m kipjax.methods.nce_bias", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training updates")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    config = dataclasses.replace(defaults, steps=args.steps, seed=args.seed)
    start = time.time()
    curves = run(config)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "nce_bias.json"),
                      json.dumps({"config": dataclasses.asdict(config), **curves}, indent=1))
    plot(curves, os.path.join(args.out, "nce_bias.png"))
    print(f"{config.steps} updates in {time.time() - start:.1f}s; bias hard {curves['hard_bias'][0]:.4g} -> "
          f"{curves['hard_bias'][-1]:.4g}, random {curves['random_bias'][0]:.4g} -> {curves['random_bias'][-1]:.4g}; "
          f"final loss CE {curves['ce'][-1]:.4g}, hard {curves['hard_nce'][-1]:.4g}, "
          f"random {curves['random_nce'][-1]:.4g} (entropy {curves['entropy']:.4g})")


if __name__ == "__main__":
    main()
