"""DocRED / Re-DocRED readers: documents, relation maps and submissions, on tiny files; malformed input names the
file, the document (index and title) and the field."""
import copy
import json

import pytest

from kipjax.data.docred import (Entity, Fact, Mention, Prediction, read_candidate_pairs, read_docred,
                                read_predictions, read_rel2id, read_rel_info, write_candidate_pairs,
                                write_predictions)

DOC = {
    "title": "Seine",
    "sents": [["The", "Seine", "flows", "through", "Paris", "."], ["It", "ends", "in", "Le", "Havre", "."]],
    "vertexSet": [
        [{"name": "Seine", "sent_id": 0, "pos": [1, 2], "type": "LOC"},
         {"name": "It", "sent_id": 1, "pos": [0, 1], "type": "LOC"}],
        [{"name": "Paris", "sent_id": 0, "pos": [4, 5], "type": "LOC"}],
        [{"name": "Le Havre", "sent_id": 1, "pos": [3, 5], "type": "LOC"}],
    ],
    "labels": [{"h": 0, "t": 1, "r": "P17", "evidence": [0]},
               {"h": 0, "t": 2, "r": "P403", "evidence": [1, 0, 1]}],
    "extra_field": "ignored",
}


def write_json(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return path


def test_read_docred_document(tmp_path):
    unlabeled = {k: v for k, v in DOC.items() if k != "labels"}
    first, second = read_docred(write_json(tmp_path, "dev.json", [DOC, unlabeled]))
    assert first.title == "Seine" and first.labeled and first.sents == DOC["sents"]
    assert first.entities[0] == Entity((Mention("Seine", 0, (1, 2), "LOC"), Mention("It", 1, (0, 1), "LOC")))
    assert first.entities[0].names == ("Seine", "It")
    # Evidence keeps the file's order and repeats (the official evaluation counts repeats in its denominator).
    assert first.facts == [Fact(0, 1, "P17", (0,)), Fact(0, 2, "P403", (1, 0, 1))]
    assert first.sentence_starts == [0, 6]
    assert [first.tokens[slice(*first.mention_span(m))] for e in first.entities for m in e.mentions] == [
        ["Seine"], ["It"], ["Paris"], ["Le", "Havre"]]
    assert not second.labeled and second.facts == []


def test_relation_vocabulary(tmp_path):
    rel2id = read_rel2id(write_json(tmp_path, "rel2id.json", {"P17": 2, "Na": 0, "P403": 1}))
    assert rel2id == {"Na": 0, "P403": 1, "P17": 2}
    assert read_rel_info(write_json(tmp_path, "rel_info.json", {"P17": "country", "P403": "mouth of the watercourse"}),
                         rel2id)["P17"] == "country"
    assert len(read_docred(write_json(tmp_path, "dev.json", [DOC]), relations=rel2id)[0].facts) == 2
    with pytest.raises(ValueError, match=r"dev\.json: document 0 \('Seine'\): labels\[1\]\.r 'P403' is not a relation"):
        read_docred(tmp_path / "dev.json", relations={"Na", "P17"})
    with pytest.raises(ValueError, match="no name for relation"):
        read_rel_info(write_json(tmp_path, "info.json", {"P17": "country"}), rel2id)


@pytest.mark.parametrize("rel2id, message", [
    ({"Na": 1, "P17": 0}, "'Na' must have id 0"),
    ({"Na": 0, "P17": 2}, r"ids must be 0\.\.1"),
    ({"Na": 0, "P17": 1, "P6": 1}, r"ids must be 0\.\.2"),
    ({"Na": 0, "P17": "1"}, "the id of 'P17' must be an int"),  # an early DocRED release had string ids
])
def test_rel2id_errors(tmp_path, rel2id, message):
    with pytest.raises(ValueError, match=message):
        read_rel2id(write_json(tmp_path, "rel2id.json", rel2id))


def with_change(path, value):
    """A deep copy of DOC with the field at `path` (keys and indices) set to `value`, or deleted when None."""
    doc = copy.deepcopy(DOC)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value, message", [
    (("title",), None, r": missing field 'title'"),
    (("sents",), None, r" \('Seine'\): missing field 'sents'"),
    (("sents", 1), "It ends", r"sents\[1\] must be a list of token strings"),
    (("vertexSet", 2), [], r"vertexSet\[2\] must be a non-empty list of mentions"),
    (("vertexSet", 0, 1, "name"), None, r"vertexSet\[0\]\[1\]: missing field 'name'"),
    (("vertexSet", 0, 1, "type"), 3, r"vertexSet\[0\]\[1\]: field 'type' must be str"),
    (("vertexSet", 1, 0, "sent_id"), 2,
     r"vertexSet\[1\]\[0\]\.sent_id 2 is not a sentence index \(the document has 2 sentences"),
    (("vertexSet", 2, 0, "pos"), [5, 4], r"vertexSet\[2\]\[0\]\.pos \[5, 4\] is not a valid span of sentence 1 "
                                         r"\(6 tokens\)"),
    (("vertexSet", 2, 0, "pos"), [3, 7], r"vertexSet\[2\]\[0\]\.pos \[3, 7\] is not a valid span"),
    (("vertexSet", 2, 0, "pos"), [3], r"vertexSet\[2\]\[0\]\.pos \[3\] is not a valid span"),
    (("labels", 1, "t"), 3, r"labels\[1\]\.t 3 is not an entity index \(the document has 3 entities"),
    (("labels", 0, "h"), True, r"labels\[0\]: field 'h' must be int, got bool"),
    (("labels", 0, "r"), None, r"labels\[0\]: missing field 'r'"),
    (("labels", 0, "evidence"), None, r"labels\[0\]: missing field 'evidence'"),
    (("labels", 0, "evidence"), [0, 2], r"labels\[0\]\.evidence \[2\] are not sentence indices"),
    (("labels",), {"h": 0}, r"field 'labels' must be list, got dict"),
])
def test_malformed_document_names_file_document_and_field(tmp_path, path, value, message):
    path_to_file = write_json(tmp_path, "dev.json", [DOC, with_change(path, value)])
    with pytest.raises(ValueError, match=r"dev\.json: document 1\b.*" + message):
        read_docred(path_to_file)


