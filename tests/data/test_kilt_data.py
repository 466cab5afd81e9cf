"""KILT readers on tiny files: task files (answers, gold pages and paragraph spans, errors with file:line), the
TACO downsampling, the 100-word passage files with their wikipedia_id mappings (inline column, KILT's title
pickle, DPR's passage-id pickle, plain TSV), and the command that cuts a knowledge source into passages."""
import collections
import json
import os
import pickle
import random

import numpy as np
import pytest

from kipjax.data.kilt import (KiltExample, ProvenanceSpan, body_words, cut_page, downsample, main,
                              read_kilt_task, read_knowledge_source, read_passages, read_wikipedia_id_mapping,
                              write_passages)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path, records):
    return write_lines(path, [json.dumps(r) for r in records])


def prov(page, start=None, end=None, title="T"):
    record = {"wikipedia_id": page, "title": title, "start_character": 0, "end_character": 5, "bleu_score": 1.0}
    if start is not None:
        record.update(start_paragraph_id=start, end_paragraph_id=end)
    return record


# -------------------------------------------------------------------------------------------- task files

TASK = [
    {"id": "q1", "input": "who wrote hamlet", "meta": {},
     "output": [{"answer": "Shakespeare", "provenance": [prov("100", 2, 3), prov("200", 5, 5)]},
                {"answer": "William Shakespeare", "provenance": [prov("100", 2, 3)]},
                {"answer": "Shakespeare"},
                {"provenance": [prov("300"), prov("100", 7, 8)]}]},
    {"id": 7, "input": "[START_ENT] Paris [END_ENT] is big", "output": [{"answer": "Paris", "provenance": [
        {"wikipedia_id": None, "title": "unknown"}]}]},
    {"id": "t1", "input": "a test input"},
]


def test_read_kilt_task(tmp_path):
    first, second, third = read_kilt_task(write_jsonl(tmp_path / "nq-dev-kilt.jsonl", TASK))
    assert first == KiltExample(
        id="q1", input="who wrote hamlet", answers=("Shakespeare", "William Shakespeare"),
        pages=("100", "200", "300"),
        page_sets=(("100", "200"), ("100",), ("300", "100")),
        spans=(ProvenanceSpan("100", 2, 3), ProvenanceSpan("200", 5, 5), ProvenanceSpan("100", 7, 8)),
        labeled=True)
    # An int id becomes KILT's str(id); a null wikipedia_id is no gold page.
    assert second == KiltExample("7", "[START_ENT] Paris [END_ENT] is big", ("Paris",), (), (), (), True)
    assert third == KiltExample("t1", "a test input", labeled=False)


def test_read_kilt_task_limit_stops_reading(tmp_path):
    path = write_lines(tmp_path / "trex-train-kilt.jsonl", [json.dumps(TASK[0]), json.dumps(TASK[2]), "{broken"])
    assert [e.id for e in read_kilt_task(path, limit=2)] == ["q1", "t1"]  # line 3 is never parsed
    assert read_kilt_task(path, limit=0) == []
    with pytest.raises(ValueError, match=r"trex-train-kilt\.jsonl:3: invalid JSON"):
        read_kilt_task(path)


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "input": "x"', "invalid JSON"),
    ('["id", "input"]', "expected a JSON object, got list"),
    ('{"input": "x"}', "missing field 'id'"),
    ('{"id": "a"}', "missing field 'input'"),
    ('{"id": 1.5, "input": "x"}', "field 'id' must be str or int, got float"),
    ('{"id": "a", "input": ["x"]}', "field 'input' must be str, got list"),
    ('{"id": "a", "input": "x", "output": {"answer": "y"}}', "field 'output' must be list, got dict"),
    ('{"id": "a", "input": "x", "output": [{"answer": 3}]}', r"output\[0\]: field 'answer' must be str, got int"),
    ('{"id": "a", "input": "x", "output": [{"provenance": [{"title": "T"}]}]}',
     r"output\[0\]\.provenance\[0\]: missing field 'wikipedia_id'"),
    ('{"id": "a", "input": "x", "output": [{"provenance": [{"wikipedia_id": ["1"]}]}]}',
     "wikipedia_id must be a non-empty string or an int, got list"),
    ('{"id": "a", "input": "x", "output": [{"provenance": [{"wikipedia_id": "1", "start_paragraph_id": 2}]}]}',
     "has only one of 'start_paragraph_id' and 'end_paragraph_id'"),
    ('{"id": "a", "input": "x", "output": [{"provenance": [{"wikipedia_id": "1", "start_paragraph_id": 4, '
     '"end_paragraph_id": 2}]}]}', "paragraph span 4..2 is not 0 <= start <= end"),
    ('{"id": "a", "input": "x", "output": [{"provenance": [{"wikipedia_id": "1", "start_paragraph_id": "4", '
     '"end_paragraph_id": 5}]}]}', "field 'start_paragraph_id' must be int, got str"),
])
def test_task_file_errors_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "fever-dev-kilt.jsonl", [json.dumps(TASK[2]), "", line])
    with pytest.raises(ValueError, match=r"fever-dev-kilt\.jsonl:3: .*" + message):
        read_kilt_task(path)


