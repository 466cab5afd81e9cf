"""Trainer: exact resume, sharded == single-device, gradient accumulation, metrics trail."""
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import linen as nn
from jax.sharding import PartitionSpec

from kipjax import partitioning
from kipjax.data.feed import register_arrays_task
from kipjax.methods.base import Method
from kipjax.run_log import MetricsLog
from kipjax.trainer import Trainer, split_microbatches

NUM_EXAMPLES, DIM, CLASSES = 64, 8, 16


class ToyClassifier(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic=True):
        w1 = self.param("w1", nn.with_logical_partitioning(nn.initializers.normal(0.3), ("embed", "mlp")),
                        (DIM, 32))
        w2 = self.param("w2", nn.with_logical_partitioning(nn.initializers.normal(0.3), ("mlp", "vocab")),
                        (32, CLASSES))
        h = nn.with_logical_constraint(jax.nn.relu(x @ w1), ("activation_batch", "activation_mlp"))
        h = nn.Dropout(0.1, deterministic=deterministic)(h)
        return h @ w2


class ToyMethod(Method):
    """Classification whose loss also pushes down a per-example 'mined' class chosen at each epoch start,
    read from a device table: exercises tables, hooks and checkpointed method state like hard NCE does."""

    def __init__(self):
        rs = np.random.RandomState(0)
        self.x = rs.randn(NUM_EXAMPLES, DIM).astype(np.float32)
        self.y = (np.abs(self.x[:, 0] * 5).astype(np.int32)) % CLASSES
        self.model = ToyClassifier()
        self.mined = jnp.zeros((NUM_EXAMPLES,), jnp.int32)
        self.epochs_seen = []

    def train_examples(self):
        return {"x": self.x, "y": self.y}

    def init(self, rng, batch):
        return self.model.init(rng, batch["x"])["params"]

    def tables(self):
        return {"mined": self.mined}

    def loss(self, params, batch, rng):
        logits = self.model.apply({"params": params}, batch["x"], deterministic=False, rngs={"dropout": rng})
        logp = jax.nn.log_softmax(logits)
        gold = jnp.take_along_axis(logp, batch["y"][:, None], 1)[:, 0]
        mined = batch["tables"]["mined"][batch["example_index"]]
        neg = jnp.take_along_axis(logp, mined[:, None], 1)[:, 0]
        loss = -jnp.mean(gold) + 0.1 * jnp.mean(neg)
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

    def on_epoch_start(self, params, epoch, rng):
        logits = self.model.apply({"params": params}, self.x)
        noise = jax.random.gumbel(rng, logits.shape)
        self.mined = jnp.argmax(logits + noise, -1).astype(jnp.int32)
        self.epochs_seen.append(epoch)

    def evaluate(self, params):
        logits = self.model.apply({"params": params}, self.x)
        return {"accuracy": float(jnp.mean(jnp.argmax(logits, -1) == self.y))}

    def state_dict(self):
        return {"mined": self.mined}

    def load_state_dict(self, state):
        self.mined = jnp.asarray(state["mined"])


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def run(model_dir, steps, mesh=None, batch_size=8, accum=1, method=None, task=None):
    method = method or ToyMethod()
    trainer = Trainer(method, model_dir=str(model_dir), train_steps=steps, batch_size=batch_size,
                      grad_accum_steps=accum, log_every=1, eval_every=4, seed=3, mesh=mesh,
                      mixture_or_task_name=task)
    state, metrics = trainer.fit()
    return jax.device_get(state), metrics, method


class StatelessToyMethod(ToyMethod):
    """A method with nothing to checkpoint besides the train state (e.g. a reranker): no mining."""

    def on_epoch_start(self, params, epoch, rng):
        self.epochs_seen.append(epoch)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        assert state == {}


def toy_mixture() -> str:
    """The toy examples split into two SeqIO tasks mixed 3:1."""
    name = "kipjax_test_trainer_toy_mixture"
    if name not in seqio.MixtureRegistry.names():
        toy = ToyMethod()
        halves = [register_arrays_task({"x": toy.x[rows], "y": toy.y[rows]})
                  for rows in (slice(0, 48), slice(48, None))]
        seqio.MixtureRegistry.add(name, [(halves[0], 3.0), (halves[1], 1.0)])
    return name


