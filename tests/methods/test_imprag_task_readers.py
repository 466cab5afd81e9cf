"""ImpRAG's task readers on small files in each dataset's real layout, and on the bundled demo KILT files."""
import csv
import json

import pytest

from kipjax.data.demo_kilt import demo_kilt_path, task_file
from kipjax.methods.imprag.task_readers import (
    READERS, kilt_file_task, read_2wikimultihopqa, read_cnn_dailymail, read_coqa, read_drop, read_kilt_prompts,
    read_newsqa, read_nq_open, read_oasst1, read_phrase_denoising, read_prompts, read_pubmedqa, read_quail,
    read_sentence_generation, read_simpleqa, read_squad_v2, split_sentences)
from kipjax.methods.imprag.templates import PromptExample

EL = "Output the Wikipedia page title of the entity mentioned between [START] and [END] in the given text A:"
SF = ("Provide the answer corresponding to the relation specified after [SEP] for the entity mentioned before "
      "[SEP] A:")
PD = "Recover the original phrases marked between [START] and [END] in the given text A:"
SG = ("Generate a sentence corresponding to the relation specified after [SEP] for the context mentioned before "
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


# ------------------------------------------------------------------------------------------------- oasst1

def message(message_id, parent_id, role, text, rank=None, lang="en", deleted=False, review_result=True):
    return {"message_id": message_id, "parent_id": parent_id, "user_id": "u", "created_date": "2023-02-05T14:23:50",
            "text": text, "role": role, "lang": lang, "review_count": 3, "review_result": review_result,
            "deleted": deleted, "rank": rank, "synthetic": False, "model_name": None, "message_tree_id": "t",
            "tree_state": "ready_for_export", "emojis": {"name": ["+1"], "count": [2]}, "labels": None}


def oasst_file(path):
    return write_lines(path, [
        message("a1", None, "prompter", "How do I boil an egg?"),
        message("a2", "a1", "assistant", "Put it in water.", rank=1),
        message("a3", "a1", "assistant", "Boil water.\n\nAdd the egg and wait 8 minutes.", rank=0),
        message("a9", "a2", "prompter", "Not on the top path."),
        message("a4", "a3", "prompter", "And for a soft egg?", rank=0),
        message("a6", "a4", "assistant", "Deleted, though ranked first.", rank=0, deleted=True),
        message("a5", "a4", "assistant", "Wait 5 minutes."),
        message("a8", "a4", "assistant", "Unranked, later in the file."),
        message("a7", "a5", "prompter", "Thanks!"),  # no assistant reply: the thread ends at a5
        message("b1", None, "prompter", "Wie kocht man ein Ei?", lang="de"),
        message("b2", "b1", "assistant", "Im Wasser.", lang="de"),
        message("c1", None, "prompter", "Spam?"),
        message("c2", "c1", "assistant", "Spam reply.", review_result=False),
        message("c3", "c2", "prompter", "Reply to a failed message."),
        message("d1", None, "prompter", "No reply yet.", review_result=None),
        message("e2", "gone", "assistant", "Parent not in the file.")])


def test_oasst1_top_ranked_thread(tmp_path):
    path = oasst_file(tmp_path / "2023-04-12_oasst_ready.messages.jsonl")
    egg = PromptExample("a5", "oasst1", "How do I boil an egg? Boil water.\n\nAdd the egg and wait 8 minutes. "
                                        "And for a soft egg?", "Wait 5 minutes.", ("Wait 5 minutes.",), False)
    assert read_oasst1(path) == [egg]
    assert read_oasst1(path, lang=None) == [
        egg, PromptExample("b2", "oasst1", "Wie kocht man ein Ei?", "Im Wasser.", ("Im Wasser.",), False)]
    assert read_prompts(path, "oasst1", limit=1, lang="de") == [
        PromptExample("b2", "oasst1", "Wie kocht man ein Ei?", "Im Wasser.", ("Im Wasser.",), False)]


def test_oasst1_hf_rows_as_json_lines(tmp_path):
    """HF's rows written by pandas have float ranks; the lower rank still wins over file order."""
    path = write_lines(tmp_path / "oasst1-train.jsonl", [
        message("r", None, "prompter", "Name a river."), message("x", "r", "assistant", "The Nile.", rank=1.0),
        message("y", "r", "assistant", "The Vask.", rank=0.0)])
    assert read_oasst1(path) == [
        PromptExample("y", "oasst1", "Name a river.", "The Vask.", ("The Vask.",), False)]


@pytest.mark.parametrize("record, message", [
    ({"message_id": "x", "role": "prompter", "text": "t"}, r"missing field 'parent_id' \(null for"),
    (message("x", None, "user", "t"), r"field 'role' must be one of \('prompter', 'assistant'\), got 'user'"),
    (message("a1", None, "prompter", "t"), "duplicate message_id 'a1', first at line 1"),
    (message("x", "a1", "assistant", " "), "field 'text' is empty"),
    (message("x", "a1", "assistant", "t", rank="0"), "field 'rank' must be a non-negative integer or null, got '0'"),
    (message("x", "a1", "assistant", "t", rank=0.5), "field 'rank' must be a non-negative integer or null"),
    ({**message("x", "a1", "assistant", "t"), "lang": None}, "field 'lang' must be str, got NoneType"),
])
def test_oasst1_errors_name_file_and_line(tmp_path, record, message):
    path = write_lines(tmp_path / "oasst.jsonl", [{"message_id": "a1", "parent_id": None, "role": "prompter",
                                                   "text": "q", "lang": "en"}, record])
    with pytest.raises(ValueError, match=rf"oasst\.jsonl:2: {message}"):
        read_oasst1(path)


# --------------------------------------------------------------------------------------------------- CoQA

STORY = "Tolbek is a city on the Vask River. It was founded in 1453."


def coqa_story(story_id, questions, answers, **extra):
    return {"source": "wikipedia", "id": story_id, "filename": "Tolbek.txt", "story": STORY, "name": "Tolbek.txt",
            "questions": [{"input_text": q, "turn_id": i} for i, q in enumerate(questions, start=1)],
            "answers": [{"span_start": 0, "span_end": 16, "span_text": "Tolbek is a city", "input_text": a,
                         "turn_id": i} for i, a in enumerate(answers, start=1)], **extra}


def test_coqa_history_in_context(tmp_path):
    path = tmp_path / "coqa-train-v1.0.json"
    path.write_text(json.dumps({"version": "1.0", "data": [
        coqa_story("3zotghdk5ibi9cex97fepx7jetpso7", ["What is Tolbek?", "On what river?", "Who founded it?"],
                   ["a city", "the Vask", "unknown"]),
        coqa_story("dev1", ["Where is Tolbek?"], ["the Vask River"],
                   additional_answers={"0": [{"input_text": "Vask River", "turn_id": 1}],
                                       "1": [{"input_text": "the Vask River", "turn_id": 1}]})]}))
    first = "3zotghdk5ibi9cex97fepx7jetpso7"
    assert read_coqa(path) == [
        PromptExample(f"{first}_1", "coqa", f"{STORY} Q: What is Tolbek? A:", "a city", ("a city",), False),
        PromptExample(f"{first}_2", "coqa", f"{STORY} Q: What is Tolbek? A: a city Q: On what river? A:",
                      "the Vask", ("the Vask",), False),
        PromptExample(f"{first}_3", "coqa",
                      f"{STORY} Q: What is Tolbek? A: a city Q: On what river? A: the Vask Q: Who founded it? A:",
                      "unknown", ("unknown",), False),
        PromptExample("dev1_1", "coqa", f"{STORY} Q: Where is Tolbek? A:", "the Vask River",
                      ("the Vask River", "Vask River"), False)]
    assert [e.id for e in read_prompts(path, "coqa", limit=2)] == [f"{first}_1", f"{first}_2"]


@pytest.mark.parametrize("story, message", [
    (coqa_story("s", ["q1?", "q2?"], ["a1"]), r"data\[0\]: 2 questions but 1 answers"),
    ({**coqa_story("s", ["q1?"], ["a1"]), "answers": [{"input_text": "a1", "turn_id": 2}]},
     r"data\[0\]\.answers\[0\]: turn_id 2 does not match the question's 1"),
    ({**coqa_story("s", ["q1?"], ["a1"]), "questions": [{"turn_id": 1}]},
     r"data\[0\]\.questions\[0\]: missing field 'input_text'"),
    (coqa_story("s", ["q1?"], ["a1"], additional_answers={"0": []}),
     r"data\[0\]\.additional_answers\['0'\]: 0 answers for 1 questions"),
])
def test_coqa_errors_name_the_turn(tmp_path, story, message):
    path = tmp_path / "coqa-dev-v1.0.json"
    path.write_text(json.dumps({"version": "1.0", "data": [story]}))
    with pytest.raises(ValueError, match=rf"coqa-dev-v1\.0\.json: {message}"):
        read_coqa(path)


# --------------------------------------------------------------------------------------------------- DROP

def drop_answer_json(number="", spans=(), day="", month="", year=""):
    return {"number": number, "date": {"day": day, "month": month, "year": year}, "spans": list(spans)}


def test_drop_answer_kinds(tmp_path):
    passage = "Tolbek kicked a 23-yard field goal on 5 March 1990. Vimfork scored too."
    path = tmp_path / "drop_dataset_dev.json"
    path.write_text(json.dumps({"nfl_1184": {"passage": passage, "wiki_url": "https://x", "qa_pairs": [
        {"question": "How many yards was the field goal?", "query_id": "q1", "answer": drop_answer_json("23"),
         "validated_answers": [drop_answer_json("23"), drop_answer_json(spans=["23-yard"]), drop_answer_json()]},
        {"question": "Who scored?", "query_id": "q2", "answer": drop_answer_json(spans=["Tolbek", "Vimfork"])},
        {"question": "When?", "query_id": "q3", "answer": drop_answer_json(day="5", month="March", year="1990")},
        {"question": "Which month?", "query_id": "q4", "answer": drop_answer_json(month="March", year="1990")},
        {"question": "No answer?", "query_id": "q5", "answer": drop_answer_json()}]}}))
    assert read_drop(path) == [
        PromptExample("q1", "drop", f"{passage} Q: How many yards was the field goal? A:", "23", ("23", "23-yard"),
                      False),
        PromptExample("q2", "drop", f"{passage} Q: Who scored? A:", "Tolbek, Vimfork", ("Tolbek, Vimfork",), False),
        PromptExample("q3", "drop", f"{passage} Q: When? A:", "5 March 1990", ("5 March 1990",), False),
        PromptExample("q4", "drop", f"{passage} Q: Which month? A:", "March 1990", ("March 1990",), False)]
    assert [e.id for e in read_prompts(path, "drop", limit=1)] == ["q1"]


@pytest.mark.parametrize("qa, message", [
    ({"question": "q?", "query_id": "q", "answer": {**drop_answer_json(), "spans": [3]}},
     r"qa_pairs\[0\]\.answer: field 'spans' must be a list of strings"),
    ({"question": "q?", "query_id": "q", "answer": {"number": "1", "spans": []}},
     r"qa_pairs\[0\]\.answer: missing field 'date'"),
    ({"question": "q?", "query_id": "q", "answer": drop_answer_json("1"),
      "validated_answers": [{"number": "1", "spans": [], "date": {"day": "", "month": ""}}]},
     r"qa_pairs\[0\]\.validated_answers\[0\]\.date: missing field 'year'"),
    ({"question": "q?", "answer": drop_answer_json("1")}, r"qa_pairs\[0\]: missing field 'query_id'"),
])
def test_drop_errors_name_the_question(tmp_path, qa, message):
    path = tmp_path / "drop_dataset_train.json"
    path.write_text(json.dumps({"history_1": {"passage": "p", "qa_pairs": [qa]}}))
    with pytest.raises(ValueError, match=rf"drop_dataset_train\.json: \['history_1'\]\.{message}"):
        read_drop(path)


# ------------------------------------------------------------------------------------------------- NewsQA

NEWS = "TOLBEK, Varnia (CNN) -- Tolbek lies on the Vask River .\n\n\n\nIt was founded in 1453 ."


def span(text, part, trailing=0):
    start = text.index(part)
    return {"s": start, "e": start + len(part) + trailing}


def newsqa_file(path):
    path.write_text(json.dumps({"version": "1", "data": [
        {"storyId": "./cnn/stories/42d01e18.story", "text": NEWS, "type": "train", "questions": [
            {"q": "What river is Tolbek on?", "consensus": span(NEWS, "the Vask River"), "isAnswerAbsent": 0,
             "isQuestionBad": 0, "answers": [{"sourcerAnswers": [span(NEWS, "the Vask River")]}]},
            {"q": "Tolbek what?", "consensus": {"badQuestion": True}},
            {"q": "Who founded Tolbek?", "consensus": {"noAnswer": True}},
            {"q": "When was it founded?", "consensus": span(NEWS, "1453", trailing=1)}]},
        {"storyId": "./cnn/stories/77ab.story", "text": NEWS, "type": "dev", "questions": [
            {"q": "Where is Tolbek?", "consensus": {"s": 8, "e": 14, "badQuestion": False, "noAnswer": False}}]}]}))
    return path


def test_newsqa_consensus_answers(tmp_path):
    path = newsqa_file(tmp_path / "combined-newsqa-data-v1.json")
    train = [PromptExample("./cnn/stories/42d01e18.story_0", "newsqa", f"{NEWS} Q: What river is Tolbek on? A:",
                           "the Vask River", ("the Vask River",), False),
             PromptExample("./cnn/stories/42d01e18.story_3", "newsqa", f"{NEWS} Q: When was it founded? A:", "1453",
                           ("1453",), False)]
    dev = [PromptExample("./cnn/stories/77ab.story_0", "newsqa", f"{NEWS} Q: Where is Tolbek? A:", "Varnia",
                         ("Varnia",), False)]
    assert read_newsqa(path) == train
    assert read_newsqa(path, split="dev") == dev
    assert read_prompts(path, "newsqa", split=None) == train + dev
    with pytest.raises(ValueError, match=r"combined-newsqa-data-v1\.json: no story has type 'validation'; the "
                                         r"file's types are \['dev', 'train'\]"):
        read_newsqa(path, split="validation")


@pytest.mark.parametrize("question, message", [
    ({"q": "q?", "consensus": {"s": 5, "e": 500}}, r"\.consensus: span s=5 e=500 is not within the story's 10"),
    ({"q": "q?", "consensus": {"s": 6, "e": 7}}, r"\.consensus: span s=6 e=7 is blank"),
    ({"q": "q?", "consensus": {"s": 0}}, r"\.consensus: missing field 'e'"),
    ({"q": "q?"}, r": missing field 'consensus'"),
])
def test_newsqa_errors_name_the_question(tmp_path, question, message):
    path = tmp_path / "combined-newsqa-data-v1.json"
    path.write_text(json.dumps({"data": [{"storyId": "s", "text": "Tolbek is.", "type": "train",
                                          "questions": [question]}]}))
    with pytest.raises(ValueError, match=rf"combined-newsqa-data-v1\.json: data\[0\]\.questions\[0\]{message}"):
        read_newsqa(path)


# ----------------------------------------------------------------------------------------------- PubMedQA

def pubmed_record(question, contexts, decision):
    return {"QUESTION": question, "CONTEXTS": contexts, "LABELS": ["BACKGROUND", "RESULTS"][:len(contexts)],
            "MESHES": ["Humans"], "YEAR": "2011", "reasoning_required_pred": decision,
            "reasoning_free_pred": decision, "final_decision": decision,
            "LONG_ANSWER": "Tolbek water is safe to drink, the study concludes."}


def test_pubmedqa(tmp_path):
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps({
        "21645374": pubmed_record("Is Tolbek water safe?", ["Water was sampled .", " No toxins were found . "], "yes"),
        "12345678": pubmed_record("Does Vask water help?", ["Results were mixed ."], "maybe")}))
    assert read_pubmedqa(path) == [
        PromptExample("21645374", "pubmedqa",
                      "Water was sampled . No toxins were found . Q: Is Tolbek water safe? A:", "yes", ("yes",), False),
        PromptExample("12345678", "pubmedqa", "Results were mixed . Q: Does Vask water help? A:", "maybe",
                      ("maybe",), False)]
    assert [e.id for e in read_prompts(path, "pubmedqa", limit=1)] == ["21645374"]


