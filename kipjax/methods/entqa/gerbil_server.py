"""A local HTTP annotator implementing GERBIL's (Usbeck et al., 2015) "NIF-based web service" contract, so
that an end-to-end entity linker (EntQA) can be evaluated by GERBIL on A2KB.

What GERBIL sends: one POST per document, its body a NIF 2.0 document in RDF Turtle (Content-Type
application/x-turtle or text/turtle, UTF-8) holding one `nif:Context` (URI like
`http://www.aksw.org/gerbil/NifWebService/request_117#char=0,N`) whose `nif:isString` is the document's text.
For A2KB it holds no phrases; for D2KB it holds the `nif:Phrase`s to disambiguate, which this service ignores:
it annotates the full text whatever the task (so use it for A2KB).

What GERBIL expects back: 200 and a Turtle NIF document with the same context (GERBIL matches documents by
their context URI, which is kept) plus one `nif:Phrase` per annotation with `nif:referenceContext`,
`nif:beginIndex` / `nif:endIndex` (character offsets, end exclusive), `nif:anchorOf` and `itsrdf:taIdentRef`,
the entity's English Wikipedia URL (`uri_style="wikipedia"`) or DBpedia URI (`"dbpedia"`, what EntQA's own
wrapper returned); GERBIL maps both to the same entity. The layout is `kipjax.data.nif`'s.

Offsets are Python string indices (code points) and GERBIL, in Java, counts UTF-16 units: the two agree except
on texts with characters outside the Basic Multilingual Plane (emoji, rare CJK), where GERBIL would see the
spans after such a character shifted (and a D2KB request's phrases may be rejected as not matching the text).

Registering it in GERBIL: run `serve(annotate, host, port)` (it prints the URL), then in GERBIL's "Configure
Experiment" page choose experiment type A2KB, and under the annotators add a "NIF-based Web Service" with a
name and that URL (`http://HOST:PORT/`; any path is served). The URL must be reachable from GERBIL: for a
GERBIL in Docker, bind `host="0.0.0.0"` and give GERBIL the machine's address rather than 127.0.0.1.

Errors: a body that is no NIF document (bad Turtle, a context without text, ...) -> 400 with the reason as
plain text; `annotate` raising (or returning malformed links) -> 500 with the message. GET (or HEAD) on any
path -> 200 and a short plain-text description, a health check. Requests are logged through `logging`
(logger `kipjax.methods.entqa.gerbil_server`). Requests are served in threads, but `annotate` calls are
serialized by a lock, as a linker on one accelerator need not be thread-safe; a GET is answered meanwhile.
"""
from __future__ import annotations

import logging
import operator
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

from kipjax.data.nif import NifDocument, dbpedia_url, nif_turtle, parse_nif, wikipedia_url

# text -> (char_start, char_end, entity title) links, end exclusive.
Annotate = Callable[[str], Sequence[tuple[int, int, str]]]

URI_STYLES: dict[str, Callable[[str], str]] = {"wikipedia": wikipedia_url, "dbpedia": dbpedia_url}
REQUEST_BASE = "http://kipjax.example/gerbil-request"  # what relative IRIs in a request resolve against
TURTLE = "application/x-turtle; charset=utf-8"

logger = logging.getLogger(__name__)


class NifRequestError(ValueError):
    """The request is no NIF document this service can annotate (HTTP 400)."""


def _entity_url(uri_style: str) -> Callable[[str], str]:
    if uri_style not in URI_STYLES:
        raise ValueError(f"uri_style must be one of {sorted(URI_STYLES)}, got {uri_style!r}")
    return URI_STYLES[uri_style]


def _links(doc: NifDocument, links: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """`annotate`'s links as (int, int, str), or a ValueError naming the first malformed one."""
    checked = []
    for link in links:
        try:
            begin, end, title = link
            begin, end = operator.index(begin), operator.index(end)  # ints, numpy ints; not floats
        except (TypeError, ValueError):
            raise ValueError(f"document <{doc.id}>: annotate returned {link!r:.80}, "
                             "not a (begin, end, title) triple of two ints and a title") from None
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"document <{doc.id}>: annotate returned the title {title!r:.80} for {begin}..{end}; "
                             "expected a non-empty string")
        checked.append((begin, end, title))
    return checked


