"""Readers and writers for coreference corpora: CoNLL-2012 files, jsonlines, and PreCo.

Every format is turned into one `CorefDocument`, whose mentions are INCLUSIVE (start, end) indices into the
document's flattened tokens (the concatenation of its sentences), the convention of the common jsonlines
format (Lee et al., 2017), so metrics and models never see which file a document came from.

CoNLL-2012 (OntoNotes `*_conll`, LitBank `coref/conll/*.conll`, scorer input/output), read as the reference
scorer (v8.01, `scorer.pl`) reads it:
  #begin document (NAME); part N        doc_key = f"{NAME}_{int(N)}" (OntoNotes `name_0` convention, as in
  tokens, one per line                  the jsonlines files); without "; part N" doc_key = NAME
  <empty line between sentences>
  #end document
  A token line holds tab-separated columns (or, without tabs, space-separated ones); the coreference
  annotation is always the LAST column, whatever their number (two will do: document id and annotation;
  LitBank leaves it empty rather than `-`). The word is column 3 when there are at least 5 columns, else
  unknown (`_`). With 12 or more columns, column 9 is the OntoNotes speaker; a document whose speakers are
  all placeholders (`-`, `_`) gets speakers=None. A cell `_` holds nothing; otherwise its mention brackets
  are taken out as the scorer does, with or without `|` between them: double antecedents `(N+M)` dropped,
  then every one-token mention `(N)`, then every opening `(N`, then every closing `N)`, each left to right,
  so `(1(1`, `1)1)`, `(1)(2` and `(3)|(4` all read as the scorer reads them. A closing bracket pairs with
  the latest open mention of its cluster; cluster ids are the strings (`01` and `1` differ, as there).
  Lines outside documents are skipped, as the scorer skips them (with a warning if they are not comments),
  as are other characters left in a cell (also warned about, once per file). The scorer's own errors are
  errors here too, naming the file and line: a closing bracket with no open mention, a mention still open at
  `#end document`; and so is a document with no `#end document` or a `#begin document` inside another.
jsonlines: {"doc_key", "sentences": [[tok, ...], ...], "speakers"?: same shape, "clusters": [[[s, e], ...], ...]}
PreCo:     {"id", "sentences", "mention_clusters": [[[sentence_index, start, end_exclusive], ...], ...]}

Malformed input raises ValueError naming the file and line, because a silently dropped mention changes the
metric denominators without anyone noticing.
"""
from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from kipjax.data.jsonl import json_lines, required_field
from kipjax.run_log import atomic_write_text

Span = tuple[int, int]
SPEAKER_COLUMN = 9
MIN_SPEAKER_COLUMNS = 12
WORD_COLUMN = 3
MIN_WORD_COLUMNS = 5  # doc, part, index, word, ..., coref
UNKNOWN_WORD = "_"
NO_COREF = "_"
PLACEHOLDER_SPEAKERS = ("-", "_")
JSONLINES_SUFFIXES = (".jsonlines", ".jsonl", ".json")

_BEGIN = re.compile(r"#\s*begin document (.*?)$")
_NAME_PART = re.compile(r"(.*?);\s*(?:part\s+(\S+))?\s*")
_END = re.compile(r"#\s*end document")
# The scorer's bracket patterns, in the order it removes them from a cell.
_DOUBLE_ANTECEDENT = re.compile(r"\((\d+\+\d)\)")
_SINGLE = re.compile(r"\((\d+)\)")
_OPEN = re.compile(r"\((\d+)")
_CLOSE = re.compile(r"(\d+)\)")
_SEPARATORS = re.compile(r"[|\s-]*")
_NAME_AND_PART = re.compile(r"(.+)_(0|[1-9][0-9]*)")