@pytest.mark.parametrize("record, message", [
    ({**pubmed_record("q?", ["c"], "yes"), "final_decision": "Yes"},
     r"field 'final_decision' must be one of \('yes', 'no', 'maybe'\), got 'Yes'"),
    ({k: v for k, v in pubmed_record("q?", ["c"], "yes").items() if k != "final_decision"},
     "missing field 'final_decision'"),
    (pubmed_record("q?", [], "no"), "field 'CONTEXTS' must be a non-empty list of non-blank strings"),
])
def test_pubmedqa_errors_name_the_pmid(tmp_path, record, message):
    path = tmp_path / "ori_pqau.json"
    path.write_text(json.dumps({"1": pubmed_record("q?", ["c"], "no"), "2": record}))
    with pytest.raises(ValueError, match=rf"ori_pqau\.json: \['2'\]: {message}"):
        read_pubmedqa(path)


# -------------------------------------------------------------------------------------------------- QuAIL

def quail_record(example_id, question, answers, correct):
    return {"id": example_id, "question_type": "Belief_states", "question": question, "answers": answers,
            "correct_answer_id": correct, "metadata": {"author": "A", "title": "T", "url": "http://x"},
            "domain": "fiction", "context_id": example_id.split("_")[0],
            "context": "Cathy lives in Tolbek.\nShe likes the river."}


