"""ImpRAG's task readers on small files in each dataset's real layout, and on the bundled demo KILT files."""
import csv
import json

import pytest

from kipjax.data.demo_kilt import demo_kilt_path, task_file
from kipjax.methods.imprag.task_readers import (
    READERS, kilt_file_task, read_2wikimultihopqa, read_cnn_dailymail, read_kilt_prompts, read_nq_open,
    read_prompts, read_simpleqa, read_squad_v2)
from kipjax.methods.imprag.templates import PromptExample

EL = "Output the Wikipedia page title of the entity mentioned between [START] and [END] in the given text A:"
SF = ("Provide the answer corresponding to the relation specified after [SEP] for the entity mentioned before "
      "[SEP] A:")


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def kilt_record(example_id, text, *answers):
    return {"id": example_id, "input": text, "meta": {},
            "output": [{"answer": a, "provenance": [{"wikipedia_id": "12", "title": "T"}]} for a in answers]}


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


# --------------------------------------------------------------------------------------------------- KILT

def test_kilt_kinds_from_file_names(tmp_path):
    nq = write_lines(tmp_path / "nq-dev-kilt.jsonl", [kilt_record("n1", "who wrote Velvet Roads ?", "Ada", "Ada V")])
    fever = write_lines(tmp_path / "fever-dev-kilt.jsonl", [kilt_record(5, "Tolbek is in Varnia .", "REFUTES")])
    zsre = write_lines(tmp_path / "structured_zeroshot-dev-kilt.jsonl",
                       [kilt_record("z1", "Tolbek [SEP] country", "Varnia")])
    aida = write_lines(tmp_path / "aidayago2-dev-kilt.jsonl",
                       [kilt_record("a1", "Fans saw [START_ENT] Tolbek [END_ENT] .", "Tolbek (band)")])
    assert read_kilt_prompts(nq) == [
        PromptExample("n1", "nq", "Q: who wrote Velvet Roads ? A:", "Ada", ("Ada", "Ada V"), True)]
    assert read_kilt_prompts(fever) == [
        PromptExample("5", "fever", "Is this statement true? Tolbek is in Varnia . A:", "False", ("False",), True)]
    assert read_kilt_prompts(zsre) == [
        PromptExample("z1", "structured_zeroshot", f"Tolbek [SEP] country {SF}", "Varnia", ("Varnia",), True)]
    assert read_kilt_prompts(aida) == [
        PromptExample("a1", "aidayago2", f"Fans saw [START] Tolbek [END] . {EL}", "Tolbek (band)",
                      ("Tolbek (band)",), True)]
    assert kilt_file_task(tmp_path / "triviaqa-dev_id-kilt.jsonl") == "triviaqa"


def test_kilt_kind_and_task_given(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [kilt_record("1", "Tolbek [SEP] country", "Varnia")])
    assert read_kilt_prompts(path, kind="slot_filling", task="zsre") == [
        PromptExample("1", "zsre", f"Tolbek [SEP] country {SF}", "Varnia", ("Varnia",), True)]
    with pytest.raises(ValueError, match=r"mine\.jsonl: cannot tell the template kind .*'mine.jsonl'.*'nq'"):
        read_kilt_prompts(path)
    with pytest.raises(ValueError, match="kind 'summarization' is not a KILT task kind"):
        read_kilt_prompts(path, kind="summarization")


def test_kilt_limit(tmp_path):
    path = write_lines(tmp_path / "hotpotqa-dev-kilt.jsonl", [kilt_record(str(i), f"q{i} ?", "a") for i in range(5)])
    assert [e.id for e in read_kilt_prompts(path, limit=2)] == ["0", "1"]
    assert [e.id for e in read_prompts(path, "kilt", limit=3)] == ["0", "1", "2"]


@pytest.mark.parametrize("name, record, message", [
    ("fever-dev-kilt.jsonl", kilt_record("f9", "Tolbek is big .", "NOT ENOUGH INFO"), "FEVER label must be one of"),
    ("nq-dev-kilt.jsonl", {"id": "q9", "input": "who ?"}, "no answer in 'output'"),
    ("trex-dev-kilt.jsonl", kilt_record("t9", "Tolbek country", "Varnia"), r"expected .* with one \[SEP\]"),
    ("aidayago2-dev-kilt.jsonl", kilt_record("a9", "Tolbek .", "Tolbek"), "expected one mention marked"),
])
def test_kilt_errors_name_file_and_id(tmp_path, name, record, message):
    path = write_lines(tmp_path / name, [kilt_record("ok", "Tolbek [SEP] x [START_ENT] y [END_ENT] ?", "SUPPORTS"),
                                         record])
    with pytest.raises(ValueError, match=rf"{name}: id '{record['id']}': {message}"):
        read_kilt_prompts(path)


@pytest.mark.parametrize("task, kind", [("qa", "qa"), ("fc", "fact_check"), ("sf", "slot_filling"),
                                        ("el", "entity_linking")])