def test_duplicate_task_ids_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "hotpotqa-dev-kilt.jsonl",
                       [{"id": 12, "input": "a"}, {"id": "b", "input": "b"}, {"id": "12", "input": "c"}])
    with pytest.raises(ValueError, match=r"hotpotqa-dev-kilt\.jsonl:3: duplicate id '12', first at line 1"):
        read_kilt_task(path)


def test_downsample_is_tacos_seeded_draw_and_a_subset():
    examples = [f"example-{i}" for i in range(1000)]
    small = downsample(examples, 100)
    assert small == downsample(list(examples), 100)  # deterministic
    assert len(small) == len(set(small)) == 100 and set(small) <= set(examples)
    # The draw TACO's scripts/kilt/process_kilt.py makes: random.seed(42); random.sample(data, 100000).
    state = random.getstate()
    try:
        random.seed(42)
        assert small == random.sample(examples, 100)
    finally:
        random.setstate(state)
    assert downsample(examples, 100, seed=1) != small
    assert downsample(examples[:5], 10) == examples[:5]
    with pytest.raises(ValueError, match="n must be >= 0"):
        downsample(examples, -1)


# ------------------------------------------------------------------------------------- cutting passages

def numbered(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def test_a_250_word_page_gives_100_100_50():
    words = numbered("w", 250)
    paragraphs = ["Title Words\n", " ".join(words[:120]) + "\n", "Section::::History.\n",
                  " ".join(words[120:]) + "\n"]
    passages = cut_page(paragraphs)
    assert [len(p.split()) for p in passages] == [100, 100, 50]
    assert passages[0] == " ".join(words[:100])
    assert passages[1] == " ".join(words[100:200])  # runs across the paragraph and the section heading
    assert passages[2] == " ".join(words[200:])
    assert "Title" not in " ".join(passages) and "Section::::History." not in " ".join(passages)


def test_cut_page_word_count_and_whitespace():
    assert cut_page(["T\n", "a  b\tc\n", "d e\n", "  Section::::Sub.:Deeper.\n", "f g"], words=3) == [
        "a b c", "d e f", "g"]
    assert body_words(["Only a title\n"]) == [] and cut_page(["Only a title\n"]) == []
    assert cut_page([]) == []
    with pytest.raises(ValueError, match="words must be >= 1"):
        cut_page(["T", "a"], words=0)


PAGES = [
    {"_id": "12", "wikipedia_id": "12", "wikipedia_title": "Anarchism",
     "text": ["Anarchism\n", " ".join(numbered("an", 130)) + "\n", "Section::::Etymology.\n",
              " ".join(numbered("et", 75)) + "\n", "BULLET::::- a listed item\n"]},
    {"_id": "25", "wikipedia_id": "25", "wikipedia_title": "Empty page", "text": ["Empty page\n"]},
    {"_id": "39", "wikipedia_id": "39", "wikipedia_title": 'Say "Hi"\tagain',
     "text": ["Say Hi\n", 'He said "hello" and\tleft.\n', " ".join(numbered("x", 100))]},
    {"_id": "290", "wikipedia_title": "A", "text": ["A\n", "A is the first letter."]},
]


def expected_body(page):
    """The body as the module docstring defines it, written out independently: paragraphs 1.. without headings."""
    return " ".join(p for p in page["text"][1:] if not p.strip().startswith("Section::::")).split()


def test_cut_read_round_trip(tmp_path, capsys):
    source = write_jsonl(tmp_path / "kilt_knowledgesource.json", PAGES)
    main(["passages", "--knowledge_source", str(source), "--out", str(tmp_path / "out")])
    stats = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(tmp_path / "out")) == ["psgs_w100.tsv", "psgs_w100.wikipedia_ids.tsv"]
    # 130 + 75 + 4 = 209 words -> 3 passages; empty -> 0; 5 + 100 = 105 -> 2; 5 -> 1.
    assert stats["pages"] == 4 and stats["pages_without_passages"] == 1 and stats["passages"] == 6
    assert (tmp_path / "out" / "psgs_w100.tsv").read_text().splitlines()[0] == "id\ttext\ttitle"

    corpus = read_passages(stats["passages_file"], mapping=stats["mapping_file"])
    assert corpus.ids.dtype == np.int64 and corpus.ids.tolist() == list(range(6))
    assert corpus.wikipedia_ids.tolist() == ["12", "12", "12", "39", "39", "290"]
    titles = {p.get("wikipedia_id", p["_id"]): p["wikipedia_title"] for p in PAGES}
    assert [titles[w] for w in corpus.wikipedia_ids] == corpus.titles.tolist()  # the tab and quotes survive
    for page in PAGES:
        page_id = page.get("wikipedia_id", page["_id"])
        texts = [t for t, w in zip(corpus.texts, corpus.wikipedia_ids) if w == page_id]
        assert " ".join(texts).split() == expected_body(page)  # every body word once, in order
        assert all(len(t.split()) == 100 for t in texts[:-1]) and all(0 < len(t.split()) <= 100 for t in texts)
    assert corpus.texts[3].startswith('He said "hello" and left.')


