"""Run a grid of gin bindings, one training run (and one MODEL_DIR) per point of the grid.

    python -m kipjax.sweep --gin_file=gin_configs/hard_nce/zeshel.gin --gin_file=gin_configs/runs/gpu_1.gin \
        --grid 'learning_rate_schedule.peak_value=5e-5,2e-5,1e-5' --grid "HardNCERetrieval.score_kind='dual','som'" \
        --gin.ZESHEL_DIR="'/data/zeshel'" --model_dir_root=/runs/lr_sweep [--dry_run]

Grid values are gin literals separated by commas (commas inside quotes, brackets or parentheses do not
split). `--grid_file PATH` reads axes from a file, one `KEY=V1,V2,...` line each, with blank lines and `#`
comments (e.g. gin_configs/taco/sweeps/tau.grid, which also shows its command line); `--grid` and
`--grid_file` repeat and combine, the axes in the order given. Each run trains in MODEL_DIR_ROOT/<name>, the
name made from its grid values (e.g. `peak_value=5e-5__score_kind=dual`). `--dry_run` only prints the
commands, one shell-quoted line per run, so they can be launched elsewhere (e.g. on a TPU pod with
tpu_scripts/launch.sh). Otherwise the runs go one after another; a failed run is recorded and the sweep goes
on. MODEL_DIR_ROOT/sweep.json then lists each run's bindings, model_dir, exit code and final metrics (from its
metrics.jsonl; a staged run's from its last stage's), and a table is printed.

Staged methods (`kipjax.stages`): `--reuse_stages BASE --through STAGE` starts every run from the finished
stages of the run in BASE, up to and including STAGE in BASE/stages.json's order (each must be `done` there),
instead of training them again, so a sweep of what only later stages use (TACO's tau and beta: adaptive
learning runs in its last episode) trains just those. Before a run is launched, its MODEL_DIR gets each of
those stage directories it lacks, hard-linked file by file (a copy where the filesystem cannot link); stage
directories already there (a re-launched sweep) are kept as they are. Nothing writes into them: the staged run
skips the stages before its last one with a checkpoint and only reads that one's final checkpoint, to hand its
params on. (Were a run to resume inside one, its config making that stage longer, its Trainer would replace
metrics.jsonl by a rename and add new checkpoint and event files, changing no linked file in place.) The grid
must not change what the reused stages depend on; nothing checks that. sweep.json records the reuse; a dry
run checks BASE but fills in nothing.
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
import shutil
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
_STAGES_FILE = "stages.json"  # kipjax.stages.STAGES_FILE, not imported: that module pulls in JAX


@dataclass
class Run:
    """One point of the grid: its bindings (key -> gin literal, in grid order) and where it trains."""
    name: str
    bindings: dict[str, str]
    model_dir: str
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reused: dict[str, str] = field(default_factory=dict)  # stage name -> "filled" (from the base) or "kept"


@dataclass(frozen=True)
class StageReuse:
    """`--reuse_stages BASE --through STAGE`: the base run's finished stages (names, in order) every run gets."""
    base: str
    through: str
    stages: list[str]


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


