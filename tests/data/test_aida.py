"""AIDA-YAGO2 reader on tiny files in the real TSV layout: tokens, sentences, mentions with hand-computed
character offsets, titles from URLs and YAGO2 names, splits, errors naming file:line, and the gold-link CLI
read back by the InKB scorer."""
import json

import pytest

from kipjax.data.aida import AidaDocument, AidaMention, gold_links, main, read_aida, yago_title
from kipjax.metrics.el import score_inkb_files

URL = "http://en.wikipedia.org/wiki/"
T = "\t"

# Line numbers matter for the error tests below; the layout follows AIDA-YAGO2-dataset.tsv (a blank line after
# each header, blank lines between sentences).
AIDA = [
    "-DOCSTART- (1 EU)",                                                            # 1
    "",                                                                             # 2
    T.join(["EU", "B", "EU", "--NME--"]),                                           # 3
    "rejects",                                                                      # 4
    T.join(["German", "B", "German", "Germany", URL + "Germany", "11867", "/m/0345h"]),  # 5
    "call",                                                                         # 6
    ".",                                                                            # 7
    "",                                                                             # 8
    "",                                                                             # 9 (two blank lines: one break)
    T.join(["Peter", "B", "Peter Blackburn", "--NME--"]),                           # 10
    T.join(["Blackburn", "I", "Peter Blackburn", "--NME--"]),                       # 11
    "-DOCSTART- (947testa CRICKET)",                                                # 12
    "",                                                                             # 13
    T.join(["Sao", "B", "Sao Paulo", "S\\u00e3o_Paulo", URL + "S%C3%A3o_Paulo", "390875"]),  # 14
    T.join(["Paulo", "I", "Sao Paulo", "S\\u00e3o_Paulo", URL + "S%C3%A3o_Paulo", "390875"]),  # 15
    T.join(["AC/DC", "B", "AC/DC", "AC/DC", URL + "AC/DC", "16925"]),               # 16
    T.join(["Jose", "B", "Jose", "Jos\\u00e9_Mar\\u00eda_Aznar"]),                  # 17 (no URL: YAGO2 name)
    T.join(["Paris", "B", "Paris", "Paris", URL + "Paris", "22989"]),               # 18 (B right after B)
    "won",                                                                          # 19
    "",                                                                             # 20
]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_aida(tmp_path):
    eu, cricket = read_aida(str(write_lines(tmp_path / "AIDA-YAGO2-dataset.tsv", AIDA)))
    # "EU rejects German call . Peter Blackburn": EU 0-2, German 11-17, Peter Blackburn 25-40.
    assert eu == AidaDocument(
        id="1 EU", split="train", tokens=["EU", "rejects", "German", "call", ".", "Peter", "Blackburn"],
        sentences=[(0, 5), (5, 7)], text="EU rejects German call . Peter Blackburn",
        mentions=[AidaMention(0, 1, 0, 2, "EU", None, None, None),
                  AidaMention(2, 3, 11, 17, "German", "Germany", URL + "Germany", "11867"),
                  AidaMention(5, 7, 25, 40, "Peter Blackburn", None, None, None)])
    # "Sao Paulo AC/DC Jose Paris won": Sao Paulo 0-9, AC/DC 10-15, Jose 16-20, Paris 21-26.
    assert cricket == AidaDocument(
        id="947testa CRICKET", split="testa", tokens=["Sao", "Paulo", "AC/DC", "Jose", "Paris", "won"],
        sentences=[(0, 6)], text="Sao Paulo AC/DC Jose Paris won",
        mentions=[AidaMention(0, 2, 0, 9, "Sao Paulo", "São Paulo", URL + "S%C3%A3o_Paulo", "390875"),
                  AidaMention(2, 3, 10, 15, "AC/DC", "AC/DC", URL + "AC/DC", "16925"),
                  AidaMention(3, 4, 16, 20, "Jose", "José María Aznar", None, None),
                  AidaMention(4, 5, 21, 26, "Paris", "Paris", URL + "Paris", "22989")])
    for doc in (eu, cricket):
        assert [doc.text[m.char_start:m.char_end] for m in doc.mentions] == [m.surface for m in doc.mentions]


def test_title_map_and_gold_links(tmp_path):
    path = str(write_lines(tmp_path / "aida.tsv", AIDA))
    eu, cricket = read_aida(path, title_map={"Germany": "Federal Republic of Germany", "Paris": "Paris, France"})
    assert gold_links(eu) == {"id": "1 EU", "text": "EU rejects German call . Peter Blackburn",
                              "links": [[11, 17, "Federal Republic of Germany"]]}
    assert gold_links(cricket)["links"] == [[0, 9, "São Paulo"], [10, 15, "AC/DC"], [16, 20, "José María Aznar"],
                                            [21, 26, "Paris, France"]]


