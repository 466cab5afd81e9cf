"""Atlas passage JSON lines to DPR's TSV, read back with kipjax's own reader: ids, titles and texts exactly as
written out by hand below (sections prepended, tabs and line breaks as spaces, quotes and unicode kept), errors
naming file:line, atomic replacement of the output, --limit and the command line."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kipjax.data.atlas_passages import convert, main
from kipjax.data.kilt import read_passages

TEXTS = [
    {"id": "0", "title": "Bermuda Triangle", "section": "Compass variations",
     "text": " Compass problems are one\tof the\ncited phrases."},
    {"id": "1", "title": 'Say "Hi"\tagain', "section": "",
     "text": 'He said "hello",\r\nthen left.\u2028The end\x85'},
    {"id": "2", "title": "Zürich", "text": "Zürich liegt am Zürichsee. 東京 🚀"},  # no section field
    {"id": "3", "title": "", "section": None, "text": "A passage without a page title."},
]
INFOBOXES = [
    {"id": "100", "title": "Bermuda Triangle", "section": "Infobox", "text": "location: North Atlantic\n"},
    {"id": 101, "title": "Zürich", "section": "Infobox\tcity", "text": "country: Switzerland", "extra": [1]},
]
# (id, title, text) as the module docstring defines them, written out independently.
WITH_SECTIONS = [
    ("0", "Bermuda Triangle", "Compass variations: Compass problems are one of the cited phrases."),
    ("1", 'Say "Hi" again', 'He said "hello",  then left. The end'),
    ("2", "Zürich", "Zürich liegt am Zürichsee. 東京 🚀"),
    ("3", "", "A passage without a page title."),
    ("100", "Bermuda Triangle", "Infobox: location: North Atlantic"),
    ("101", "Zürich", "Infobox city: country: Switzerland"),
]
WITHOUT_SECTIONS = [
    ("0", "Bermuda Triangle", "Compass problems are one of the cited phrases."),
    *WITH_SECTIONS[1:4],  # no section to drop
    ("100", "Bermuda Triangle", "location: North Atlantic"),
    ("101", "Zürich", "country: Switzerland"),
]


def write_jsonl(path: Path, records, blank_lines=()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for at in blank_lines:
        lines.insert(at, "")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def inputs(tmp_path):
    return [write_jsonl(tmp_path / "text-list-100-sec.jsonl", TEXTS),
            write_jsonl(tmp_path / "infobox.jsonl", INFOBOXES)]


def read_back(path):
    corpus = read_passages(path)
    return list(zip([str(i) for i in corpus.ids], corpus.titles.tolist(), corpus.texts.tolist()))


@pytest.mark.parametrize("include_section, expected", [(True, WITH_SECTIONS), (False, WITHOUT_SECTIONS)])
def test_round_trip_through_the_reader(tmp_path, inputs, include_section, expected):
    out = tmp_path / "psgs.tsv"
    assert convert(inputs, out, include_section=include_section) == 6
    assert read_back(out) == expected
    lines = out.read_text(encoding="utf-8").splitlines()  # splits on every line break sanitise removes
    assert lines[0] == "id\ttext\ttitle" and len(lines) == 7
    assert lines[2] == '1\t"He said ""hello"",  then left. The end"\t"Say ""Hi"" again"'  # csv quoting, for "
    assert sorted(os.listdir(tmp_path)) == ["infobox.jsonl", "psgs.tsv", "text-list-100-sec.jsonl"]


def test_duplicate_id_across_files_names_both_lines(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS[:2])
    b = write_jsonl(tmp_path / "b.jsonl", [INFOBOXES[0], dict(INFOBOXES[1], id="1")], blank_lines=[0])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(b))}:3: duplicate passage id '1', first at "
                                         rf"{re.escape(str(a))}:2; ids must be unique"):
        convert([a, b], tmp_path / "out.tsv")
    assert not (tmp_path / "out.tsv").exists()


def test_duplicate_string_ids(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [dict(TEXTS[0], id="infobox-7"), dict(TEXTS[1], id="infobox-7")])
    with pytest.raises(ValueError, match=rf"{re.escape(str(a))}:2: duplicate passage id 'infobox-7', first at "
                                         rf"{re.escape(str(a))}:1"):
        convert([a], tmp_path / "out.tsv")


@pytest.mark.parametrize("line, message", [
    ('{"id": "9", "title": "T", "text": ', r"bad\.jsonl:3: invalid JSON .*expected one JSON object per line"),
    ('["9", "T", "x"]', r"bad\.jsonl:3: expected a JSON object, got list"),
    ('{"id": "9", "text": "x"}', r"bad\.jsonl:3: missing field 'title'; expected an Atlas passage \{\"id\": str"),
    ('{"title": "T"}', r"bad\.jsonl:3: missing fields 'id', 'text'; expected an Atlas passage"),
    ('{"id": "9", "title": "T", "text": 5}', r"bad\.jsonl:3: field 'text' must be str, got int 5"),
    ('{"id": "9", "title": null, "text": "x"}', r"bad\.jsonl:3: field 'title' must be str, got NoneType"),
    ('{"id": "9", "title": "T", "text": "x", "section": 1}', r"bad\.jsonl:3: field 'section' must be str"),
    ('{"id": 1.5, "title": "T", "text": "x"}', r"bad\.jsonl:3: field 'id' must be str or int, got float"),
    ('{"id": "", "title": "T", "text": "x"}', r"bad\.jsonl:3: field 'id' must be a non-empty string"),
    ('{"id": "9\\t1", "title": "T", "text": "x"}', r"bad\.jsonl:3: field 'id' must be .* without tabs"),
    ('{"id": " 9", "title": "T", "text": "x"}', r"bad\.jsonl:3: field 'id' must be .* surrounding whitespace"),
])
def test_bad_input_names_file_and_line(tmp_path, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TEXTS[0]) + "\n\n" + line + "\n", encoding="utf-8")  # line 2 blank
    with pytest.raises(ValueError, match=message):
        convert([bad], tmp_path / "out.tsv")


@pytest.mark.parametrize("failure", ["bad json", "duplicate id"])
def test_failure_leaves_existing_output_untouched(tmp_path, inputs, failure):
    out = tmp_path / "psgs.tsv"
    out.write_text("id\ttext\ttitle\n7\told text\tOld\n", encoding="utf-8")
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": ' if failure == "bad json" else json.dumps(TEXTS[0]), encoding="utf-8")
    with pytest.raises(ValueError, match="invalid JSON" if failure == "bad json" else "duplicate passage id '0'"):
        convert(inputs + [bad], out)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "infobox.jsonl", "psgs.tsv", "text-list-100-sec.jsonl"]
    convert(inputs, out)  # a successful run replaces it
    assert read_back(out) == WITH_SECTIONS


def test_limit(tmp_path, inputs):
    out = tmp_path / "psgs.tsv"
    assert convert(inputs, out, limit=2) == 2 and read_back(out) == WITH_SECTIONS[:2]
    assert convert(inputs, out, limit=5) == 5 and read_back(out) == WITH_SECTIONS[:5]  # into the second file
    assert convert(inputs, out, limit=99) == 6
    assert convert(inputs, out, limit=0) == 0 and len(read_passages(out)) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TEXTS[0]) + "\n{not json\n", encoding="utf-8")
    assert convert([bad], out, limit=1) == 1  # stops before reading the line it does not need
    with pytest.raises(ValueError, match="limit must be >= 0"):
        convert(inputs, out, limit=-1)


def test_bad_arguments(tmp_path, inputs):
    with pytest.raises(ValueError, match="no input files"):
        convert([], tmp_path / "out.tsv")
    with pytest.raises(ValueError, match="an input file is given twice"):
        convert([inputs[0], inputs[1], tmp_path / "." / inputs[0].name], tmp_path / "out.tsv")
    assert not (tmp_path / "out.tsv").exists()


def test_main(tmp_path, inputs, capsys):
    out = tmp_path / "sub" / "psgs.tsv"
    main(["--jsonl", *map(str, inputs), "--out", str(out), "--no_section", "--limit", "5"])
    assert json.loads(capsys.readouterr().out) == {"passages": 5, "out": str(out), "sections": False}
    assert read_back(out) == WITHOUT_SECTIONS[:5]
    with pytest.raises(SystemExit, match=r"^error: .*missing\.jsonl"):
        main(["--jsonl", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert read_back(out) == WITHOUT_SECTIONS[:5]


def test_command_line(tmp_path, inputs):
    out = tmp_path / "psgs.tsv"
    done = subprocess.run([sys.executable, "-m", "kipjax.data.atlas_passages", "--jsonl", *map(str, inputs),
                           "--out", str(out)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"passages": 6, "out": str(out), "sections": True}
    assert read_back(out) == WITH_SECTIONS
