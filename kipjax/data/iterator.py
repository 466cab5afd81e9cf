"""A resumable, deterministic batch iterator over in-memory example arrays.

The order of examples is a pure function of (seed, epoch), so the iterator's whole state is two integers:
`epoch` and `position` (batches already taken in that epoch). Checkpointing that state is what makes a
killed-and-restarted run see exactly the same batches as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import numpy as np

Examples = Mapping[str, np.ndarray]


@dataclasses.dataclass
class IteratorState:
    epoch: int = 0
    position: int = 0

    def to_json(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    @classmethod
    def from_json(cls, d: Mapping[str, int]) -> "IteratorState":
        return cls(epoch=int(d["epoch"]), position=int(d["position"]))


class ArrayBatchIterator:
    """Yields dicts of [batch_size, ...] arrays; shuffles per epoch; drops the ragged tail of an epoch.

    Every batch carries `example_index` (row in `examples`) so per-example tables on device (e.g. mined
    hard negatives) can be gathered inside the jitted step.
    """

    def __init__(self, examples: Examples, batch_size: int, seed: int = 0, shuffle: bool = True):
        sizes = {k: len(v) for k, v in examples.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all example arrays need the same leading size, got {sizes}")
        self.num_examples = next(iter(sizes.values()))
        if batch_size > self.num_examples:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.num_examples} training examples")
        self.examples = dict(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.state = IteratorState()

    @property
    def batches_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def peek(self) -> dict[str, np.ndarray]:
        """The next batch, without advancing."""
        order = self.epoch_order(self.state.epoch)
        rows = order[self.state.position * self.batch_size:(self.state.position + 1) * self.batch_size]
        batch = {k: v[rows] for k, v in self.examples.items()}
        batch["example_index"] = rows.astype(np.int32)
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.peek()
        self.state.position += 1
        if self.state.position >= self.batches_per_epoch:
            self.state = IteratorState(epoch=self.state.epoch + 1, position=0)
        return batch


def fixed_size_batches(size: int, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Splits arrays into batches of exactly `size` rows, the last padded by repeating row 0, so inference
    over a table of any length compiles once. Callers cut the outputs back to `len(arrays[0])` rows."""
    n = len(arrays[0])
    pad = (-n) % size
    padded = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a for a in arrays]
    return [tuple(a[i:i + size] for a in padded) for i in range(0, n + pad, size)]
