"""Entity KB from a tiny KILT knowledge source (descriptions as EntQA builds them, title lookup, errors naming
file:line) and title maps (TSV and EntQA's JSON object)."""
import json

import pytest

from kipjax.data.entity_kb import EntityKB, description, read_kilt_entities, read_title_map

PAGES = [
    {"_id": "11867", "wikipedia_id": "11867", "wikipedia_title": "Germany",
     "text": ["Germany\n", "Germany is a country\nin  Europe.\n", "  ", "Section::::History.\n", "It is old.\n"]},
    {"wikipedia_id": "22989", "wikipedia_title": "Paris", "text": ["Paris\n", "Paris is a city."]},
    {"wikipedia_id": "7", "wikipedia_title": "Stub", "text": ["Stub\n"]},  # only the title paragraph
    {"wikipedia_id": "8", "wikipedia_title": "Empty", "text": []},
]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_read_kilt_entities(tmp_path):
    path = write_lines(tmp_path / "kilt_knowledgesource.json", [json.dumps(p) for p in PAGES])
    kb = read_kilt_entities(path)
    assert kb == EntityKB(
        titles=["Germany", "Paris", "Stub", "Empty"],
        descriptions=["Germany is a country in Europe. Section::::History. It is old.", "Paris is a city.",
                      "Stub", ""],
        wikipedia_ids=["11867", "22989", "7", "8"])
    assert len(kb) == 4 and kb.index_of("Paris") == 1 and kb.index_of("Empty") == 3
    with pytest.raises(KeyError, match=r"title 'Berlin' is not in the entity KB \(4 entities\)"):
        kb.index_of("Berlin")
    # At most two paragraphs after the title: Germany's second is blank, so only its first remains.
    assert read_kilt_entities(path, max_paragraphs=2).descriptions == [
        "Germany is a country in Europe.", "Paris is a city.", "Stub", ""]
    assert read_kilt_entities(path, max_paragraphs=0).descriptions == ["", "", "", ""]


def test_description():
    assert description(["T", " a\tb ", "", "c\n\nd "]) == "a b c d"
    assert description(["T", "a", "b", "c"], max_paragraphs=2) == "a b"


@pytest.mark.parametrize("line, message", [
    (json.dumps({**PAGES[1], "wikipedia_id": "99"}), r"kb\.json:4: duplicate wikipedia_title 'Paris', first at .*kb\.json:2"),
    (json.dumps({**PAGES[1], "wikipedia_title": "Paris (band)"}),
     r"kb\.json:4: duplicate wikipedia_id '22989', first at .*kb\.json:2"),
    (json.dumps({"wikipedia_id": "9", "text": []}), r"kb\.json:4: missing field 'wikipedia_title'"),
    (json.dumps({"wikipedia_id": 9, "wikipedia_title": "N", "text": []}), r"kb\.json:4: field 'wikipedia_id' must be str"),
    (json.dumps({"wikipedia_id": "9", "wikipedia_title": "N", "text": "x"}), r"kb\.json:4: field 'text' must be list"),
    (json.dumps({"wikipedia_id": "9", "wikipedia_title": "N", "text": ["N", 3]}), r"kb\.json:4: text\[1\] must be str"),
    ('{"wikipedia_id": "9"', r"kb\.json:4: invalid JSON"),
])
def test_read_kilt_entities_errors(tmp_path, line, message):
    lines = [json.dumps(PAGES[0]), json.dumps(PAGES[1]), "", line]  # line 3 blank: line numbers still count it
    with pytest.raises(ValueError, match=message):
        read_kilt_entities(write_lines(tmp_path / "kb.json", lines))


def test_entity_kb_checks():
    with pytest.raises(ValueError, match="differ in length: 2, 1, 2"):
        EntityKB(["a", "b"], ["x"], ["1", "2"])
    with pytest.raises(ValueError, match="duplicate title 'a' at entities 0 and 2"):
        EntityKB(["a", "b", "a"], ["", "", ""], ["1", "2", "3"])
    with pytest.raises(ValueError, match="max_paragraphs must be >= 0"):
        read_kilt_entities("unused.json", max_paragraphs=-1)


def test_read_title_map(tmp_path):
    tsv = write_lines(tmp_path / "map.tsv", ["People's Republic of China\tChina", "", "Statoil\tEquinor "])
    assert read_title_map(tsv) == {"People's Republic of China": "China", "Statoil": "Equinor"}
    # EntQA's title_map.json layout: one JSON object, non-ASCII titles as \u escapes.
    entqa = tmp_path / "title_map.json"
    entqa.write_text('{"France T\\u00e9l\\u00e9com": "Orange S.A.", "Burma": "Myanmar"}', encoding="utf-8")
    assert read_title_map(str(entqa)) == {"France Télécom": "Orange S.A.", "Burma": "Myanmar"}


@pytest.mark.parametrize("lines, message", [
    (["a\tb", "c"], r"map\.tsv:2: 1 tab-separated columns; expected 'old title<TAB>new title'"),
    (["a\tb\tc"], r"map\.tsv:1: 3 tab-separated columns"),
    (["a\tb", " \tb"], r"map\.tsv:2: empty old title"),
    (["a\t "], r"map\.tsv:1: empty new title"),
    (["a\tb", "", "a\tc"], r"map\.tsv:3: title 'a' mapped again, first at line 1"),
])
def test_read_title_map_errors(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        read_title_map(write_lines(tmp_path / "map.tsv", lines))


@pytest.mark.parametrize("text, message", [
    ('{"a": "b",\n"c": }', r"map\.json:2: invalid JSON"),
    ('["a", "b"]', r"map\.json: expected a JSON object \{old title: new title\} of strings"),
    ('{"a": 1}', r"map\.json: expected a JSON object"),
    ('{"a": ""}', r"map\.json: key 'a': empty new title"),
])
def test_read_title_map_json_errors(tmp_path, text, message):
    (tmp_path / "map.json").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_title_map(str(tmp_path / "map.json"))
