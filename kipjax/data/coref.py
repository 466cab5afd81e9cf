"""Readers and writers for coreference corpora: CoNLL-2012 files, jsonlines, and PreCo.

Every format is turned into one `CorefDocument`, whose mentions are INCLUSIVE (start, end) indices into the
document's flattened tokens (the concatenation of its sentences), the convention of the common jsonlines
format (Lee et al., 2017), so metrics and models never see which file a document came from.

CoNLL-2012 (OntoNotes `*_conll`, LitBank `coref/conll/*.conll`, scorer input/output):
  #begin document (NAME); part N        doc_key = f"{NAME}_{int(N)}" (OntoNotes `name_0` convention, as in
  tokens, one per line                  the jsonlines files); without "; part N" doc_key = NAME
  <blank line between sentences>
  #end document
  A token line holds tab-separated columns (or, without tabs, space-separated ones): the word is column 3
  and the coreference annotation is always the LAST column (LitBank leaves it empty rather than `-`). With
  12 or more columns, column 9 is the OntoNotes speaker; a document whose speakers are all placeholders
  (`-`, `_`) gets speakers=None. The coreference column is `-` / `_` / empty for none, else `|`-separated
  items `(12` (opens a mention of cluster 12), `12)` (closes the most recent open one), `(12)` (one token).
  On each line they are applied in the reference scorer's order: one-token mentions, then opens, then closes.

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
from pathlib import Path
from typing import Any, Iterable, Sequence

from kipjax.data.zeshel import json_lines, required_field
from kipjax.run_log import atomic_write_text

Span = tuple[int, int]
SPEAKER_COLUMN = 9
MIN_SPEAKER_COLUMNS = 12
MIN_CONLL_COLUMNS = 5  # doc, part, index, word, coref
NO_COREF = ("-", "_", "")
PLACEHOLDER_SPEAKERS = ("-", "_")
JSONLINES_SUFFIXES = (".jsonlines", ".jsonl", ".json")

_BEGIN = re.compile(r"#begin document (.+?)(?:; part (\S+))?\s*$")
_SINGLE = re.compile(r"\((\d+)\)")
_OPEN = re.compile(r"\((\d+)")
_CLOSE = re.compile(r"(\d+)\)")
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

@dataclasses.dataclass
class _ConllDocumentState:
    """What has been read of one document so far."""

    doc_key: str
    sentences: list[list[str]] = dataclasses.field(default_factory=lambda: [[]])
    speakers: list[list[str]] = dataclasses.field(default_factory=lambda: [[]])
    has_speaker_column: bool = True
    clusters: dict[int, list[Span]] = dataclasses.field(default_factory=dict)
    open_mentions: dict[int, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)  # (token, line)
    num_tokens: int = 0

    def add_token(self, columns: list[str], path: Path, line_number: int) -> None:
        where = f"{path}:{line_number}"
        if len(columns) < MIN_CONLL_COLUMNS:
            raise ValueError(f"{where}: expected a token line with at least {MIN_CONLL_COLUMNS} columns (doc, "
                             f"part, index, word, ..., coreference), got {len(columns)}")
        self.sentences[-1].append(columns[3])
        self.has_speaker_column &= len(columns) >= MIN_SPEAKER_COLUMNS
        self.speakers[-1].append(columns[SPEAKER_COLUMN] if len(columns) > SPEAKER_COLUMN else "")
        self._add_coreference(columns[-1].strip(), where, line_number)
        self.num_tokens += 1

    def _add_coreference(self, annotation: str, where: str, line_number: int) -> None:
        if annotation in NO_COREF:
            return
        items = annotation.split("|")
        if not all(_SINGLE.fullmatch(i) or _OPEN.fullmatch(i) or _CLOSE.fullmatch(i) for i in items):
            raise ValueError(f"{where}: bad coreference annotation {annotation!r}; expected '-' or '|'-separated "
                             "items '(N', 'N)' or '(N)'")
        for pattern in (_SINGLE, _OPEN, _CLOSE):  # the reference scorer's order
            for item in items:
                match = pattern.fullmatch(item)
                if not match:
                    continue
                cluster_id = int(match.group(1))
                if pattern is _SINGLE:
                    self.clusters.setdefault(cluster_id, []).append((self.num_tokens, self.num_tokens))
                elif pattern is _OPEN:
                    self.clusters.setdefault(cluster_id, [])
                    self.open_mentions.setdefault(cluster_id, []).append((self.num_tokens, line_number))
                elif self.open_mentions.get(cluster_id):
                    start, _ = self.open_mentions[cluster_id].pop()
                    self.clusters[cluster_id].append((start, self.num_tokens))
                else:
                    raise ValueError(f"{where}: mention of cluster {cluster_id} is closed but was never opened")

    def end_sentence(self) -> None:
        if self.sentences[-1]:
            self.sentences.append([])
            self.speakers.append([])

    def finish(self, path: Path) -> CorefDocument:
        for cluster_id, starts in self.open_mentions.items():
            if starts:
                raise ValueError(f"{path}:{starts[0][1]}: mention of cluster {cluster_id} opened here is never "
                                 "closed before '#end document'")
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


def _doc_key(header: re.Match, where: str) -> str:
    name, part = header.group(1), header.group(2)
    if name.startswith("(") and name.endswith(")"):
        name = name[1:-1]
    if part is None:
        return name
    if not part.isdigit():
        raise ValueError(f"{where}: expected '#begin document (NAME); part N' with an integer N, got part {part!r}")
    return f"{name}_{int(part)}"


def read_conll(path: str | Path) -> list[CorefDocument]:
    """All documents of a CoNLL-2012 file, in file order."""
    path = Path(path)
    documents: list[CorefDocument] = []
    state: _ConllDocumentState | None = None
    with path.open(encoding="utf-8") as f:
        for line_number, raw in enumerate(f, start=1):
            line, where = raw.rstrip("\r\n"), f"{path}:{line_number}"
            if line.startswith("#begin document"):
                header = _BEGIN.match(line)
                if state is not None or header is None:
                    raise ValueError(f"{where}: unexpected '{line:.60}'; expected '#begin document (NAME); part N' "
                                     "after the previous document's '#end document'")
                state = _ConllDocumentState(_doc_key(header, where))
            elif line.startswith("#end document"):
                if state is None:
                    raise ValueError(f"{where}: '#end document' without '#begin document'")
                documents.append(state.finish(path))
                state = None
            elif not line.strip():
                if state is not None:
                    state.end_sentence()
            elif state is None or line.startswith("#"):
                raise ValueError(f"{where}: expected a token line inside '#begin document' ... '#end document', "
                                 f"got '{line:.60}'")
            else:
                state.add_token(line.split("\t") if "\t" in line else line.split(), path, line_number)
    if state is not None:
        raise ValueError(f"{path}: document {state.doc_key!r} has no '#end document'")
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
