"""Orbax checkpoints holding everything needed to continue a run bit for bit.

A checkpoint has three items: `state` (params, optimizer state, step, rng), `data` (the batch iterator's
position, JSON) and `method` (per-run method state such as mined hard negatives; may be empty). Orbax writes
each step to a temporary directory and renames it when complete, so a run killed mid-save never leaves a
checkpoint that looks valid but is half-written.
"""
from __future__ import annotations

import os
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
