"""KILT retrieval metrics (kilt/eval_retrieval.py's definitions) on hand-worked examples (the arithmetic is in the
comments), passage-level R-precision via pytrec_eval against a hand-computed value, the file validation errors,
and the multi-task CLI run as a subprocess."""
import json
import subprocess
import sys

import pytest

from kipjax.metrics.kilt import (DEFAULT_KS, evidence_rank, example_scores, main, metric_names, multi_task_scores,
                                 normalize_answer, normalize_ks, passage_rprec, read_kilt_file, retrieval_scores)


def prov(wikipedia_id, paragraph=None, **extra):
    item = {"wikipedia_id": wikipedia_id, "title": f"Page {wikipedia_id}", **extra}
    if paragraph is not None:
        item["start_paragraph_id"] = paragraph
    return item


def gold_row(id_, *provenance_sets, input_="question", answers=None):
    """One gold output per provenance set (None: an answer-only output without a provenance key)."""
    outputs = [{"answer": "x"} if p is None else {"answer": "x", "provenance": list(p)} for p in provenance_sets]
    if answers is not None:
        outputs = [{"answer": a} for a in answers] + outputs
    return {"id": id_, "input": input_, "output": outputs}


def guess_row(id_, *provenance):
    return {"id": id_, "input": "question", "output": [{"answer": "x", "provenance": list(provenance)}]}


def pages(*ids):
    return [prov(i) for i in ids]


def scores_of(gold, guess, ks=(1, 2, 5, 100), rank_keys=("wikipedia_id",)):
    return retrieval_scores([gold], [guess], ks, rank_keys)


def ranking_part(scores):
    return {k: v for k, v in scores.items() if k.split("@")[0] in ("Rprec", "precision", "recall", "success_rate")}


def test_duplicates_in_the_guess_and_a_two_page_evidence_set():
    # Gold {A, B}; guess A, A, C, B, D -> distinct A, C, B, D. R = 2: first two A, C -> Rprec 1/2.
    # Rank: A -> [partial]; C -> [partial, F]; B completes the set, its placeholder goes -> [F, T]; D -> [F, T, F].
    # So the set sits at position 2 although B is the 3rd distinct page.
    scores = scores_of(gold_row("q", pages("A", "B")), guess_row("q", *pages("A", "A", "C", "B", "D")))
    assert ranking_part(scores) == {
        "Rprec": 0.5,
        "precision@1": 0.0, "precision@2": 0.5, "recall@2": 1.0, "success_rate@2": 1.0,
        "precision@5": 1 / 5, "recall@5": 1.0, "success_rate@5": 1.0,
        "precision@100": 1 / 100, "recall@100": 1.0, "success_rate@100": 1.0}  # k beyond the list: / k still


def test_several_gold_outputs_with_different_provenance_sets():
    # Outputs [A], [B, C], answer only, [A] again. Rprec per output: [A] R=1, top B -> 0; [B, C] R=2, top B, A
    # -> 1/2; no provenance -> 0; [A] -> 0. Max 1/2.
    # Evidence sets {A}, {B, C} (the repeat dropped, the answer-only output has none): 2.
    # Rank over B, A, D, C: B -> [p1]; A -> [p1, T]; D -> [p1, T, F]; C -> [T, F, T].
    gold = gold_row("q", pages("A"), pages("B", "C"), None, pages("A"))
    scores = scores_of(gold, guess_row("q", *pages("B", "A", "D", "C")), ks=(1, 2, 5))
    assert ranking_part(scores) == {
        "Rprec": 0.5, "precision@1": 1.0, "precision@2": 0.5, "recall@2": 0.5, "success_rate@2": 1.0,
        "precision@5": 2 / 5, "recall@5": 1.0, "success_rate@5": 1.0}


def test_one_page_advances_every_set_that_holds_it():
    # Outputs [A] and [B, A]; guess B, A. B -> [p1]; A completes {A} -> [p1, T] and then {B, A}, whose
    # placeholder goes -> [T, T]: precision@1 = 1 though page B alone completes nothing.
    # Rprec: [A] top-1 B -> 0; [B, A] top-2 B, A -> 1. Max 1.
    scores = scores_of(gold_row("q", pages("A"), pages("B", "A")), guess_row("q", *pages("B", "A")), ks=(1, 2, 5))
    assert ranking_part(scores) == {
        "Rprec": 1.0, "precision@1": 1.0, "precision@2": 1.0, "recall@2": 1.0, "success_rate@2": 1.0,
        "precision@5": 2 / 5, "recall@5": 1.0, "success_rate@5": 1.0}
    assert evidence_rank(["B", "A", "C"], [{"A"}, {"B", "A"}]) == [True, True, False]


