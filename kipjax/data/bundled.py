"""What the generated demo corpora shipped inside the package share: resolving their files, and the CLI that
regenerates a corpus (atomically) into a folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kipjax.run_log import atomic_write_directory


def bundled_file(root: Path, name: str) -> str:
    """`root / name` as a string, or FileNotFoundError naming the corpus when it is not there."""
    path = root / name
    if not path.exists():
        raise FileNotFoundError(f"the bundled demo corpus {root} has no {name!r}")
    return str(path)


def regenerate_main(argv: Sequence[str] | None, description: str, write_corpus: Callable[[Path], None],
                    split_sizes: Mapping[str, int]) -> None:
    """`--out DIR [--force]`: writes the corpus into DIR through `atomic_write_directory`; prints a JSON summary."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    out = atomic_write_directory(args.out, write_corpus, force=args.force)
    print(json.dumps({"out": str(out), **{f"{k}_documents": v for k, v in split_sizes.items()}}))


def differing_files(a: Path, b: Path) -> list[str]:
    """Relative paths of files present in only one of two folders or different in content: what a regenerated
    corpus must not have against the bundled copy."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    names_a, names_b = files(a), files(b)
    return sorted((names_a ^ names_b) | {n for n in names_a & names_b
                                         if (a / n).read_bytes() != (b / n).read_bytes()})
