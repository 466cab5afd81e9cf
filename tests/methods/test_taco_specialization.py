"""TACO's task-specialization analysis (Figures 4.1 and 4.2): entropy and its bins by hand, the sensitivities
against a numpy transcription of the combiner's definition, the KDE and its outlier rule, the command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax import cli, runner
from kipjax.methods.taco import specialization as sp
from kipjax.methods.taco.retrieval import configured_taco
from kipjax.optim.task_combiners import task_sensitivity_combiner

REPO = Path(__file__).resolve().parents[2]
DEMO = "gin_configs/taco/demo.gin"
# A 1-layer, 32-wide T5 and 16-query batches: the demo's recipe at the smallest size that still runs it.
TINY = ("T5Config.d_model = 32", "T5Config.d_kv = 8", "T5Config.d_ff = 64", "T5Config.num_layers = 1",
        "BATCH_SIZE = 16", "TacoRetrieval.negative_pool = 4")


# ------------------------------------------------------------------------------------------- entropy


def entropy_of(q):
    q = np.asarray(q, np.float64)
    return float(-np.sum(q * np.log(q)))


def test_equal_sensitivities_have_the_uniform_entropy_log_t():
    for tasks in (2, 4, 8):
        entropy = sp.task_entropy(jnp.full((tasks, 3), 1.7), tau=2.0)
        np.testing.assert_allclose(entropy, np.log(tasks), rtol=1e-6)


def test_entropy_is_of_the_softmax_of_sensitivity_over_tau():
    sensitivity = np.array([[0.0, 3.0], [1.0, 0.0], [2.0, 0.0]])  # [T=3, 2 elements]
    for tau in (0.5, 2.0):
        expected = [entropy_of(np.exp(s / tau) / np.exp(s / tau).sum()) for s in sensitivity.T]
        np.testing.assert_allclose(sp.task_entropy(sensitivity, tau), expected, rtol=1e-5)


def test_the_task_specific_threshold_is_95_percent_on_one_of_eight_tasks():
    q = np.array([0.95] + [0.05 / 7] * 7)
    assert entropy_of(q) == pytest.approx(sp.TASK_SPECIFIC_ENTROPY, abs=0.005)  # 0.2958
    # reached through eq. 4.2 itself: sensitivities log q at tau 1 give q back
    assert float(sp.task_entropy(np.log(q)[:, None], 1.0)[0]) == pytest.approx(entropy_of(q), abs=1e-5)


def test_histogram_bins_by_hand():
    """Four tasks, five elements: never sensitive, one-hot, uniform, and two in known regular bins."""
    top = np.log(4)
    middle = np.array([0.0, 0.0, 0.0, 0.0])  # entropy log 4: the last bin
    two_way = np.array([0.0, 0.0, 50.0, 50.0])  # q = (0, 0, 1/2, 1/2): entropy log 2
    normalised = np.stack([np.zeros(4), [0.0, 0.0, 40.0, 0.0], middle, two_way, middle], axis=1)  # [4, 5]
    raw = np.stack([np.full(4, 1e-9), [0.0, 0.0, 1.0, 0.0], np.ones(4), np.ones(4), [0.0, 2e-8, 0.0, 0.0]], axis=1)
    histogram = sp.entropy_histogram({"w": jnp.asarray(normalised)}, {"w": jnp.asarray(raw)}, tau=1.0, bins=4)
    assert histogram["elements"] == 5
    assert histogram["not_activated"] == pytest.approx(1 / 5)  # raw below 1e-8 for every task
    assert histogram["task_specific"] == pytest.approx(1 / 5)  # the one-hot
    np.testing.assert_allclose(histogram["edges"], np.linspace(0.3, top, 5))
    two_way_bin = int((np.log(2) - 0.3) / (top - 0.3) * 4)
    expected = np.zeros(4)
    expected[3] += 2 / 5  # the two uniform elements (one only just activated)
    expected[two_way_bin] += 1 / 5
    np.testing.assert_allclose(histogram["fractions"], expected)
    assert histogram["not_activated"] + histogram["task_specific"] + sum(histogram["fractions"]) == pytest.approx(1)


def test_histogram_adds_up_the_leaves_of_a_tree():
    rng = np.random.default_rng(0)
    tree = {"a": rng.exponential(size=(3, 4, 5)), "b": {"c": rng.exponential(size=(3, 7))}}
    raw = jax.tree.map(lambda x: np.where(x > 1.5, x, 0.0), tree)
    whole = sp.entropy_histogram(tree, raw, tau=0.5, bins=6)
    flat = lambda t: np.concatenate([x.reshape(3, -1) for x in jax.tree.leaves(t)], axis=1)  # noqa: E731
    joined = sp.entropy_histogram(flat(tree), flat(raw), tau=0.5, bins=6)
    assert whole["elements"] == 27
    for key in ("not_activated", "task_specific", "fractions"):
        np.testing.assert_allclose(whole[key], joined[key])
    assert whole["not_activated"] == pytest.approx(np.mean(np.all(flat(raw) < 1e-8, axis=0)))


def test_histogram_needs_a_threshold_below_log_t():
    with pytest.raises(ValueError, match="task_specific_below"):
        sp.entropy_histogram(jnp.ones((2, 3)), jnp.ones((2, 3)), tau=1.0, task_specific_below=0.7)  # log 2 = 0.69


# --------------------------------------------------------------------------------------- sensitivity


def quadratic_gradients(params, batch):
    """Task k's loss sum(0.5 a_k theta^2 + c_k theta) per leaf: gradient a_k theta + c_k, [T, ...] leaves."""
    def loss(p, k):
        return sum(jnp.sum(0.5 * batch["a"][name][k] * p[name] ** 2 + batch["c"][name][k] * p[name]) for name in p)
    grads = [jax.grad(loss)(params, k) for k in range(len(batch["a"]["w"]))]
    return jax.tree.map(lambda *g: jnp.stack(g), *grads)


