"""Run a grid of gin bindings, one training run (and one MODEL_DIR) per point of the grid.

    python -m kipjax.sweep --gin_file=gin_configs/hard_nce/zeshel.gin --gin_file=gin_configs/runs/gpu_1.gin \
        --grid 'learning_rate_schedule.peak_value=5e-5,2e-5,1e-5' --grid "HardNCERetrieval.score_kind='dual','som'" \
        --gin.ZESHEL_DIR="'/data/zeshel'" --model_dir_root=/runs/lr_sweep [--dry_run]

Grid values are gin literals separated by commas (commas inside quotes, brackets or parentheses do not
split). Each run trains in MODEL_DIR_ROOT/<name>, the name made from its grid values (e.g.
`peak_value=5e-5__score_kind=dual`). `--dry_run` only prints the commands, one shell-quoted line per run, so
they can be launched elsewhere (e.g. on a TPU pod with tpu_scripts/launch.sh). Otherwise the runs go one
after another; a failed run is recorded and the sweep goes on. MODEL_DIR_ROOT/sweep.json then lists each
run's bindings, model_dir, exit code and final metrics (from its metrics.jsonl), and a table is printed.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from typing import Any, Sequence

from gin import config_parser

from kipjax import cli
from kipjax.run_log import atomic_write_text

_CLOSING = {"(": ")", "[": "]", "{": "}"}
_KEY_RE = re.compile(r"^[A-Za-z_]\w*(?:[./][A-Za-z_]\w*)*$")
_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_NAME_TOKEN_RE = re.compile(r"[A-Za-z0-9.+-]+")
_MAX_NAME_LEN = 100
_SWEEP_FILE = "sweep.json"


@dataclass
class Run:
    """One point of the grid: its bindings (key -> gin literal, in grid order) and where it trains."""
    name: str
    bindings: dict[str, str]
    model_dir: str
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the grid

def split_values(text: str) -> list[str]:
    """Splits `V1,V2,...` on top-level commas only, so tuples, lists and strings with commas stay whole."""
    values: list[str] = []
    current: list[str] = []
    closers: list[str] = []
    quote: str | None = None
    chars = iter(text)
    for ch in chars:
        current.append(ch)
        if quote:
            if ch == "\\":
                current.append(next(chars, ""))
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSING:
            closers.append(_CLOSING[ch])
        elif ch in ")]}":
            if not closers or closers.pop() != ch:
                raise ValueError(f"unbalanced {ch!r} in {text!r}")
        elif ch == "," and not closers:
            current.pop()
            values.append("".join(current).strip())
            current = []
    if quote:
        raise ValueError(f"unterminated string in {text!r}")
    if closers:
        raise ValueError(f"missing {closers[-1]!r} in {text!r}")
    values.append("".join(current).strip())
    if not any(values):
        raise ValueError("empty value list")
    if not all(values):
        raise ValueError(f"empty value in {text!r} (two commas in a row, or a trailing comma?)")
    return values


class _AnyReference(config_parser.ParserDelegate):
    """Accepts every `@ref` and `%MACRO`: values are only checked for syntax here; train resolves them."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> str:
        return scoped_configurable_name

    def macro(self, macro_name: str) -> str:
        return macro_name


def check_binding(key: str, value: str) -> None:
    """Raises ValueError unless `key = value` is one gin binding, so typos fail before any run starts."""
    try:
        parser = config_parser.ConfigParser(io.StringIO(f"{key} = {value}\n"), _AnyReference())
        statement = parser.parse_statement()
        extra = parser.parse_statement()
    except (SyntaxError, ValueError, tokenize.TokenError) as e:
        raise ValueError(f"{key}={value} is not a gin binding: {e}") from None
    if not isinstance(statement, config_parser.BindingStatement) or extra is not None:
        raise ValueError(f"{key}={value} is not a single gin binding")