def parse_grid_axis(spec: str, origin: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2,...` -> (KEY, [V1, V2, ...]) with clear messages for the usual slips, each starting with
    `origin` (where the spec came from: `--grid '...'`, or `PATH:LINE` for a grid file)."""
    if "=" not in spec:
        raise ValueError(f"{origin}: expected KEY=V1,V2,... (no '=')")
    key, text = (part.strip() for part in spec.split("=", 1))
    if not _KEY_RE.match(key):
        raise ValueError(f"{origin}: {key!r} is not a gin binding key (e.g. Trainer.batch_size)")
    if key == "MODEL_DIR":
        raise ValueError(f"{origin}: the sweep sets MODEL_DIR per run; use --model_dir_root")
    try:
        values = split_values(text)
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{key}: value(s) {', '.join(repeated)} given more than once")
        for value in values:
            check_binding(key, value)
    except ValueError as e:
        raise ValueError(f"{origin}: {e}") from None
    return key, values


def _strip_comment(line: str) -> str:
    """`line` without its `#` comment; a `#` inside a quoted value stays (Python's tokenizer knows strings)."""
    try:
        for token in tokenize.generate_tokens(io.StringIO(line).readline):
            if token.type == tokenize.COMMENT:
                return line[:token.start[1]]
    except (tokenize.TokenError, SyntaxError):
        pass  # e.g. an unclosed bracket before any comment: split_values reports it
    return line


def read_grid_file(path: str) -> list[tuple[str, str]]:
    """A grid file's axes as (`PATH:LINE`, `KEY=V1,V2,...`) pairs, so errors point at the line; blank lines and
    `#` comments are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--grid_file {path!r}: {getattr(e, 'strerror', None) or e}") from None
    axes = [(f"{path}:{number}", spec) for number, line in enumerate(lines, 1)
            if (spec := _strip_comment(line).strip())]
    if not axes:
        raise ValueError(f"--grid_file {path!r} has no KEY=V1,V2,... line, only comments or blank lines")
    return axes


def parse_grid(specs: Sequence[str | tuple[str, str]]) -> dict[str, list[str]]:
    """All axes, in the order given: a `--grid` spec, or an (origin, spec) pair from `read_grid_file`. A key
    swept twice is an error rather than a silent override."""
    grid: dict[str, list[str]] = {}
    origins: dict[str, str] = {}
    for item in specs:
        origin, spec = (f"--grid {item!r}", item) if isinstance(item, str) else item
        key, values = parse_grid_axis(spec, origin)
        if key in grid:
            raise ValueError(f"{key} is swept twice ({origins[key]} and {origin}); put all its values in one axis")
        grid[key], origins[key] = values, origin
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


# ------------------------------------------------------------------------------------------------ stages

def read_stages(model_dir: str) -> list[dict[str, Any]]:
    """The stage records of MODEL_DIR/stages.json (a staged run's stages in order, each with `name` and
    `status`), checked enough that the callers' errors name the file and field rather than a KeyError."""
    path = os.path.join(model_dir, _STAGES_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: {model_dir} is not the MODEL_DIR of a staged run") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it as JSON: {e}") from None
    stages = record.get("stages") if isinstance(record, dict) else None
    if not stages or not isinstance(stages, list):
        raise ValueError(f"{path}: field 'stages' must be a non-empty list of stage records")
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str) or not stage["name"]:
            raise ValueError(f"{path}: stages[{i}] has no 'name'")
    return stages


def stage_reuse(base: str, through: str) -> StageReuse:
    """The base run's stages up to and including `through`, refused unless each is done (status "done" in
    stages.json, its directory there): a run must not start from a stage that was still training."""
    base = os.path.abspath(base)
    stages = read_stages(base)
    path = os.path.join(base, _STAGES_FILE)
    names = [stage["name"] for stage in stages]
    if through not in names:
        raise ValueError(f"--through {through!r}: {path} lists no such stage (it lists {', '.join(names)})")
    reused = stages[:names.index(through) + 1]
    for i, stage in enumerate(reused):
        if stage.get("status") != "done":
            raise ValueError(f"--through {through}: stage {stage['name']!r} of the base run is not done ({path}: "
                             f"stages[{i}].status is {stage.get('status')!r}); resume the base run to finish it, "
                             "or reuse fewer stages")
        if not os.path.isdir(os.path.join(base, stage["name"])):
            raise ValueError(f"--through {through}: {path} says stage {stage['name']!r} is done, but "
                             f"{os.path.join(base, stage['name'])} is not a directory")
    return StageReuse(base=base, through=through, stages=[stage["name"] for stage in reused])


