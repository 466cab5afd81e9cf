"""Appendix D.1's threshold calibration: the gamma with the best InKB F1 on a development set.

    python -m kipjax.methods.entqa.calibrate --scored S.jsonl --gold G.jsonl [--overlaps best] [--json]

S is what `python -m kipjax.methods.entqa.link --scored` writes (one JSON line per document, `{"id", "links":
[[start, end, title, score], ...]}`, every candidate link before the threshold); G is gold links in
`kipjax.metrics.el inkb`'s layout (`python -m kipjax.data.aida FILE --out G.jsonl`). Every threshold that
changes the kept links is tried (`linking.calibrate`); prints the best gamma, its F1, and the F1 at a few
round thresholds for comparison. Use the gamma with `link --threshold` (or `EntqaReader.threshold`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from kipjax.data.jsonl import json_lines, required_field
from kipjax.methods.entqa import linking

REPORTED_THRESHOLDS = (0.01, 0.05, 0.1, 0.2, 0.5)


def read_scored(path: str) -> dict[str, list[linking.ScoredLink]]:
    """A scored-links file (module docstring), with errors naming the file and line."""
    scored: dict[str, list[linking.ScoredLink]] = {}
    for line, record in json_lines(path):
        where = f"{path}:{line}"
        doc = required_field(record, "id", str, where)
        links = required_field(record, "links", list, where)
        if doc in scored:
            raise ValueError(f"{where}: document {doc!r} appears twice")
        parsed = []
        for link in links:
            if not (isinstance(link, list) and len(link) == 4 and all(isinstance(x, int) for x in link[:2])
                    and isinstance(link[2], str) and isinstance(link[3], (int, float))):
                raise ValueError(f"{where}: each link must be [start, end, title, score], got {link!r:.80}")
            parsed.append(linking.ScoredLink(link[0], link[1], link[2], float(link[3])))
        scored[doc] = parsed
    return scored


def read_gold(path: str) -> list[dict]:
    records = []
    for line, record in json_lines(path):
        where = f"{path}:{line}"
        records.append({"id": required_field(record, "id", str, where),
                        "links": required_field(record, "links", list, where)})
    return records


def run(scored_path: str, gold_path: str, overlaps: str = "keep") -> dict[str, Any]:
    scored, gold = read_scored(scored_path), read_gold(gold_path)
    unknown = sorted(set(scored) - {r["id"] for r in gold})
    if unknown:
        raise ValueError(f"{scored_path}: document id(s) {unknown[:5]} are not in the gold file {gold_path}")
    result = linking.calibrate(scored, gold, overlaps)
    at = {f"f1@{t}": linking.inkb_at(scored, gold, t, overlaps)["f1"] for t in REPORTED_THRESHOLDS}
    return {"threshold": result["threshold"], "f1": result["f1"], **at, "thresholds_tried": len(result["curve"])}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m kipjax.methods.entqa.calibrate", description=__doc__)
    parser.add_argument("--scored", required=True)
    parser.add_argument("--gold", required=True)
    parser.add_argument("--overlaps", choices=linking.OVERLAPS, default="keep")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        report = run(args.scored, args.gold, args.overlaps)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"best threshold {report['threshold']:.4g}: InKB F1 {report['f1']:.4f} "
              f"({report['thresholds_tried']} thresholds tried)")
        for t in REPORTED_THRESHOLDS:
            print(f"  threshold {t}: F1 {report[f'f1@{t}']:.4f}")
    return report


if __name__ == "__main__":
    main()
