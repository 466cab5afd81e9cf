"""Open-domain QA metrics: SQuAD exact match and DPR answer recall@k on hand-worked examples (the tokens and the
arithmetic are in the comments), the validation errors naming file and line, and the CLI as a subprocess."""
import json
import subprocess
import sys

import pytest

from kipjax.metrics import kilt
from kipjax.metrics.qa import evaluate, evaluate_files, exact_match, format_table, has_answer, main, tokenize


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return str(path)


def gold(id_, *answers, task=None):
    row = {"id": id_, "answers": list(answers)}
    if task is not None:
        row["task"] = task
    return row


def pred(id_, prediction, passages=None):
    row = {"id": id_, "prediction": prediction}
    if passages is not None:
        row["passages"] = passages
    return row


# ------------------------------------------------------------------------------------------- exact match


def test_exact_match_reuses_kilts_squad_normalization():
    from kipjax.metrics import qa
    assert qa.normalize_answer is kilt.normalize_answer
    # SQuAD v1.1's order: lower, drop ASCII punctuation, replace \b(a|an|the)\b by a space, split / join.
    assert kilt.normalize_answer("  The  Eiffel, Tower! ") == "eiffel tower"
    assert kilt.normalize_answer("the-end") == "theend"  # punctuation goes first, so "the" is no longer a word
    assert kilt.normalize_answer("Theory of an Apple") == "theory of apple"  # \b: "the" inside "theory" stays


@pytest.mark.parametrize("prediction, answers, expected", [
    ("The Eiffel Tower!", ["eiffel tower"], 1.0),        # article, punctuation, case
    ("  Eiffel \t Tower ", ["Eiffel Tower"], 1.0),        # whitespace squeezed
    ("an apple", ["Apple"], 1.0),
    ("Eiffel-Tower", ["eiffel tower"], 0.0),              # "-" is deleted, not a space: "eiffeltower"
    ("A.B.", ["ab"], 1.0),                                # "a.b." -> "ab" (no longer the article "a")
    ("the-end", ["end"], 0.0),                            # -> "theend"
    ("the-end", ["theend"], 1.0),
    ("theory", ["ory"], 0.0),                             # articles only as whole words
    ("«Paris»", ["Paris"], 0.0),                          # only ASCII punctuation (string.punctuation) is removed
    ("Paris", ["London", "paris."], 1.0),                 # max over the gold answers
    ("Lyon", ["London", "Paris"], 0.0),
    ("", ["The"], 1.0),                                   # "The" normalizes to "" ...
    ("a", ["The"], 1.0),                                  # ... and so does "a"
    ("the end", ["The"], 0.0),                            # "end" != ""
    ("Beyoncé", ["Beyonce"], 0.0),                        # no accent folding in EM either
])
def test_exact_match(prediction, answers, expected):
    assert exact_match(prediction, answers) == expected


def test_exact_match_needs_a_list_of_answers():
    with pytest.raises(ValueError, match="at least one gold answer"):
        exact_match("x", [])
    with pytest.raises(TypeError, match="not the string 'Paris'"):
        exact_match("Paris", "Paris")


# ------------------------------------------------------------------------------------------- has_answer


def test_dpr_tokens():
    # Runs of \p{L}\p{N}\p{M} are one token; any other non-space, non-control character is a token by itself;
    # spaces (\p{Z}, incl. no-break space) and controls (\p{C}: tab, newline) separate. Lower-cased.
    assert tokenize("U.S. state-of-the-art 1,000 don't snake_case 3rd\tX\u00a0y\n") == [
        "u", ".", "s", ".", "state", "-", "of", "-", "the", "-", "art", "1", ",", "000", "don", "'", "t",
        "snake", "_", "case", "3rd", "x", "y"]
    # NFD: "é" (U+00E9) becomes "e" + U+0301 COMBINING ACUTE ACCENT, a \p{M} that stays inside the word.
    assert tokenize("BEYONCÉ sang") == ["beyonce\u0301", "sang"]
    assert tokenize("Beyonc\u00e9") == tokenize("Beyonce\u0301")


