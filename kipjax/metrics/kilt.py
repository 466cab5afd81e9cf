"""KILT retrieval metrics as the official evaluation computes them (facebookresearch/KILT kilt/eval_retrieval.py,
with the loading of kilt/kilt_utils.py and the validation of kilt/eval_downstream.py; line numbers below are
those files at commit 2664322), plus passage-level R-precision as trec_eval computes it.

Files are KILT JSON lines, {"id", "input", "output": [{"answer", "provenance": [{"wikipedia_id", "title",
"start_paragraph_id", ..., "text"}]}]}. Ids are compared as stripped `str(id)`, so 12 and " 12" match.

Validation (eval_downstream.validate_input, 212-241, and eval_retrieval.filter_answers, 393-405):
  - gold ids and guess ids must each be unique, and every gold id needs a guess; a guess whose id is not a gold
    id is dropped with a warning (the script only warns that the sizes differ and then ignores it);
  - a guess's outputs without a "provenance" key are dropped and exactly one output with one must remain; its
    provenance list, in file order, is the ranked retrieval (an empty list is allowed and retrieves nothing).
  Anything else the script would crash on (malformed JSON, a missing id / input / output, a non-string answer,
  title, input or text) is a ValueError naming the file, the line and the id.

Ids and ranking. A provenance item's id is "+".join(str(item[key]).strip() for key in rank_keys), e.g. "123" or,
with rank_keys wikipedia_id,start_paragraph_id, "123+4" (passage level). The guess's ranked ids skip items that
lack a rank key and keep only the first occurrence of an id (_get_ids_list, 24-51); text metrics instead read
the raw provenance list. Per example (then averaged over every gold example, 377-388):
  - Rprec (243-264): for each gold output, its distinct ids G (items lacking a rank key skipped; an output
    without provenance has none) give |first |G| ranked ids ∩ G| / |G| (0 when G is empty); the example's
    Rprec is the maximum over the outputs (outputs, not distinct sets).
  - The evidence rank (get_rank, 54-139): every distinct set of ids of a gold output with a "provenance" key
    is an evidence set (here a missing rank key is left out of the join, 74-83, instead of skipping the item,
    and an empty provenance list is an empty set that counts but can never be found). Walking the ranked ids,
    a non-gold id appends False; a gold id, for EVERY set containing it, removes it from that set and appends
    True if the set is now complete, else a placeholder for the set that replaces the set's earlier
    placeholder. So a set occupies one position (where its last member came), partial sets count as misses,
    and one id can append several entries.
  - precision@k = Trues in the first k rank entries / k (146; k, not the number retrieved),
    recall@k = Trues in the first k / number of evidence sets (154), success_rate@k = 1 if a True is in the
    first k (163); all three are 0 for an example without evidence sets or without ranked ids (290).
  - Text metrics (168-241), on the normalized "text" of the first k raw provenance items of the guess
    (normalize: lower case, drop ASCII punctuation, drop the words a / an / the, squeeze spaces;
    eval_downstream 53-69), using the stripped non-empty gold answers and gold provenance titles
    (eval_downstream 20-40) and SUBSTRING tests on normalized strings: answer_in_context@k (a normalized
    answer in a text; an answer like "The" normalizes to "" and is in every text),
    answer_and_ent_in_context@k (a text holding both an answer and a title), entity_in_context@k (a title in
    a text) and entity_in_input (a title in the normalized gold input; not per k).
  - Keys, in the script's order (333-343): Rprec, entity_in_input, then per k ascending precision@k,
    answer_in_context@k, answer_and_ent_in_context@k, entity_in_context@k and, for k > 1 only, recall@k and
    success_rate@k (the script never reports recall@1 or success_rate@1).
  Defaults follow the script's CLI (437-443): ks 1,5,10,20 and rank_keys wikipedia_id. A k < 1 is an error (the
  script asserts, 60). One deviation: repeated ks are collapsed; the script would add each example twice and
  divide twice (354-388), which is a bug rather than a definition. With no examples every metric is 0 (377).

Passage-level R-precision (passage_rprec, not part of the official script): the qrels of an example are the
distinct passage ids wikipedia_id + "_" + start_paragraph_id of all its gold provenance (every output pooled,
items lacking either key skipped; a multi-paragraph provenance is identified by its start paragraph, since the
KILT format has no passage-id field), the run is the guess's distinct passage ids with scores descending by
rank, and pytrec_eval's trec_eval "Rprec" scores each example. The mean is over the examples with at least one
gold passage, an example that retrieves no passage scoring 0 (trec_eval -c); examples without gold passages
have no qrels and are left out. Note the pooling: unlike KILT's Rprec this is not a maximum over outputs.

CLI (several tasks at once; each reported and averaged over tasks, unweighted):
  python -m kipjax.metrics.kilt --gold nq-dev-kilt.jsonl --guess nq-guess.jsonl [--gold G2 --guess P2 ...]
      [--names nq,fever] [--ks 1,5,10,20] [--rank_keys wikipedia_id] [--passage_rprec] [--json]
  Task names default to the gold files' stems. --json prints {"tasks": {name: {metric: value}},
  "average": {metric: value}} with values in [0, 1]; otherwise a table in percent. --passage_rprec adds
  passage_Rprec (trec_eval's through pytrec_eval, from the pytrec-eval-terrier package).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import string
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pytrec_eval

from kipjax.data.jsonl import json_lines
from kipjax.metrics.by_id import pair_by_id, unique_by_id
from kipjax.metrics.retrieval import evidence_rank

DEFAULT_KS = (1, 5, 10, 20)
DEFAULT_RANK_KEYS = ("wikipedia_id",)
PASSAGE_KEYS = ("wikipedia_id", "start_paragraph_id")
PASSAGE_RPREC = "passage_Rprec"

Row = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class KiltRecord:
    """One line of a KILT file and where it came from ("path:line"), so that errors can point at it."""
    where: str
    data: dict

    @property
    def id(self) -> str:
        return str(self.data["id"]).strip()


# ----------------------------------------------------------------------------------------------- reading


def _check_record(record: KiltRecord, gold: bool) -> None:
    """Raises a ValueError naming the record for whatever the official script would crash on."""
    data, where = record.data, record.where
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if "id" not in data:
        raise ValueError(f"{where}: missing field 'id'")
    at = f"{where} (id {data['id']!r})"
    for field in ("input", "output") if gold else ("output",):
        if field not in data:
            raise ValueError(f"{at}: missing field {field!r}")
    if gold and not isinstance(data["input"], str):
        raise ValueError(f"{at}: 'input' must be a string")
    if not isinstance(data["output"], list) or not all(isinstance(o, dict) for o in data["output"]):
        raise ValueError(f"{at}: 'output' must be a list of objects")
    for output in data["output"]:
        answer = output.get("answer")
        if answer and not isinstance(answer, str):
            raise ValueError(f"{at}: answer {answer!r} is not a string")
        provenance = output.get("provenance", [])
        if not isinstance(provenance, list) or not all(isinstance(p, dict) for p in provenance):
            raise ValueError(f"{at}: 'provenance' must be a list of objects")
        for item in provenance:
            for field in ("title", "text"):
                if item.get(field) and not isinstance(item[field], str):
                    raise ValueError(f"{at}: provenance {field} {item[field]!r} is not a string")
    if gold and not data["output"]:
        raise ValueError(f"{at}: gold 'output' is empty (KILT's R-precision has no output to take a maximum over)")


def read_kilt_records(path: str | Path) -> list[KiltRecord]:
    """The records of a KILT JSON-lines file with their "path:line"; blank lines are skipped."""
    records = []
    for line_number, data in json_lines(path):
        record = KiltRecord(f"{path}:{line_number}", data)
        _check_record(record, gold=False)  # the fields every KILT line has; gold ones are checked in align
        records.append(record)
    return records


def read_kilt_file(path: str | Path) -> list[dict]:
    """The rows of a KILT JSON-lines file; malformed lines are a ValueError naming the file and line."""
    return [record.data for record in read_kilt_records(path)]


def _as_records(rows: Iterable[Row | KiltRecord], name: str) -> list[KiltRecord]:
    """Rows given in memory get the location "name[index]" for error messages."""
    return [row if isinstance(row, KiltRecord) else KiltRecord(f"{name}[{i}]", row) for i, row in enumerate(rows)]


def guess_provenance(guess: Row, where: str = "guess") -> list[dict]:
    """The ranked retrieval of a guess: the provenance of its only output that has one (filter_answers)."""
    with_provenance = [o for o in guess["output"] if "provenance" in o]
    if len(with_provenance) != 1:
        raise ValueError(f"{where} (id {guess['id']!r}): a guess needs exactly one output with 'provenance', "
                         f"found {len(with_provenance)}")
    return with_provenance[0]["provenance"]


def align(gold_rows: Iterable[Row | KiltRecord], guess_rows: Iterable[Row | KiltRecord]
          ) -> list[tuple[KiltRecord, KiltRecord]]:
    """(gold, guess) pairs in gold order after KILT's validation (see the module docstring)."""
    gold = _as_records(gold_rows, "gold")
    guess = _as_records(guess_rows, "guess")
    for record in gold:
        _check_record(record, gold=True)
    for record in guess:
        _check_record(record, gold=False)
        guess_provenance(record.data, record.where)
    guess_file = guess[0].where.rsplit(":", 1)[0] if guess and ":" in guess[0].where else "the guesses"
    return pair_by_id(unique_by_id(gold, "gold", _raw_id), unique_by_id(guess, "guess", _raw_id), "guess",
                      "guess(es)", guess_file, _raw_id, ", as in KILT's evaluation")


