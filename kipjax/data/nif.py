"""NIF (NLP Interchange Format 2.0) entity-linking documents in RDF Turtle, the format of GERBIL (Usbeck et al.,
2015), through which EntQA and other end-to-end linkers are evaluated on AIDA, KORE50, MSNBC, N3-Reuters-128,
...: reading gold corpora, and writing documents GERBIL can read.

A document is a `nif:Context` with its text in `nif:isString`; each annotation a `nif:Phrase` with
`nif:referenceContext` (its context), `nif:beginIndex` / `nif:endIndex` (character offsets into the text, end
exclusive), `nif:anchorOf` (the covered text) and `itsrdf:taIdentRef` (the entity):
  <http://x/doc1#char=0,22> a nif:String , nif:Context , nif:RFC5147String ;
      nif:beginIndex "0"^^xsd:nonNegativeInteger ; nif:endIndex "22"^^xsd:nonNegativeInteger ;
      nif:isString "Angela Merkel met Obama"^^xsd:string .
  <http://x/doc1#char=0,13> a nif:String , nif:RFC5147String , nif:Phrase ;
      nif:referenceContext <http://x/doc1#char=0,22> ; nif:anchorOf "Angela Merkel"^^xsd:string ;
      nif:beginIndex "0"^^xsd:nonNegativeInteger ; nif:endIndex "13"^^xsd:nonNegativeInteger ;
      itsrdf:taIdentRef <http://dbpedia.org/resource/Angela_Merkel> .
Entity URIs are English Wikipedia (`http://en.wikipedia.org/wiki/Angela_Merkel`) or DBpedia
(`http://dbpedia.org/resource/Angela_Merkel`) pages, read as the title "Angela Merkel" (URL-decoded, underscores
as spaces). GERBIL's out-of-KB URIs (`http://aksw.org/notInWiki/...`), NIL / --NME-- pages and phrases
without taIdentRef have no title (None). Other URIs are an error, as are phrases whose URIs name two titles.

Offsets are Python string indices (code points); GERBIL, in Java, counts UTF-16 units, so the two agree except
on text with characters outside the Basic Multilingual Plane (emoji, rare CJK). RDF graphs have no order:
documents come back sorted by their context URI, digit runs compared as numbers (doc2 before doc10).

CLI: python -m kipjax.data.nif FILE.ttl --out G.jsonl [--title_map MAP]
  writes the gold-link lines of `python -m kipjax.metrics.el inkb` (see `kipjax.data.aida`), one per document.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote, unquote

import rdflib
from rdflib import RDF, XSD, Literal, Namespace, URIRef
from rdflib.plugins.parsers.notation3 import BadSyntax

from kipjax.data.aida import links_record, wikipedia_title, write_gold_links
from kipjax.data.entity_kb import read_title_map
from kipjax.metrics.el import DEFAULT_NIL_ENTITIES
from kipjax.run_log import atomic_write_text

NIF = Namespace("http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#")
ITSRDF = Namespace("http://www.w3.org/2005/11/its/rdf#")
DBPEDIA_PREFIXES = ("http://dbpedia.org/resource/", "https://dbpedia.org/resource/")
NOT_IN_WIKI = "/notInWiki/"
WIKIPEDIA_URL = "http://en.wikipedia.org/wiki/"
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]*$")
_TITLE_SAFE = "()',!*:;@$/"  # kept as they are in Wikipedia URLs; everything else is percent-encoded

Link = tuple[int, int, str | None]


@dataclasses.dataclass
class NifDocument:
    """A document: `id` its nif:Context URI, `links` (begin, end, title or None) sorted by (begin, end)."""

    id: str
    text: str
    links: list[Link]


def entity_title(uri: str) -> str | None:
    """The title a taIdentRef URI names, None for an out-of-KB one; ValueError for an unknown kind of URI."""
    if NOT_IN_WIKI in uri:
        return None
    title = wikipedia_title(uri)
    for prefix in DBPEDIA_PREFIXES:
        if title is None and uri.startswith(prefix) and len(uri) > len(prefix):
            title = unquote(uri[len(prefix):]).replace("_", " ")
    if title is None:
        raise ValueError(f"entity URI {uri!r:.100} is neither {WIKIPEDIA_URL}Title, "
                         f"{DBPEDIA_PREFIXES[0]}Title nor a notInWiki URI")
    return None if title in DEFAULT_NIL_ENTITIES else title


def wikipedia_url(title: str) -> str:
    """The English Wikipedia URL of `title` (spaces as underscores, URL-quoted)."""
    return WIKIPEDIA_URL + quote(title.replace(" ", "_"), safe=_TITLE_SAFE)


def dbpedia_url(title: str) -> str:
    """The DBpedia resource URI of `title`, quoted as `wikipedia_url` quotes it."""
    return DBPEDIA_PREFIXES[0] + quote(title.replace(" ", "_"), safe=_TITLE_SAFE)


def _uri_order(uri: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", uri)]


def _name(predicate: URIRef) -> str:
    return str(predicate).rsplit("#", 1)[-1]


def _one(graph: rdflib.Graph, subject: URIRef, predicate: URIRef, where: str) -> Any:
    values = list(graph.objects(subject, predicate))
    if len(values) != 1:
        raise ValueError(f"{where}: {len(values)} values of {_name(predicate)}; expected exactly one")
    return values[0]


def _index(graph: rdflib.Graph, phrase: URIRef, predicate: URIRef, where: str) -> int:
    value = _one(graph, phrase, predicate, where).toPython()
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: {_name(predicate)} {value!r:.40} is not an integer")
    return value


def _phrase_title(graph: rdflib.Graph, phrase: URIRef, where: str, title_map: Mapping[str, str]) -> str | None:
    titles = set()
    for uri in graph.objects(phrase, ITSRDF.taIdentRef):
        try:
            title = entity_title(str(uri))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if title is not None:
            titles.add(title_map.get(title, title))
    if len(titles) > 1:
        raise ValueError(f"{where}: its taIdentRef URIs name {len(titles)} different titles {sorted(titles)}")
    return titles.pop() if titles else None


def parse_nif(text: str, where: str, title_map: Mapping[str, str] | None = None,
              base: str | None = None) -> list[NifDocument]:
    """The documents of NIF Turtle `text` (see the module docstring), sorted by context URI; errors (ValueError)
    begin with `where`. Relative IRIs resolve against `base` (rdflib's default, the working directory, if None)."""
    title_map = title_map or {}
    graph = rdflib.Graph()
    try:
        graph.parse(data=text, format="turtle", publicID=base)
    except BadSyntax as e:
        why = str(e).split("\n", 1)[-1].split(" at ^ in:", 1)[0]  # "Bad syntax (...)", without rdflib's excerpt
        raise ValueError(f"{where}:{e.lines + 1}: invalid Turtle: {why}") from None
    contexts = set(graph.subjects(NIF.isString)) | set(graph.subjects(RDF.type, NIF.Context))
    texts, links = {}, {}
    for context in contexts:
        text = _one(graph, context, NIF.isString, f"{where}: context <{context}>")
        texts[context], links[context] = str(text), []
    for phrase in set(graph.subjects(NIF.referenceContext)):
        here = f"{where}: phrase <{phrase}>"
        context = _one(graph, phrase, NIF.referenceContext, here)
        if context not in texts:
            raise ValueError(f"{here}: its referenceContext <{context}> is no nif:Context with nif:isString")
        begin, end = _index(graph, phrase, NIF.beginIndex, here), _index(graph, phrase, NIF.endIndex, here)
        text = texts[context]
        if not 0 <= begin < end <= len(text):
            raise ValueError(f"{here}: span {begin}..{end} is not 0 <= begin < end <= {len(text)} (its text's length)")
        anchors = [str(a) for a in graph.objects(phrase, NIF.anchorOf)]
        if any(anchor != text[begin:end] for anchor in anchors):
            raise ValueError(f"{here}: anchorOf {anchors[0]!r:.60} differs from the text at {begin}..{end}, "
                             f"{text[begin:end]!r:.60}")
        links[context].append((begin, end, _phrase_title(graph, phrase, here, title_map)))
    return [NifDocument(str(c), texts[c], sorted(links[c], key=lambda link: link[:2]))
            for c in sorted(texts, key=lambda c: _uri_order(str(c)))]


def read_nif(path: str, title_map: Mapping[str, str] | None = None) -> list[NifDocument]:
    """The documents of a NIF Turtle file (`parse_nif`; relative IRIs resolve against the file's location)."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    return parse_nif(text, path, title_map, base=pathlib.Path(path).absolute().as_uri())


def _context_uri(doc: NifDocument, base: str) -> str:
    """`doc.id` if it is a URI already, else `base`/id#char=0,len (NIF's RFC 5147 naming, as GERBIL's)."""
    if _ABSOLUTE_URI.match(doc.id):
        return doc.id
    return f"{base.rstrip('/')}/{quote(doc.id, safe='')}#char=0,{len(doc.text)}"


def nif_turtle(documents: Sequence[NifDocument], base: str = "http://kipjax.example/doc",
               entity_url: Callable[[str], str] = wikipedia_url) -> str:
    """`documents` as NIF Turtle GERBIL reads (module docstring). A document's context URI is its id when that is
    a URI (so documents read back keep theirs), else made from `base` and the id; phrases are
    `<doc>#char=begin,end`. A link's taIdentRef is `entity_url(title)`; a link without a title has none."""
    graph = rdflib.Graph()
    graph.bind("nif", NIF)
    graph.bind("itsrdf", ITSRDF)
    graph.bind("xsd", XSD)
    seen: dict[str, str] = {}
    for doc in documents:
        context = _context_uri(doc, base)
        doc_uri = context.split("#", 1)[0]
        if doc_uri in seen:
            raise ValueError(f"documents {seen[doc_uri]!r} and {doc.id!r} would share the URI <{doc_uri}>")
        seen[doc_uri] = doc.id
        ctx = URIRef(context)
        for kind in (NIF.String, NIF.Context, NIF.RFC5147String):
            graph.add((ctx, RDF.type, kind))
        graph.add((ctx, NIF.isString, Literal(doc.text, datatype=XSD.string)))
        graph.add((ctx, NIF.beginIndex, Literal(0, datatype=XSD.nonNegativeInteger)))
        graph.add((ctx, NIF.endIndex, Literal(len(doc.text), datatype=XSD.nonNegativeInteger)))
        spans = set()
        for begin, end, title in doc.links:
            if not 0 <= begin < end <= len(doc.text) or (begin, end) in spans:
                raise ValueError(f"document {doc.id!r}: link {begin}..{end} is outside 0..{len(doc.text)}, empty, "
                                 "or a second link of the same span")
            spans.add((begin, end))
            phrase = URIRef(f"{doc_uri}#char={begin},{end}")
            for kind in (NIF.String, NIF.RFC5147String, NIF.Phrase):
                graph.add((phrase, RDF.type, kind))
            graph.add((phrase, NIF.referenceContext, ctx))
            graph.add((phrase, NIF.anchorOf, Literal(doc.text[begin:end], datatype=XSD.string)))
            graph.add((phrase, NIF.beginIndex, Literal(begin, datatype=XSD.nonNegativeInteger)))
            graph.add((phrase, NIF.endIndex, Literal(end, datatype=XSD.nonNegativeInteger)))
            if title is not None:
                graph.add((phrase, ITSRDF.taIdentRef, URIRef(entity_url(title))))
    return graph.serialize(format="turtle")


def write_nif(documents: Sequence[NifDocument], path: str, base: str = "http://kipjax.example/doc") -> None:
    """`documents` as NIF Turtle (`nif_turtle`, Wikipedia URLs), written atomically."""
    atomic_write_text(path, nif_turtle(documents, base))


def gold_links(doc: NifDocument) -> dict[str, Any]:
    """`doc`'s in-KB links as a gold-link line (`kipjax.data.aida.links_record`)."""
    return links_record(doc.id, doc.text, doc.links)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kipjax.data.nif",
                                     description="NIF Turtle to gold-link JSON lines (see the module docstring).")
    parser.add_argument("file", help="a NIF 2.0 Turtle file (GERBIL's corpus layout)")
    parser.add_argument("--out", required=True, help="output JSON-lines file")
    parser.add_argument("--title_map", help="TSV 'old title<TAB>new title' (or a JSON object) renaming titles")
    args = parser.parse_args(argv)
    try:
        title_map = read_title_map(args.title_map) if args.title_map else None
        result = write_gold_links(args.out, [gold_links(d) for d in read_nif(args.file, title_map)])
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