@pytest.mark.parametrize("passage, answers, expected", [
    # accents (NFD keeps the combining mark in the token, so no accent folding)
    ("Beyoncé sang", ["Beyonce"], False),                 # ["beyonce\u0301"] vs ["beyonce"]
    ("Beyonce sang", ["Beyoncé"], False),
    ("Beyonce\u0301 sang", ["Beyonc\u00e9"], True),       # decomposed passage, precomposed answer: same NFD
    ("Beyonc\u00e9 sang", ["Beyonce\u0301"], True),
    ("BEYONCÉ sang", ["beyoncé"], True),                  # uncased
    # token boundaries
    ("they concatenate strings", ["cat"], False),         # "concatenate" is one token
    ("the cat sat", ["Cat"], True),
    ("3rd place", ["3"], False),                          # letters and digits form one token "3rd"
    ("snake_case", ["snake"], True),                      # "_" is its own token
    # multiword answers: contiguous token runs
    ("the Eiffel Tower in Paris", ["eiffel tower"], True),
    ("the Eiffel Tower in Paris", ["tower eiffel"], False),
    ("the Eiffel Tower in Paris", ["Eiffel Paris"], False),
    ("Eiffel\u00a0Tower\n", ["eiffel   tower"], True),    # whitespace of any kind only separates
    ("Eiffel", ["Eiffel Tower"], False),                  # longer than the passage
    # punctuation tokens
    ("hello, world", ["hello world"], False),             # ["hello", ",", "world"]
    ("hello, world", ["hello ,world"], True),             # the same tokens
    ("the U.S. Army", ["U.S."], True),
    ("the U.S. Army", ["U.S"], True),                     # ["u", ".", "s"] is a run of it
    ("the U.S. Army", ["US"], False),
    ("1,000 people", ["1000"], False),
    ("1,000 people", ["000"], True),
    ("The Tower", ["The Tower", "x"], True),
    ("Tower", ["The Tower"], False),                      # unlike EM, no article or punctuation stripping
    ("anything", ["nothing", "thing"], False),
    # an answer without tokens matches every passage (DPR's loop compares [] with the empty slice)
    ("anything", ["  "], True),
    ("", ["x"], False),
])
def test_has_answer(passage, answers, expected):
    assert has_answer(passage, answers) is expected


# ----------------------------------------------------------------------------------------------- evaluate


def test_recall_at_k_respects_k_and_short_lists():
    golds = [gold("q1", "Paris"), gold("q2", "Paris"), gold("q3", "Paris"), gold("q4", "Rome", "Roma")]
    preds = [
        pred("q1", "paris", ["London is big", "Paris is nice", "x"]),   # first hit at rank 2
        pred("q2", "Lyon", ["Paris!", "Paris"]),                        # rank 1
        pred("q3", "Paris", []),                                        # nothing retrieved
        pred("q4", "The Roma", ["a", "b", "c", "d", "e", "in Roma"]),   # rank 6; fewer than 10 passages
    ]
    result = evaluate(golds, preds, ks=[10, 2, 1, 2])  # sorted, repeats collapsed
    # EM: q1 1, q2 0, q3 1, q4 "roma" 1 -> 3/4. recall@1: q2 -> 1/4; @2: q1, q2 -> 2/4; @10: + q4 -> 3/4.
    assert result == {"exact_match": 0.75, "answer_recall@1": 0.25, "answer_recall@2": 0.5,
                      "answer_recall@10": 0.75, "count": 4}
    assert list(result) == ["exact_match", "answer_recall@1", "answer_recall@2", "answer_recall@10", "count"]
    with pytest.raises(ValueError, match="positive"):
        evaluate(golds, preds, ks=[0, 1])


def test_no_passages_means_no_recall_and_mixed_passages_are_an_error():
    golds = [gold("q1", "Paris"), gold("q2", "Rome")]
    assert evaluate(golds, [pred("q1", "Paris"), pred("q2", "Milan")]) == {"exact_match": 0.5, "count": 2}
    with pytest.raises(ValueError, match=r"predictions\[1\] \(id 'q2'\): no 'passages', but other predictions "
                                         r"have them \(e.g. predictions\[0\]\)"):
        evaluate(golds, [pred("q1", "Paris", ["Paris"]), pred("q2", "Milan")])