@dataclasses.dataclass(frozen=True)
class CorefDocument:
    """A tokenized document with its coreference clusters (inclusive spans over the flattened tokens)."""

    doc_key: str
    sentences: list[list[str]]
    clusters: list[list[Span]]
    speakers: list[list[str]] | None = None

    def __post_init__(self):
        num_tokens = len(self.tokens)
        if self.speakers is not None and [len(s) for s in self.speakers] != [len(s) for s in self.sentences]:
            raise ValueError(f"document {self.doc_key!r}: 'speakers' must have the shape of 'sentences'")
        for cluster in self.clusters:
            for span in cluster:
                if not (isinstance(span, tuple) and len(span) == 2 and all(_is_int(i) for i in span)):
                    raise ValueError(f"document {self.doc_key!r}: a mention must be a (start, end) tuple of "
                                     f"ints, got {span!r}")
                if not 0 <= span[0] <= span[1] < num_tokens:
                    raise ValueError(f"document {self.doc_key!r}: mention {span} is not an inclusive span "
                                     f"within the document's {num_tokens} tokens")

    @property
    def tokens(self) -> list[str]:
        return [token for sentence in self.sentences for token in sentence]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------- CoNLL-2012

def remove_all(pattern: re.Pattern, cell: str) -> tuple[list[str], str]:
    """The ids of `pattern`'s matches, taken out left to right until none is left (Perl's `while (s///)`, so a
    match that a removal creates is found too), and what remains of `cell`."""
    ids = []
    while match := pattern.search(cell):
        ids.append(match.group(1))
        cell = cell[:match.start()] + cell[match.end():]
    return ids, cell


@dataclasses.dataclass(frozen=True)
class CellBrackets:
    """The mention brackets of one coreference cell, in the order the scorer applies them."""

    singles: list[str]
    opens: list[str]
    closes: list[str]
    leftover: str  # what the scorer ignores; only separators in a well-formed cell


def parse_cell(cell: str) -> CellBrackets:
    """One coreference cell read as `scorer.pl` reads it (see the module docstring)."""
    if cell == NO_COREF:
        return CellBrackets([], [], [], "")
    _, cell = remove_all(_DOUBLE_ANTECEDENT, cell)
    singles, cell = remove_all(_SINGLE, cell)
    opens, cell = remove_all(_OPEN, cell)
    closes, cell = remove_all(_CLOSE, cell)
    return CellBrackets(singles, opens, closes, cell)


@dataclasses.dataclass
class _ConllDocumentState:
    """What has been read of one document so far."""

    doc_key: str
    sentences: list[list[str]] = dataclasses.field(default_factory=lambda: [[]])
    speakers: list[list[str]] = dataclasses.field(default_factory=lambda: [[]])
    has_speaker_column: bool = True
    clusters: dict[str, list[Span]] = dataclasses.field(default_factory=dict)
    open_mentions: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)  # (token, line)
    num_tokens: int = 0

    def add_token(self, columns: list[str], where: str, line_number: int) -> str:
        """Adds one token line; returns what of its cell the scorer would ignore."""
        self.sentences[-1].append(columns[WORD_COLUMN] if len(columns) >= MIN_WORD_COLUMNS else UNKNOWN_WORD)
        self.has_speaker_column &= len(columns) >= MIN_SPEAKER_COLUMNS
        self.speakers[-1].append(columns[SPEAKER_COLUMN] if len(columns) > SPEAKER_COLUMN else "")
        brackets = parse_cell(columns[-1] if columns else "")
        token = self.num_tokens
        for cluster_id in brackets.singles:
            self.clusters.setdefault(cluster_id, []).append((token, token))
        for cluster_id in brackets.opens:
            self.clusters.setdefault(cluster_id, [])
            self.open_mentions.setdefault(cluster_id, []).append((token, line_number))
        for cluster_id in brackets.closes:
            if not self.open_mentions.get(cluster_id):
                raise ValueError(f"{where}: mention of cluster {cluster_id} is closed but was never opened")
            start, _ = self.open_mentions[cluster_id].pop()
            self.clusters[cluster_id].append((start, token))
        self.num_tokens += 1
        return brackets.leftover

    def end_sentence(self) -> None:
        if self.sentences[-1]:
            self.sentences.append([])
            self.speakers.append([])

    def finish(self, path: Path, line_number: int) -> CorefDocument:
        for cluster_id, starts in self.open_mentions.items():
            if starts:
                raise ValueError(f"{path}:{starts[0][1]}: mention of cluster {cluster_id} opened here is never "
                                 f"closed before '#end document' (line {line_number})")
        self.end_sentence()
        sentences, speakers = self.sentences[:-1], self.speakers[:-1]
        all_placeholders = all(s in PLACEHOLDER_SPEAKERS for sentence in speakers for s in sentence)
        return CorefDocument(
            doc_key=self.doc_key, sentences=sentences,
            clusters=canonical(self.clusters.values()),
            speakers=None if not self.has_speaker_column or all_placeholders else speakers)