def test_other_word_counts_and_first_id(tmp_path):
    source = write_jsonl(tmp_path / "ks.json", PAGES[:1])
    stats = write_passages(source, tmp_path, words=50, first_id=1)
    corpus = read_passages(stats["passages_file"], mapping=stats["mapping_file"])
    assert stats["passages_file"].endswith("psgs_w50.tsv")
    assert corpus.ids.tolist() == [1, 2, 3, 4, 5] and [len(t.split()) for t in corpus.texts] == [50] * 4 + [9]


def test_interrupted_cut_leaves_no_file(tmp_path):
    source = write_lines(tmp_path / "ks.json", [json.dumps(PAGES[0]), json.dumps(PAGES[2]), '{"_id": '])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"ks\.json:3: invalid JSON"):
        write_passages(source, out)
    assert os.listdir(out) == []  # neither the outputs nor their temporary files


def test_existing_output_needs_force(tmp_path):
    source = write_jsonl(tmp_path / "ks.json", PAGES[3:])
    write_passages(source, tmp_path / "out")
    with pytest.raises(FileExistsError, match="pass --force"):
        write_passages(source, tmp_path / "out", words=100)
    with pytest.raises(SystemExit, match="pass --force"):
        main(["passages", "--knowledge_source", str(source), "--out", str(tmp_path / "out")])
    write_jsonl(source, PAGES[:1])
    stats = write_passages(source, tmp_path / "out", force=True)
    assert read_passages(stats["passages_file"]).titles.tolist() == ["Anarchism"] * 3


@pytest.mark.parametrize("record, message", [
    ({"wikipedia_title": "A", "text": ["A"]}, r"missing field 'wikipedia_id' \(or '_id'\)"),
    ({"_id": "1", "wikipedia_id": "2", "wikipedia_title": "A", "text": ["A"]},
     "'_id' '1' and 'wikipedia_id' '2' differ"),
    ({"_id": "1", "wikipedia_title": "A", "text": "A"}, "field 'text' must be list, got str"),
    ({"_id": "1", "wikipedia_title": "A", "text": ["A", 3]}, r"text\[1\] must be str, got int"),
    ({"_id": "1", "text": ["A"]}, "missing field 'wikipedia_title'"),
    ({"_id": 1.0, "wikipedia_title": "A", "text": ["A"]}, "wikipedia_id must be a non-empty string or an int"),
])
def test_knowledge_source_errors_name_file_and_line(tmp_path, record, message):
    path = write_lines(tmp_path / "ks.json", [json.dumps(PAGES[3]), json.dumps(record)])
    with pytest.raises(ValueError, match=r"ks\.json:2: .*" + message):
        list(read_knowledge_source(path))