def _raw_id(record: KiltRecord) -> Any:
    """The id as the file writes it (12, not '12'), for messages."""
    return record.data["id"]


# ----------------------------------------------------------------------------------- page / passage ids


def provenance_id(item: Row, rank_keys: Sequence[str]) -> str | None:
    """The item's "+"-joined rank-key values, or None when it lacks one (then KILT skips it)."""
    if any(key not in item for key in rank_keys):
        return None
    return "+".join(str(item[key]).strip() for key in rank_keys)


def _distinct(ids: Iterable[str | None]) -> list[str]:
    """Ids in first-seen order without Nones or repeats."""
    return list(dict.fromkeys(i for i in ids if i is not None))


def ranked_ids(guess: Row, rank_keys: Sequence[str] = DEFAULT_RANK_KEYS) -> list[str]:
    """The guess's distinct ids in rank order (items lacking a rank key skipped)."""
    return _distinct(provenance_id(item, rank_keys) for item in guess_provenance(guess))


def gold_id_lists(gold: Row, rank_keys: Sequence[str] = DEFAULT_RANK_KEYS) -> list[list[str]]:
    """Per gold output, its distinct ids (empty for an output without provenance): R-precision's gold."""
    return [_distinct(provenance_id(item, rank_keys) for item in output.get("provenance", []))
            for output in gold["output"]]


