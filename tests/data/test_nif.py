"""NIF reader and writer: a Turtle file written by hand in GERBIL's corpus layout (Wikipedia and DBpedia URIs,
a phrase without taIdentRef, a notInWiki URI), write -> read round trips, the written file's triples checked
with rdflib itself, errors, and the gold-link CLI read back by the InKB scorer."""
import json

import pytest
import rdflib

from kipjax.data.nif import NifDocument, entity_title, gold_links, main, read_nif, wikipedia_url, write_nif
from kipjax.metrics.el import score_inkb_files

PREFIXES = """\
@prefix nif:    <http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#> .
@prefix itsrdf: <http://www.w3.org/2005/11/its/rdf#> .
@prefix xsd:    <http://www.w3.org/2001/XMLSchema#> .
"""

# Two documents, doc10 before doc2 in the file; offsets hand-counted:
#   "Angela Merkel met Obama in Berlin."  Angela Merkel 0-13, Obama 18-23, Berlin 27-33
#   "Mars is sweet."                      Mars 0-4
GERBIL = PREFIXES + """
<http://example.org/doc10#char=0,34>
        a                     nif:String , nif:Context , nif:RFC5147String ;
        nif:beginIndex        "0"^^xsd:nonNegativeInteger ;
        nif:endIndex          "34"^^xsd:nonNegativeInteger ;
        nif:isString          "Angela Merkel met Obama in Berlin."^^xsd:string .

<http://example.org/doc10#char=18,23>
        a                     nif:String , nif:RFC5147String , nif:Phrase ;
        nif:anchorOf          "Obama"^^xsd:string ;
        nif:beginIndex        "18"^^xsd:nonNegativeInteger ;
        nif:endIndex          "23"^^xsd:nonNegativeInteger ;
        nif:referenceContext  <http://example.org/doc10#char=0,34> ;
        itsrdf:taIdentRef     <http://aksw.org/notInWiki/Obama> .

<http://example.org/doc10#char=0,13>
        a                     nif:String , nif:RFC5147String , nif:Phrase ;
        nif:anchorOf          "Angela Merkel"^^xsd:string ;
        nif:beginIndex        "0"^^xsd:nonNegativeInteger ;
        nif:endIndex          "13"^^xsd:nonNegativeInteger ;
        nif:referenceContext  <http://example.org/doc10#char=0,34> ;
        itsrdf:taIdentRef     <http://dbpedia.org/resource/Angela_Merkel> , <http://en.wikipedia.org/wiki/Angela_Merkel> .

<http://example.org/doc10#char=27,33>
        a                     nif:String , nif:RFC5147String , nif:Phrase ;
        nif:anchorOf          "Berlin"^^xsd:string ;
        nif:beginIndex        "27"^^xsd:nonNegativeInteger ;
        nif:endIndex          "33"^^xsd:nonNegativeInteger ;
        nif:referenceContext  <http://example.org/doc10#char=0,34> .

<http://example.org/doc2#char=0,14>
        a                     nif:String , nif:Context , nif:RFC5147String ;
        nif:isString          "Mars is sweet." .

<http://example.org/doc2#char=0,4>
        a                     nif:Phrase ;
        nif:beginIndex        "0"^^xsd:nonNegativeInteger ;
        nif:endIndex          "4"^^xsd:nonNegativeInteger ;
        nif:referenceContext  <http://example.org/doc2#char=0,14> ;
        itsrdf:taIdentRef     <http://dbpedia.org/resource/Mars_%28chocolate_bar%29> .
"""

DOC2 = NifDocument("http://example.org/doc2#char=0,14", "Mars is sweet.", [(0, 4, "Mars (chocolate bar)")])
DOC10 = NifDocument("http://example.org/doc10#char=0,34", "Angela Merkel met Obama in Berlin.",
                    [(0, 13, "Angela Merkel"), (18, 23, None), (27, 33, None)])


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_gerbil_layout(tmp_path):
    # Sorted by context URI with digit runs as numbers; links by (begin, end); notInWiki and no taIdentRef: None.
    assert read_nif(write_text(tmp_path / "kore.ttl", GERBIL)) == [DOC2, DOC10]