def annotate_nif(request_turtle: str, annotate: Annotate, uri_style: str = "wikipedia") -> str:
    """The response Turtle for a GERBIL request: every context of `request_turtle` with its text's `annotate`
    links as phrases, entity URIs in `uri_style` ("wikipedia" or "dbpedia"), context URIs kept. NifRequestError
    if the request is no NIF document with a text; what `annotate` raises, and ValueError for malformed links
    (spans outside the text, two links of one span, ...), propagate."""
    entity_url = _entity_url(uri_style)
    try:
        documents = parse_nif(request_turtle, "request", base=REQUEST_BASE)
    except ValueError as e:
        raise NifRequestError(str(e)) from None
    if not documents:
        raise NifRequestError("request: no nif:Context with a nif:isString (GERBIL sends one per document)")
    answered = [NifDocument(doc.id, doc.text, _links(doc, annotate(doc.text))) for doc in documents]
    return nif_turtle(answered, entity_url=entity_url)


class _GerbilServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], annotate: Annotate, uri_style: str):
        self.annotate, self.uri_style, self.annotate_lock = annotate, uri_style, threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _GerbilServer
    server_version = "kipjax-gerbil-nif"

    def _reply(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8",
               with_body: bool = True) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def _description(self) -> str:
        host, port = self.server.server_address[:2]
        return (f"kipjax GERBIL NIF annotator (A2KB) at http://{host}:{port}/: POST a NIF 2.0 Turtle document "
                f"(application/x-turtle) to any path; entity URIs: {self.server.uri_style}.\n")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._reply(200, self._description())

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(200, self._description(), with_body=False)

    def do_POST(self) -> None:  # noqa: N802
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self._reply(411, "a POST needs a Content-Length header (chunked bodies are not supported)\n")
            return
        body = self.rfile.read(int(length))
        charset = self.headers.get_content_charset() or "utf-8"
        try:
            request = body.decode(charset)
        except (LookupError, UnicodeDecodeError) as e:
            self._reply(400, f"invalid NIF request: the body is not {charset} text ({e})\n")
            return
        try:
            with self.server.annotate_lock:
                response = annotate_nif(request, self.server.annotate, self.server.uri_style)
        except NifRequestError as e:
            logger.warning("400 for %s: %s", self.address_string(), e)
            self._reply(400, f"invalid NIF request: {e}\n")
            return
        except Exception as e:  # annotate's failure, reported to GERBIL rather than dropping the connection
            logger.exception("annotation failed")
            self._reply(500, f"annotation failed: {type(e).__name__}: {e}\n")
            return
        self._reply(200, response, TURTLE)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's signature)
        logger.info("%s %s", self.address_string(), format % args)


def make_server(annotate: Annotate, host: str = "127.0.0.1", port: int = 0,
                uri_style: str = "wikipedia") -> ThreadingHTTPServer:
    """A server (bound, not yet serving) answering GERBIL's POSTs with `annotate_nif` (module docstring); port 0
    picks a free port, `server.server_address` tells which. Run it with `serve_forever()`, stop it with
    `shutdown()` and `server_close()`."""
    _entity_url(uri_style)  # a bad style fails here, not on every request
    return _GerbilServer((host, port), annotate, uri_style)


def serve(annotate: Annotate, host: str = "127.0.0.1", port: int = 0, uri_style: str = "wikipedia") -> None:
    """Serves `annotate` to GERBIL until Ctrl-C, after printing the URL to register in GERBIL."""
    server = make_server(annotate, host, port, uri_style)
    bound_host, bound_port = server.server_address[:2]
    wildcard = bound_host in ("", "0.0.0.0")
    shown = socket.gethostname() if wildcard else bound_host
    print(f"GERBIL NIF annotator (A2KB) at http://{shown}:{bound_port}/"
          + (" (listening on every interface)" if wildcard else ""), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
