"""Multi-task gradient combiners against direct numpy transcriptions of their papers' / the authors' updates."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax.optim import task_combiners as tc

T = 3


def random_tree(rng, leading=(), zeros_every=0):
    """A small parameter-like pytree (odd and even leaf sizes); every `zeros_every`-th element exactly zero."""
    tree = {"dense": {"kernel": rng.normal(size=(*leading, 4, 3)), "bias": rng.normal(size=(*leading, 3))},
            "embed": rng.normal(size=(*leading, 5, 2))}
    if zeros_every:
        tree = jax.tree.map(lambda x: np.where(np.arange(x.size).reshape(x.shape) % zeros_every == 0, 0.0, x), tree)
    return jax.tree.map(lambda x: x.astype(np.float32), tree)


def flat(tree, leading=0):
    """Leaves concatenated in jax.tree order: [d] or [T, d]."""
    leaves = jax.tree.leaves(tree)
    if leading:
        return np.concatenate([np.asarray(x, np.float64).reshape(leading, -1) for x in leaves], axis=1)
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])


def unflat(vector, like):
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for leaf in leaves:
        out.append(vector[start:start + leaf.size].reshape(leaf.shape))
        start += leaf.size
    return jax.tree.unflatten(treedef, out)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("size", [1, 2, 7, 10, 33])
def test_lower_median_is_torchs_median(size):
    rng = np.random.default_rng(size)
    values = np.abs(rng.normal(size=(T, size))) * 10.0 ** rng.integers(-30, 30, size=(T, size))
    values[:, ::3] = 0.0  # zeros count
    values[1, :size // 2] = 5.0  # ties
    values = values.astype(np.float32)
    tree = {"a": jnp.asarray(values[:, :size // 2]), "b": jnp.asarray(values[:, size // 2:])}
    expected = np.sort(values, axis=1)[:, (size - 1) // 2]  # torch.median: the lower middle value
    np.testing.assert_array_equal(np.asarray(jax.jit(tc.lower_median)(tree)), expected)


def numpy_algorithm_1(task_grads, params, tau, beta, burn_in, eps=1e-12):
    """Algorithm 1 (Appendix B.1) as the authors' code runs it, on flat float64 vectors, step by step."""
    sensitivity, out = 0.0, []
    for step, (grads, theta) in enumerate(zip(task_grads, params)):
        raw = np.abs(grads * theta[None])
        median = np.sort(raw, axis=1)[:, (raw.shape[1] - 1) // 2]
        sensitivity = beta * sensitivity + (1 - beta) * raw / (median[:, None] + eps)
        if step < burn_in:
            out.append(grads.sum(0) / len(grads))
        else:
            out.append((softmax(sensitivity / tau, axis=0) * grads).sum(0) / len(grads))
    return out, sensitivity


@pytest.mark.parametrize("tau", [2.0, 0.5, -1.0])
def test_task_sensitivity_combiner_follows_algorithm_1(tau):
    rng = np.random.default_rng(0)
    steps, burn_in, beta = 6, 2, 0.7  # beta well below 0.999, so the moving average's weighting shows
    params = [random_tree(rng, zeros_every=4) for _ in range(steps)]
    grads = [jax.tree.map(lambda x: x * rng.uniform(0.1, 10), random_tree(rng, (T,))) for _ in range(steps)]
    combiner = tc.task_sensitivity_combiner(num_tasks=T, tau=tau, beta=beta, burn_in_steps=burn_in)
    update = jax.jit(combiner.update)
    state = combiner.init(params[0])
    expected, expected_sensitivity = numpy_algorithm_1([flat(g, T) for g in grads], [flat(p) for p in params],
                                                       tau, beta, burn_in)
    for g, p, want in zip(grads, params, expected):
        combined, state = update(g, state, p, jnp.zeros(T))
        np.testing.assert_allclose(flat(combined), want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(flat(state.sensitivity, T), expected_sensitivity, rtol=2e-5)
    assert int(state.count) == steps


def test_one_task_gets_its_own_gradient_and_a_non_finite_step_keeps_the_state():
    rng = np.random.default_rng(1)
    params, grads = random_tree(rng), random_tree(rng, (1,))
    combiner = tc.task_sensitivity_combiner(num_tasks=1)
    combined, state = combiner.update(grads, combiner.init(params), params, jnp.zeros(1))
    np.testing.assert_allclose(flat(combined), flat(grads, 1)[0], rtol=1e-6)

    combiner = tc.task_sensitivity_combiner(num_tasks=T)
    state = combiner.update(random_tree(rng, (T,)), combiner.init(params), params, jnp.zeros(T))[1]
    poisoned = random_tree(rng, (T,))
    poisoned["embed"][1, 0, 0] = np.nan
    combined, after = combiner.update(poisoned, state, params, jnp.zeros(T))
    assert np.isnan(flat(combined)).any()  # the mean: the trainer then skips the step
    np.testing.assert_array_equal(flat(after.sensitivity, T), flat(state.sensitivity, T))


def numpy_pcgrad(grads, orders):
    pcs = []
    for i in range(len(grads)):
        pc = grads[i].copy()
        for j in orders[i]:
            dot = pc @ grads[j]
            if dot < 0:
                pc = pc - dot / (grads[j] @ grads[j]) * grads[j]
        pcs.append(pc)
    return np.sum(pcs, axis=0) / len(grads)


def test_pcgrad_projects_in_the_drawn_orders():
    rng = np.random.default_rng(2)
    params = random_tree(rng)
    combiner = tc.pcgrad_combiner(seed=5)
    state = combiner.init(params)
    key = jax.random.PRNGKey(5)
    conflicts = 0
    for _ in range(4):
        grads = random_tree(rng, (T,))
        grads["embed"][1] = -grads["embed"][0]  # force conflicts
        draw, key = jax.random.split(key)  # as the combiner splits its state's key
        orders = np.asarray(tc.pcgrad_orders(draw, T))
        combined, state = jax.jit(combiner.update)(grads, state, params, jnp.zeros(T))
        g = flat(grads, T)
        conflicts += int((g @ g.T < 0).sum())
        np.testing.assert_allclose(flat(combined), numpy_pcgrad(g, orders), rtol=1e-4, atol=1e-6)
    assert conflicts > 0


def test_cgd_follows_the_authors_multiplicative_weights():
    rng = np.random.default_rng(3)
    params = random_tree(rng)
    combiner = tc.cgd_combiner(num_tasks=T, beta=0.25, tau=0.5)
    state = combiner.init(params)
    weights = np.full(T, 1.0 / T)
    for _ in range(3):
        grads, losses = random_tree(rng, (T,)), rng.uniform(0.5, 3.0, size=T)
        g = flat(grads, T)
        normed = g / np.linalg.norm(g, axis=1, keepdims=True)
        rewards = ((np.outer(losses, losses) ** 0.25) * (normed @ normed.T)).sum(-1)
        weights = softmax(rewards / 0.5 + np.log(weights), axis=0)
        combined, state = combiner.update(grads, state, params, jnp.asarray(losses, jnp.float32))
        np.testing.assert_allclose(np.asarray(state), weights, rtol=1e-5)
        np.testing.assert_allclose(flat(combined), weights @ g, rtol=1e-5, atol=1e-6)


def test_gradnorm_learns_its_weights_as_chen_et_al():
    rng = np.random.default_rng(4)
    params = random_tree(rng)
    alpha, lr = 1.5, 0.1
    combiner = tc.gradnorm_combiner(num_tasks=T, alpha=alpha, learning_rate=lr)
    state = combiner.init(params)
    logits, initial = np.zeros(T), None
    for step in range(4):
        grads, losses = random_tree(rng, (T,)), rng.uniform(0.5, 3.0, size=T)
        g = flat(grads, T)
        initial = losses if initial is None else initial
        s = softmax(logits, axis=0)
        w = T * s
        combined, state = combiner.update(grads, state, params, jnp.asarray(losses, jnp.float32))
        np.testing.assert_allclose(flat(combined), w @ g, rtol=1e-5, atol=1e-6)
        norms = np.linalg.norm(g, axis=1)
        ratios = losses / initial
        target = np.mean(w * norms) * (ratios / ratios.mean()) ** alpha
        d_weights = np.sign(w * norms - target) * norms  # d/dw of sum |w_k |g_k| - target_k|
        d_logits = T * (np.diag(s) - np.outer(s, s)) @ d_weights
        logits = logits - lr * d_logits
        np.testing.assert_allclose(np.asarray(state.logits), logits, rtol=1e-4, atol=1e-6)
    assert not np.allclose(logits, 0.0)  # the weights moved: they are learned


def test_naive_combiner_sums_or_averages():
    rng = np.random.default_rng(5)
    grads = random_tree(rng, (T,))
    summed, _ = tc.naive_combiner().update(grads, (), None, jnp.zeros(T))
    averaged, _ = tc.naive_combiner(reduction="mean").update(grads, (), None, jnp.zeros(T))
    np.testing.assert_allclose(flat(summed), flat(grads, T).sum(0), rtol=1e-6)
    np.testing.assert_allclose(flat(averaged), flat(grads, T).mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        tc.naive_combiner(reduction="max")


def test_the_burn_in_is_a_tenth_of_the_run_unless_given():
    assert tc.task_sensitivity_combiner(num_tasks=2, total_steps=250).burn_in_steps == 25
    assert tc.task_sensitivity_combiner(num_tasks=2, total_steps=250, burn_in_steps=3).burn_in_steps == 3


def test_state_mirroring_boxed_params_gets_an_unsharded_task_axis():
    from flax import linen as nn
    params = {"w": nn.Partitioned(jnp.ones((4, 3)), names=("embed", "mlp"))}
    state = tc.task_sensitivity_combiner(num_tasks=T).init(params)
    box = state.sensitivity["w"]
    assert isinstance(box, nn.Partitioned) and box.names == (None, "embed", "mlp") and box.value.shape == (T, 4, 3)