def test_title_map_and_gold_links(tmp_path):
    doc2, doc10 = read_nif(write_text(tmp_path / "kore.ttl", GERBIL), {"Angela Merkel": "Merkel"})
    assert gold_links(doc10) == {"id": DOC10.id, "text": DOC10.text, "links": [[0, 13, "Merkel"]]}
    assert gold_links(doc2)["links"] == [[0, 4, "Mars (chocolate bar)"]]


@pytest.mark.parametrize("uri, title", [
    ("http://en.wikipedia.org/wiki/Angela_Merkel", "Angela Merkel"),
    ("https://en.wikipedia.org/wiki/AC/DC", "AC/DC"),
    ("http://dbpedia.org/resource/S%C3%A3o_Paulo", "São Paulo"),
    ("http://aksw.org/notInWiki/Someone", None),
    ("http://www.aksw.org/notInWiki/Someone", None),
    ("http://dbpedia.org/resource/NIL", None),
    ("http://en.wikipedia.org/wiki/--NME--", None),
])
def test_entity_title(uri, title):
    assert entity_title(uri) == title


DOCUMENTS = [
    NifDocument("http://example.org/a#char=0,32", 'São Paulo & "AC/DC"\nC# 100% rock',
                [(0, 9, "São Paulo"), (0, 3, None), (13, 18, "AC/DC"), (20, 22, "C Sharp (programming language)"),
                 (23, 27, "100% (album)")]),
    NifDocument("http://example.org/b#char=0,0", "", []),
]


def test_write_read_round_trip(tmp_path):
    path = str(tmp_path / "out.ttl")
    write_nif(DOCUMENTS, path)
    (a, b) = read_nif(path)
    assert a == NifDocument(DOCUMENTS[0].id, DOCUMENTS[0].text, sorted(DOCUMENTS[0].links, key=lambda l: l[:2]))
    assert b == DOCUMENTS[1]
    write_nif([a, b], path)  # a document read back writes the same graph again
    assert read_nif(path) == [a, b]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ttl"]  # no temp file left


def test_written_file_is_gerbil_layout(tmp_path):
    path = str(tmp_path / "out.ttl")
    write_nif([NifDocument("947testa CRICKET", "Sao Paulo won", [(0, 9, "São Paulo"), (10, 13, None)])], path)
    graph = rdflib.Graph().parse(path, format="turtle")
    nif = rdflib.Namespace("http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#")
    context = rdflib.URIRef("http://kipjax.example/doc/947testa%20CRICKET#char=0,13")
    phrase = rdflib.URIRef("http://kipjax.example/doc/947testa%20CRICKET#char=0,9")
    unlinked = rdflib.URIRef("http://kipjax.example/doc/947testa%20CRICKET#char=10,13")
    assert set(graph.objects(context, rdflib.RDF.type)) == {nif.String, nif.Context, nif.RFC5147String}
    assert graph.value(context, nif.isString) == rdflib.Literal("Sao Paulo won", datatype=rdflib.XSD.string)
    assert graph.value(context, nif.endIndex).toPython() == 13
    assert set(graph.objects(phrase, rdflib.RDF.type)) == {nif.String, nif.Phrase, nif.RFC5147String}
    assert graph.value(phrase, nif.referenceContext) == context
    assert str(graph.value(phrase, nif.anchorOf)) == "Sao Paulo"
    assert (graph.value(phrase, nif.beginIndex).toPython(), graph.value(phrase, nif.endIndex).toPython()) == (0, 9)
    its = rdflib.Namespace("http://www.w3.org/2005/11/its/rdf#")
    assert graph.value(phrase, its.taIdentRef) == rdflib.URIRef("http://en.wikipedia.org/wiki/S%C3%A3o_Paulo")
    assert graph.value(unlinked, its.taIdentRef) is None and graph.value(unlinked, nif.anchorOf) is not None
    assert read_nif(path) == [NifDocument(str(context), "Sao Paulo won", [(0, 9, "São Paulo"), (10, 13, None)])]


def test_wikipedia_url():
    assert wikipedia_url("Mars (chocolate bar)") == "http://en.wikipedia.org/wiki/Mars_(chocolate_bar)"
    assert wikipedia_url("C#") == "http://en.wikipedia.org/wiki/C%23"