# -------------------------------------------------------------------------------------- passage files

def test_read_dpr_layout_with_quotes_and_string_ids(tmp_path):
    path = write_lines(tmp_path / "psgs_w100.tsv", [
        "id\ttext\ttitle",
        'wiki:1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron',
        "wiki:2\tHis brother\tAaron",
        'wiki:3\tplain text\t"Tab\tTitle"'])
    corpus = read_passages(path)
    assert corpus.ids.dtype == object and corpus.ids.tolist() == ["wiki:1", "wiki:2", "wiki:3"]
    assert corpus.texts.tolist() == ['Aaron Aaron ( or ; "Ahärôn") is a prophet', "His brother", "plain text"]
    assert corpus.titles.tolist() == ["Aaron", "Aaron", "Tab\tTitle"] and corpus.wikipedia_ids is None
    assert corpus.titles[0] is corpus.titles[1]  # one string per page
    assert len(corpus) == 3


def test_multitask_release_layout_has_wikipedia_id_inline(tmp_path):
    # dl.fbaipublicfiles.com/ur/wikipedia_split/psgs_w100.tsv: 6 columns, TACO reads pid, text, title, wiki_id, _, _.
    path = write_lines(tmp_path / "psgs_w100.tsv", [
        "id\ttext\ttitle\twikipedia_id\tstart\tend",
        "0\tfirst passage\tAnarchism\t12\t1\t3",
        "1\tsecond passage\tAnarchism\t12\t3\t5",
        "2\tother\tAutism\t25\t1\t1"])
    corpus = read_passages(path)
    assert corpus.ids.tolist() == [0, 1, 2] and corpus.wikipedia_ids.tolist() == ["12", "12", "25"]
    mapping = write_lines(tmp_path / "map.tsv", ["0\t12"])
    with pytest.raises(ValueError, match="own wikipedia_id column .* ambiguous"):
        read_passages(path, mapping=mapping)


@pytest.mark.parametrize("lines, message", [
    ([], r":1: empty file"),
    (["1\tsome text\tTitle", "2\tmore\tTitle"], r":1: missing header: expected 'id\\ttext\\ttitle'"),
    (["id\ttext\ttitle", "1\ta\tA", "2\tb"], r":3: expected 3 tab-separated columns \(as in the header\), got 2"),
    (["id\ttext\ttitle", "1\ta\tA", "2\tb\tB\textra"], r":3: expected 3 tab-separated columns"),
    (["id\ttext\ttitle", "1\ta\tA", "", "2\tb\tB"], r":3: expected 3 tab-separated columns .* got 0"),
    (["id\ttext\ttitle", "7\ta\tA", "8\tb\tB", "9\tc\tC", "8\td\tD", "7\te\tE"],
     r":5: duplicate passage id 8, first at line 3"),
    (["id\ttext\ttitle", "p\ta\tA", 'q\t"b\nstill b"\tB', "p\tc\tC"], r":5: duplicate passage id 'p', first at line 2"),
    (["id\ttext\ttitle", "\ta\tA"], r":2: empty passage id"),
    (["id\ttext\ttitle\twikipedia_id", "1\ta\tA\t "], r":2: empty wikipedia_id \(column 4\)"),
])
def test_passage_file_errors_name_file_and_line(tmp_path, lines, message):
    path = write_lines(tmp_path / "psgs_w100.tsv", lines) if lines else tmp_path / "psgs_w100.tsv"
    if not lines:
        path.write_text("")
    with pytest.raises(ValueError, match=r"psgs_w100\.tsv" + message):
        read_passages(path)


# ------------------------------------------------------------------------------------------- mappings

PASSAGES = ["id\ttext\ttitle", "1\ta b\tAnarchism", "2\tc d\tAnarchism", "3\te f\tAutism", "4\tg h\tNo such page"]


def write_pickle(path, value):
    path.write_bytes(pickle.dumps(value))
    return path


def test_kilt_title_pickle(tmp_path):
    passages = write_lines(tmp_path / "kilt_w100_title.tsv", PASSAGES)
    # KILT's mapping_KILT_title.p: {title: wikipedia_id}, looked up by each passage's title (DPR_connector.py).
    mapping = write_pickle(tmp_path / "mapping_KILT_title.p", {"Anarchism": 12, "Autism": "25", "Other": "9"})
    with pytest.warns(UserWarning, match=r"1 of 4 passages have no wikipedia_id .* 4 \('No such page'\)"):
        corpus = read_passages(passages, mapping=mapping)
    assert corpus.wikipedia_ids.tolist() == ["12", "12", "25", None]
    ordered = write_pickle(tmp_path / "ordered.pkl", collections.OrderedDict([("Autism", "25")]))
    assert read_wikipedia_id_mapping(ordered).by_title == {"Autism": "25"}