def _link_or_copy(src: str, dst: str) -> str:
    """A hard link shares the (large) checkpoint files with the base run; a copy where linking fails (another
    filesystem, or one without hard links)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def fill_stages(model_dir: str, reuse: StageReuse) -> dict[str, str]:
    """Gives MODEL_DIR each reused stage directory it lacks ("filled"), leaving those it has alone ("kept": a
    re-launched sweep never clobbers a run). Each is assembled beside its place and renamed into it, so a sweep
    killed mid-copy leaves no half stage that the run would take for a finished one."""
    os.makedirs(model_dir, exist_ok=True)
    done: dict[str, str] = {}
    for name in reuse.stages:
        target = os.path.join(model_dir, name)
        if os.path.lexists(target):
            done[name] = "kept"
            continue
        partial = os.path.join(model_dir, f".{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by a sweep killed while filling it
        shutil.copytree(os.path.join(reuse.base, name), partial, copy_function=_link_or_copy)
        os.rename(partial, target)
        done[name] = "filled"
    return done


# ------------------------------------------------------------------------------------------------ results

def final_metrics(model_dir: str) -> dict[str, Any]:
    """The last logged training metrics (last line with `loss`) plus the eval/* of the last evaluation; for a
    staged run (MODEL_DIR/stages.json) those of its last stage, whose metrics.jsonl holds the run's result.

    Lines that are not JSON objects (a run killed mid-write) are skipped; no file gives {}.
    """
    if os.path.isfile(os.path.join(model_dir, _STAGES_FILE)):
        model_dir = os.path.join(model_dir, read_stages(model_dir)[-1]["name"])
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


def write_sweep_json(root: str, grid: dict[str, list[str]], runs: Sequence[Run],
                     reuse: StageReuse | None = None) -> str:
    """Writes ROOT/sweep.json via a temporary file and os.replace, so readers never see half a file. With
    `reuse`, it says which base stages the runs started from and, per run, which it got now or already had."""
    path = os.path.join(root, _SWEEP_FILE)
    record: dict[str, Any] = {"grid": grid}
    if reuse:
        record["reuse_stages"] = {"base_model_dir": reuse.base, "through": reuse.through, "stages": reuse.stages}
    record["runs"] = [
        {"name": r.name, "bindings": r.bindings, "model_dir": r.model_dir, "command": r.command,
         "exit_code": r.exit_code, "metrics": r.metrics, **({"reused_stages": r.reused} if reuse else {})}
        for r in runs]
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


def run_sweep(runs: Sequence[Run], root: str, grid: dict[str, list[str]], reuse: StageReuse | None = None) -> int:
    """Runs each command in turn (output streams through), after filling in its reused stages, recording exit
    codes and final metrics; sweep.json is rewritten after every run so an interrupted sweep still leaves its
    results. A run that cannot be set up or launched keeps exit code None and the sweep goes on."""
    os.makedirs(root, exist_ok=True)
    for i, run in enumerate(runs, 1):
        print(f"=== sweep run {i}/{len(runs)}: {run.name}\n{shlex.join(run.command)}", flush=True)
        try:
            if reuse:
                run.reused = fill_stages(run.model_dir, reuse)
                print(f"=== reused stages of {reuse.base}: " + ", ".join(
                    f"{name} ({how})" for name, how in run.reused.items()), flush=True)
            run.exit_code = subprocess.run(run.command, check=False).returncode
        except KeyboardInterrupt:
            run.exit_code = 130
        except OSError as e:  # filling in its stages failed (e.g. a full disk), or the launch itself
            print(f"=== sweep run {run.name} not launched: {e}; going on", flush=True)
        run.metrics = final_metrics(run.model_dir)
        write_sweep_json(root, grid, runs, reuse)
        if run.exit_code == 130:
            print("sweep interrupted", file=sys.stderr, flush=True)
            break
        if run.exit_code:
            print(f"=== sweep run {run.name} failed with exit code {run.exit_code}; going on", flush=True)
    path = write_sweep_json(root, grid, runs, reuse)
    print(f"\n{summary_table(runs)}\n\nwrote {path}", flush=True)
    failed = [r.name for r in runs if r.exit_code != 0]
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed or did not run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ CLI

class _AppendAxis(argparse.Action):
    """--grid and --grid_file append (kind, value) to one list, so the axes keep their command-line order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), (self.const, values)])


def make_parser() -> argparse.ArgumentParser:
    parser = cli.gin_argument_parser(__doc__.split("\n\n")[0])
    parser.prog = "python -m kipjax.sweep"
    parser.add_argument("--grid", action=_AppendAxis, dest="axes", const="grid", default=[],
                        metavar="KEY=V1,V2,...", help="a swept gin binding (repeatable; runs are the cartesian "
                        "product of all axes)")
    parser.add_argument("--grid_file", action=_AppendAxis, dest="axes", const="file", default=[], metavar="PATH",
                        help="a file of axes, one KEY=V1,V2,... line each, # comments (repeatable)")
    parser.add_argument("--model_dir_root", required=True, help="each run trains in MODEL_DIR_ROOT/<run name>")
    parser.add_argument("--reuse_stages", metavar="BASE_MODEL_DIR",
                        help="a staged run whose finished stages (up to --through) every run starts from")
    parser.add_argument("--through", metavar="STAGE_NAME", help="the last stage taken from --reuse_stages")
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
    if not args.axes:
        parser.error("give at least one --grid KEY=V1,V2,... or --grid_file PATH")
    if (args.reuse_stages is None) != (args.through is None):
        parser.error("--reuse_stages BASE_MODEL_DIR and --through STAGE_NAME go together")
    try:
        specs = [item for kind, value in args.axes
                 for item in ([value] if kind == "grid" else read_grid_file(value))]
        grid = parse_grid(specs)
        check_conflicts(grid, fixed, args.gin_bindings)
        reuse = stage_reuse(args.reuse_stages, args.through) if args.reuse_stages else None
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
        if reuse:
            print(f"note: a dry run fills in nothing: give each MODEL_DIR the stage directories "
                  f"{', '.join(reuse.stages)} of {reuse.base} before running its command", file=sys.stderr)
        for run in runs:
            print(shlex.join(run.command))
        return 0
    return run_sweep(runs, root, grid, reuse)


if __name__ == "__main__":
    sys.exit(main())