@pytest.mark.parametrize("header, doc_id, split", [
    ("-DOCSTART- (1163testb SOCCER)", "1163testb SOCCER", "testb"),
    ("-DOCSTART- (207 SOCCER)", "207 SOCCER", "train"),
    ("-DOCSTART- (5 testa)", "5 testa", "train"),  # only the first word names the split
    ("-DOCSTART- demo document", "demo document", None),  # no AIDA id: no split
])
def test_document_ids_and_splits(tmp_path, header, doc_id, split):
    (doc,) = read_aida(str(write_lines(tmp_path / "a.tsv", [header, "word"])))
    assert (doc.id, doc.split, doc.tokens, doc.sentences) == (doc_id, split, ["word"], [(0, 1)])


def test_yago_title_decodes_surrogate_pairs():
    assert yago_title("Caf\\u00e9_\\ud83d\\ude00_x") == "Café \U0001F600 x"


@pytest.mark.parametrize("line_number, replacement, message", [
    (11, T.join(["Blackburn", "I", "Peter Black", "--NME--"]), "I line of mention 'Peter Black' without a preceding B"),
    (7, T.join([".", "I", "German", "Germany", URL + "Germany", "11867", "/m/0345h"]),
     "without a preceding B"),  # line 6's token outside mentions ended line 5's mention
    (10, T.join(["Peter", "I", "Peter Blackburn", "--NME--"]), "without a preceding B"),  # after a sentence break
    (5, T.join(["German", "B", "German"]), "mention line has 3 columns; expected token, B/I, full mention"),
    (5, T.join(["German", "X", "German", "--NME--"]), "second column is 'X'; expected B or I"),
    (3, T.join(["EU", "B", "EU", "--NME--", URL + "EU"]), "expected nothing after --NME--"),
    (5, T.join(["German", "B", "German", "Germany", "http://de.wikipedia.org/wiki/Deutschland", "1"]),
     "is not an English Wikipedia URL"),
    (5, T.join(["German", "B", "German", "Germany", URL + "Germany", "x11867"]), "Wikipedia id 'x11867' is not"),
    (5, T.join(["German", "B", "German", "Germany", URL + "Germany", "1", "/m/1", "extra"]), "expected at most 7"),
    (4, T.join(["", "B", "", "--NME--"]), "empty token"),
    (12, "-DOCSTART- (1 EU)", "duplicate document id '1 EU', first at line 1"),
    (12, "-DOCSTART- ()", r"expected '-DOCSTART- \(document id\)'"),
])
def test_errors_name_file_and_line(tmp_path, line_number, replacement, message):
    lines = list(AIDA)
    lines[line_number - 1] = replacement
    with pytest.raises(ValueError, match=rf"bad\.tsv:{line_number}: .*{message}"):
        read_aida(str(write_lines(tmp_path / "bad.tsv", lines)))


def test_full_mention_must_match_tokens(tmp_path):
    lines = ["-DOCSTART- (1 EU)", T.join(["Peter", "B", "Peter Blackburn", "--NME--"]), "Blackburn"]
    with pytest.raises(ValueError, match=r"bad\.tsv:2: full mention 'Peter Blackburn' does not match its tokens 'Peter'"):
        read_aida(str(write_lines(tmp_path / "bad.tsv", lines)))


def test_tokens_before_the_first_docstart(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.tsv:2: token before the first '-DOCSTART- \(document id\)'"):
        read_aida(str(write_lines(tmp_path / "bad.tsv", ["", "EU", "-DOCSTART- (1 EU)"])))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_gold_file_scores_with_inkb(tmp_path, capsys):
    tsv, gold = write_lines(tmp_path / "aida.tsv", AIDA), tmp_path / "gold.jsonl"
    title_map = write_lines(tmp_path / "map.tsv", ["Paris\tParis, France"])
    main([str(tsv), "--out", str(gold), "--title_map", str(title_map)])
    assert json.loads(capsys.readouterr().out) == {"documents": 2, "links": 5, "out": str(gold)}
    records = read_jsonl(gold)
    assert records == [gold_links(d) for d in read_aida(str(tsv), {"Paris": "Paris, France"})]
    assert records[1]["links"][3] == [21, 26, "Paris, France"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aida.tsv", "gold.jsonl", "map.tsv"]  # no temp file left

    assert score_inkb_files(str(gold), str(gold))["f1"] == 1.0
    records[1]["links"].pop(0)  # 4 of the 5 gold links predicted, nothing wrong: P 1, R 4/5
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    scores = score_inkb_files(str(gold), str(pred))
    assert (scores["precision"], scores["recall"], scores["false_negatives"]) == (1.0, 0.8, 1)
    assert scores["f1"] == pytest.approx(2 * 0.8 / 1.8)


def test_cli_split_and_errors(tmp_path, capsys):
    tsv, out = write_lines(tmp_path / "aida.tsv", AIDA), tmp_path / "testa.jsonl"
    main([str(tsv), "--out", str(out), "--split", "testa"])
    assert [r["id"] for r in read_jsonl(out)] == ["947testa CRICKET"]
    assert json.loads(capsys.readouterr().out)["links"] == 4
    bad = write_lines(tmp_path / "bad.tsv", ["word"])
    with pytest.raises(SystemExit, match=r"error: .*bad\.tsv:1: token before"):
        main([str(bad), "--out", str(tmp_path / "never.jsonl")])
    assert not (tmp_path / "never.jsonl").exists()