def evidence_sets(gold: Row, rank_keys: Sequence[str] = DEFAULT_RANK_KEYS) -> list[set[str]]:
    """Distinct id sets of the gold outputs with provenance, in first-seen order, as get_rank builds them:
    absent rank keys are left out of the join and an empty provenance list is an (unfindable) empty set."""
    sets: list[set[str]] = []
    for output in gold["output"]:
        if "provenance" in output:
            members = {"+".join(str(item[key]).strip() for key in rank_keys if key in item)
                       for item in output["provenance"]}
            if members not in sets:
                sets.append(members)
    return sets


# ------------------------------------------------------------------------------------- ranking metrics


def r_precision(ranked: Sequence[str], gold_lists: Sequence[Sequence[str]]) -> float:
    """Maximum over the gold outputs of |first R ranked ∩ output's ids| / R, R its number of ids."""
    def one(gold_ids: Sequence[str]) -> float:
        hits = sum(1 for x in ranked[:len(gold_ids)] if x in gold_ids)
        return hits / len(gold_ids) if gold_ids else 0
    return max(one(gold_ids) for gold_ids in gold_lists)


def normalize_answer(text: str) -> str:
    """KILT's answer normalization: lower case, no ASCII punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def gold_answers(gold: Row) -> set[str]:
    """The stripped non-empty answers of the gold outputs."""
    return {o["answer"].strip() for o in gold["output"] if o.get("answer") and o["answer"].strip()}


def gold_titles(gold: Row) -> set[str]:
    """The stripped non-empty titles of all gold provenance."""
    return {item["title"].strip() for o in gold["output"] for item in o.get("provenance", [])
            if item.get("title") and item["title"].strip()}


def _contexts(guess: Row, k: int) -> list[str | None]:
    """The normalized texts of the first k raw provenance items (None for an item without "text")."""
    return [normalize_answer(item["text"]) if "text" in item else None for item in guess_provenance(guess)[:k]]


def _any_in(needles: Iterable[str], haystack: str) -> bool:
    return any(needle in haystack for needle in needles)


def metric_names(ks: Sequence[int]) -> list[str]:
    """The script's result keys, in its order, for sorted distinct ks."""
    names = ["Rprec", "entity_in_input"]
    for k in ks:
        names += [f"precision@{k}", f"answer_in_context@{k}", f"answer_and_ent_in_context@{k}",
                  f"entity_in_context@{k}"]
        if k > 1:
            names += [f"recall@{k}", f"success_rate@{k}"]
    return names


