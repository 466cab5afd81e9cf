"""Zeshel reader: fields, inclusive spans, and a ValueError naming file and line for every malformed record."""
import json

import pytest

from kipjax.data.zeshel import Document, Mention, index_documents, mention_surface, read_documents, read_mentions

KEEP = {"document_id": "D1", "title": "Dorath Keep", "text": "Dorath Keep is a ruined keep ruled by Vel Dorath ."}
KNIGHT = {"document_id": "D2", "title": "Vel Dorath", "text": "Vel Dorath is a bold knight of Dorath Keep ."}
HARBOR = {"document_id": "E1", "title": "Sundsel Harbor", "text": "Sundsel Harbor is a quiet harbor ."}
# "Vel Dorath" is tokens 8..9 of KEEP's text (0-based, end inclusive).
GOOD_MENTION = {"mention_id": "M1", "context_document_id": "D1", "corpus": "ashen", "start_index": 8,
                "end_index": 9, "text": "Vel Dorath", "label_document_id": "D2", "category": "HIGH_OVERLAP"}


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def make_root(tmp_path, mention_lines, ashen_lines=None):
    write_lines(tmp_path / "documents" / "ashen.json", ashen_lines or [json.dumps(KEEP), json.dumps(KNIGHT)])
    write_lines(tmp_path / "documents" / "coral.json", [json.dumps(HARBOR)])
    write_lines(tmp_path / "mentions" / "train.json", mention_lines)
    return tmp_path


def test_read_documents_by_world_in_file_order(tmp_path):
    documents = read_documents(make_root(tmp_path, []))
    assert list(documents) == ["ashen", "coral"]
    assert documents["ashen"] == [Document("D1", "Dorath Keep", KEEP["text"], "ashen"),
                                  Document("D2", "Vel Dorath", KNIGHT["text"], "ashen")]
    assert set(index_documents(documents)) == {"D1", "D2", "E1"}


def test_read_mentions_fields_and_inclusive_span(tmp_path):
    second = dict(GOOD_MENTION, mention_id="M2", context_document_id="D2", start_index=0, end_index=0,
                  text="Vel", category="AMBIGUOUS_SUBSTRING")
    del second["text"]  # `text` is optional
    root = make_root(tmp_path, [json.dumps(GOOD_MENTION), "", json.dumps(second)])  # blank lines are not records
    mentions = read_mentions(root, "train")
    assert mentions[0] == Mention("M1", "D1", 8, 9, "D2", "ashen", "HIGH_OVERLAP", "Vel Dorath")
    assert mentions[1].text is None
    by_id = index_documents(read_documents(root))
    assert mention_surface(mentions[0], by_id["D1"]) == "Vel Dorath"  # end index 9 is included
    assert mention_surface(mentions[1], by_id["D2"]) == "Vel"  # a one-token span has start == end


def test_span_ending_on_the_last_token_is_valid(tmp_path):
    last = dict(GOOD_MENTION, start_index=10, end_index=10, text=".")
    assert read_mentions(make_root(tmp_path, [json.dumps(last)]), "train")[0].end_index == 10


DROP = object()  # marks a field to leave out


def mention(**changes):
    record = dict(GOOD_MENTION, **changes)
    return json.dumps({k: v for k, v in record.items() if v is not DROP})


MALFORMED_MENTIONS = {
    "bad json": ('{"mention_id": "M1", ', "invalid JSON"),
    "not an object": ('["M1", "D1"]', "expected a JSON object, got list"),
    "missing field": (mention(label_document_id=DROP), "missing field 'label_document_id'"),
    "missing corpus": (mention(corpus=DROP), "missing field 'corpus'"),
    "wrong type": (mention(start_index="8"), "field 'start_index' must be int, got str"),
    "bool is not int": (mention(end_index=True), "field 'end_index' must be int, got bool"),
    "float index": (mention(start_index=8.0), "field 'start_index' must be int, got float"),
    "text not str": (mention(text=3), "field 'text' must be str"),
    "end past document": (mention(start_index=10, end_index=11, text=DROP), "end_index < 11"),
    "negative start": (mention(start_index=-1, text=DROP), "0 <= start_index"),
    "start after end": (mention(start_index=9, end_index=8, text=DROP), "start_index <= end_index"),
    "label unknown": (mention(label_document_id="NOPE"), "label_document_id 'NOPE' is not a document"),
    "context unknown": (mention(context_document_id="NOPE"), "context_document_id 'NOPE' is not a document"),
    "label in another world": (mention(label_document_id="E1"), "belongs to world 'coral'"),
    "corpus not the documents' world": (mention(corpus="coral"), "the mention's corpus is 'coral'"),
    "text disagrees with span": (mention(text="Dorath Keep"), "field 'text' is 'Dorath Keep' but tokens [8, 9]"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_MENTIONS))
def test_malformed_mention_names_file_and_line(tmp_path, case):
    line, expected = MALFORMED_MENTIONS[case]
    root = make_root(tmp_path, [json.dumps(dict(GOOD_MENTION, mention_id="M0")), line])
    with pytest.raises(ValueError) as error:
        read_mentions(root, "train")
    message = str(error.value)
    assert f"{tmp_path / 'mentions' / 'train.json'}:2:" in message
    assert expected in message


def test_duplicate_mention_id(tmp_path):
    root = make_root(tmp_path, [json.dumps(GOOD_MENTION), json.dumps(GOOD_MENTION)])
    with pytest.raises(ValueError, match=r"train\.json:2: duplicate mention_id 'M1', first at line 1"):
        read_mentions(root, "train")


MALFORMED_DOCUMENTS = {
    "bad json": ("{document_id: D3}", "invalid JSON"),
    "missing title": (json.dumps({"document_id": "D3", "text": "x"}), "missing field 'title'"),
    "text not str": (json.dumps({"document_id": "D3", "title": "T", "text": ["x"]}), "field 'text' must be str"),
    "id not str": (json.dumps({"document_id": 3, "title": "T", "text": "x"}), "field 'document_id' must be str"),
    "duplicate id": (json.dumps(dict(HARBOR, title="Again")), "duplicate document_id 'E1', first defined at"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_DOCUMENTS))
def test_malformed_document_names_file_and_line(tmp_path, case):
    line, expected = MALFORMED_DOCUMENTS[case]
    # coral.json is read after ashen.json, so a duplicate of coral's E1 in ashen.json is caught in coral.json.
    root = make_root(tmp_path, [], ashen_lines=[json.dumps(KEEP), line] if case != "duplicate id" else None)
    if case == "duplicate id":
        write_lines(tmp_path / "documents" / "coral.json", [json.dumps(HARBOR), line])
    with pytest.raises(ValueError) as error:
        read_documents(root)
    world = "coral" if case == "duplicate id" else "ashen"
    assert f"{tmp_path / 'documents' / (world + '.json')}:2:" in str(error.value)
    assert expected in str(error.value)


def test_missing_layout_and_unknown_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="documents"):
        read_documents(tmp_path)
    root = make_root(tmp_path, [])
    with pytest.raises(FileNotFoundError, match=r"mentions/val\.json"):
        read_mentions(root, "val")
    with pytest.raises(ValueError, match="unknown Zeshel split 'dev'"):
        read_mentions(root, "dev")
