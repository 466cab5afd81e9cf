"""Multi-host training on one machine: 2 processes x 4 CPU devices (jax.distributed with a local coordinator,
gloo collectives) train the quickstart to the same parameters as 1 process x 8 devices, write their parts of
every orbax checkpoint, resume together after a restart, and leave one metrics line per step.

By hand (two shells, or `&`), from the repository root:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 KIPJAX_MULTIHOST=1 python -m kipjax.train \\
        --gin_file=gin_configs/quickstart.gin --gin.MODEL_DIR="'/tmp/mh'" --gin.SeqioFeed.num_shards=2 \\
        --gin.initialize_distributed.coordinator_address="'localhost:12355'" \\
        --gin.initialize_distributed.num_processes=2 --gin.initialize_distributed.process_id=0   # and =1
"""
import json
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from local_hosts import free_port, run_hosts

# Constant learning rate: a run continued from step 8 to 12 then follows the same schedule as one run to 12.
# Plain SGD: parameters then differ by the learning rate times the gradients' summation-order noise (gloo
# against XLA's in-process all-reduce), where Adam's m / sqrt(v) would blow it up for near-zero gradients.
# Random negatives: hard ones are sampled by a perturbed argmax, which such noise in the scores can tip.
COMMON = ["--gin.make_optimizer.name='sgd'", "--gin.learning_rate_schedule.peak_value=0.5",
          "--gin.HardNCERetrieval.negatives='random'", "--gin_file=gin_configs/quickstart.gin", "--gin.SeqioFeed.num_shards=2", "--gin.mesh_shape.data=1",
          "--gin.mesh_shape.fsdp=8", "--gin.Trainer.eval_at_start=False", "--gin.Trainer.eval_every=0",
          "--gin.Trainer.log_every=1", "--gin.Checkpointer.every_steps=4",
          "--gin.learning_rate_schedule.warmup_steps=0", "--gin.learning_rate_schedule.decay='constant'"]


def train(model_dir: Path, steps: int, processes: int) -> list[str]:
    """Runs `python -m kipjax.train` in `processes` processes sharing 8 CPU devices; returns their outputs."""
    args = [*COMMON, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"]
    port = free_port()
    commands = []
    for i in range(processes):
        extra = []
        if processes > 1:
            extra = ["--gin.initialize_distributed.enabled=True",
                     f"--gin.initialize_distributed.coordinator_address='localhost:{port}'",
                     f"--gin.initialize_distributed.num_processes={processes}",
                     f"--gin.initialize_distributed.process_id={i}"]
        commands.append([sys.executable, "-m", "kipjax.train", *args, *extra])
    codes, outputs = run_hosts(commands)
    for code, out in zip(codes, outputs):
        assert code == 0, out[-4000:]
    return outputs


def restored_params(model_dir: Path, step: int) -> dict:
    """The checkpoint's params as host numpy arrays, whatever mesh wrote them."""
    path = model_dir / "checkpoints" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(path).item_metadata.tree
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(path, restore_args=as_numpy)["params"]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_together(tmp_path):
    multi, single = tmp_path / "two_processes", tmp_path / "one_process"
    first = train(multi, 8, processes=2)
    assert all("resumed" not in out for out in first)
    resumed = train(multi, 12, processes=2)
    assert all("resumed from" in out and "at step 8" in out for out in resumed)
    train(single, 12, processes=1)

    # Both processes wrote their parts of each checkpoint (parameters are sharded over all 8 devices).
    written = {p.name for p in (multi / "checkpoints" / "12" / "state").iterdir()}
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= written, written
    lines = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 13))
    single_lines = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    # The same batches: step 1 (same initial parameters) is bit for bit the same; later steps differ only by
    # the order in which gloo and XLA sum the gradients over devices (1e-6 of the loss), never by data.
    assert lines[0]["loss"] == single_lines[0]["loss"] and lines[0]["grad_norm"] == single_lines[0]["grad_norm"]
    np.testing.assert_allclose([line["loss"] for line in lines], [line["loss"] for line in single_lines], rtol=1e-5)
    # Parameters (of magnitude 1e-2 to 1) agree to the summation-order noise those sums leave after 12 steps.
    got, expected = restored_params(multi, 12), restored_params(single, 12)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path))

    events = EventAccumulator(str(multi / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 13))
