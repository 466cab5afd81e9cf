"""Staged runs (TACO's warmup + ANCE episodes): params chain through the stages, each with a fresh optimizer, its
own schedule and length; the stage hook runs once per stage; a killed run resumes bit for bit; stages.json. Also the
Trainer's `train_epochs` and `initial_params`."""
import contextlib
import io
import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax import optim, runner
from kipjax.data.feed import SeqioFeed
from kipjax.optim import task_sensitivity_combiner
from kipjax.stages import Stage, run_stages, staged_checkpoint
from kipjax.trainer import Trainer
# tests/ is on sys.path (pytest's rootdir-relative import of test modules without __init__.py)
from test_trainer import CLASSES, NUM_EXAMPLES, ToyMethod, TwoTaskToyMethod, toy_mixture, two_task_mixture

STAGES = (Stage("warmup", steps=4), Stage("episode_1", epochs=1),
          Stage("episode_2", steps=3, gradient_combiner=task_sensitivity_combiner))
STEPS_PER_EPOCH = 8  # the two-task composition: 48 rows of task 0 / 6 per batch = 16 rows of task 1 / 2


class Died(Exception):
    """The run dying inside a stage hook (between two stages)."""


class StagedToyMethod(TwoTaskToyMethod):
    """The two-task toy method in three stages. Before each one it 'mines' a negative class per example with the
    stage's starting params, mixed with the previous stage's (a device table that both task losses push down,
    saved in the method state), and it records every hook call with the params it was handed."""

    def __init__(self, die_at_stage=None):
        super().__init__()
        self.negatives = jnp.zeros((NUM_EXAMPLES,), jnp.int32)
        self.stage_calls = []  # (stage, params on the host)
        self.die_at_stage = die_at_stage

    def stages(self):
        return list(STAGES)

    def on_stage_start(self, params, stage, rng):
        if stage == self.die_at_stage:
            raise Died
        self.stage_calls.append((stage, jax.device_get(params)))
        logits = self.model.apply({"params": params}, self.x)
        mined = jnp.argmax(logits + jax.random.gumbel(rng, logits.shape), -1).astype(jnp.int32)
        self.negatives = (mined + self.negatives) % CLASSES  # depends on the previous stages' method state too

    def tables(self):
        return {**super().tables(), "negatives": self.negatives}

    def task_loss(self, params, batch, task, rng):
        loss, metrics = super().task_loss(params, batch, task, rng)
        rows = self.ROWS[task]
        logp = jax.nn.log_softmax(self.model.apply({"params": params}, batch["x"][rows]))
        negatives = batch["tables"]["negatives"][batch["example_index"][rows]]
        return loss + 0.1 * jnp.mean(jnp.take_along_axis(logp, negatives[:, None], 1)), metrics

    def state_dict(self):
        return {**super().state_dict(), "negatives": self.negatives}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.negatives = jnp.asarray(state["negatives"])


def configure():
    """The gin every staged run here shares (each stage's Trainer takes everything but its own knobs from it)."""
    gin.clear_config()
    gin.bind_parameter("Trainer.mixture_or_task_name", two_task_mixture())
    gin.bind_parameter("Trainer.train_steps", 1000)  # as every config does; the stages override it
    for key, value in {"batch_size": 8, "log_every": 1, "eval_every": 4, "seed": 3}.items():
        gin.bind_parameter(f"Trainer.{key}", value)
    gin.bind_parameter("Checkpointer.every_steps", 3)
    gin.bind_parameter("learning_rate_schedule.peak_value", 0.01)
    gin.bind_parameter("learning_rate_schedule.warmup_steps", 2)
    gin.bind_parameter("task_sensitivity_combiner.beta", 0.5)


@pytest.fixture(autouse=True)
def clean_gin():
    configure()
    yield
    gin.clear_config()


def train(model_dir, method):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runner.train(method=method, model_dir=str(model_dir))
    return out.getvalue()


def final_states(model_dir, method):
    """Every stage's train state at its final checkpoint, on the host."""
    states = []
    for stage, steps in zip(STAGES, (4, STEPS_PER_EPOCH, 3)):
        trainer = Trainer(method, model_dir=str(model_dir / stage.name), train_steps=steps,
                          gradient_combiner=stage.gradient_combiner)
        states.append(jax.device_get(trainer.restore_state(str(model_dir / stage.name / "checkpoints"), steps)))
    return states