def test_quail_correct_option(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [
        quail_record("f171_0", "Where does Cathy live?", ["Vimfork", "not enough information", "Tolbek", "Varnia"],
                     "2"),
        quail_record("f171_1", "What does Cathy like?", ["the city", "the river", "not enough information", "cats"],
                     1)])
    context = "Cathy lives in Tolbek.\nShe likes the river."
    assert read_quail(path) == [
        PromptExample("f171_0", "quail", f"{context} Q: Where does Cathy live? A:", "Tolbek", ("Tolbek",), False),
        PromptExample("f171_1", "quail", f"{context} Q: What does Cathy like? A:", "the river", ("the river",),
                      False)]
    assert read_prompts(path, "quail", limit=1) == read_quail(path)[:1]


@pytest.mark.parametrize("record, message", [
    ({k: v for k, v in quail_record("f1_0", "q?", ["a", "b", "c", "d"], 0).items() if k != "correct_answer_id"},
     "missing field 'correct_answer_id' \\(the release's question-only files"),
    (quail_record("f1_0", "q?", ["a", "b", "c", "d"], "4"), "field 'correct_answer_id' must index the 4 answers"),
    (quail_record("f1_0", "q?", ["a", "b", "c", "d"], True), "field 'correct_answer_id' must index the 4 answers"),
    (quail_record("f1_0", "q?", ["a", "", "c", "d"], 0), "field 'answers' must be a non-empty list of non-blank"),
])
def test_quail_errors_name_file_and_line(tmp_path, record, message):
    path = write_lines(tmp_path / "dev.jsonl", [quail_record("f0_0", "q?", ["a", "b", "c", "d"], "0"), record])
    with pytest.raises(ValueError, match=rf"dev\.jsonl:2: {message}"):
        read_quail(path)


