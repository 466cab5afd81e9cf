"""Orbax checkpoints holding everything needed to continue a run bit for bit.

A checkpoint has three items: `state` (params, optimizer state, step, rng), `data` (the batch iterator's
position, JSON) and `method` (per-run method state such as mined hard negatives; may be empty). Orbax writes
each step to a temporary directory and renames it when complete, so a run killed mid-save never leaves a
checkpoint that looks valid but is half-written.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "method")


@gin.configurable
class Checkpointer:
    """Saves every `every_steps` steps (and on demand), keeps the newest `keep` checkpoints."""

    def __init__(self, directory: str, every_steps: int = 1000, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False),
            item_names=ITEMS,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, data_state: dict, method_state: dict) -> None:
        items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state)}
        if method_state:  # orbax refuses an empty tree; a stateless method saves no `method` item
            items["method"] = ocp.args.StandardSave(method_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any, abstract_method_state: dict) -> tuple[Any, dict, dict]:
        """Restores onto the shardings carried by the abstract (ShapeDtypeStruct) trees."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "data": ocp.args.JsonRestore()}
        if abstract_method_state:
            items["method"] = ocp.args.StandardRestore(abstract_method_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state, restored.data, restored.method if abstract_method_state else {}

    def close(self) -> None:
        self.manager.close()


class ModelDirError(OSError):
    """MODEL_DIR cannot take this run's checkpoints; raised before any training."""


def check_model_dir(model_dir: str, checkpoint_bytes: int = 0) -> None:
    """Fails at start, with a message naming MODEL_DIR, when it cannot be created or written, or when its disk
    has less free space than one checkpoint of `checkpoint_bytes`: better than dying at the first save."""
    try:
        os.makedirs(model_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=model_dir, prefix=".write_probe.") as probe:
            probe.write(b"0")
            probe.flush()
    except OSError as e:
        raise ModelDirError(f"MODEL_DIR {model_dir!r} is not writable: {e.strerror or e}; choose a directory this "
                            "process can create and write") from e
    free = shutil.disk_usage(model_dir).free
    if free < checkpoint_bytes:
        raise ModelDirError(f"MODEL_DIR {model_dir!r} has {free / 2 ** 20:.1f} MiB free on its disk, less than one "
                            f"checkpoint of this run ({checkpoint_bytes / 2 ** 20:.1f} MiB); free some space or "
                            "choose another MODEL_DIR")


def tree_bytes(tree: Any) -> int:
    """Bytes of the (global) arrays of `tree`, i.e. of their checkpoint."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` placed on `shardings`: the restore target for orbax."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def find_checkpoint_dir(path: str) -> tuple[str, int]:
    """Resolves a MODEL_DIR or a checkpoint directory to (manager directory, latest step), with clear errors."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    for directory in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(directory):
            steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()
                           and os.path.isdir(os.path.join(directory, d, "state")))
            if steps:
                return directory, steps[-1]
    raise FileNotFoundError(
        f"no checkpoint found in {path!r}: expected step directories (e.g. {path}/checkpoints/1000/state) "
        "written by `python -m kipjax.train`")