@pytest.mark.parametrize("documents, message", [
    ([NifDocument("d", "abc", [(1, 5, "X")])], r"document 'd': link 1\.\.5 is outside 0\.\.3"),
    ([NifDocument("d", "abc", [(2, 2, "X")])], r"link 2\.\.2 is outside 0\.\.3, empty"),
    ([NifDocument("d", "abc", [(0, 1, "X"), (0, 1, "Y")])], "a second link of the same span"),
    ([NifDocument("d", "abc", []), NifDocument("http://kipjax.example/doc/d#x", "", [])],
     "documents 'd' and 'http://kipjax.example/doc/d#x' would share the URI"),
])
def test_write_errors(tmp_path, documents, message):
    with pytest.raises(ValueError, match=message):
        write_nif(documents, str(tmp_path / "out.ttl"))
    assert not (tmp_path / "out.ttl").exists()


CONTEXT = '<http://x/d#char=0,5> a nif:Context ; nif:isString "Hello" .\n'


def phrase(begin="0", end="5", extra=""):
    return (f'<http://x/d#char={begin},{end}> nif:referenceContext <http://x/d#char=0,5> ; '
            f'nif:beginIndex "{begin}"^^xsd:nonNegativeInteger ; nif:endIndex "{end}"^^xsd:nonNegativeInteger {extra}.\n')


@pytest.mark.parametrize("body, message", [
    (CONTEXT + "<http://x/d#char=0,5> nif:beginIndex 0 ;;; oops\n",
     r":6: invalid Turtle: Bad syntax \(expected '\.' or '}' or '\]' at end of statement\)$"),
    (CONTEXT + phrase(extra='; nif:anchorOf "Help" '), "anchorOf 'Help' differs from the text at 0..5, 'Hello'"),
    (CONTEXT + phrase(end="6"), r"span 0\.\.6 is not 0 <= begin < end <= 5"),
    (CONTEXT + phrase(extra="; itsrdf:taIdentRef <http://www.wikidata.org/entity/Q42> "),
     "entity URI 'http://www.wikidata.org/entity/Q42' is neither"),
    (CONTEXT + phrase(extra="; itsrdf:taIdentRef <http://dbpedia.org/resource/A> , <http://dbpedia.org/resource/B> "),
     r"name 2 different titles \['A', 'B'\]"),
    (CONTEXT + phrase().replace("<http://x/d#char=0,5> ;", "<http://x/other> ;"),
     "its referenceContext <http://x/other> is no nif:Context"),
    (CONTEXT + phrase().replace('nif:endIndex "5"^^xsd:nonNegativeInteger', 'nif:endIndex "five"'),
     "endIndex 'five' is not an integer"),
    (CONTEXT + phrase().replace('; nif:beginIndex "0"^^xsd:nonNegativeInteger', ""), "0 values of beginIndex"),
    ("<http://x/e> a nif:Context .\n", r"context <http://x/e>: 0 values of isString; expected exactly one"),
])
def test_read_errors(tmp_path, body, message):
    with pytest.raises(ValueError, match=rf"bad\.ttl.*{message}"):
        read_nif(write_text(tmp_path / "bad.ttl", PREFIXES + "\n" + body))


def test_cli_gold_file_scores_with_inkb(tmp_path, capsys):
    ttl, gold = write_text(tmp_path / "kore.ttl", GERBIL), tmp_path / "gold.jsonl"
    title_map = write_text(tmp_path / "map.tsv", "Angela Merkel\tMerkel\n")
    main([ttl, "--out", str(gold), "--title_map", title_map])
    assert json.loads(capsys.readouterr().out) == {"documents": 2, "links": 2, "out": str(gold)}
    records = [json.loads(line) for line in gold.read_text(encoding="utf-8").splitlines()]
    assert records == [{"id": DOC2.id, "text": DOC2.text, "links": [[0, 4, "Mars (chocolate bar)"]]},
                       {"id": DOC10.id, "text": DOC10.text, "links": [[0, 13, "Merkel"]]}]
    assert score_inkb_files(str(gold), str(gold))["f1"] == 1.0
    records[0]["links"] = []  # 1 of 2 gold links predicted: P 1, R 1/2, F1 2/3
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    scores = score_inkb_files(str(gold), str(pred))
    assert (scores["precision"], scores["recall"]) == (1.0, 0.5)
    assert scores["f1"] == pytest.approx(2 / 3)
    with pytest.raises(SystemExit, match=r"error: .*bad\.ttl:1: invalid Turtle"):
        main([write_text(tmp_path / "bad.ttl", "<a> <b"), "--out", str(tmp_path / "never.jsonl")])