def test_a_killed_mixture_fed_run_resumes_bit_for_bit(tmp_path, kill_switch):
    gin.bind_parameter("Checkpointer.every_steps", 3)
    full, _, _ = run(tmp_path / "full", 10, task=toy_mixture())
    kill_switch.arm(7)
    with pytest.raises(kill_switch.Killed):
        run(tmp_path / "killed", 10, task=toy_mixture())
    kill_switch.disarm()
    resumed, _, method = run(tmp_path / "killed", 10, task=toy_mixture())
    assert method.epochs_seen == [], "a mixture has no epochs after the first, whose hook ran before the kill"
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method_cls", [ToyMethod, StatelessToyMethod])
def test_killed_run_resumes_bit_for_bit(method_cls, tmp_path, monkeypatch):
    gin.bind_parameter("Checkpointer.every_steps", 3)
    full, _, _ = run(tmp_path / "full", 12, method=method_cls())

    class Killed(Exception):
        pass

    original_write = MetricsLog.write

    def write_then_die(self, step, metrics):
        original_write(self, step, metrics)
        if step == 5:  # dies after logging step 5, before any checkpoint past step 3
            raise Killed

    monkeypatch.setattr(MetricsLog, "write", write_then_die)
    with pytest.raises(Killed):
        run(tmp_path / "killed", 12, method=method_cls())
    monkeypatch.setattr(MetricsLog, "write", original_write)
    assert sorted(os.listdir(tmp_path / "killed" / "checkpoints")) == ["3"]
    resumed, _, method = run(tmp_path / "killed", 12, method=method_cls())
    # Epoch 0's negatives come from the checkpoint; epoch 1 (8 batches/epoch) starts after the resume.
    assert method.epochs_seen == [1]
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "killed" / "metrics.jsonl")]
    assert steps == list(range(13)), "the resumed log drops the lost steps 4-5 and has no duplicates"


def test_sharded_step_matches_single_device(tmp_path):
    assert jax.device_count() == 8
    single = partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1])
    sharded = partitioning.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    s1, m1, _ = run(tmp_path / "one", 3, mesh=single)
    s8, m8, _ = run(tmp_path / "eight", 3, mesh=sharded)
    assert m1["loss"] == pytest.approx(m8["loss"], abs=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_fsdp_mesh_shards_params(tmp_path):
    mesh = partitioning.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    trainer = Trainer(ToyMethod(), model_dir=str(tmp_path), train_steps=1, batch_size=8, mesh=mesh)
    state = trainer.initial_state(trainer.device_batch(trainer.peek_batch()))
    spec = state.params["w1"].sharding.spec
    assert tuple(spec) == ("fsdp", "tensor")
    assert state.opt_state[1][0].mu["w1"].sharding.spec == spec, "optimizer moments follow the params"


def test_split_microbatches_is_strided():
    batch = {"x": jnp.arange(8)}
    np.testing.assert_array_equal(split_microbatches(batch, 2)["x"], [[0, 2, 4, 6], [1, 3, 5, 7]])


def test_gradient_accumulation_matches_full_batch(tmp_path):
    class NoDropout(ToyMethod):
        def loss(self, params, batch, rng):  # dropout masks differ per microbatch; compare without them
            logits = self.model.apply({"params": params}, batch["x"])
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], 1)), {}

    full, m_full, _ = run(tmp_path / "a", 2, batch_size=16, method=NoDropout())
    accum, m_acc, _ = run(tmp_path / "b", 2, batch_size=16, accum=2, method=NoDropout())
    assert m_full["loss"] == pytest.approx(m_acc["loss"], abs=1e-6)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accum.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_metrics_trail(tmp_path):
    run(tmp_path, 4)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert "eval/accuracy" in records[0] and "eval/accuracy" in records[-1]
    assert all("loss" in r and "examples_per_second" in r for r in records[1:])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))


def test_bad_batch_size_is_reported():
    with pytest.raises(ValueError, match="divisible by the 8 data-parallel devices"):
        Trainer(ToyMethod(), model_dir="/tmp/unused", train_steps=1, batch_size=4)


def test_indivisible_parameter_dimensions_fall_back_to_replication():
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    specs = {"heads2": PartitionSpec("heads", "kv"), "heads8": PartitionSpec("heads", "kv")}
    shapes = {"heads2": jax.ShapeDtypeStruct((2, 16), jnp.float32),
              "heads8": jax.ShapeDtypeStruct((8, 16), jnp.float32)}
    shardings = partitioning.logical_to_sharding(specs, mesh, partitioning.DEFAULT_RULES, shapes=shapes)
    assert shardings["heads2"].spec == PartitionSpec(None, None)
    assert shardings["heads8"].spec == PartitionSpec("tensor", None)


def test_only_the_primary_host_writes_metrics(tmp_path):
    log = MetricsLog(str(tmp_path / "other_host"), primary=False)
    log.write(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "other_host").exists()