def test_demo_kilt_files(task, kind):
    path = demo_kilt_path(task_file(task, "dev"))
    with open(path, encoding="utf-8") as f:
        first = json.loads(f.readline())
        lines = 1 + sum(1 for line in f if line.strip())
    examples = read_kilt_prompts(path)
    assert len(examples) == lines and all(e.task == task and e.retrieve for e in examples)
    answers = tuple(dict.fromkeys(o["answer"] for o in first["output"]))
    text = first["input"]
    if task == "qa":
        prompt = f"Q: {text} A:"
    elif task == "fc":
        prompt = f"Is this statement true? {text} A:"
        answers = tuple({"SUPPORTS": "True", "REFUTES": "False"}[a] for a in answers)
    elif task == "sf":
        prompt = f"{text} {SF}"
    else:
        prompt = text.replace("[START_ENT]", "[START]").replace("[END_ENT]", "[END]") + f" {EL}"
    assert examples[0] == PromptExample(first["id"], task, prompt, answers[0], answers, True)
    assert read_prompts(path, "kilt", kind=kind)[0] == examples[0]


# ------------------------------------------------------------------------------------------------ NQ-open

def test_nq_open(tmp_path):
    path = tmp_path / "NQ-open.dev.jsonl"
    path.write_text(json.dumps({"question": "when was Tolbek founded", "answer": ["1453", "in 1453"]}) + "\n\n"
                    + json.dumps({"question": "who founded Tolbek", "answer": ["Ivo Marsk"], "id": "x7"}) + "\n",
                    encoding="utf-8")
    assert read_nq_open(path) == [
        PromptExample("1", "nq", "Q: when was Tolbek founded A:", "1453", ("1453", "in 1453"), True),
        PromptExample("x7", "nq", "Q: who founded Tolbek A:", "Ivo Marsk", ("Ivo Marsk",), True)]
    assert read_prompts(path, "nq_open", limit=1) == read_nq_open(path)[:1]


@pytest.mark.parametrize("record, message", [
    ({"answer": ["a"]}, "missing field 'question'"),
    ({"question": "q", "answer": "a"}, "field 'answer' must be list"),
    ({"question": "q", "answer": []}, "field 'answer' must be a non-empty list of non-blank strings"),
    ({"question": "q", "answer": ["a", 3]}, "field 'answer' must be a non-empty list of non-blank strings"),
    ({"question": " ", "answer": ["a"]}, "field 'question' is empty"),
])
def test_nq_open_errors_name_file_and_line(tmp_path, record, message):
    path = write_lines(tmp_path / "nq.jsonl", [{"question": "q", "answer": ["a"]}, record])
    with pytest.raises(ValueError, match=rf"nq\.jsonl:2: {message}"):
        read_nq_open(path)


# ----------------------------------------------------------------------------------------------- SimpleQA

def test_simpleqa(tmp_path):
    path = write_csv(tmp_path / "simple_qa_test_set.csv", [
        ["metadata", "problem", "answer"],
        ["{'topic': 'Art', 'answer_type': 'Person', 'urls': ['https://x']}", "Who painted Tolbek, in 1904?",
         "Mira Tolbek"],
        ["{'topic': 'Geography'}", "Where is Tolbek?", "Varnia"]])
    assert read_simpleqa(path) == [
        PromptExample("1", "simpleqa", "Q: Who painted Tolbek, in 1904? A:", "Mira Tolbek", ("Mira Tolbek",), True),
        PromptExample("2", "simpleqa", "Q: Where is Tolbek? A:", "Varnia", ("Varnia",), True)]


def test_simpleqa_errors(tmp_path):
    missing = write_csv(tmp_path / "a.csv", [["metadata", "question", "answer"], ["{}", "q", "a"]])
    with pytest.raises(ValueError, match=r"a\.csv: missing column\(s\) \['problem'\].*found \['metadata', "
                                         r"'question', 'answer'\]"):
        read_simpleqa(missing)
    empty = write_csv(tmp_path / "b.csv", [["metadata", "problem", "answer"], ["{}", "q", "a"], ["{}", "q2", ""]])
    with pytest.raises(ValueError, match=r"b\.csv: row 2 \(line 3\): field 'answer' is empty"):
        read_simpleqa(empty)
    short = write_csv(tmp_path / "c.csv", [["metadata", "problem", "answer"], ["{}", "q"]])
    with pytest.raises(ValueError, match=r"c\.csv: row 1 \(line 2\): expected 3 columns"):
        read_simpleqa(short)


# ---------------------------------------------------------------------------------------- 2WikiMultiHopQA

def two_wiki_record(_id, question, answer):
    return {"_id": _id, "type": "comparison", "question": question,
            "context": [["Tolbek", ["Tolbek is a city ."]]], "supporting_facts": [["Tolbek", 0]],
            "evidences": [["Tolbek", "founded", "1453"]], "answer": answer}