# --------------------------------------------------------------------------------------- phrase denoising

def test_phrase_denoising(tmp_path):
    path = write_lines(tmp_path / "phrase_denoising.jsonl", [
        {"id": "pd-1", "context": "Tolbek lies on the [START] Tolbek creek [END] .", "answer": "Vask River"},
        {"id": "pd-2", "context": "[START] It [END] was founded in [START] 1900 [END] .",
         "answer": "Tolbek ; 1453"}])
    assert read_phrase_denoising(path) == [
        PromptExample("pd-1", "phrase_denoising", f"Tolbek lies on the [START] Tolbek creek [END] . {PD}",
                      "Vask River", ("Vask River",), False),
        PromptExample("pd-2", "phrase_denoising", f"[START] It [END] was founded in [START] 1900 [END] . {PD}",
                      "Tolbek ; 1453", ("Tolbek ; 1453",), False)]
    assert [e.id for e in read_prompts(path, "phrase_denoising", limit=1)] == ["pd-1"]


def test_phrase_denoising_errors(tmp_path):
    good = {"id": "1", "context": "[START] x [END]", "answer": "y"}
    path = write_lines(tmp_path / "pd.jsonl", [good, {"id": "2", "text": "[START] x [END]", "output": "y"}])
    with pytest.raises(ValueError, match=r"pd\.jsonl:2: missing field\(s\) \['context', 'answer'\]; expected "
                                         r"phrase-denoising records \{\"id\": str, \"context\": str .*found "
                                         r"\['id', 'output', 'text'\]"):
        read_phrase_denoising(path)
    path = write_lines(tmp_path / "pd.jsonl", [good, {"id": "2", "context": "no markers here", "answer": "y"}])
    with pytest.raises(ValueError, match=r"pd\.jsonl:2: expected phrases marked \[START\] \.\.\. \[END\]"):
        read_phrase_denoising(path)