def canonical(clusters: Iterable[Iterable[Sequence[int]]]) -> list[list[Span]]:
    """Distinct spans sorted within each cluster, empty clusters dropped, clusters sorted: one form per
    annotation, so predictions and gold compare with `==`."""
    sorted_clusters = (sorted({(int(start), int(end)) for start, end in cluster}) for cluster in clusters)
    return sorted(cluster for cluster in sorted_clusters if cluster)


def _doc_key(header: str, where: str) -> str:
    """doc_key of the text after '#begin document ': '(NAME); part N' -> 'NAME_N'; '(NAME);' or 'NAME' -> 'NAME'."""
    name_part = _NAME_PART.fullmatch(header)
    name, part = (name_part.group(1), name_part.group(2)) if name_part else (header.strip(), None)
    if name.startswith("(") and name.endswith(")"):
        name = name[1:-1]
    if part is None:
        return name
    if not part.isdigit():
        raise ValueError(f"{where}: expected '#begin document (NAME); part N' with an integer N, got part {part!r}")
    return f"{name}_{int(part)}"


def read_conll(path: str | Path) -> list[CorefDocument]:
    """All documents of a CoNLL-2012 file, in file order, read as the reference scorer reads them."""
    path = Path(path)
    documents: list[CorefDocument] = []
    state: _ConllDocumentState | None = None
    skipped: list[int] = []  # lines outside documents that are not comments
    ignored: list[int] = []  # lines with characters the scorer ignores in their cell
    with path.open(encoding="utf-8") as f:
        for line_number, raw in enumerate(f, start=1):
            line, where = raw.rstrip("\n").removesuffix("\r"), f"{path}:{line_number}"
            header = _BEGIN.match(line)
            if header:
                if state is not None:
                    raise ValueError(f"{where}: '#begin document' inside document {state.doc_key!r}; expected its "
                                     "'#end document' first")
                state = _ConllDocumentState(_doc_key(header.group(1), where))
            elif state is None:
                if line.strip() and not line.startswith("#"):
                    skipped.append(line_number)
            elif _END.search(line):
                documents.append(state.finish(path, line_number))
                state = None
            elif not line:
                state.end_sentence()
            else:
                columns = line.split("\t") if "\t" in line else line.split()
                if not _SEPARATORS.fullmatch(state.add_token(columns, where, line_number)):
                    ignored.append(line_number)
    if state is not None:
        raise ValueError(f"{path}: document {state.doc_key!r} has no '#end document'")
    if skipped:
        warnings.warn(f"{path}: {len(skipped)} line(s) outside '#begin document' ... '#end document' skipped, as "
                      f"the reference scorer skips them (first: line {skipped[0]})", stacklevel=2)
    if ignored:
        warnings.warn(f"{path}: {len(ignored)} coreference cell(s) hold text besides mention brackets, which the "
                      f"reference scorer ignores (first: line {ignored[0]}); is the last column the coreference "
                      "column?", stacklevel=2)
    return documents