def normalize_ks(ks: Iterable[int | str]) -> list[int]:
    """Sorted distinct positive cut-offs (KILT asserts k > 0)."""
    ks = list(ks)
    values = sorted({int(k) for k in ks})
    if not values or values[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return values


def example_scores(gold: Row, guess: Row, ks: Sequence[int] = DEFAULT_KS,
                   rank_keys: Sequence[str] = DEFAULT_RANK_KEYS) -> dict[str, float]:
    """Every metric of one (gold, guess) pair, as the script's get_ranking_metrics (ks already normalized)."""
    ranked = ranked_ids(guess, rank_keys)
    sets = evidence_sets(gold, rank_keys) if ranked else []
    rank = evidence_rank(ranked, sets)
    answers = [normalize_answer(a) for a in gold_answers(gold)]
    titles = [normalize_answer(t) for t in gold_titles(gold)]
    scores: dict[str, float] = {"Rprec": r_precision(ranked, gold_id_lists(gold, rank_keys)),
                                "entity_in_input": int(_any_in(titles, normalize_answer(gold["input"])))}
    all_contexts = _contexts(guess, max(ks))
    for k in ks:
        contexts = [c for c in all_contexts[:k] if c is not None]
        hits = rank[:k].count(True)
        scores[f"precision@{k}"] = hits / k if sets else 0
        scores[f"answer_in_context@{k}"] = int(any(_any_in(answers, c) for c in contexts))
        scores[f"answer_and_ent_in_context@{k}"] = int(any(_any_in(answers, c) and _any_in(titles, c)
                                                           for c in contexts))
        scores[f"entity_in_context@{k}"] = int(any(_any_in(titles, c) for c in contexts))
        if k > 1:
            scores[f"recall@{k}"] = hits / len(sets) if sets else 0
            scores[f"success_rate@{k}"] = int(hits > 0) if sets else 0
    return scores


def retrieval_scores(gold_rows: Iterable[Row | KiltRecord], guess_rows: Iterable[Row | KiltRecord],
                     ks: Iterable[int] = DEFAULT_KS, rank_keys: Sequence[str] = DEFAULT_RANK_KEYS
                     ) -> dict[str, float]:
    """KILT's retrieval metrics of one task (eval_retrieval.evaluate's result), averaged over gold examples."""
    ks = normalize_ks(ks)
    pairs = align(gold_rows, guess_rows)
    totals = dict.fromkeys(metric_names(ks), 0.0)
    for gold, guess in pairs:
        for name, value in example_scores(gold.data, guess.data, ks, rank_keys).items():
            totals[name] += value
    return {name: total / len(pairs) if pairs else 0.0 for name, total in totals.items()}


# ------------------------------------------------------------------------------ passage-level R-precision


def passage_id(item: Row, passage_keys: Sequence[str] = PASSAGE_KEYS) -> str | None:
    """wikipedia_id + "_" + start_paragraph_id (stripped strings), or None when either is absent."""
    if any(key not in item for key in passage_keys):
        return None
    return "_".join(str(item[key]).strip() for key in passage_keys)


def passage_qrels_and_run(pairs: Sequence[tuple[KiltRecord, KiltRecord]],
                          passage_keys: Sequence[str] = PASSAGE_KEYS
                          ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """trec_eval inputs: every gold passage relevant (1); retrieved passages scored len, len - 1, ..., 1."""
    qrels, run = {}, {}
    for gold, guess in pairs:
        relevant = _distinct(passage_id(item, passage_keys)
                             for output in gold.data["output"] for item in output.get("provenance", []))
        if not relevant:
            continue
        qrels[gold.id] = dict.fromkeys(relevant, 1)
        retrieved = _distinct(passage_id(item, passage_keys) for item in guess_provenance(guess.data))
        if retrieved:
            run[gold.id] = {pid: float(len(retrieved) - i) for i, pid in enumerate(retrieved)}
    return qrels, run


def passage_rprec(gold_rows: Iterable[Row | KiltRecord], guess_rows: Iterable[Row | KiltRecord],
                  passage_keys: Sequence[str] = PASSAGE_KEYS) -> float:
    """trec_eval's Rprec over passages, averaged over examples with gold passages (see the module docstring)."""

    qrels, run = passage_qrels_and_run(align(gold_rows, guess_rows), passage_keys)
    if not qrels:
        return 0.0
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"Rprec"}).evaluate(run)
    return sum(per_query.get(qid, {}).get("Rprec", 0.0) for qid in qrels) / len(qrels)