def test_r_larger_than_the_number_retrieved():
    # Gold {A, B, C}, guess A: Rprec = 1/3 (R stays 3); the set is never completed -> P/R/S 0.
    scores = scores_of(gold_row("q", pages("A", "B", "C")), guess_row("q", *pages("A")), ks=(1, 5))
    assert ranking_part(scores) == {"Rprec": 1 / 3, "precision@1": 0.0, "precision@5": 0.0, "recall@5": 0.0,
                                    "success_rate@5": 0.0}


def test_examples_without_gold_provenance_count_as_zero_in_the_average():
    hit = (gold_row("a", pages("A")), guess_row("a", *pages("A", "B")))          # all ranking metrics 1 at k=1
    no_provenance = (gold_row("b", None), guess_row("b", *pages("A")))            # nothing to find: all 0
    empty_guess = (gold_row("c", pages("C")), guess_row("c"))                     # nothing retrieved: all 0
    golds, guesses = zip(hit, no_provenance, empty_guess)
    scores = retrieval_scores(golds, guesses, ks=(1, 2))
    # Example a: Rprec 1, precision@1 1, precision@2 1/2, recall@2 1, success@2 1; the others 0; mean over 3.
    assert ranking_part(scores) == {"Rprec": 1 / 3, "precision@1": 1 / 3, "precision@2": (1 / 2) / 3,
                                    "recall@2": 1 / 3, "success_rate@2": 1 / 3}


def test_an_empty_provenance_list_is_an_evidence_set_that_is_never_found():
    # Outputs [A] and "provenance": []: sets {A} and {} -> 2 sets; rank [T] -> recall@5 = 1/2.
    # Rprec: [A] -> 1, [] -> 0 (R = 0); max 1.
    scores = scores_of(gold_row("q", pages("A"), []), guess_row("q", *pages("A")), ks=(1, 5))
    assert ranking_part(scores) == {"Rprec": 1.0, "precision@1": 1.0, "precision@5": 1 / 5, "recall@5": 0.5,
                                    "success_rate@5": 1.0}


def test_passage_rank_keys_and_items_missing_a_key():
    # rank_keys wikipedia_id,start_paragraph_id: ids "A+3"; int 3 and string "3" agree after str().
    # Gold [A p3, B (no paragraph)]: Rprec's gold skips B -> ["A+3"]; the evidence set joins what is there -> {"A+3",
    # "B"}. Guess: B (no paragraph, skipped), A "3", A 4 -> ranked "A+3", "A+4".
    # Rprec: R = 1, top "A+3" -> 1. Rank: "A+3" -> [partial]; "A+4" -> [partial, F]: the set needs "B", which no
    # ranked id can be, so P/R/S are 0 while Rprec is 1.
    gold = gold_row("q", [prov("A", 3), prov("B")])
    guess = guess_row("q", prov("B"), prov("A", "3"), prov("A", 4))
    scores = scores_of(gold, guess, ks=(1, 5), rank_keys=("wikipedia_id", "start_paragraph_id"))
    assert ranking_part(scores) == {"Rprec": 1.0, "precision@1": 0.0, "precision@5": 0.0, "recall@5": 0.0,
                                    "success_rate@5": 0.0}
    # Page level: gold set {A, B}; ranked B, A (the second A a repeat): B -> [p0]; A -> [T]. Rprec: B, A -> 2/2.
    assert ranking_part(scores_of(gold, guess, ks=(1, 5))) == {
        "Rprec": 1.0, "precision@1": 1.0, "precision@5": 1 / 5, "recall@5": 1.0, "success_rate@5": 1.0}