def records(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted staged run through `runner.train`, recording each Trainer's initial state."""
    configure()
    model_dir = tmp_path_factory.mktemp("staged") / "full"
    starts = {}
    initial_state = Trainer.initial_state

    def recording_initial_state(self, batch, params=None):
        state = initial_state(self, batch, params)
        starts[os.path.basename(self.model_dir)] = jax.device_get(state)
        return state

    method = StagedToyMethod()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "initial_state", recording_initial_state)
        stdout = train(model_dir, method)
    result = dict(model_dir=model_dir, method=method, starts=starts, stdout=stdout,
                  finals=final_states(model_dir, StagedToyMethod()))
    gin.clear_config()
    return result


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_each_stage_starts_from_the_previous_ones_end_with_a_fresh_optimizer(full_run):
    starts, finals, method = full_run["starts"], full_run["finals"], full_run["method"]
    assert [stage for stage, _ in method.stage_calls] == [0, 1, 2], "one hook call per stage, in order"
    # Stage 0 starts from the freshly initialised params, which its hook saw; each later stage from the previous
    # stage's final checkpoint, which its hook saw too.
    assert_trees_equal(starts["warmup"].params, method.stage_calls[0][1])
    for previous, stage, index in (("warmup", "episode_1", 1), ("episode_1", "episode_2", 2)):
        final = finals[index - 1].params
        assert_trees_equal(starts[stage].params, final)
        assert_trees_equal(method.stage_calls[index][1], final)
    for name, start in starts.items():
        assert int(start.step) == 0, name
        assert all(not np.any(leaf) for leaf in jax.tree.leaves(start.opt_state)), f"{name}: fresh Adam state"
        if name == "episode_2":
            assert int(start.combiner_state.count) == 0 and not np.any(start.combiner_state.sensitivity["w1"])
        else:
            assert start.combiner_state == ()
    assert [int(s.step) for s in finals] == [4, STEPS_PER_EPOCH, 3]
    assert int(finals[2].combiner_state.count) == 3, "the last stage trains with its gradient combiner"


@pytest.mark.slow
def test_each_stage_has_its_own_schedule_length_and_trail(full_run):
    model_dir = full_run["model_dir"]
    assert SeqioFeed(two_task_mixture(), 8).steps_per_epoch == STEPS_PER_EPOCH
    for stage, steps in zip(STAGES, (4, STEPS_PER_EPOCH, 3)):
        logged = records(model_dir / stage.name / "metrics.jsonl")
        assert [r["step"] for r in logged] == list(range(0 if stage.name == "warmup" else 1, steps + 1))
        schedule = optim.learning_rate_schedule(total_steps=steps)  # a fresh one over the stage's own steps
        lrs = [r["learning_rate"] for r in logged if "learning_rate" in r]
        assert lrs == pytest.approx([float(schedule(s)) for s in range(steps)], rel=1e-6, abs=1e-12)
        assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.01), "warmup from 0 to the peak in every stage"
        assert "eval/accuracy" in logged[-1]
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir / stage.name / "tb"))
    assert "task_0/loss" in records(model_dir / "episode_2" / "metrics.jsonl")[-1]
    assert "eval/accuracy" in records(model_dir / "warmup" / "metrics.jsonl")[0], "only stage 0 evaluates first"
    assert json.loads((model_dir / "stages.json").read_text()) == {"current": None, "stages": [
        {"name": "warmup", "epochs": None, "steps": 4, "gradient_combiner": None, "train_steps": 4,
         "status": "done", "checkpoint_step": 4},
        {"name": "episode_1", "epochs": 1, "steps": None, "gradient_combiner": None, "train_steps": STEPS_PER_EPOCH,
         "status": "done", "checkpoint_step": STEPS_PER_EPOCH},
        {"name": "episode_2", "epochs": None, "steps": 3, "gradient_combiner": "task_sensitivity_combiner",
         "train_steps": 3, "status": "done", "checkpoint_step": 3}]}
    assert (model_dir / "config.gin").exists() and (model_dir / "operative_config.gin").exists()
    stdout = full_run["stdout"]
    for line in ("stage 1/3 warmup done: eval/accuracy=", "stage 2/3 episode_1 done: eval/accuracy=",
                 "stage 3/3 episode_2 done: eval/accuracy=", "eval before -> after training: accuracy "):
        assert line in stdout, stdout


