"""The linker's document readers: AIDA TSV, NIF Turtle and JSON lines become the same gold-link records."""
import json

import pytest

from kipjax.data import aida, nif
from kipjax.data.demo_entqa import demo_entqa_path
from kipjax.methods.entqa.link import read_documents


def test_aida_and_nif_files_read_as_their_gold_links():
    testb = demo_entqa_path("aida_testb.tsv")
    assert read_documents(testb) == [aida.gold_links(d) for d in aida.read_aida(testb)]
    ttl = demo_entqa_path("nif_test.ttl")
    records = read_documents(ttl)
    assert len(records) == 20 and records == [nif.gold_links(d) for d in nif.read_nif(ttl)]
    assert all(text[s:e] for r in records for text in [r["text"]] for s, e, _ in r["links"])


def test_json_lines_may_carry_gold_links_and_bad_lines_are_named(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "Varn beat Tolbek"}) + "\n\n"
                    + json.dumps({"id": "b", "text": "Varn", "links": [[0, 4, "Varn"]]}) + "\n")
    assert read_documents(str(path)) == [{"id": "a", "text": "Varn beat Tolbek", "links": []},
                                         {"id": "b", "text": "Varn", "links": [[0, 4, "Varn"]]}]
    path.write_text(json.dumps({"id": "a", "text": "Varn", "links": [[0, 4]]}) + "\n")
    with pytest.raises(ValueError, match=r"docs.jsonl:1: 'links' must be a list of \[start, end, title\]"):
        read_documents(str(path))
    path.write_text(json.dumps({"text": "Varn"}) + "\n")
    with pytest.raises(ValueError, match=r"docs.jsonl:1: missing field 'id'"):
        read_documents(str(path))