def test_per_task_scores_and_macro_average():
    golds = [gold("n1", "Paris", task="nq"), gold("n2", "Rome", task="nq"), gold("t1", "Oslo", task="tqa"),
             gold("n3", "Bern", task="nq")]
    preds = [pred("n1", "Paris", ["Paris"]), pred("n2", "Milan", ["x", "Rome"]), pred("n3", "Geneva", ["x"]),
             pred("t1", "oslo", ["no", "nope"])]
    result = evaluate(golds, preds, ks=[1, 2])
    # nq: EM 1, 0, 0 -> 1/3; recall@1 n1 -> 1/3; recall@2 n1, n2 -> 2/3. tqa: EM 1, recall 0.
    # Macro: EM (1/3 + 1) / 2 = 2/3 (micro would be 2/4); recall@1 (1/3 + 0) / 2 = 1/6; @2 (2/3) / 2 = 1/3.
    assert result["per_task"] == {
        "nq": pytest.approx({"exact_match": 1 / 3, "answer_recall@1": 1 / 3, "answer_recall@2": 2 / 3, "count": 3}),
        "tqa": {"exact_match": 1.0, "answer_recall@1": 0.0, "answer_recall@2": 0.0, "count": 1}}
    assert list(result["per_task"]) == ["nq", "tqa"]  # first-seen order
    assert {k: v for k, v in result.items() if k != "per_task"} == pytest.approx(
        {"exact_match": 2 / 3, "answer_recall@1": 1 / 6, "answer_recall@2": 1 / 3, "count": 4})


def test_task_on_some_gold_lines_only_is_an_error():
    with pytest.raises(ValueError, match=r"gold\[1\] \(id 'b'\): missing field 'task' \(other gold lines have "
                                         r"one, e.g. gold\[0\]\)"):
        evaluate([gold("a", "x", task="nq"), gold("b", "y")], [pred("a", "x"), pred("b", "y")])
    with pytest.raises(ValueError, match=r"gold\[0\] \(id 'a'\): field 'task' must be str, got int"):
        evaluate([{"id": "a", "answers": ["x"], "task": 3}], [pred("a", "x")])


def test_ids_are_stripped_strings_and_unknown_predictions_are_dropped():
    golds = [gold(12, "twelve"), gold("q2", "two")]
    preds = [pred(" 12 ", "Twelve"), pred("q2", "three"), pred("extra", "two")]
    with pytest.warns(UserWarning, match=r"predictions\[2\]: prediction id 'extra' is not a gold id; 1 such"):
        assert evaluate(golds, preds) == {"exact_match": 0.5, "count": 2}


def test_empty_gold_scores_zero():
    assert evaluate([], []) == {"exact_match": 0.0, "count": 0}


# ------------------------------------------------------------------------------------------ file errors


@pytest.mark.parametrize("gold_lines, pred_lines, message", [
    (['{"id": "q1", "answers": ["a"]}', '{"id": "q2", "answers": ['], [], "gold.jsonl:2: invalid JSON"),
    (['["q1", ["a"]]'], [], "gold.jsonl:1: expected a JSON object, got list"),
    ([{"answers": ["a"]}], [], "gold.jsonl:1: missing field 'id'"),
    ([{"id": None, "answers": ["a"]}], [], "gold.jsonl:1: field 'id' must be a string or an integer"),
    ([{"id": "q1"}], [], "gold.jsonl:1 (id 'q1'): missing field 'answers'"),
    ([{"id": "q1", "answers": "Paris"}], [], "gold.jsonl:1 (id 'q1'): field 'answers' must be list, got str"),
    ([gold("q1", "a"), gold("q2", "Paris", 7)], [], "gold.jsonl:2 (id 'q2'): answers[1] must be a string, got int"),
    ([gold("q1")], [], "gold.jsonl:1 (id 'q1'): 'answers' is empty"),
    ([gold("q1", "a"), gold(" q1", "b")], [], "gold.jsonl:2: duplicate gold id 'q1' (first at gold.jsonl:1)"),
    ([gold("q1", "a")], [{"id": "q1"}], "pred.jsonl:1 (id 'q1'): missing field 'prediction'"),
    ([gold("q1", "a")], [{"prediction": "a"}], "pred.jsonl:1: missing field 'id'"),
    ([gold("q1", "a")], [pred("q1", ["a"])], "pred.jsonl:1 (id 'q1'): field 'prediction' must be str, got list"),
    ([gold("q1", "a")], [pred("q1", "a", "passage")], "pred.jsonl:1 (id 'q1'): field 'passages' must be list"),
    ([gold("q1", "a")], [pred("q1", "a", ["p", {"text": "p"}])],
     "pred.jsonl:1 (id 'q1'): passages[1] must be a string, got dict"),
    ([gold("q1", "a")], [pred("q1", "a"), "", pred("q1", "b")],
     "pred.jsonl:3: duplicate prediction id 'q1' (first at pred.jsonl:1)"),
    ([gold("q1", "a"), gold("q2", "b"), gold("q3", "c")], [pred("q1", "a")],
     "gold.jsonl:2: no prediction for gold id 'q2' in pred.jsonl (2 of 3 gold ids have none)"),
])
def test_file_errors_name_the_file_and_line(tmp_path, gold_lines, pred_lines, message):
    gold_path = write_jsonl(tmp_path / "gold.jsonl", gold_lines)
    pred_path = write_jsonl(tmp_path / "pred.jsonl", pred_lines)
    with pytest.raises(ValueError) as error:
        evaluate_files(gold_path, pred_path)
    assert str(error.value).startswith(f"{tmp_path}/")
    assert message in str(error.value).replace(f"{tmp_path}/", "")