# ------------------------------------------------------------------------------------- sentence generation

def write_passages(path, passages):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        writer.writerows([pid, text, "Tolbek"] for pid, text in passages)
    return path


def test_split_sentences():
    assert split_sentences("of the city. Tolbek grew (e.g. by trade) in 1453! \"Is it big?\" It is. The U.S. army "
                           "came. Mr. Vask left. Then the") == [
        "Tolbek grew (e.g. by trade) in 1453!", "\"Is it big?\"", "It is.", "The U.S. army came.", "Mr.",
        "Vask left."]
    assert split_sentences("Tolbek is a city.") == ["Tolbek is a city."]
    assert split_sentences("no sentence ends here") == []


def sg(context, direction, sentence, pid):
    return PromptExample(pid, "sentence_generation", f"{context} [SEP] {direction} sentence {SG}", sentence,
                         (sentence,), False)


def test_sentence_generation_examples(tmp_path):
    path = write_passages(tmp_path / "psgs_w100.tsv", [
        ("1", "Tolbek is a city. It lies on the Vask."),
        ("2", "Only one sentence here."),
        ("3", "of the river. Tolbek grew. It is big. And then"),
        ("4", "Vimfork is a town. It has a port. Ships dock there.")])
    examples = read_sentence_generation(path)
    assert [e.id for e in examples] == ["1", "3", "4"]
    assert examples[0] in {sg("Tolbek is a city.", "next", "It lies on the Vask.", "1"),
                           sg("It lies on the Vask.", "previous", "Tolbek is a city.", "1")}
    assert examples[1] in {sg("Tolbek grew.", "next", "It is big.", "3"),
                           sg("It is big.", "previous", "Tolbek grew.", "3")}
    assert examples[2] in {sg("Vimfork is a town.", "next", "It has a port.", "4"),
                           sg("Vimfork is a town. It has a port.", "next", "Ships dock there.", "4"),
                           sg("It has a port. Ships dock there.", "previous", "Vimfork is a town.", "4"),
                           sg("Ships dock there.", "previous", "It has a port.", "4")}
    assert read_prompts(path, "sentence_generation", limit=2) == examples[:2]