@pytest.mark.parametrize("inside_boxes", [False, True])
def test_parameters_outside_the_trainable_mask_stay_fixed(tmp_path, inside_boxes):
    """The mask may stop at the logical-axis boxes or, mapped over the boxed params, reach inside them (then a
    frozen param's optimizer state is a box around optax's empty MaskedNode, which the shardings must accept)."""
    class FrozenFirstLayer(ToyMethod):
        def trainable_mask(self, params):
            if inside_boxes:
                return {"w1": jax.tree.map(lambda _: False, params["w1"]),
                        "w2": jax.tree.map(lambda _: True, params["w2"])}
            return {"w1": False, "w2": True}

    method = FrozenFirstLayer()
    trainer = Trainer(method, model_dir=str(tmp_path), train_steps=5, batch_size=8, eval_at_start=False,
                      log_every=5)
    initial = trainer.initial_state(trainer.device_batch(trainer.peek_batch()))
    w1, w2 = np.asarray(initial.params["w1"]), np.asarray(initial.params["w2"])
    state, _ = trainer.fit()
    np.testing.assert_array_equal(np.asarray(state.params["w1"]), w1)
    assert not np.allclose(np.asarray(state.params["w2"]), w2)
    # The frozen parameter carries no Adam moments.
    moment_sizes = [x.size for x in jax.tree.leaves(state.opt_state) if hasattr(x, "size") and x.ndim == 2]
    assert sorted(moment_sizes) == [32 * CLASSES, 32 * CLASSES]


class PoisonedToyMethod(ToyMethod):
    """The loss is NaN for every batch holding a poisoned example (a device table, so steps differ)."""

    def __init__(self, poisoned=()):
        super().__init__()
        self.poison = jnp.zeros((NUM_EXAMPLES,), bool).at[jnp.asarray(poisoned, jnp.int32)].set(True)

    def tables(self):
        return {**super().tables(), "poison": self.poison}

    def loss(self, params, batch, rng):
        loss, metrics = super().loss(params, batch, rng)
        return jnp.where(batch["tables"]["poison"][batch["example_index"]].any(), jnp.nan, loss), metrics


def test_a_non_finite_step_updates_nothing_and_is_counted(tmp_path):
    method = PoisonedToyMethod(poisoned=[5])
    trainer = Trainer(method, model_dir=str(tmp_path), train_steps=2, batch_size=8)
    rows = {"poisoned": np.arange(8), "clean": np.arange(8, 16)}
    batches = {name: trainer.device_batch({"x": method.x[r], "y": method.y[r], "example_index": r.astype(np.int32)})
               for name, r in rows.items()}
    state = trainer.initial_state(batches["clean"])
    tables = trainer.device_tables()
    step = trainer.compile_step(jax.tree.map(lambda x: x.sharding, state), batches["clean"], tables)
    before = jax.device_get(state)
    with partitioning.activate(trainer.mesh, trainer.rules):
        state, metrics = step(state, batches["poisoned"], tables)
    after = jax.device_get(state)
    assert np.isnan(metrics["loss"]) and int(metrics["skipped_steps"]) == 1 and int(after.skip_streak) == 1
    for a, b in zip(jax.tree.leaves((before.params, before.opt_state)), jax.tree.leaves((after.params, after.opt_state))):
        np.testing.assert_array_equal(a, b)
    with partitioning.activate(trainer.mesh, trainer.rules):
        state, metrics = step(state, batches["clean"], tables)
    assert np.isfinite(metrics["loss"]) and int(metrics["skipped_steps"]) == 1 and int(state.skip_streak) == 0
    assert not np.array_equal(np.asarray(state.params["w1"]), after.params["w1"])


def test_consecutive_non_finite_steps_stop_the_run_keeping_the_last_good_checkpoint(tmp_path):
    from kipjax.trainer import NonFiniteTraining
    gin.bind_parameter("Checkpointer.every_steps", 2)
    method = PoisonedToyMethod(poisoned=range(NUM_EXAMPLES))
    trainer = Trainer(method, model_dir=str(tmp_path), train_steps=10, batch_size=8, log_every=1,
                      eval_at_start=False, max_consecutive_skips=3, seed=3)
    initial = jax.device_get(trainer.initial_state(trainer.device_batch(trainer.peek_batch())).params)
    with pytest.raises(NonFiniteTraining, match=r"step 3: the loss or gradient was not finite in each of the last 3 "
                                                r"steps \(from step 1;.*newest checkpoint \(step 2\)"):
        trainer.fit()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    restored = trainer.restore_state(str(tmp_path / "checkpoints"), 2)
    for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(jax.device_get(restored.params))):
        np.testing.assert_array_equal(a, b)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["skipped_steps"] for r in records] == [1, 2, 3]


