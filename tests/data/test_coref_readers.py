"""Coreference readers: CoNLL-2012 (OntoNotes and LitBank layouts), jsonlines and PreCo, on tiny files."""
import json
import random

import pytest

from kipjax.data.coref import (CellBrackets, CorefDocument, parse_cell, read_conll, read_document_files, read_documents, read_jsonlines,
                               read_preco, write_conll, write_jsonlines)

ONTONOTES = """\
#begin document (bc/cctv/00/cctv_0000); part 000
bc/cctv/00/cctv_0000   0   0        John   NNP  (TOP(S(NP*)   -   -   -   Speaker#1   (PERSON)   (ARG0*)   (1)
bc/cctv/00/cctv_0000   0   1        said   VBD       (VP*   say  01   -   Speaker#1          *      (V*)     -
bc/cctv/00/cctv_0000   0   2          he   PRP     (S(NP*)  -   -   -   Speaker#1          *   (ARG1*   (1)|(2
bc/cctv/00/cctv_0000   0   3        left   VBD       (VP*)  -   -   -   Speaker#1          *        *)    2)
bc/cctv/00/cctv_0000   0   4           .     .         *))  -   -   -   Speaker#1          *         *     -

bc/cctv/00/cctv_0000   0   0         His  PRP$  (TOP(S(NP*  -   -   -   Speaker#2          *         *   (3|(1)
bc/cctv/00/cctv_0000   0   1         dog    NN        *)    -   -   -   Speaker#2          *         *    3)
bc/cctv/00/cctv_0000   0   2       barks   VBZ   (VP*)))   -   -   -   Speaker#2          *         *     -

#end document
#begin document (bc/cctv/00/cctv_0001); part 001
bc/cctv/00/cctv_0001   1   0          It   PRP   (TOP(NP*)) -   -   -   -                  *         *   (7)
#end document
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_ontonotes_conll(tmp_path):
    docs = read_conll(write(tmp_path, "dev.english.v4_gold_conll", ONTONOTES))
    assert [d.doc_key for d in docs] == ["bc/cctv/00/cctv_0000_0", "bc/cctv/00/cctv_0001_1"]
    first = docs[0]
    assert first.sentences == [["John", "said", "he", "left", "."], ["His", "dog", "barks"]]
    assert first.speakers == [["Speaker#1"] * 5, ["Speaker#2"] * 3]
    # flattened tokens: John0 said1 he2 left3 .4 His5 dog6 barks7
    # cluster 1: John (0,0), he (2,2), His (5,5); cluster 2: he left (2,3); cluster 3: His dog (5,6)
    assert first.clusters == [[(0, 0), (2, 2), (5, 5)], [(2, 3)], [(5, 6)]]
    # speaker '-' everywhere is no speaker information
    assert docs[1] == CorefDocument("bc/cctv/00/cctv_0001_1", [["It"]], [[(0, 0)]], speakers=None)


def test_nested_spans_of_one_and_several_clusters(tmp_path):
    # (1|(2 / 2)|1) : two clusters over the same tokens; (5 (5 5) 5): nested mentions of ONE cluster;
    # the innermost closing bracket closes the latest opening one.
    text = ("#begin document (n); part 0\n"
            "n 0 0 a (1|(2\n"
            "n 0 1 b 2)|1)\n"
            "n 0 2 c (5\n"
            "n 0 3 d (5\n"
            "n 0 4 e 5)\n"
            "n 0 5 f 5)|(3)\n"
            "#end document\n")
    [doc] = read_conll(write(tmp_path, "nested.conll", text))
    assert doc.doc_key == "n_0"
    assert doc.sentences == [["a", "b", "c", "d", "e", "f"]]
    assert doc.speakers is None   # fewer than 12 columns
    assert doc.clusters == [[(0, 1)], [(0, 1)], [(2, 5), (3, 4)], [(5, 5)]]


def test_litbank_layout(tmp_path):
    # LitBank: 13 tab-separated columns, the last one EMPTY when there is no mention, '_' placeholders.
    name = "1064_the_masque_of_the_red_death_brat"
    rows = [("The", ""), ("Red", "(0"), ("Death", "0)"), ("had", ""), ("it", "(0)")]
    lines = [f"#begin document ({name}); part 0"]
    lines += ["\t".join([name, "0", str(i), w] + ["_"] * 8 + [c]) for i, (w, c) in enumerate(rows[:3])]
    lines += [""]
    lines += ["\t".join([name, "0", str(i), w] + ["_"] * 8 + [c]) for i, (w, c) in enumerate(rows[3:])]
    lines += ["", "#end document", ""]
    [doc] = read_conll(write(tmp_path, f"{name}.conll", "\n".join(lines)))
    assert doc == CorefDocument(f"{name}_0", [["The", "Red", "Death"], ["had", "it"]], [[(1, 2), (4, 4)]])


@pytest.mark.parametrize("body, line, message", [
    ("d 0 0 a (1\nd 0 1 b -\n", 2, r"mention of cluster 1 opened here is never closed before '#end document' "
                                   r"\(line 4\)"),
    ("d 0 0 a -\nd 0 1 b 4)\n", 3, r"mention of cluster 4 is closed but was never opened"),
    ("d 0 0 a (2)1)\n", 2, r"mention of cluster 1 is closed but was never opened"),
])
def test_what_the_scorer_rejects_names_file_and_line(tmp_path, body, line, message):
    path = write(tmp_path, "bad.conll", "#begin document (d); part 0\n" + body + "#end document\n")
    with pytest.raises(ValueError, match=rf"bad.conll:{line}: {message}"):
        read_conll(path)


def test_malformed_document_structure(tmp_path):
    with pytest.raises(ValueError, match=r"no '#end document'"):
        read_conll(write(tmp_path, "s.conll", "#begin document (d); part 0\nd 0 0 a -\n"))
    with pytest.raises(ValueError, match=r"s.conll:2: '#begin document' inside document 'd_0'"):
        read_conll(write(tmp_path, "s.conll", "#begin document (d); part 0\n#begin document (e); part 0\n"))
    with pytest.raises(ValueError, match=r"s.conll:1: .*integer N"):
        read_conll(write(tmp_path, "s.conll", "#begin document (d); part x\n#end document\n"))


# One coreference cell -> what the scorer takes from it: (one-token mentions, opens, closes, ignored text).
CELLS = [
    ("-", [], [], [], "-"),
    ("_", [], [], [], ""),
    ("", [], [], [], ""),
    ("(1)", ["1"], [], [], ""),
    ("(12", [], ["12"], [], ""),
    ("12)", [], [], ["12"], ""),
    ("(1(1", [], ["1", "1"], [], ""),
    ("1)1)", [], [], ["1", "1"], ""),
    ("(1)(2", ["1"], ["2"], [], ""),
    ("(3)|(4", ["3"], ["4"], [], "|"),
    ("(1|(2", [], ["1", "2"], [], "|"),
    ("2)|1)", [], [], ["2", "1"], "|"),
    ("(5|(1)|7)", ["1"], ["5"], ["7"], "||"),
    ("(1(2)", ["2"], ["1"], [], ""),          # the one-token mention goes first, whatever its place
    ("1)(2)", ["2"], [], ["1"], ""),
    ("((1)2)", ["1", "2"], [], [], ""),       # taking out (1) leaves (2), which the scorer's loop takes too
    ("(1+2)|(3)", ["3"], [], [], "|"),        # a double antecedent is dropped
    ("01)", [], [], ["01"], ""),
    ("(x)", [], [], [], "(x)"),
    ("1(2", [], ["2"], [], "1"),
]


@pytest.mark.parametrize("cell, singles, opens, closes, leftover", CELLS)
def test_cells_are_parsed_as_the_reference_scorer_parses_them(cell, singles, opens, closes, leftover):
    assert parse_cell(cell) == CellBrackets(singles, opens, closes, leftover)


def test_two_column_files_and_brackets_without_separators(tmp_path):
    text = ("#begin document (LuoTestCase); \n"
            "d\t(0(0\n"
            "d\t0)\n"
            "d\t-\n"
            "\n"
            "d\t(1)(2\n"
            "d\t2)0)\n"
            "#end document\n")
    [doc] = read_conll(write(tmp_path, "two.conll", text))
    assert doc.doc_key == "LuoTestCase"
    assert doc.sentences == [["_", "_", "_"], ["_", "_"]]  # no word column
    # cluster 0: (0,1) and (0,4), cluster 1: (3,3), cluster 2: (3,4)
    assert doc.clusters == [[(0, 1), (0, 4)], [(3, 3)], [(3, 4)]]


def test_what_the_scorer_skips_is_skipped_with_a_warning(tmp_path):
    text = ("stray line before any document\n"
            "#begin document (d); part 0\n"
            "d 0 0 a (1)\n"
            "#comment-like line, a token as the scorer counts it\n"
            "d 0 2 c (1)|junk\n"
            "#end document\n")
    with pytest.warns(UserWarning) as caught:
        [doc] = read_conll(write(tmp_path, "w.conll", text))
    messages = [str(w.message) for w in caught]
    assert any("1 line(s) outside" in m and "line 1)" in m for m in messages)
    assert any("2 coreference cell(s) hold text" in m and "line 4)" in m for m in messages)
    assert doc.clusters == [[(0, 0), (2, 2)]]


def random_document(rng, doc_key, with_speakers):
    """Random sentences and non-crossing mentions (nested, shared boundaries, one-token, repeated spans
    across clusters), clusters in canonical order as read_conll returns them."""
    lengths = [rng.randint(1, 6) for _ in range(rng.randint(1, 4))]
    sentences = [[rng.choice(["a", "b", "c", "(", "-", "x|y"]) for _ in range(n)] for n in lengths]
    num_tokens = sum(lengths)
    clusters = []
    for _ in range(rng.randint(0, 4)):
        spans = set()
        for _ in range(rng.randint(1, 4)):
            start = rng.randrange(num_tokens)
            end = min(num_tokens - 1, start + rng.choice([0, 0, 1, 2]))
            if all(not (s < start <= e < end or start < s <= end < e) for s, e in spans):
                spans.add((start, end))
        clusters.append(sorted(spans))
    speakers = [[rng.choice(["A", "B C"]) for _ in s] for s in sentences] if with_speakers else None
    return CorefDocument(doc_key, sentences, sorted(clusters), speakers)


def test_conll_round_trip(tmp_path):
    rng = random.Random(0)
    keys = ["bc/cctv/00/cctv_0000_0", "nw/wsj_12", "preco_dev_00007", "no_part", "x_0"]
    docs = [random_document(rng, keys[i % len(keys)] + f"{i}" * (i >= len(keys)), with_speakers=i % 2 == 0)
            for i in range(40)]
    path = tmp_path / "round.conll"
    write_conll(path, docs)
    assert read_conll(path) == docs
    assert not list(tmp_path.glob("*.tmp.*"))


def test_write_conll_rejects_crossing_mentions_of_one_cluster(tmp_path):
    doc = CorefDocument("d_0", [["a", "b", "c"]], [[(0, 1), (1, 2)]])
    with pytest.raises(ValueError, match=r"mentions \(0, 1\) and \(1, 2\) of one cluster cross"):
        write_conll(tmp_path / "x.conll", [doc])


def test_jsonlines_read_and_write(tmp_path):
    record = {"doc_key": "nw_0", "sentences": [["A", "dog", "."], ["It", "barks"]],
              "speakers": [["s1"] * 3, ["s2"] * 2], "clusters": [[[0, 1], [3, 3]]]}
    path = write(tmp_path, "dev.jsonlines", json.dumps(record) + "\n\n" + json.dumps(
        {"doc_key": "nw_1", "sentences": [["x"]], "clusters": []}) + "\n")
    docs = read_jsonlines(path)
    assert docs == [CorefDocument("nw_0", record["sentences"], [[(0, 1), (3, 3)]], record["speakers"]),
                    CorefDocument("nw_1", [["x"]], [])]
    assert docs[0].tokens == ["A", "dog", ".", "It", "barks"]
    out = tmp_path / "pred.jsonlines"
    write_jsonlines(out, docs)
    assert read_jsonlines(out) == docs
    assert json.loads(out.read_text().splitlines()[0]) == record


@pytest.mark.parametrize("record, message", [
    ({"sentences": [["a"]], "clusters": []}, r"missing field 'doc_key'"),
    ({"doc_key": "d", "sentences": [["a", 1]], "clusters": []}, r"'sentences' must be a list of lists of strings"),
    ({"doc_key": "d", "sentences": [["a"]]}, r"missing field 'clusters'"),
    ({"doc_key": "d", "sentences": [["a"]], "clusters": [[[0]]]}, r"'clusters' must be a list of clusters"),
    ({"doc_key": "d", "sentences": [["a"]], "clusters": [[[0, 1]]]}, r"mention \(0, 1\) is not an inclusive span"),
    ({"doc_key": "d", "sentences": [["a", "b"]], "clusters": [[[1, 0]]]}, r"mention \(1, 0\) is not an inclusive"),
    ({"doc_key": "d", "sentences": [["a"]], "speakers": [["s", "t"]], "clusters": []}, r"shape of 'sentences'"),
])
def test_jsonlines_validation_names_file_and_line(tmp_path, record, message):
    good = {"doc_key": "ok", "sentences": [["a"]], "clusters": []}
    path = write(tmp_path, "bad.jsonl", json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        read_jsonlines(path)


def test_preco_conversion(tmp_path):
    # sentence 0 has 3 tokens, sentence 1 has 4: offsets 0 and 3.
    # [0, 0, 2] -> tokens 0..1 -> (0, 1); [1, 1, 2] -> token 3 + 1 = 4 -> (4, 4); [1, 0, 4] -> (3, 6).
    record = {"id": "dev_00001", "sentences": [["The", "old", "man"], ["He", "said", "so", "."]],
              "mention_clusters": [[[0, 0, 3], [1, 0, 1]], [[1, 1, 2]], [[1, 0, 4]]]}
    path = write(tmp_path, "dev.jsonl", json.dumps(record) + "\n")
    expected = [CorefDocument("dev_00001", record["sentences"], [[(0, 2), (3, 3)], [(4, 4)], [(3, 6)]])]
    assert read_preco(path) == expected
    assert read_documents(path) == expected   # dispatched on `mention_clusters`
    bad = write(tmp_path, "bad.jsonl", json.dumps({**record, "mention_clusters": [[[1, 2, 5]]]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: mention \[1, 2, 5\] is not \[sentence, start, end\)"):
        read_preco(bad)


def test_read_documents_dispatch(tmp_path):
    doc = CorefDocument("d_0", [["a", "b"]], [[(0, 0), (1, 1)]])
    write_jsonlines(tmp_path / "p.jsonlines", [doc])
    write_conll(tmp_path / "p.gold_conll", [doc])
    assert read_documents(tmp_path / "p.jsonlines") == [doc]
    assert read_documents(tmp_path / "p.gold_conll") == [doc]


def test_read_document_files_expands_globs_in_sorted_order(tmp_path):
    docs = [CorefDocument(f"d{i}", [["a", str(i)]], [[(0, 0)]]) for i in range(3)]
    for i in (2, 0, 1):
        write_conll(tmp_path / f"book{i}.conll", [docs[i]])
    assert read_document_files(tmp_path / "book*.conll") == docs
    assert read_document_files(tmp_path / "book1.conll") == [docs[1]]
    with pytest.raises(FileNotFoundError, match="no coreference files match"):
        read_document_files(tmp_path / "*.jsonlines")