def test_sentence_generation_is_deterministic(tmp_path):
    passages = [(str(i), f"S{i} one. S{i} two. S{i} three. S{i} four.") for i in range(40)]
    path = write_passages(tmp_path / "psgs_w100.tsv", passages)
    examples = read_sentence_generation(path, seed=7)
    assert examples == read_sentence_generation(path, seed=7)
    assert examples != read_sentence_generation(path, seed=8)
    # a passage's example does not depend on the passages before it
    assert read_sentence_generation(write_passages(tmp_path / "rest.tsv", passages[5:]), seed=7) == examples[5:]
    suffix = f" {SG}"
    directions = set()
    for example, (_, text) in zip(examples, passages):
        context, direction = example.prompt[:-len(suffix)].split(" [SEP] ")
        directions.add(direction)
        if direction == "next sentence":
            assert text.startswith(f"{context} {example.response}")
        else:
            assert direction == "previous sentence" and text.endswith(f"{example.response} {context}")
    assert directions == {"next sentence", "previous sentence"}


def test_registry(tmp_path):
    assert set(READERS) == {"kilt", "nq_open", "simpleqa", "2wikimultihopqa", "squad_v2", "cnn_dailymail",
                            "oasst1", "coqa", "drop", "newsqa", "pubmedqa", "quail", "phrase_denoising",
                            "sentence_generation"}
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_prompts(tmp_path / "x", "csv")
    with pytest.raises(ValueError, match="limit must be >= 0"):
        read_nq_open(write_lines(tmp_path / "nq.jsonl", []), limit=-1)