@pytest.mark.parametrize("where", ["inside_stage_2", "between_stages"])
@pytest.mark.slow
def test_a_killed_staged_run_resumes_bit_for_bit(where, full_run, tmp_path, kill_switch):
    model_dir = tmp_path / "killed"
    if where == "inside_stage_2":
        kill_switch.arm(6)  # episode_1's step 6 (the warmup has 4): after its checkpoint 3, before 6
        with pytest.raises(kill_switch.Killed):
            train(model_dir, StagedToyMethod())
        kill_switch.disarm()
        assert sorted(os.listdir(model_dir / "episode_1" / "checkpoints")) == ["3"]
        expected_status = ["done", "running", "pending"]
    else:
        with pytest.raises(Died):  # the warmup is done; episode_1's hook dies
            train(model_dir, StagedToyMethod(die_at_stage=1))
        assert not (model_dir / "episode_1").exists()
        expected_status = ["done", "running", "pending"]
    status = json.loads((model_dir / "stages.json").read_text())
    assert status["current"] == "episode_1" and [s["status"] for s in status["stages"]] == expected_status
    method = StagedToyMethod()
    stdout = train(model_dir, method)
    assert [stage for stage, _ in method.stage_calls] == ([2] if where == "inside_stage_2" else [1, 2]), \
        "a stage with a checkpoint resumes with its saved method state instead of running its hook again"
    assert "stage 1/3 warmup already done: eval/accuracy=" in stdout
    assert "eval before -> after training: accuracy " in stdout, "stage 0's initial eval comes from its log"
    assert_trees_equal(final_states(model_dir, StagedToyMethod()), full_run["finals"])
    assert_trees_equal(method.state_dict(), full_run["method"].state_dict())
    for stage in STAGES:
        drop = lambda rs: [{k: v for k, v in r.items() if k != "examples_per_second"} for r in rs]  # noqa: E731
        assert drop(records(model_dir / stage.name / "metrics.jsonl")) == \
            drop(records(full_run["model_dir"] / stage.name / "metrics.jsonl")), stage.name


@pytest.mark.slow
def test_a_finished_staged_run_is_skipped_and_its_checkpoints_found(full_run, tmp_path, monkeypatch):
    model_dir = tmp_path / "done"
    shutil.copytree(full_run["model_dir"], model_dir)
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a finished stage does not train again"))
    method = StagedToyMethod()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        params, metrics, initial_eval = run_stages(method, str(model_dir), STAGES)
    assert method.stage_calls == []
    assert_trees_equal(jax.device_get(params), full_run["finals"][2].params)
    assert_trees_equal(method.state_dict(), full_run["method"].state_dict())
    assert metrics["eval/accuracy"] == records(model_dir / "episode_2" / "metrics.jsonl")[-1]["eval/accuracy"]
    assert initial_eval == {"eval/accuracy": records(model_dir / "warmup" / "metrics.jsonl")[0]["eval/accuracy"]}
    assert out.getvalue().count("already done") == 3
    # evaluate / index find a staged run's newest stage (with its combiner state) or a named stage.
    assert staged_checkpoint(str(model_dir), STAGES) == (str(model_dir / "episode_2"), STAGES[2])
    restored, step, stage_dir = runner.restore_params(str(model_dir), StagedToyMethod())
    assert (step, stage_dir) == (3, str(model_dir / "episode_2"))
    assert_trees_equal(jax.device_get(restored), full_run["finals"][2].params)
    restored, step, _ = runner.restore_params(str(model_dir / "warmup"), StagedToyMethod())
    assert step == 4
    assert_trees_equal(jax.device_get(restored), full_run["finals"][0].params)


