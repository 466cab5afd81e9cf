"""The trail a run leaves: `metrics.jsonl`, TensorBoard event files, and progress lines on stdout.

`track` wraps the long loops outside the train step (encoding a table, mining, building an index, evaluation):
on stderr, a tqdm bar with items/s and ETA on a terminal, a plain line every `every_s` seconds in a log file,
and nothing on the other hosts of a multi-host run.

`metrics.jsonl` has one JSON object per logged step (`step`, `loss`, eval metrics, ...) so runs can be
compared and plotted without TensorBoard. On resume the lines past the restored step are dropped (they
belong to work that is about to be redone), and the file is rewritten atomically.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, TextIO, TypeVar

import jax
import numpy as np
import tqdm
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

T = TypeVar("T")


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: readers never see half a file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    """`np.save(path, array)` through a temporary file and a rename (the temp name ends in .npy, so np.save keeps
    it as given)."""
    tmp = f"{path}.tmp.{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
    """`np.savez(path, **arrays)` through a temporary file and a rename (the temp name ends in .npz)."""
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def atomic_write_directory(out_dir: str | Path, write: Callable[[Path], None], force: bool = False) -> Path:
    """Runs `write(folder)` on a temporary folder beside `out_dir`, then renames it into place, so readers never
    see a half-written directory. An existing `out_dir` is replaced only with `force` (else FileExistsError)."""
    out = Path(out_dir).resolve()
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(staging / "data")
        if out.exists():
            os.replace(out, staging / "replaced")
        try:
            os.replace(staging / "data", out)
        except OSError:
            if (staging / "replaced").exists():
                os.replace(staging / "replaced", out)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


class MetricsLog:
    """Appends scalar metrics to MODEL_DIR/metrics.jsonl and to TensorBoard events under MODEL_DIR/tb.

    On a multi-host run every host computes the same metrics; only the primary host (process 0) writes them,
    so a shared MODEL_DIR gets one line per step rather than one per host.
    """

    def __init__(self, model_dir: str, resume_step: int | None = None, primary: bool = True):
        self.primary = primary
        if not primary:
            return
        os.makedirs(model_dir, exist_ok=True)
        self.path = os.path.join(model_dir, "metrics.jsonl")
        if os.path.exists(self.path):
            self._truncate_after(resume_step if resume_step is not None else -1)
        self.events = EventFileWriter(os.path.join(model_dir, "tb"))

    def _truncate_after(self, step: int) -> None:
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(self.path, "".join(kept))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.primary:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                  for k, v in record.items() if k != "step" and isinstance(v, (int, float))]
        self.events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                              summary=summary_pb2.Summary(value=values)))

    def close(self) -> None:
        if not self.primary:
            return
        self.events.flush()
        self.events.close()


def _plain(v: object) -> object:
    try:
        f = float(v)  # jax / numpy scalars
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else str(f)


class Progress:
    """Step, loss, examples/s and ETA, printed every `every` steps (plain lines: readable in logs and TTYs)."""

    def __init__(self, total_steps: int, start_step: int, examples_per_step: int, stream: TextIO = sys.stdout):
        self.total = total_steps
        self.examples_per_step = examples_per_step
        self.stream = stream
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int, loss: float, extra: Mapping[str, float] | None = None) -> float:
        """Prints one progress line; returns the examples/s measured since the previous report."""
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        seconds = max(now - self._last_time, 1e-9)
        rate = steps * self.examples_per_step / seconds
        eta = (self.total - step) * seconds / steps
        parts = [f"step {step}/{self.total}", f"loss {loss:.4f}", f"{rate:.1f} examples/s",
                 f"ETA {_format_seconds(eta)}"]
        parts += [f"{k} {v:.4g}" for k, v in (extra or {}).items()]
        if jax.process_index() == 0:  # one line per step on a multi-host run, not one per host
            print(" | ".join(parts), file=self.stream, flush=True)
        self._last_step, self._last_time = step, now
        return rate


def track(iterable: Iterable[T], total: int | None, desc: str, unit: str = "rows", rows_per_item: int = 1,
          every_s: float = 30.0, stream: TextIO | None = None) -> Iterator[T]:
    """Yields `iterable`'s items while showing progress in `unit`s (each item counting `rows_per_item` of
    them, e.g. a batch of rows), out of `total` units when known."""
    stream = stream or sys.stderr  # stdout stays clean for the CLIs that print JSON there
    if jax.process_index() != 0:
        yield from iterable
        return
    if stream.isatty():
        with tqdm.tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True) as bar:
            for item in iterable:
                yield item
                bar.update(rows_per_item if total is None else min(rows_per_item, total - bar.n))
        return
    done, start, last = 0, time.perf_counter(), time.perf_counter()
    for item in iterable:
        yield item
        done += rows_per_item
        now = time.perf_counter()
        finished = total is not None and done >= total
        if now - last >= every_s or finished:
            rate = done / max(now - start, 1e-9)
            of = f"/{total}" if total is not None else ""
            eta = f", ETA {_format_seconds((total - done) / rate)}" if total is not None and not finished else ""
            print(f"{desc}: {min(done, total or done)}{of} {unit} ({rate:.1f} {unit}/s{eta})", file=stream,
                  flush=True)
            last = now


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