def numpy_sensitivities(params, batches, eps):
    """The combiner's normalisation transcribed: |g_k theta| / (torch's lower median over all elements + eps),
    and the raw |g_k theta|, each averaged over the batches."""
    theta = flat_tasks({name: value[None] for name, value in params.items()})[0].astype(np.float64)
    normalised, raw = [], []
    for batch in batches:
        gradient = flat_tasks(batch["a"]) * theta + flat_tasks(batch["c"])  # [T, d], the quadratic's gradient
        s = np.abs(gradient * theta)
        median = np.sort(s, axis=1)[:, (s.shape[1] - 1) // 2]  # the lower of the two middle values (d even)
        normalised.append(s / (median[:, None] + eps))
        raw.append(s)
    return np.mean(normalised, axis=0), np.mean(raw, axis=0)


def flat_tasks(tree):
    """[T, d]: the [T, ...] leaves flattened and joined in key order."""
    return np.concatenate([np.asarray(tree[name], np.float64).reshape(tree[name].shape[0], -1)
                           for name in sorted(tree)], axis=1)


def test_sensitivities_are_the_mean_of_the_combiners_normalised_sensitivity():
    rng = np.random.default_rng(1)
    tasks = 3
    params = {"b": rng.normal(size=2).astype(np.float32), "w": rng.normal(size=(3, 2)).astype(np.float32)}

    def batch():
        draw = lambda: {k: rng.normal(size=(tasks, *v.shape)).astype(np.float32) for k, v in params.items()}  # noqa
        return {"a": draw(), "c": draw()}

    batches = [batch() for _ in range(4)]
    combiner = task_sensitivity_combiner(num_tasks=tasks)
    result = sp.task_sensitivities(quadratic_gradients, params, batches, combiner)
    normalised, raw = numpy_sensitivities(params, batches, combiner.eps)
    assert int(result.batches) == 4
    np.testing.assert_allclose(flat_tasks(result.normalised), normalised, rtol=2e-5)
    np.testing.assert_allclose(flat_tasks(result.raw), raw, rtol=2e-5)

    broken = batch()
    broken["c"]["w"][1, 0, 0] = np.nan  # task 1's gradient is not finite: the batch is left out
    with_broken = sp.task_sensitivities(quadratic_gradients, params, [batches[0], broken, *batches[1:]], combiner)
    assert int(with_broken.batches) == 4
    np.testing.assert_allclose(flat_tasks(with_broken.normalised), normalised, rtol=2e-5)
    np.testing.assert_allclose(flat_tasks(with_broken.raw), raw, rtol=2e-5)


# ------------------------------------------------------------------------------------------- density


def test_sampled_elements_are_the_same_for_every_task():
    tasks = 3
    sizes = {"a": (4, 5), "b": (7,)}
    start = {"a": 0, "b": 20}
    tree = {name: np.stack([1000 * k + start[name] + np.arange(np.prod(shape)).reshape(shape)
                            for k in range(tasks)]).astype(np.float32) for name, shape in sizes.items()}
    everything = sp.sample_elements(tree, 100)
    np.testing.assert_array_equal(everything[0], np.arange(27))
    sample = sp.sample_elements(tree, 6, seed=3)
    assert sample.shape == (3, 6) and len(set(sample[0].tolist())) == 6
    np.testing.assert_array_equal(sample - sample[0], np.arange(tasks)[:, None] * 1000 * np.ones((1, 6)))


def test_outliers_beyond_k_mads_are_dropped():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, distances 2 1 0 1 97: MAD 1
    np.testing.assert_array_equal(sp.drop_outliers(values, 1.0), [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(sp.drop_outliers(values, 2.0), [1.0, 2.0, 3.0, 4.0])
    assert len(sp.drop_outliers(values, 97.0)) == 5


def test_the_density_integrates_to_one_without_the_planted_outlier():
    values = np.concatenate([np.random.default_rng(2).normal(3.0, 1.0, 4000), [1e4]])
    curve = sp.sensitivity_density(values, max_mads=10.0)  # 6.7 sigma: only the plant goes
    assert curve["dropped"] == 1 and curve["kept"] == 4000 and max(curve["x"]) < 100
    assert np.trapezoid(curve["density"], curve["x"]) == pytest.approx(1.0, abs=0.01)
    assert curve["x"][int(np.argmax(curve["density"]))] == pytest.approx(3.0, abs=0.3)


def test_no_density_when_the_kept_values_do_not_vary():
    assert sp.sensitivity_density(np.array([0.0] * 10 + [1.0, 2.0])) is None  # MAD 0: only the zeros are kept


# ------------------------------------------------------------------------------------------- command


def test_figure_tasks_default_to_the_first_four_and_unknown_names_fail():
    names = ["qa", "fc", "sf", "el", "wow"]
    assert sp.density_task_indices(names, None) == [0, 1, 2, 3]
    assert sp.density_task_indices(names[:2], None) == [0, 1]
    assert sp.density_task_indices(names, "el, qa") == [3, 0]
    with pytest.raises(SystemExit, match=r"unknown task\(s\) \['nq'\].*\['qa', 'fc', 'sf', 'el', 'wow'\]"):
        sp.density_task_indices(names, "qa,nq")


def test_compared_results_must_share_bins_and_quantity(tmp_path):
    edges = sp.entropy_edges(4, 2)
    other = {"label": "naive", "histogram": {"edges": edges}, "densities": {}, "settings": {"density": "normalised"}}
    sp.check_comparable("taco", edges, "normalised", [other])
    with pytest.raises(SystemExit, match="'naive' on 'taco': densities of normalised and raw"):
        sp.check_comparable("taco", edges, "raw", [other])
    with pytest.raises(SystemExit, match="different entropy bins"):
        sp.check_comparable("taco", sp.entropy_edges(4, 3), "normalised", [other])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a specialization.json"):
        sp.load_comparisons([str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="No such file"):
        sp.load_comparisons([str(tmp_path / "absent.json")])


def test_the_figures_overlay_variants(tmp_path):
    histogram = {"edges": [0.3, 0.8, 1.386], "fractions": [0.3, 0.4], "not_activated": 0.1, "task_specific": 0.2}
    curve = {"x": [0.0, 1.0, 2.0], "density": [0.2, 0.6, 0.2]}
    results = [{"label": label, "histogram": histogram, "settings": {"density": "normalised"},
                "densities": {"qa": curve, "fc": None}} for label in ("taco", "naive")]
    sp.plot_task_entropy(results, str(tmp_path / "entropy.png"))
    sp.plot_sensitivity_density(results, str(tmp_path / "density.png"))
    for name in ("entropy.png", "density.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["density.png", "entropy.png"]  # no temporary file left


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # gin `include` paths are relative to the repository root


def test_a_config_without_taco_fails_clearly(tmp_path, in_repo):
    (tmp_path / "checkpoints" / "1" / "state").mkdir(parents=True)
    with pytest.raises(SystemExit, match="HardNCERetrieval, not TACO's TacoRetrieval"):
        sp.main(["--gin_file=gin_configs/quickstart.gin", f"--checkpoint={tmp_path}", f"--out={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def fresh_checkpoint(model_dir: Path, save_initial_checkpoint) -> None:
    """A checkpoint of freshly initialised params at step 0 with BM25 negatives as its method state (no training),
    laid out as `python -m kipjax.train` leaves it; checks that `runner.restore_params(..., load_method_state=True)`
    gets those negatives back."""
    gin.parse_config_files_and_bindings([DEMO], [*TINY, cli.METHOD_BINDING])
    method = configured_taco("the test")
    method.pools = method.bm25_pools()
    method.on_epoch_start(None, 0, jax.random.PRNGKey(5))
    save_initial_checkpoint(method, model_dir)
    saved = {k: np.asarray(v) for k, v in method.state_dict().items()}
    method.pools, method.picked = [0 * p for p in method.pools], [0 * p for p in method.picked]
    runner.restore_params(str(model_dir), method, load_method_state=True)
    for key, value in saved.items():
        np.testing.assert_array_equal(np.asarray(method.state_dict()[key]), value)
    gin.clear_config()


def run_command(*args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it: one CPU device, not the test session's 8 fake ones."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-m", "kipjax.methods.taco.specialization", *args], cwd=REPO,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def check_outputs(out: Path, label: str, tasks: list[str]) -> dict:
    result = json.loads((out / "specialization.json").read_text())
    histogram = result["histogram"]
    assert result["label"] == label and result["tasks"] == ["qa", "fc", "sf", "el"]
    assert histogram["not_activated"] + histogram["task_specific"] + sum(histogram["fractions"]) == pytest.approx(1)
    assert len(histogram["edges"]) == 11 and histogram["edges"][-1] == pytest.approx(np.log(4))
    assert list(result["densities"]) == tasks and all(result["densities"][t]["kept"] > 0 for t in tasks)
    for name in ("task_entropy.png", "sensitivity_density.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    return result


@pytest.mark.slow
def test_command_on_a_freshly_initialised_checkpoint(tmp_path, in_repo, save_initial_checkpoint):
    """No training: an unknown --tasks name fails before any restore; the command restores a step-0 checkpoint
    with its negatives, averages 3 batches, and overlays an earlier result in both figures."""
    model_dir = tmp_path / "fresh"
    fresh_checkpoint(model_dir, save_initial_checkpoint)
    common = [f"--gin_file={DEMO}", *(f"--gin.{b.replace(' ', '')}" for b in TINY), f"--checkpoint={model_dir}"]
    with pytest.raises(SystemExit, match=r"unknown task\(s\) \['nq'\]"):
        sp.main([*common, f"--out={tmp_path / 'never'}", "--tasks=qa,nq"])
    assert not (tmp_path / "never").exists()

    earlier = {"label": "naive", "settings": {"density": "normalised"}, "densities": {"qa": None},
               "histogram": {"edges": np.linspace(0.3, np.log(4), 11).tolist(), "fractions": [0.05] * 10,
                             "not_activated": 0.2, "task_specific": 0.3}}
    (tmp_path / "naive.json").write_text(json.dumps(earlier))
    out = run_command(*common, f"--out={tmp_path / 'out'}", "--batches=3", "--sample=2000", "--tasks=el,qa",
                      f"--compare={tmp_path / 'naive.json'}").stdout
    assert "fresh (step 0, 3 batches" in out
    result = check_outputs(tmp_path / "out", "fresh", ["el", "qa"])
    assert result["step"] == 0 and result["batches"] == 3 and result["settings"]["tau"] == 2.0