def test_2wikimultihopqa(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([two_wiki_record("8813f87c0bdd11eba7f7acde48001122",
                                                "Which city was founded first, Tolbek or Vimfork?", "Tolbek")]))
    assert read_2wikimultihopqa(path) == [
        PromptExample("8813f87c0bdd11eba7f7acde48001122", "2wikimultihopqa",
                      "Q: Which city was founded first, Tolbek or Vimfork? A:", "Tolbek", ("Tolbek",), True)]


def test_2wikimultihopqa_errors(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([two_wiki_record("a", "q?", "x"), {**two_wiki_record("b", "q?", "x"), "answer": 3}]))
    with pytest.raises(ValueError, match=r"dev\.json: \[1\]: field 'answer' must be str, got int"):
        read_2wikimultihopqa(path)
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(ValueError, match=r"dev\.json: expected a JSON list of examples, got dict"):
        read_2wikimultihopqa(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match=r"dev\.json: invalid JSON at line 1"):
        read_2wikimultihopqa(path)


# ----------------------------------------------------------------------------------------------- SQuAD v2

def squad(qas):
    return {"version": "v2.0", "data": [{"title": "Tolbek", "paragraphs": [
        {"context": "Tolbek lies on the Vask River .", "qas": qas}]}]}


def test_squad_v2_keeps_answerable_questions(tmp_path):
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(squad([
        {"id": "s1", "question": "What river is Tolbek on?", "is_impossible": False,
         "answers": [{"text": "the Vask River", "answer_start": 15}, {"text": "Vask River", "answer_start": 19},
                     {"text": "the Vask River", "answer_start": 15}]},
        {"id": "s2", "question": "Who founded the Vask?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "Tolbek", "answer_start": 0}]},
        {"id": "s3", "question": "Where is Tolbek?", "is_impossible": False,
         "answers": [{"text": "on the Vask River", "answer_start": 12}]}])))
    context = "Tolbek lies on the Vask River ."
    assert read_squad_v2(path) == [
        PromptExample("s1", "squad_v2", f"{context} Q: What river is Tolbek on? A:", "the Vask River",
                      ("the Vask River", "Vask River"), False),
        PromptExample("s3", "squad_v2", f"{context} Q: Where is Tolbek? A:", "on the Vask River",
                      ("on the Vask River",), False)]
    assert [e.id for e in read_prompts(path, "squad_v2", limit=1)] == ["s1"]


@pytest.mark.parametrize("qa, message", [
    ({"id": "s", "question": "q?", "answers": []}, "missing field 'is_impossible'"),
    ({"id": "s", "question": "q?", "is_impossible": False, "answers": []}, "field 'answers' is empty"),
    ({"id": "s", "question": "q?", "is_impossible": False, "answers": ["x"]}, r"answers\[0\]: expected a JSON object"),
])
def test_squad_v2_errors_name_the_question(tmp_path, qa, message):
    path = tmp_path / "train-v2.0.json"
    path.write_text(json.dumps(squad([qa])))
    with pytest.raises(ValueError, match=rf"train-v2\.0\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\].*{message}"):
        read_squad_v2(path)


# ------------------------------------------------------------------------------------------ CNN/DailyMail

def test_cnn_dailymail(tmp_path):
    path = write_csv(tmp_path / "validation.csv", [
        ["id", "article", "highlights"],
        ["0054d6d30dbcad772e20b22771153a2a9cbeaf62", "(CNN) -- Tolbek grew , \"fast\" .\nIt is big .",
         "Tolbek grew .\nIt is big ."]])
    assert read_cnn_dailymail(path) == [
        PromptExample("0054d6d30dbcad772e20b22771153a2a9cbeaf62", "cnn_dailymail",
                      "(CNN) -- Tolbek grew , \"fast\" .\nIt is big . Summarize this article:",
                      "Tolbek grew .\nIt is big .", ("Tolbek grew .\nIt is big .",), False)]


def test_cnn_dailymail_errors(tmp_path):
    path = write_csv(tmp_path / "train.csv", [["id", "article"], ["1", "a"]])
    with pytest.raises(ValueError, match=r"train\.csv: missing column\(s\) \['highlights'\]"):
        read_cnn_dailymail(path)
    path = write_csv(tmp_path / "test.csv", [["id", "article", "highlights"], ["1", "a", "b", "extra"]])
    with pytest.raises(ValueError, match=r"test\.csv: row 1 \(line 2\): expected 3 columns"):
        read_cnn_dailymail(path)


def test_registry(tmp_path):
    assert set(READERS) == {"kilt", "nq_open", "simpleqa", "2wikimultihopqa", "squad_v2", "cnn_dailymail"}
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_prompts(tmp_path / "x", "csv")
    with pytest.raises(ValueError, match="limit must be >= 0"):
        read_nq_open(write_lines(tmp_path / "nq.jsonl", []), limit=-1)