def test_text_metrics():
    gold = {"id": "q", "input": "Who wrote The Hobbit?",
            "output": [{"answer": "J. R. R. Tolkien"},
                       {"answer": "Tolkien", "provenance": [prov("1", title="The Hobbit")]}]}
    guess = guess_row("q",
                      {"text": "Tolkien was an author."},  # no wikipedia_id: not ranked, but its text counts
                      prov("1", text="The Hobbit is a novel by J.R.R. Tolkien."))
    # Answers normalize to "j r r tolkien" and "tolkien", the title to "hobbit", the input to "who wrote hobbit".
    # Text 1 "tolkien was author": an answer, no title. Text 2 "hobbit is novel by jrr tolkien": both.
    scores = scores_of(gold, guess, ks=(1, 2))
    assert scores["entity_in_input"] == 1
    assert (scores["answer_in_context@1"], scores["answer_and_ent_in_context@1"], scores["entity_in_context@1"]) \
        == (1, 0, 0)
    assert (scores["answer_in_context@2"], scores["answer_and_ent_in_context@2"], scores["entity_in_context@2"]) \
        == (1, 1, 1)
    # Page ids: the only ranked page is "1" -> Rprec max([] -> 0, ["1"] -> 1) = 1; precision@1 = 1.
    assert scores["Rprec"] == 1.0 and scores["precision@1"] == 1.0
    # Substring tests on normalized text: the answer "The" normalizes to "" and is in any text; the title
    # "Page 9" ("page 9") is not in "who is it".
    odd = {"id": "q", "input": "who is it", "output": [{"answer": "The", "provenance": [prov("9")]}]}
    scores = scores_of(odd, guess_row("q", prov("2", text="xyz")), ks=(1,))
    assert (scores["answer_in_context@1"], scores["entity_in_context@1"], scores["entity_in_input"]) == (1, 0, 0)
    assert normalize_answer("  The Lord, of  an Ring!") == "lord of ring"


def test_keys_defaults_and_ks():
    assert DEFAULT_KS == (1, 5, 10, 20)  # eval_retrieval.py's --ks default
    # recall / success_rate only for k > 1, as the script reports them.
    assert metric_names([1, 5]) == ["Rprec", "entity_in_input",
                                    "precision@1", "answer_in_context@1", "answer_and_ent_in_context@1",
                                    "entity_in_context@1",
                                    "precision@5", "answer_in_context@5", "answer_and_ent_in_context@5",
                                    "entity_in_context@5", "recall@5", "success_rate@5"]
    scores = retrieval_scores([gold_row("q", pages("A"))], [guess_row("q", *pages("A"))])
    assert list(scores) == metric_names([1, 5, 10, 20])
    assert normalize_ks(["20", 5, 5, 1]) == [1, 5, 20]
    with pytest.raises(ValueError, match="positive"):
        normalize_ks([0, 5])
    assert retrieval_scores([], [], ks=(1,)) == dict.fromkeys(metric_names([1]), 0.0)


def test_guesses_are_matched_by_stripped_id_and_answer_only_outputs_are_ignored():
    golds = [gold_row(12, pages("A")), gold_row("b", pages("B"))]
    guesses = [{"id": "b", "output": [{"answer": "y"}, {"provenance": pages("B")}]},  # other order, 2 outputs
               guess_row(" 12 ", *pages("A"))]
    assert retrieval_scores(golds, guesses, ks=(1,))["precision@1"] == 1.0
    one = example_scores(golds[0], guesses[1], ks=(1,))
    assert one["precision@1"] == 1 and one["Rprec"] == 1


def test_validation_errors_in_memory():
    gold = [gold_row("a", pages("A"))]
    with pytest.warns(UserWarning, match=r"guess\[1\]: guess id 'z' is not a gold id"):  # ignored, as in KILT
        assert retrieval_scores(gold, [guess_row("a", *pages("A")), guess_row("z")], ks=(1,))["Rprec"] == 1.0
    with pytest.raises(ValueError, match=r"gold\[0\]: no guess for gold id 'a'"):
        retrieval_scores(gold, [guess_row("b")])
    with pytest.raises(ValueError, match=r"guess\[1\]: duplicate guess id 'a' \(first at guess\[0\]\)"):
        retrieval_scores(gold, [guess_row("a"), guess_row("a")])
    with pytest.raises(ValueError, match=r"guess\[0\] \(id 'a'\): .*exactly one output with 'provenance', found 2"):
        retrieval_scores(gold, [{"id": "a", "output": [{"provenance": []}, {"provenance": []}]}])
    with pytest.raises(ValueError, match=r"guess\[0\] \(id 'a'\): .*found 0"):
        retrieval_scores(gold, [{"id": "a", "output": [{"answer": "x"}]}])
    with pytest.raises(ValueError, match=r"gold\[0\] \(id 'a'\): missing field 'input'"):
        retrieval_scores([{"id": "a", "output": []}], [guess_row("a")])
    with pytest.raises(ValueError, match=r"gold\[0\] \(id 'a'\): gold 'output' is empty"):
        retrieval_scores([{"id": "a", "input": "q", "output": []}], [guess_row("a")])