def test_stages_are_checked():
    with pytest.raises(ValueError, match="exactly one of epochs and steps"):
        Stage("a")
    with pytest.raises(ValueError, match="exactly one of epochs and steps"):
        Stage("a", epochs=1, steps=2)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        Stage("a", steps=0)
    with pytest.raises(ValueError, match="plain directory name"):
        Stage("a/b", steps=1)
    with pytest.raises(ValueError, match="repeats a stage name"):
        run_stages(StagedToyMethod(), "/tmp/unused", [Stage("a", steps=1), Stage("a", steps=1)])


# ------------------------------------------------------------------------------ Trainer: epochs, initial params


def test_train_epochs_count_the_feeds_epochs():
    gin.clear_config()
    assert Trainer(ToyMethod(), model_dir="/tmp/unused", train_epochs=3).train_steps == 3 * NUM_EXAMPLES // 8
    gin.bind_parameter("Trainer.train_steps", 100)  # a config's binding; explicit arguments win over it
    assert Trainer(ToyMethod(), model_dir="/tmp/unused", train_steps=None, train_epochs=1).train_steps == 8
    with pytest.raises(ValueError, match="exactly one of train_steps and train_epochs.*Trainer.train_steps = None"):
        Trainer(ToyMethod(), model_dir="/tmp/unused", train_epochs=1)
    gin.clear_config()
    with pytest.raises(ValueError, match="exactly one of train_steps and train_epochs"):
        Trainer(ToyMethod(), model_dir="/tmp/unused")
    with pytest.raises(ValueError, match="sampled Mixture.*without epochs"):
        Trainer(ToyMethod(), model_dir="/tmp/unused", train_epochs=1, mixture_or_task_name=toy_mixture())


def fit(model_dir, method, steps=6, **kwargs):
    trainer = Trainer(method, model_dir=str(model_dir), train_steps=steps, batch_size=8, log_every=1, seed=3,
                      **kwargs)
    return jax.device_get(trainer.fit()[0])


@pytest.mark.slow
def test_initial_params_are_where_a_fresh_run_starts_and_a_checkpoint_wins(tmp_path, kill_switch):
    gin.clear_config()
    gin.bind_parameter("Checkpointer.every_steps", 3)
    start = Trainer(ToyMethod(), model_dir="/tmp/unused", train_steps=1, seed=7).init_params()  # device arrays
    host_start = jax.device_get(start)

    class StartsThere(ToyMethod):
        """A method whose own init gives `start`: what a run from `initial_params=start` must equal."""

        def init(self, rng, batch):
            return jax.tree.map(lambda box, v: box.replace_boxed(jnp.asarray(v)), super().init(rng, batch),
                                host_start, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))

    reference = fit(tmp_path / "reference", StartsThere())
    from_host = fit(tmp_path / "host", ToyMethod(), initial_params=host_start)
    assert_trees_equal(from_host, reference)
    from_device = fit(tmp_path / "device", ToyMethod(), initial_params=start)
    assert_trees_equal(from_device, reference)
    assert_trees_equal(jax.device_get(start), host_start)  # the caller's arrays are copied, not donated
    scratch = fit(tmp_path / "scratch", ToyMethod())
    assert not np.array_equal(scratch.params["w1"], reference.params["w1"])

    kill_switch.arm(5)
    with pytest.raises(kill_switch.Killed):
        fit(tmp_path / "killed", ToyMethod(), initial_params=start)
    kill_switch.disarm()
    other = jax.tree.map(lambda x: x + 1.0, host_start)
    resumed = fit(tmp_path / "killed", ToyMethod(), initial_params=other)  # ignored: the checkpoint wins
    assert_trees_equal(resumed, reference)

    trainer = Trainer(ToyMethod(), model_dir=str(tmp_path / "bad"), train_steps=1, batch_size=8)
    batch = trainer.device_batch(trainer.peek_batch())
    with pytest.raises(ValueError, match=r"initial_params\['w1'\] is float32\[8, 3\].*float32\[8, 32\]"):
        trainer.initial_state(batch, {**host_start, "w1": np.zeros((8, 3), np.float32)})
    with pytest.raises(ValueError, match="structure of the method's params"):
        trainer.initial_state(batch, {"w1": host_start["w1"]})
