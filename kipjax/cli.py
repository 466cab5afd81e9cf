"""Command-line plumbing shared by the kipjax CLIs: gin files and bindings, clean errors, multi-host start."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence, TypeVar

import gin

M = TypeVar("M")
# What a command that works on a trained method adds to the gin bindings, so that the config's METHOD is built.
METHOD_BINDING = "command.method = %METHOD"


def gin_argument_parser(description: str) -> argparse.ArgumentParser:
    """A parser taking `--gin_file` (repeatable), `--gin_bindings` (repeatable) and `--gin.KEY=VALUE`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file; several compose in order")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding, e.g. 'A.b = 1'")
    parser.add_argument("--gin_search_path", action="append", default=[],
                        help="directory for resolving gin `include` statements (repo root by default)")
    return parser


def split_gin_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pulls `--gin.KEY=VALUE` (or `--gin.KEY VALUE`) out of argv as gin bindings `KEY = VALUE`."""
    rest, bindings = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--gin.") and arg != "--gin.":
            key_value = arg[len("--gin."):]
            if "=" in key_value:
                key, value = key_value.split("=", 1)
            elif i + 1 < len(args):
                key, value = key_value, args[i + 1]
                i += 1
            else:
                raise SystemExit(f"error: {arg} needs a value, e.g. {arg}=VALUE")
            bindings.append(f"{key} = {value}")
        else:
            rest.append(arg)
        i += 1
    return rest, bindings


def parse_gin(args: argparse.Namespace, overrides: Sequence[str]) -> None:
    """Loads gin files then bindings (later ones win); a bad file or binding exits with gin's message."""
    for path in [os.getcwd(), *args.gin_search_path]:
        gin.add_config_file_search_path(path)
    for path in args.gin_file:
        if not os.path.exists(path):
            raise SystemExit(f"error: gin file {path!r} does not exist")
    try:
        gin.parse_config_files_and_bindings(args.gin_file, [*args.gin_bindings, *overrides])
    except (ValueError, KeyError, TypeError, NameError, ImportError, SyntaxError) as e:
        raise SystemExit(f"error: bad gin configuration: {e}") from None


def parse_command_line(description: str, argv: Sequence[str] | None = None,
                       parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or gin_argument_parser(description)
    rest, overrides = split_gin_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    parse_gin(args, overrides)
    return args


@gin.configurable("command")
def _command_method(method: Any = gin.REQUIRED) -> Any:
    return method


def configured_method(kind: type[M], owner: str, purpose: str) -> M:
    """The config's METHOD (bound by `METHOD_BINDING`), or a clear exit when it is not a `kind`: `owner` names
    the method family in the message (e.g. 'TACO'), `purpose` the command."""
    method = _command_method()
    if not isinstance(method, kind):
        raise SystemExit(f"error: the config's METHOD is a {type(method).__name__}, not {owner}'s {kind.__name__}: "
                         f"{purpose} needs a {kind.__name__} checkpoint and its config")
    return method


@gin.configurable
def initialize_distributed(enabled: bool | None = None, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> None:
    """Starts JAX's multi-host runtime; `None` means on when KIPJAX_MULTIHOST=1 is set.

    On TPU pods and SLURM clusters JAX finds the coordinator and the process ids itself. Elsewhere (several
    processes on one machine, as the multi-host test runs them) give `coordinator_address` ('host:port'),
    `num_processes` and `process_id`. CPU processes exchange collectives through gloo.
    """
    if enabled is None:
        enabled = os.environ.get("KIPJAX_MULTIHOST") == "1"
    if enabled:
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="MODEL_DIR or checkpoints directory")


def require_checkpoint(path: str) -> None:
    """Exits with a clear message, before any model is built, when `path` holds no checkpoint."""
    import os

    from kipjax import checkpoints
    from kipjax.stages import STAGES_FILE
    if os.path.isfile(os.path.join(path, STAGES_FILE)):  # a staged run: its stages' checkpoints are checked later
        return
    try:
        checkpoints.find_checkpoint_dir(path)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