def parse_grid_axis(spec: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2,...` -> (KEY, [V1, V2, ...]) with clear messages for the usual slips."""
    if "=" not in spec:
        raise ValueError(f"--grid {spec!r}: expected KEY=V1,V2,... (no '=')")
    key, text = (part.strip() for part in spec.split("=", 1))
    if not _KEY_RE.match(key):
        raise ValueError(f"--grid {spec!r}: {key!r} is not a gin binding key (e.g. Trainer.batch_size)")
    if key == "MODEL_DIR":
        raise ValueError("--grid MODEL_DIR: the sweep sets MODEL_DIR per run; use --model_dir_root")
    try:
        values = split_values(text)
    except ValueError as e:
        raise ValueError(f"--grid {spec!r}: {e}") from None
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"--grid {key}: value(s) {', '.join(repeated)} given more than once")
    for value in values:
        check_binding(key, value)
    return key, values


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """All `--grid` axes, in the order given; a key swept twice is an error rather than a silent override."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, values = parse_grid_axis(spec)
        if key in grid:
            raise ValueError(f"--grid {key} is given more than once; put all its values in one --grid")
        grid[key] = values
    return grid


def expand_grid(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """The cartesian product, first axis slowest (like nested loops in the order the axes were given)."""
    keys = list(grid)
    return [dict(zip(keys, point)) for point in itertools.product(*(grid[k] for k in keys))]


# ------------------------------------------------------------------------------------------------ run names

def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The parameter name alone (`peak_value`) keeps names short; full keys only where short ones clash."""
    short = {k: re.split(r"[./]", k)[-1] for k in keys}
    clashing = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k.replace("/", "-") if s in clashing else s) for k, s in short.items()}


def _value_slug(value: str) -> str:
    """A gin literal as path-safe text: `'dual'` -> `dual`, `(1, 8)` -> `1-8`, `5e-5` unchanged."""
    return "-".join(_NAME_TOKEN_RE.findall(value)) or "empty"


def run_names(points: Sequence[dict[str, str]]) -> list[str]:
    """Readable, filesystem-safe, unique directory names for the grid points (same grid -> same names, so a
    re-launched sweep resumes each run from its checkpoints)."""
    if not points:
        return []
    short = _short_keys(list(points[0]))
    names: list[str] = []
    seen: set[str] = set()
    for point in points:
        name = "__".join(f"{short[k]}={_value_slug(v)}" for k, v in point.items())
        if len(name) > _MAX_NAME_LEN:  # keep under filesystem limits; the hash keeps it unique
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name[:_MAX_NAME_LEN - 9]}-{digest}"
        unique, n = name, 2
        while unique.lower() in seen:  # e.g. 'a b' and 'a-b'; lower() for case-insensitive filesystems
            unique, n = f"{name}-{n}", n + 1
        seen.add(unique.lower())
        names.append(unique)
    return names


# ------------------------------------------------------------------------------------------------ commands

def _binding_key(binding: str) -> str:
    return binding.split("=", 1)[0].strip()


def build_runs(args: argparse.Namespace, fixed: Sequence[str], grid: dict[str, list[str]],
               root: str) -> list[Run]:
    """One Run per grid point, with the full command: base flags, fixed bindings, grid bindings, MODEL_DIR
    (last, so it wins over any MODEL_DIR in the gin files)."""
    base = [sys.executable, "-m", args.module]
    base += [f"--gin_search_path={p}" for p in args.gin_search_path]
    base += [f"--gin_file={f}" for f in args.gin_file]
    base += [f"--gin_bindings={b}" for b in args.gin_bindings]
    base += [f"--gin.{_binding_key(b)}={b.split('=', 1)[1].strip()}" for b in fixed]
    points = expand_grid(grid)
    runs = []
    for name, point in zip(run_names(points), points):
        model_dir = os.path.join(root, name)
        command = [*base, *(f"--gin.{k}={v}" for k, v in point.items()), f"--gin.MODEL_DIR={model_dir!r}"]
        runs.append(Run(name=name, bindings=point, model_dir=model_dir, command=command))
    return runs


def check_conflicts(grid: dict[str, list[str]], fixed: Sequence[str], gin_bindings: Sequence[str]) -> None:
    """A key both swept and fixed would leave the run's value to flag order: refuse it instead."""
    for binding in [*fixed, *gin_bindings]:
        key = _binding_key(binding)
        if key in grid:
            raise ValueError(f"{key} is both swept (--grid) and fixed ({binding!r}); drop one of them")


# ------------------------------------------------------------------------------------------------ results

def final_metrics(model_dir: str) -> dict[str, Any]:
    """The last logged training metrics (last line with `loss`) plus the eval/* of the last evaluation.

    Lines that are not JSON objects (a run killed mid-write) are skipped; no file gives {}.
    """
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return {}
    last_train: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            if "loss" in record:
                last_train = record
            evals = {k: v for k, v in record.items() if k.startswith("eval/")}
            if evals:
                last_eval = evals
    return {**last_train, **last_eval}


def write_sweep_json(root: str, grid: dict[str, list[str]], runs: Sequence[Run]) -> str:
    """Writes ROOT/sweep.json via a temporary file and os.replace, so readers never see half a file."""
    path = os.path.join(root, _SWEEP_FILE)
    record = {"grid": grid, "runs": [
        {"name": r.name, "bindings": r.bindings, "model_dir": r.model_dir, "command": r.command,
         "exit_code": r.exit_code, "metrics": r.metrics} for r in runs]}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def summary_table(runs: Sequence[Run]) -> str:
    """Plain-text table: run name, exit code, step, loss and every eval/* metric seen in any run."""
    eval_keys = sorted({k for r in runs for k in r.metrics if k.startswith("eval/")})
    header = ["run", "exit", "step", "loss", *eval_keys]
    rows = [[r.name, _cell(r.exit_code), _cell(r.metrics.get("step")), _cell(r.metrics.get("loss")),
             *(_cell(r.metrics.get(k)) for k in eval_keys)] for r in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def run_sweep(runs: Sequence[Run], root: str, grid: dict[str, list[str]]) -> int:
    """Runs each command in turn (output streams through), recording exit codes and final metrics;
    sweep.json is rewritten after every run so an interrupted sweep still leaves its results."""
    os.makedirs(root, exist_ok=True)
    for i, run in enumerate(runs, 1):
        print(f"=== sweep run {i}/{len(runs)}: {run.name}\n{shlex.join(run.command)}", flush=True)
        try:
            run.exit_code = subprocess.run(run.command, check=False).returncode
        except KeyboardInterrupt:
            run.exit_code = 130
        run.metrics = final_metrics(run.model_dir)
        write_sweep_json(root, grid, runs)
        if run.exit_code == 130:
            print("sweep interrupted", file=sys.stderr, flush=True)
            break
        if run.exit_code:
            print(f"=== sweep run {run.name} failed with exit code {run.exit_code}; going on", flush=True)
    path = write_sweep_json(root, grid, runs)
    print(f"\n{summary_table(runs)}\n\nwrote {path}", flush=True)
    failed = [r.name for r in runs if r.exit_code != 0]
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed or did not run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ CLI

def make_parser() -> argparse.ArgumentParser:
    parser = cli.gin_argument_parser(__doc__.split("\n\n")[0])
    parser.prog = "python -m kipjax.sweep"
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                        help="a swept gin binding (repeatable; runs are the cartesian product)")
    parser.add_argument("--model_dir_root", required=True, help="each run trains in MODEL_DIR_ROOT/<run name>")
    parser.add_argument("--dry_run", action="store_true", help="print one command line per run and exit")
    parser.add_argument("--module", default="kipjax.train", help="module run with `python -m` for each run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    rest, fixed = cli.split_gin_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    if not _MODULE_RE.match(args.module):
        parser.error(f"--module {args.module!r} is not a module name")
    if any(_binding_key(b) == "MODEL_DIR" for b in fixed):
        print("note: --gin.MODEL_DIR is ignored; each run gets MODEL_DIR_ROOT/<run name>", file=sys.stderr)
        fixed = [b for b in fixed if _binding_key(b) != "MODEL_DIR"]
    try:
        grid = parse_grid(args.grid)
        check_conflicts(grid, fixed, args.gin_bindings)
    except ValueError as e:
        parser.error(str(e))
    if "://" in args.model_dir_root:
        parser.error("--model_dir_root must be a filesystem path (kipjax writes MODEL_DIR with open() and "
                     "os.makedirs); mount a bucket (e.g. with gcsfuse) and give the mount path")
    missing = [f for f in args.gin_file if not os.path.exists(f)]
    if missing and not args.dry_run:  # fail now rather than once per run
        parser.error(f"gin file {missing[0]!r} does not exist")
    root = os.path.abspath(args.model_dir_root)
    runs = build_runs(args, fixed, grid, root)
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.command))
        return 0
    return run_sweep(runs, root, grid)


if __name__ == "__main__":
    sys.exit(main())