# ------------------------------------------------------------------------------------------ several tasks


def task_scores(gold_rows: Sequence[Row | KiltRecord], guess_rows: Sequence[Row | KiltRecord],
                ks: Iterable[int] = DEFAULT_KS, rank_keys: Sequence[str] = DEFAULT_RANK_KEYS,
                with_passage_rprec: bool = False) -> dict[str, float]:
    """retrieval_scores, plus passage_Rprec when asked."""
    scores = retrieval_scores(gold_rows, guess_rows, ks, rank_keys)
    if with_passage_rprec:
        scores[PASSAGE_RPREC] = passage_rprec(gold_rows, guess_rows)
    return scores


def multi_task_scores(tasks: Mapping[str, tuple[Sequence[Row | KiltRecord], Sequence[Row | KiltRecord]]],
                      ks: Iterable[int] = DEFAULT_KS, rank_keys: Sequence[str] = DEFAULT_RANK_KEYS,
                      with_passage_rprec: bool = False) -> dict[str, dict]:
    """{"tasks": {name: scores}, "average": unweighted mean over tasks} for {name: (gold rows, guess rows)}."""
    per_task = {name: task_scores(gold, guess, ks, rank_keys, with_passage_rprec)
                for name, (gold, guess) in tasks.items()}
    names = next(iter(per_task.values()), {}).keys()
    average = {metric: sum(s[metric] for s in per_task.values()) / len(per_task) for metric in names}
    return {"tasks": per_task, "average": average}


def task_names(gold_paths: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """The given names, or the gold files' stems; they must be distinct and one per gold file."""
    names = list(names) if names else [Path(p).stem for p in gold_paths]
    if len(names) != len(gold_paths):
        raise ValueError(f"{len(names)} task names for {len(gold_paths)} gold files")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be distinct, got {names} (pass --names)")
    return names


def score_files(gold_paths: Sequence[str], guess_paths: Sequence[str], names: Sequence[str] | None = None,
                ks: Iterable[int] = DEFAULT_KS, rank_keys: Sequence[str] = DEFAULT_RANK_KEYS,
                with_passage_rprec: bool = False) -> dict[str, dict]:
    """multi_task_scores of gold / guess file pairs (the i-th gold goes with the i-th guess)."""
    if len(gold_paths) != len(guess_paths):
        raise ValueError(f"{len(gold_paths)} gold file(s) but {len(guess_paths)} guess file(s); give them in pairs")
    tasks = {name: (read_kilt_records(gold), read_kilt_records(guess))
             for name, gold, guess in zip(task_names(gold_paths, names), gold_paths, guess_paths)}
    return multi_task_scores(tasks, ks, rank_keys, with_passage_rprec)


def format_table(result: Mapping[str, Mapping]) -> str:
    """Metrics as rows, tasks and their average as columns, in percent."""
    columns = {**result["tasks"], "average": result["average"]}
    width = max(len(name) for name in columns)
    metrics = list(result["average"])
    metric_width = max([len("metric"), *(len(m) for m in metrics)])
    lines = [" ".join([f"{'metric':{metric_width}s}", *(f"{name:>{max(width, 6)}s}" for name in columns)])]
    for metric in metrics:
        cells = (f"{100 * scores[metric]:{max(width, 6)}.2f}" for scores in columns.values())
        lines.append(" ".join([f"{metric:{metric_width}s}", *cells]))
    return "\n".join(lines)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(prog="python -m kipjax.metrics.kilt", description=__doc__.split("\n")[0])
    parser.add_argument("--gold", action="append", required=True, help="gold KILT file (repeat once per task)")
    parser.add_argument("--guess", action="append", required=True, help="guess KILT file, the i-th for the i-th gold")
    parser.add_argument("--names", help="comma-separated task names (default: the gold files' stems)")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="comma-separated cut-offs")
    parser.add_argument("--rank_keys", default=",".join(DEFAULT_RANK_KEYS),
                        help="comma-separated provenance keys an id is made of (wikipedia_id,start_paragraph_id "
                             "for passages)")
    parser.add_argument("--passage_rprec", action="store_true", help="add trec_eval passage-level R-precision")
    parser.add_argument("--json", action="store_true", help='print {"tasks": {...}, "average": {...}}')
    args = parser.parse_args(argv)
    try:
        result = score_files(args.gold, args.guess, _split(args.names) if args.names else None,
                             normalize_ks(_split(args.ks)), _split(args.rank_keys), args.passage_rprec)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result) if args.json else format_table(result))
    return result


if __name__ == "__main__":
    main()