def test_passage_id_pickles(tmp_path):
    passages = write_lines(tmp_path / "psgs.tsv", PASSAGES)
    # DPR's map_back_to_kilt.pkl: {int passage id: (wikipedia_id, end_paragraph_id)}, in any order.
    dpr = write_pickle(tmp_path / "map_back_to_kilt.pkl", {4: ("40", 2), 2: ("12", 5), 1: ("12", 3), 3: ("25", 1)})
    assert read_passages(passages, mapping=dpr).wikipedia_ids.tolist() == ["12", "12", "25", "40"]
    # KILT's distributed connector: dict(pickle.load(...)) of int passage id -> wikipedia_id; pairs work too.
    pairs = write_pickle(tmp_path / "pairs.p", [(1, "12"), (2, "12"), (3, "25"), (4, "40")])
    assert read_passages(passages, mapping=pairs).wikipedia_ids.tolist() == ["12", "12", "25", "40"]


class Exploit:
    def __reduce__(self):
        return (os.remove, ("/nonexistent-kipjax-test-path",))


@pytest.mark.parametrize("value, message", [
    ({"Anarchism": "12", 3: "25"}, r"key 3 \(int\) is not a title \(str\) like the first key 'Anarchism'"),
    ([(1, "12"), (True, "13")], r"key True \(bool\) is not a passage id"),
    ({"Anarchism": 12.0}, r"value of key 'Anarchism': wikipedia_id must be a non-empty string or an int, got float"),
    ({"Anarchism": ""}, "wikipedia_id must be a non-empty string"),
    ({}, "the mapping is empty"),
    (["Anarchism", "12"], "element 0 must be a .key, wikipedia_id. pair"),
    ("Anarchism", "expected a dict"),
    ({"Anarchism": Exploit()}, r"refusing to load \w+\.remove"),
])
def test_pickle_mapping_is_validated_and_loaded_safely(tmp_path, value, message):
    path = write_pickle(tmp_path / "mapping.p", value)
    with pytest.raises(ValueError, match=r"mapping\.p: .*" + message):
        read_wikipedia_id_mapping(path)


def test_tsv_mapping(tmp_path):
    passages = write_lines(tmp_path / "psgs.tsv", PASSAGES)
    with_header = write_lines(tmp_path / "m.tsv", ["passage_id\twikipedia_id", "3\t25", "1\t12", "2\t12"])
    with pytest.warns(UserWarning, match="1 of 4 passages have no wikipedia_id"):
        assert read_passages(passages, mapping=with_header).wikipedia_ids.tolist() == ["12", "12", "25", None]
    no_header = write_lines(tmp_path / "n.tsv", ["1\t12", "2\t12", "3\t25", "4\t40"])
    assert read_passages(passages, mapping=no_header).wikipedia_ids.tolist() == ["12", "12", "25", "40"]
    string_ids = write_lines(tmp_path / "s.tsv", ["1\t12", "2\t12", "3\t25", "x4\t40"])  # ids compared as strings
    with pytest.warns(UserWarning, match=r"1 of 4 .*\(e\.g\. 4 \('No such page'\)\)"):
        assert read_passages(passages, mapping=string_ids).wikipedia_ids.tolist() == ["12", "12", "25", None]


@pytest.mark.parametrize("lines, message", [
    (["passage_id\twikipedia_id", "1\t12", "2"], r":3: expected 2 tab-separated columns"),
    (["1\t12", "2\t12\t5"], r":2: expected 2 tab-separated columns"),
    (["1\t12", "2\t"], r":2: empty passage_id or wikipedia_id"),
    (["passage_id\twikipedia_id", "1\t12", "2\t12", "1\t13"], r":4: duplicate passage_id 1, first at line 2"),
])
def test_tsv_mapping_errors_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=r"map\.tsv" + message):
        read_wikipedia_id_mapping(write_lines(tmp_path / "map.tsv", lines))