def test_mixed_passages_in_a_file_name_the_line(tmp_path):
    gold_path = write_jsonl(tmp_path / "gold.jsonl", [gold("q1", "a"), gold("q2", "b")])
    pred_path = write_jsonl(tmp_path / "pred.jsonl", [pred("q1", "a", ["a"]), pred("q2", "b")])
    with pytest.raises(ValueError, match=f"{tmp_path}/pred.jsonl:2 \\(id 'q2'\\): no 'passages'"):
        evaluate_files(gold_path, pred_path)


# ---------------------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kipjax.metrics.qa", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def files(tmp_path):
    golds = [gold("n1", "Paris", task="nq"), gold("n2", "Rome", task="nq"), gold("t1", "Oslo", task="tqa")]
    preds = [pred("n1", "the Paris", ["Paris, France", "x"]), pred("n2", "Milan", ["x", "y", "Rome"]),
             pred("t1", "Bergen", ["Oslo"])]
    return write_jsonl(tmp_path / "gold.jsonl", golds), write_jsonl(tmp_path / "pred.jsonl", preds)


def test_cli_json_round_trip(files):
    gold_path, pred_path = files
    done = run_cli("--gold", gold_path, "--pred", pred_path, "--ks", "1,3", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    # nq: EM 1, 0 -> 1/2; recall@1 n1 -> 1/2; @3 both -> 1. tqa: EM 0, recall 1, 1. Macro: EM 1/4, @1 3/4, @3 1.
    assert printed == {"exact_match": 0.25, "answer_recall@1": 0.75, "answer_recall@3": 1.0, "count": 3,
                       "per_task": {"nq": {"exact_match": 0.5, "answer_recall@1": 0.5, "answer_recall@3": 1.0,
                                           "count": 2},
                                    "tqa": {"exact_match": 0.0, "answer_recall@1": 1.0, "answer_recall@3": 1.0,
                                            "count": 1}}}
    assert printed == evaluate_files(gold_path, pred_path, [1, 3])


def test_cli_table(files, tmp_path, capsys):
    gold_path, pred_path = files
    done = run_cli("--gold", gold_path, "--pred", pred_path)  # default ks 1,10
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows == [["metric", "nq", "tqa", "average"],
                    ["exact_match", "50.00", "0.00", "25.00"],
                    ["answer_recall@1", "50.00", "100.00", "75.00"],
                    ["answer_recall@10", "100.00", "100.00", "100.00"],
                    ["count", "2", "1", "3"]]
    # Without tasks or passages: one column and no recall rows.
    plain_gold = write_jsonl(tmp_path / "plain_gold.jsonl", [gold("a", "x"), gold("b", "y")])
    plain_pred = write_jsonl(tmp_path / "plain_pred.jsonl", [pred("a", "X."), pred("b", "z")])
    main(["--gold", plain_gold, "--pred", plain_pred])
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["metric", "all"], ["exact_match", "50.00"], ["count", "2"]]
    assert format_table({"exact_match": 1.0, "count": 1}).split() == ["metric", "all", "exact_match", "100.00",
                                                                       "count", "1"]


def test_cli_errors_exit_2(files, tmp_path):
    gold_path, _ = files
    bad_pred = write_jsonl(tmp_path / "bad.jsonl", [pred("n1", "x"), '{"id": "n2",'])
    done = run_cli("--gold", gold_path, "--pred", bad_pred, "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {bad_pred}:2: invalid JSON")
    done = run_cli("--gold", gold_path, "--pred", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "missing.jsonl" in done.stderr
    with pytest.raises(SystemExit) as exit_:
        main(["--gold", gold_path, "--pred", gold_path, "--ks", "1,x"])
    assert exit_.value.code == 2