def _split_doc_key(doc_key: str) -> tuple[str, str | None]:
    """(NAME, part) such that `read_conll` gives `doc_key` back; no part when the key has no `_<int>` suffix."""
    match = _NAME_AND_PART.fullmatch(doc_key)
    return (match.group(1), match.group(2)) if match else (doc_key, None)


def _coreference_columns(doc: CorefDocument) -> list[str]:
    """The last column of every token: opens (longest first), one-token mentions, closes."""
    opens: list[list[tuple[int, str]]] = [[] for _ in doc.tokens]
    singles: list[list[str]] = [[] for _ in doc.tokens]
    closes: list[list[tuple[int, str]]] = [[] for _ in doc.tokens]
    for cluster_id, cluster in enumerate(doc.clusters):
        _check_no_crossing(doc.doc_key, cluster)
        for start, end in cluster:
            if start == end:
                singles[start].append(f"({cluster_id})")
            else:
                opens[start].append((-end, f"({cluster_id}"))
                closes[end].append((-start, f"{cluster_id})"))
    columns = []
    for o, s, c in zip(opens, singles, closes):
        items = [text for _, text in sorted(o)] + s + [text for _, text in sorted(c)]
        columns.append("|".join(items) or "-")
    return columns


def _check_no_crossing(doc_key: str, cluster: Sequence[Span]) -> None:
    """Two crossing mentions of one cluster cannot be written: closing brackets pair with the latest opening."""
    for (s1, e1), (s2, e2) in itertools.combinations(sorted(set(cluster)), 2):
        if s1 < s2 <= e1 < e2:
            raise ValueError(f"document {doc_key!r}: mentions {(s1, e1)} and {(s2, e2)} of one cluster cross, "
                             "which the CoNLL bracket notation cannot express")


def _check_cell(doc_key: str, what: str, value: str) -> None:
    if not isinstance(value, str) or not value or any(c in value for c in "\t\r\n"):
        raise ValueError(f"document {doc_key!r}: {what} {value!r} cannot be written as a CoNLL column "
                         "(expected a non-empty string without tabs or newlines)")


def write_conll(path: str | Path, docs: Sequence[CorefDocument]) -> None:
    """Writes the 12-column OntoNotes layout (doc, part, index, word, -, -, -, -, -, speaker, *, coref),
    tab-separated, atomically; `read_conll` reads it back as the same documents (clusters in canonical order).
    A document without speakers gets '-' as speaker, which reads back as speakers=None."""
    lines = []
    for doc in docs:
        _check_cell(doc.doc_key, "doc_key", doc.doc_key)
        name, part = _split_doc_key(doc.doc_key)
        lines.append(f"#begin document ({name})" + ("" if part is None else f"; part {part}"))
        coreference = iter(_coreference_columns(doc))
        for sentence_index, sentence in enumerate(doc.sentences):
            for index, word in enumerate(sentence):
                speaker = "-" if doc.speakers is None else doc.speakers[sentence_index][index]
                _check_cell(doc.doc_key, "word", word)
                _check_cell(doc.doc_key, "speaker", speaker)
                lines.append("\t".join([name, part or "0", str(index), word, "-", "-", "-", "-", "-", speaker, "*",
                                        next(coreference)]))
            lines.append("")
        lines.append("#end document")
    atomic_write_text(str(path), "".join(line + "\n" for line in lines))


# -------------------------------------------------------------------------------------------- jsonlines / PreCo

def _token_lists(record: dict[str, Any], name: str, where: str) -> list[list[str]]:
    value = required_field(record, name, list, where)
    if not all(isinstance(s, list) and all(isinstance(t, str) for t in s) for s in value):
        raise ValueError(f"{where}: field '{name}' must be a list of lists of strings")
    return value