def write_jsonl(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_file_errors_name_file_line_and_id(tmp_path):
    good = write_jsonl(tmp_path, "good.jsonl", [gold_row("a", pages("A")), "", gold_row("b", pages("B"))])
    assert [row["id"] for row in read_kilt_file(good)] == ["a", "b"]  # blank line skipped
    bad_json = write_jsonl(tmp_path, "bad.jsonl", [gold_row("a", pages("A")), '{"id": "b", "output": [}'])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        read_kilt_file(bad_json)
    no_id = write_jsonl(tmp_path, "noid.jsonl", [gold_row("a"), gold_row("b"), {"input": "q", "output": []}])
    with pytest.raises(ValueError, match=r"noid\.jsonl:3: missing field 'id'"):
        read_kilt_file(no_id)
    no_output = write_jsonl(tmp_path, "nooutput.jsonl", [{"id": "a", "input": "q"}])
    with pytest.raises(ValueError, match=r"nooutput\.jsonl:1 \(id 'a'\): missing field 'output'"):
        read_kilt_file(no_output)
    not_object = write_jsonl(tmp_path, "list.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match=r"list\.jsonl:1: expected a JSON object, got list"):
        read_kilt_file(not_object)

    guess = write_jsonl(tmp_path, "guess.jsonl", [guess_row("a", *pages("A")), guess_row("c", *pages("B"))])
    with pytest.raises(SystemExit, match=r"error: .*good\.jsonl:3: no guess for gold id 'b' in .*guess\.jsonl"):
        main(["--gold", good, "--guess", guess])
    with pytest.raises(SystemExit, match=r"error: .*bad\.jsonl:2: invalid JSON"):
        main(["--gold", bad_json, "--guess", guess])
    with pytest.raises(SystemExit, match=r"error: 2 gold file\(s\) but 1 guess file\(s\)"):
        main(["--gold", good, "--gold", good, "--guess", guess])
    with pytest.raises(SystemExit, match=r"error: task names must be distinct"):
        main(["--gold", good, "--guess", guess, "--gold", good, "--guess", guess])


# Passage level. q1: gold passages A_1, A_2 (output 1) and B_0 (output 2), pooled: R = 3. Guess A_1, C_0, A_1
# (repeat), B_0, A_2 -> A_1, C_0, B_0, A_2; top 3 hold A_1 and B_0 -> 2/3. q2: gold D_4, nothing retrieved -> 0.
# q3: no gold passage (only a page without a paragraph) -> not a query. q4: gold E_7, guess E "7" -> 1.
# Mean over q1, q2, q4: (2/3 + 0 + 1) / 3 = 5/9.
PASSAGE_GOLD = [gold_row("q1", [prov("A", 1), prov("A", 2)], [prov("B", 0)]), gold_row("q2", [prov("D", 4)]),
                gold_row("q3", [prov("F")]), gold_row("q4", [prov("E", 7)])]
PASSAGE_GUESS = [guess_row("q1", prov("A", 1), prov("C", 0), prov("A", 1), prov("B", 0), prov("A", 2)),
                 guess_row("q2"), guess_row("q3", prov("F", 0)), guess_row("q4", prov("E", "7"))]


def test_passage_rprec_with_trec_eval():
    assert passage_rprec(PASSAGE_GOLD, PASSAGE_GUESS) == pytest.approx(5 / 9, abs=1e-12)
    assert passage_rprec([gold_row("q", None)], [guess_row("q", prov("A", 1))]) == 0.0  # no qrels at all


def test_multi_task_scores_average_over_tasks():
    tasks = {"one": ([gold_row("a", pages("A"))], [guess_row("a", prov("A", 0))]),
             "two": (PASSAGE_GOLD, PASSAGE_GUESS)}
    result = multi_task_scores(tasks, ks=(1,), with_passage_rprec=True)
    # Task one: precision@1 1, Rprec 1, passage_Rprec 0 (gold A has no paragraph -> no qrels).
    # Task two pages: q1 gold [A] / [B], ranked A, C, B -> Rprec max(1, 0) = 1, precision@1 1 (A completes {A});
    # q2 nothing retrieved -> 0; q3 [F] ranked F -> 1, 1; q4 [E] ranked E -> 1, 1. Mean 3/4 each.
    assert result["tasks"]["one"]["Rprec"] == 1.0 and result["tasks"]["one"]["passage_Rprec"] == 0.0
    assert result["tasks"]["two"]["Rprec"] == 0.75 and result["tasks"]["two"]["precision@1"] == 0.75
    assert result["average"]["Rprec"] == pytest.approx((1 + 0.75) / 2)
    assert result["average"]["passage_Rprec"] == pytest.approx((0 + 5 / 9) / 2)


def test_cli_subprocess_json_and_table(tmp_path, capsys):
    nq_gold = write_jsonl(tmp_path, "nq-dev-kilt.jsonl", PASSAGE_GOLD)
    nq_guess = write_jsonl(tmp_path, "nq-guess.jsonl", PASSAGE_GUESS)
    fever_gold = write_jsonl(tmp_path, "fever-dev-kilt.jsonl", [gold_row("f", pages("A", "B"))])
    fever_guess = write_jsonl(tmp_path, "fever-guess.jsonl", [guess_row("f", *pages("A", "A", "C", "B", "D"))])
    command = [sys.executable, "-m", "kipjax.metrics.kilt", "--gold", nq_gold, "--guess", nq_guess,
               "--gold", fever_gold, "--guess", fever_guess, "--ks", "5,1", "--passage_rprec", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    printed = json.loads(result.stdout)
    assert list(printed) == ["tasks", "average"]
    assert list(printed["tasks"]) == ["nq-dev-kilt", "fever-dev-kilt"]  # default names: the gold stems
    nq, fever = printed["tasks"]["nq-dev-kilt"], printed["tasks"]["fever-dev-kilt"]
    assert list(nq) == metric_names([1, 5]) + ["passage_Rprec"]
    # nq (see test_multi_task_scores_average_over_tasks): Rprec 3/4, precision@1 3/4; precision@5: q1 rank over A,
    # C, B: [T, F, T] -> 2/5, q3 and q4 1/5 each, q2 0 -> (2/5 + 1/5 + 1/5) / 4 = 1/5; recall@5: q1 2/2, q3, q4 1 ->
    # 3/4. fever (first test): Rprec 1/2, precision@1 0, precision@5 1/5, recall@5 1; passage level none -> 0.
    expected_nq = {"Rprec": 0.75, "precision@1": 0.75, "precision@5": 0.2, "recall@5": 0.75,
                   "success_rate@5": 0.75, "passage_Rprec": 5 / 9}
    expected_fever = {"Rprec": 0.5, "precision@1": 0.0, "precision@5": 0.2, "recall@5": 1.0,
                      "success_rate@5": 1.0, "passage_Rprec": 0.0}
    assert {k: nq[k] for k in expected_nq} == pytest.approx(expected_nq, abs=1e-12)
    assert {k: fever[k] for k in expected_fever} == pytest.approx(expected_fever, abs=1e-12)
    assert printed["average"] == pytest.approx({k: (nq[k] + fever[k]) / 2 for k in nq}, abs=1e-12)
    assert all(0 <= v <= 1 for scores in [*printed["tasks"].values(), printed["average"]] for v in scores.values())

    main(["--gold", nq_gold, "--guess", nq_guess, "--gold", fever_gold, "--guess", fever_guess,
          "--names", "nq,fever", "--ks", "1,5"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["metric", "nq", "fever", "average"]
    assert "Rprec 75.00 50.00 62.50" in [" ".join(line.split()) for line in table]
    assert "passage_Rprec" not in "\n".join(table)

    bad = subprocess.run([sys.executable, "-m", "kipjax.metrics.kilt", "--gold", nq_gold, "--guess", fever_guess,
                          "--json"], capture_output=True, text=True)
    assert bad.returncode != 0 and "nq-dev-kilt.jsonl:1: no guess for gold id 'q1'" in bad.stderr