def test_malformed_files(tmp_path):
    bad = tmp_path / "train_annotated.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match=r"train_annotated\.json: invalid JSON"):
        read_docred(bad)
    with pytest.raises(ValueError, match=r"train_annotated\.json: expected a JSON list, got dict"):
        read_docred(write_json(tmp_path, "train_annotated.json", DOC))
    with pytest.raises(ValueError, match=r"document 0: expected a document object, got list"):
        read_docred(write_json(tmp_path, "train_annotated.json", [[DOC]]))


def test_predictions_round_trip(tmp_path):
    predictions = [Prediction("Seine", 0, 1, "P17"), Prediction("Seine", 0, 2, "P403", (1, 0)),
                   Prediction("Seine", 0, 1, "P17"), Prediction("Café", 2, 0, "P17", ())]
    path = tmp_path / "result.json"
    write_predictions(path, predictions)
    assert read_predictions(path) == predictions  # order, duplicates and absent evidence kept
    assert json.loads(path.read_text())[:2] == [{"title": "Seine", "h_idx": 0, "t_idx": 1, "r": "P17"},
                                                {"title": "Seine", "h_idx": 0, "t_idx": 2, "r": "P403",
                                                 "evidence": [1, 0]}]
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


@pytest.mark.parametrize("record, message", [
    ({"h_idx": 0, "t_idx": 1, "r": "P17"}, "missing field 'title'"),
    ({"title": "Seine", "h_idx": "0", "t_idx": 1, "r": "P17"}, "field 'h_idx' must be int, got str"),
    ({"title": "Seine", "h_idx": 0, "t_idx": 1, "r": 17}, "field 'r' must be str"),
    ({"title": "Seine", "h_idx": 0, "t_idx": 1, "r": "P17", "evidence": [0.5]},
     "field 'evidence' must be a list of ints"),
    (["Seine", 0, 1, "P17"], "expected a prediction object, got list"),
])
def test_malformed_predictions(tmp_path, record, message):
    path = write_json(tmp_path, "result.json", [{"title": "Seine", "h_idx": 0, "t_idx": 1, "r": "P17"}, record])
    with pytest.raises(ValueError, match=r"result\.json: prediction 1: " + message):
        read_predictions(path)


def test_candidate_pairs_round_trip(tmp_path):
    other = {**DOC, "title": "Rhine"}
    docs = read_docred(write_json(tmp_path, "dev.json", [DOC, other]))
    write_candidate_pairs(tmp_path / "candidates.json", docs, [[(0, 1), (2, 0)], []])
    assert json.loads((tmp_path / "candidates.json").read_text()) == [
        {"title": "Seine", "h_idx": 0, "t_idx": 1}, {"title": "Seine", "h_idx": 2, "t_idx": 0}]
    assert read_candidate_pairs(tmp_path / "candidates.json", docs) == [[(0, 1), (2, 0)], []]
    repeated = [{"title": "Rhine", "h_idx": 1, "t_idx": 2}] * 2 + [{"title": "Seine", "h_idx": 1, "t_idx": 0}]
    assert read_candidate_pairs(write_json(tmp_path, "c.json", repeated), docs) == [[(1, 0)], [(1, 2)]]


@pytest.mark.parametrize("record, message", [
    ({"title": "Loire", "h_idx": 0, "t_idx": 1}, "record 0: title 'Loire' is not a document"),
    ({"title": "Seine", "h_idx": 0, "t_idx": 3}, r"record 0 \('Seine'\): pair \(0, 3\) must be two different"),
    ({"title": "Seine", "h_idx": 1, "t_idx": 1}, r"pair \(1, 1\)"),
    ({"title": "Seine", "h_idx": "0", "t_idx": 1}, "record 0: field 'h_idx' must be int"),
    ({"title": "Seine", "t_idx": 1}, "record 0: missing field 'h_idx'"),
])
def test_malformed_candidate_pairs_name_the_record(tmp_path, record, message):
    docs = read_docred(write_json(tmp_path, "dev.json", [DOC]))
    with pytest.raises(ValueError, match=message):
        read_candidate_pairs(write_json(tmp_path, "c.json", [record]), docs)


def test_candidate_pairs_need_distinct_titles(tmp_path):
    docs = read_docred(write_json(tmp_path, "dev.json", [DOC, DOC]))
    with pytest.raises(ValueError, match="repeat the title 'Seine'"):
        read_candidate_pairs(write_json(tmp_path, "c.json", []), docs)
