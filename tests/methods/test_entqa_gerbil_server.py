"""GERBIL's NIF web-service contract: annotate_nif on GERBIL-shaped requests (a literal Turtle string and one
built with the repo's writer) with a fake linker, the responses read back with the repo's NIF reader (text,
context URI, spans and titles, the raw entity URIs); errors; and real HTTP round trips against make_server
(200 with the links, 400 for bad Turtle, 500 when the linker raises, the GET health check)."""
import contextlib
import logging
import threading
import urllib.error
import urllib.request

import pytest
import rdflib

from kipjax.data.nif import ITSRDF, NifDocument, nif_turtle, parse_nif
from kipjax.methods.entqa.gerbil_server import NifRequestError, annotate_nif, make_server

# Offsets hand-counted: Angela Merkel 0-13, Obama 18-23, São Paulo 27-36, AC/DC 38-43.
TEXT = "Angela Merkel met Obama in São Paulo; AC/DC played."
CONTEXT = f"http://www.aksw.org/gerbil/NifWebService/request_117#char=0,{len(TEXT)}"
LINKS = [(0, 13, "Angela Merkel"), (18, 23, "Barack_Obama"), (27, 36, "São Paulo"), (38, 43, "AC/DC")]
# What the reader gives back: titles with underscores read as spaces (Wikipedia titles have no underscores).
READ_BACK = [(0, 13, "Angela Merkel"), (18, 23, "Barack Obama"), (27, 36, "São Paulo"), (38, 43, "AC/DC")]

# The shape of GERBIL's A2KB request: one context, a language-tagged text, no phrases.
REQUEST = f"""\
@prefix nif: <http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .

<{CONTEXT}>
        a                     nif:RFC5147String , nif:String , nif:Context ;
        nif:beginIndex        "0"^^xsd:nonNegativeInteger ;
        nif:endIndex          "{len(TEXT)}"^^xsd:nonNegativeInteger ;
        nif:isString          "{TEXT}"@en .
"""


def fake_annotate(text):
    assert text == TEXT
    return LINKS


def entity_uris(turtle):
    graph = rdflib.Graph().parse(data=turtle, format="turtle")
    return sorted(str(uri) for uri in graph.objects(None, ITSRDF.taIdentRef))


def test_annotate_nif_keeps_context_and_returns_links():
    response = annotate_nif(REQUEST, fake_annotate)
    assert parse_nif(response, "response") == [NifDocument(CONTEXT, TEXT, READ_BACK)]
    assert entity_uris(response) == ["http://en.wikipedia.org/wiki/AC/DC",
                                     "http://en.wikipedia.org/wiki/Angela_Merkel",
                                     "http://en.wikipedia.org/wiki/Barack_Obama",
                                     "http://en.wikipedia.org/wiki/S%C3%A3o_Paulo"]


def test_annotate_nif_dbpedia_uris_and_d2kb_phrases_ignored():
    # A request built with the writer, holding a phrase as GERBIL's D2KB requests do: the full text is annotated.
    request = nif_turtle([NifDocument(CONTEXT, TEXT, [(27, 36, None)])])
    response = annotate_nif(request, lambda text: [(27, 36, "São Paulo"), (0, 6, "Angela (given name)")],
                            uri_style="dbpedia")
    assert parse_nif(response, "response") == [
        NifDocument(CONTEXT, TEXT, [(0, 6, "Angela (given name)"), (27, 36, "São Paulo")])]
    assert entity_uris(response) == ["http://dbpedia.org/resource/Angela_(given_name)",
                                     "http://dbpedia.org/resource/S%C3%A3o_Paulo"]


def test_annotate_nif_no_links():
    assert parse_nif(annotate_nif(REQUEST, lambda text: []), "response") == [NifDocument(CONTEXT, TEXT, [])]


@pytest.mark.parametrize("request_turtle, annotate, error, message", [
    ("<http://x/d> <http://p> ;;; oops", fake_annotate, NifRequestError, r"request:1: invalid Turtle"),
    ("<http://x/d> <http://p> <http://o> .", fake_annotate, NifRequestError, "no nif:Context with a nif:isString"),
    (REQUEST, lambda text: [(40, 60, "X")], ValueError, r"link 40\.\.60 is outside 0\.\.51"),
    (REQUEST, lambda text: [(0, 1.5, "X")], ValueError, "not a \\(begin, end, title\\) triple"),
    (REQUEST, lambda text: [(0, 1, "")], ValueError, "expected a non-empty string"),
])
def test_annotate_nif_errors(request_turtle, annotate, error, message):
    with pytest.raises(error, match=message) as raised:
        annotate_nif(request_turtle, annotate)
    assert error is NifRequestError or not isinstance(raised.value, NifRequestError)


def test_unknown_uri_style():
    with pytest.raises(ValueError, match="uri_style must be one of"):
        annotate_nif(REQUEST, fake_annotate, uri_style="wikidata")
    with pytest.raises(ValueError, match="uri_style must be one of"):
        make_server(fake_annotate, uri_style="wikidata")


# ------------------------------------------------------------------------------------------------ over HTTP

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextlib.contextmanager
def running(annotate, uri_style="wikipedia"):
    server = make_server(annotate, port=0, uri_style=uri_style)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def call(url, body=None, content_type="application/x-turtle"):
    """(status, content type, body text) of a GET (body None) or POST."""
    data = None if body is None else body.encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if data else {})
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read().decode("utf-8")


def test_http_round_trip(caplog):
    with caplog.at_level(logging.INFO, logger="kipjax.methods.entqa.gerbil_server"), running(fake_annotate) as url:
        status, content_type, body = call(url + "gerbil/a2kb", REQUEST)  # any path
        assert (status, content_type) == (200, "application/x-turtle; charset=utf-8")
        assert parse_nif(body, "response") == [NifDocument(CONTEXT, TEXT, READ_BACK)]
        status, _, body = call(url, REQUEST, content_type="text/turtle")
        assert status == 200 and parse_nif(body, "response")[0].links == READ_BACK
    assert any('"POST /gerbil/a2kb HTTP/1.1" 200' in r.getMessage() for r in caplog.records)


def test_http_bad_turtle_is_400():
    with running(fake_annotate) as url:
        status, content_type, body = call(url, "<http://x/d> <http://p> ;;; oops")
    assert (status, content_type) == (400, "text/plain; charset=utf-8")
    assert body.startswith("invalid NIF request: request:1: invalid Turtle: Bad syntax")


def test_http_annotate_raising_is_500():
    def broken(text):
        raise RuntimeError("the reader ran out of memory")

    with running(broken) as url:
        status, _, body = call(url, REQUEST)
    assert status == 500
    assert body == "annotation failed: RuntimeError: the reader ran out of memory\n"


def test_http_get_health_check():
    with running(fake_annotate, uri_style="dbpedia") as url:
        status, content_type, body = call(url)
    assert (status, content_type) == (200, "text/plain; charset=utf-8")
    assert body.startswith(f"kipjax GERBIL NIF annotator (A2KB) at {url}: POST") and "dbpedia" in body