def _int_lists(value: Any, arity: int, name: str, where: str) -> list[list[list[int]]]:
    """`value` checked to be a list of clusters, each a list of `arity`-int lists."""
    def is_mention(m: Any) -> bool:
        return isinstance(m, list) and len(m) == arity and all(_is_int(i) for i in m)
    if not isinstance(value, list) or not all(isinstance(c, list) and all(is_mention(m) for m in c) for c in value):
        raise ValueError(f"{where}: field '{name}' must be a list of clusters, each a list of "
                         f"[{', '.join(['int'] * arity)}] mentions")
    return value


def _document(where: str, **fields: Any) -> CorefDocument:
    try:
        return CorefDocument(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def read_jsonlines(path: str | Path) -> list[CorefDocument]:
    """Documents of a jsonlines file (`clusters` are inclusive [start, end] over the flattened tokens)."""
    path = Path(path)
    documents = []
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        doc_key = required_field(record, "doc_key", str, where)
        sentences = _token_lists(record, "sentences", where)
        speakers = _token_lists(record, "speakers", where) if record.get("speakers") is not None else None
        clusters = _int_lists(required_field(record, "clusters", list, where), 2, "clusters", where)
        documents.append(_document(where, doc_key=doc_key, sentences=sentences, speakers=speakers,
                                   clusters=[[(s, e) for s, e in cluster] for cluster in clusters]))
    return documents


def read_preco(path: str | Path) -> list[CorefDocument]:
    """Documents of a PreCo jsonl file; [sentence, start, end) mentions become flattened inclusive spans."""
    path = Path(path)
    documents = []
    for line_number, record in json_lines(path):
        where = f"{path}:{line_number}"
        doc_id = record.get("id")
        if not (isinstance(doc_id, str) or _is_int(doc_id)):
            raise ValueError(f"{where}: field 'id' must be a string or an int, got {doc_id!r:.60}")
        sentences = _token_lists(record, "sentences", where)
        offsets = list(itertools.accumulate((len(s) for s in sentences), initial=0))
        clusters = []
        for cluster in _int_lists(required_field(record, "mention_clusters", list, where), 3, "mention_clusters",
                                  where):
            for sentence_index, start, end in cluster:
                if not (0 <= sentence_index < len(sentences) and 0 <= start < end <= len(sentences[sentence_index])):
                    raise ValueError(f"{where}: mention {[sentence_index, start, end]} is not [sentence, start, "
                                     "end) with end exclusive inside one of the document's sentences")
            clusters.append([(offsets[i] + start, offsets[i] + end - 1) for i, start, end in cluster])
        documents.append(_document(where, doc_key=str(doc_id), sentences=sentences, clusters=clusters))
    return documents


def write_jsonlines(path: str | Path, docs: Sequence[CorefDocument]) -> None:
    """One jsonlines record per document (speakers only when known), written atomically."""
    lines = []
    for doc in docs:
        record: dict[str, Any] = {"doc_key": doc.doc_key, "sentences": doc.sentences}
        if doc.speakers is not None:
            record["speakers"] = doc.speakers
        record["clusters"] = [[list(span) for span in cluster] for cluster in doc.clusters]
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(str(path), "".join(line + "\n" for line in lines))


def read_documents(path: str | Path) -> list[CorefDocument]:
    """Any of the formats above: a .jsonlines/.jsonl/.json suffix means jsonlines (PreCo when its first record
    has `mention_clusters`); anything else is read as CoNLL-2012."""
    path = Path(path)
    if path.suffix not in JSONLINES_SUFFIXES:
        return read_conll(path)
    first = next((record for _, record in json_lines(path)), {})
    return read_preco(path) if "mention_clusters" in first else read_jsonlines(path)


def read_document_files(pattern: str | Path) -> list[CorefDocument]:
    """`read_documents` of one file, or of every file a glob pattern matches (in sorted order), e.g. LitBank's
    `coref/conll/*.conll`; a pattern that matches nothing raises FileNotFoundError."""
    paths = sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else [str(pattern)]
    if not paths:
        raise FileNotFoundError(f"no coreference files match {str(pattern)!r}")
    return [doc for path in paths for doc in read_documents(path)]