def test_an_unusable_model_dir_fails_before_training(tmp_path, monkeypatch):
    from kipjax import checkpoints
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    trainer = Trainer(ToyMethod(), model_dir=str(blocker / "run"), train_steps=2, batch_size=8)
    with pytest.raises(checkpoints.ModelDirError, match=r"MODEL_DIR '.*a_file/run' is not writable"):
        trainer.fit()
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    trainer = Trainer(ToyMethod(), model_dir=str(tmp_path / "full_disk"), train_steps=2, batch_size=8)
    with pytest.raises(checkpoints.ModelDirError, match=r"has 0.0 MiB free on its disk, less than one checkpoint"):
        trainer.fit()
    assert not (tmp_path / "full_disk" / "checkpoints").exists() and not (tmp_path / "full_disk" / "metrics.jsonl").exists()


class TwoTaskToyMethod(ToyMethod):
    """Two classification tasks sharing the model, fed by a fixed batch composition (6 rows of task 0, then 2
    of task 1): task 1 predicts shifted labels. `loss` is the sum of the task losses, the naive objective."""

    num_tasks = 2
    ROWS = (slice(0, 6), slice(6, 8))

    def task_loss(self, params, batch, task, rng):
        rows = {k: v[self.ROWS[task]] for k, v in batch.items() if k != "tables"}
        logits = self.model.apply({"params": params}, rows["x"], deterministic=True)
        labels = (rows["y"] + 3 * task) % CLASSES
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), {}

    def loss(self, params, batch, rng):
        return sum(self.task_loss(params, batch, task, rng)[0] for task in range(self.num_tasks)), {}


def two_task_mixture() -> str:
    name = "kipjax_test_trainer_two_tasks"
    if name not in seqio.MixtureRegistry.names():
        toy = ToyMethod()
        tasks = [register_arrays_task({"x": toy.x[rows], "y": toy.y[rows]}) for rows in (slice(0, 48), slice(48, None))]
        seqio.MixtureRegistry.add(name, [(t, 1.0) for t in tasks])
    gin.bind_parameter("SeqioFeed.batch_composition",
                       dict(zip([t.name for t in seqio.get_mixture_or_task(name).tasks], (6, 2))))
    return name


def run_combined(model_dir, steps, combiner, mesh=None):
    method = TwoTaskToyMethod()
    trainer = Trainer(method, model_dir=str(model_dir), train_steps=steps, batch_size=8, log_every=1, seed=3,
                      mesh=mesh, mixture_or_task_name=two_task_mixture(), gradient_combiner=combiner,
                      eval_at_start=False)
    state, metrics = trainer.fit()
    return jax.device_get(state), metrics


def test_summed_task_gradients_are_the_gradient_of_the_summed_loss(tmp_path):
    from kipjax.optim import naive_combiner
    single = partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1])
    combined, metrics = run_combined(tmp_path / "combined", 4, naive_combiner, mesh=single)
    plain, _ = run_combined(tmp_path / "plain", 4, None, mesh=single)
    for a, b in zip(jax.tree.leaves(combined.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert {"task_0/loss", "task_1/loss"} <= set(metrics)
    assert metrics["loss"] == pytest.approx((metrics["task_0/loss"] + metrics["task_1/loss"]) / 2)


@pytest.mark.slow
def test_adaptive_learning_resumes_bit_for_bit_and_shards_like_one_device(tmp_path, kill_switch):
    from kipjax.optim import task_sensitivity_combiner
    gin.bind_parameter("Checkpointer.every_steps", 3)
    gin.bind_parameter("task_sensitivity_combiner.beta", 0.5)
    full, _ = run_combined(tmp_path / "full", 8, task_sensitivity_combiner)
    assert int(full.combiner_state.count) == 8 and full.combiner_state.sensitivity["w1"].shape == (2, DIM, 32)
    kill_switch.arm(5)
    with pytest.raises(kill_switch.Killed):
        run_combined(tmp_path / "killed", 8, task_sensitivity_combiner)
    kill_switch.disarm()
    resumed, _ = run_combined(tmp_path / "killed", 8, task_sensitivity_combiner)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    single = partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1])
    alone, _ = run_combined(tmp_path / "alone", 8, task_sensitivity_combiner, mesh=single)
    for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(full.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_combiner_needs_a_multi_task_method(tmp_path):
    from kipjax.optim import naive_combiner
    with pytest.raises(ValueError, match="needs a multi-task method"):
        Trainer(ToyMethod(), model_dir=str(tmp_path), train_steps=1, gradient_combiner=naive_combiner)
