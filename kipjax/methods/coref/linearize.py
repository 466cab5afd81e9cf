"""Sequence representations of a coreference annotation for seq2seq coreference (chapter 7, sec. 7.3.1-7.3.3).

A document is a token sequence x (any hashable tokens: words in tests, token ids in the model) and its
annotation is a list of clusters of INCLUSIVE 0-based (start, end) spans. Representations (the decoder input z
without its start symbol; `Symbols` names the special tokens):

- full linearization, integer after (the default): every source token in order, a mention (i, j, l) written
  `<m> x_i .. x_j | l </m>`;
- integer before (ablation of Table 7.4): `<m> l | x_i .. x_j </m>`;
- integer free: `<m> x_i .. x_j </m_l>`, the cluster hard-coded in the closing symbol;
- partial linearization: only the tokens inside some mention, with the symbols of the integer-after form,
  optionally per sentence: `<sentence> (mentions of sentence s) </sentence>` for every sentence s, the source
  document then being `mark_sentences(sentences)` so that encoder input and linearization agree.

Nesting: at a token, the mentions starting there open outermost (longest) first, and after it the mentions
ending there close innermost (shortest) first. Crossing mentions (i1 < i2 <= j1 < j2) cannot be written as
brackets and raise ValueError, as does a span in two clusters; `drop_crossing_mentions` and
`drop_duplicate_mentions` clean real data first. Clusters are numbered 0, 1, 2, ... in order of the first
appearance of their identity in the sequence (the integer or `</m_l>`, so at closing except for integer
before), hence one annotation always gives one sequence.

Action sequences (decoder output y for decoder input z = (<s>, linearization), eq. 7.1): `token_actions` is
y_t = z_{t+1} ending with eos; `copy_actions` writes `<c>` for each source token (full linearizations only);
`new_actions` writes `<new>` for the first `</m_l>` of every cluster. `ActionDecoder` is the map F that
decoding applies to turn each predicted action back into the next decoder input.

Parsing (`parse_full`, `parse_partial`) reads model output and never raises on it: decoding stops at eos; an
unmatched `</m>` or `|` is ignored; a mention left open, one closed without a cluster identity, one whose
identity tokens do not decode, or an empty one is dropped; a span produced twice keeps its first cluster.
The identity of integer-after/partial runs from `|` to the next special symbol, which must be `</m>`; that of
integer-before from `<m>` to `|`. Clusters come back in `canonical` form.
"""
from __future__ import annotations

import dataclasses
import enum
import itertools
import re
from collections import defaultdict
from typing import Callable, Generic, Hashable, Iterable, Literal, Sequence, TypeVar

from kipjax.data.coref import Span, canonical
from kipjax.methods.coref.align import align_mentions, align_mentions_by_sentence

T = TypeVar("T", bound=Hashable)
Clusters = list[list[Span]]
Identity = Literal["after", "before", "free"]
IDENTITIES: tuple[Identity, ...] = ("after", "before", "free")


@dataclasses.dataclass(frozen=True)
class Symbols(Generic[T]):
    """The special tokens of the representations, and how cluster numbers are written with tokens.

    `cluster_end(l)` is the integer-free closing symbol `</m_l>` and `cluster_index` its inverse (None for any
    other token); `encode_int` / `decode_int` write / read a cluster number as a token list (several subword
    ids in a model vocabulary), `decode_int` returning None when the tokens are not a number.
    """

    mention_start: T
    mention_end: T
    separator: T
    copy: T
    new: T
    sentence_start: T
    sentence_end: T
    eos: T
    cluster_end: Callable[[int], T]
    cluster_index: Callable[[T], int | None]
    encode_int: Callable[[int], list[T]]
    decode_int: Callable[[Sequence[T]], int | None]
    _fixed: frozenset = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        fixed = frozenset((self.mention_start, self.mention_end, self.separator, self.copy, self.new,
                           self.sentence_start, self.sentence_end, self.eos))
        if len(fixed) != 8:
            raise ValueError("Symbols: the eight special symbols must be distinct")
        object.__setattr__(self, "_fixed", fixed)

    def is_special(self, token: T) -> bool:
        return token in self._fixed or self.cluster_index(token) is not None


_STRING_CLUSTER_END = re.compile(r"</m_(0|[1-9][0-9]*)>")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _string_cluster_end(label: int) -> str:
    return f"</m_{label}>"


def _string_cluster_index(token: str) -> int | None:
    match = isinstance(token, str) and _STRING_CLUSTER_END.fullmatch(token)
    return int(match.group(1)) if match else None


def _string_encode_int(number: int) -> list[str]:
    return [str(number)]


def _string_decode_int(tokens: Sequence[str]) -> int | None:
    if len(tokens) == 1 and isinstance(tokens[0], str) and _DECIMAL.fullmatch(tokens[0]):
        return int(tokens[0])
    return None


def string_symbols() -> Symbols[str]:
    """Symbols over words, as printed in the chapter; a cluster number is one decimal token."""
    return Symbols(mention_start="<m>", mention_end="</m>", separator="|", copy="<c>", new="<new>",
                   sentence_start="<sentence>", sentence_end="</sentence>", eos="</s>",
                   cluster_end=_string_cluster_end, cluster_index=_string_cluster_index,
                   encode_int=_string_encode_int, decode_int=_string_decode_int)


def _crossing_pairs(spans: Iterable[Span]) -> list[tuple[Span, Span]]:
    """(kept, dropped) pairs of the crossing policy (see `drop_crossing_mentions`); empty iff none cross."""
    pairs = []
    open_kept: list[Span] = []  # kept mentions still open at the current start, each nested in the previous
    for span in sorted(set(spans), key=lambda s: (s[0], -s[1])):
        while open_kept and open_kept[-1][1] < span[0]:
            open_kept.pop()
        if open_kept and open_kept[-1][1] < span[1]:
            pairs.append((open_kept[-1], span))
        else:
            open_kept.append(span)
    return pairs


def _as_span(span: Sequence[int], where: str) -> Span:
    if len(span) != 2:
        raise ValueError(f"{where}: expected an inclusive (start, end) span, got {span!r}")
    return int(span[0]), int(span[1])


def drop_crossing_mentions(clusters: Sequence[Sequence[Span]]) -> tuple[Clusters, list[Span]]:
    """Make an annotation writable as brackets by dropping crossing mentions.

    Policy: distinct mentions are visited in (start, -end) order, left to right and outer before inner, and
    each is kept unless it crosses a mention kept before it. Returns the clusters (input order, spans in
    first-occurrence order, emptied clusters removed) and the dropped spans in visiting order.
    """
    clusters = [[_as_span(span, f"clusters[{c}]") for span in cluster] for c, cluster in enumerate(clusters)]
    dropped = [span for _, span in _crossing_pairs(span for cluster in clusters for span in cluster)]
    dropped_set = set(dropped)
    kept = ([span for span in dict.fromkeys(cluster) if span not in dropped_set] for cluster in clusters)
    return [cluster for cluster in kept if cluster], dropped


def drop_duplicate_mentions(clusters: Sequence[Sequence[Span]]) -> tuple[Clusters, list[Span]]:
    """Keep a span that occurs in several clusters in the first one only (one mention, one entity).

    Returns the clusters (input order, emptied clusters removed) and the dropped later copies; a span repeated
    inside one cluster is merged silently since that does not change the annotation.
    """
    seen: set[Span] = set()
    result, dropped = [], []
    for c, cluster in enumerate(clusters):
        kept = []
        for span in dict.fromkeys(_as_span(span, f"clusters[{c}]") for span in cluster):
            (dropped if span in seen else kept).append(span)
        seen.update(kept)
        if kept:
            result.append(kept)
    return result, dropped


def _sentence_bounds(num_tokens: int, sentence_lengths: Sequence[int]) -> list[tuple[int, int]]:
    """[begin, end) token bounds of each sentence, checked against the document length."""
    valid = all(int(length) == length >= 0 for length in sentence_lengths)
    if not valid or sum(sentence_lengths) != num_tokens:
        raise ValueError(f"sentence_lengths: expected non-negative integers summing to the document's "
                         f"{num_tokens} tokens, got {list(sentence_lengths)}")
    ends = list(itertools.accumulate(int(length) for length in sentence_lengths))
    return list(zip([0] + ends[:-1], ends))


def _checked_mentions(tokens: Sequence[T], clusters: Sequence[Sequence[Span]],
                      symbols: Symbols[T]) -> dict[Span, int]:
    """{span: index of its cluster} after checking that the annotation can be linearized."""
    for position, token in enumerate(tokens):
        if symbols.is_special(token):
            raise ValueError(f"tokens[{position}]: source token {token!r} is a special symbol, so the sequence "
                             "could not be read back")
    cluster_of: dict[Span, int] = {}
    for c, cluster in enumerate(clusters):
        for raw_span in cluster:
            span = _as_span(raw_span, f"clusters[{c}]")
            if not 0 <= span[0] <= span[1] < len(tokens):
                raise ValueError(f"clusters[{c}]: mention {span} is not an inclusive span within the document's "
                                 f"{len(tokens)} tokens")
            if cluster_of.setdefault(span, c) != c:
                raise ValueError(f"clusters: mention {span} is in clusters {cluster_of[span]} and {c}; "
                                 "drop_duplicate_mentions keeps the first")
    crossing = _crossing_pairs(cluster_of)
    if crossing:
        raise ValueError(f"clusters: mentions {crossing[0][0]} and {crossing[0][1]} cross, so they cannot be "
                         "written as nested brackets; drop_crossing_mentions removes one")
    return cluster_of


def _write(tokens: Sequence[T], clusters: Sequence[Sequence[Span]], symbols: Symbols[T], identity: Identity,
           mentions_only: bool, sentence_lengths: Sequence[int] | None) -> list[T]:
    if identity not in IDENTITIES:
        raise ValueError(f"identity: expected one of {IDENTITIES}, got {identity!r}")
    cluster_of = _checked_mentions(tokens, clusters, symbols)
    marked = sentence_lengths is not None
    bounds = _sentence_bounds(len(tokens), sentence_lengths) if marked else [(0, len(tokens))]
    sentence_of = [s for s, (begin, end) in enumerate(bounds) for _ in range(begin, end)]
    opening: dict[int, list[Span]] = defaultdict(list)
    closing: dict[int, list[Span]] = defaultdict(list)
    covered: set[int] = set()
    for span in sorted(cluster_of, key=lambda s: (s[0], -s[1])):  # outermost first
        opening[span[0]].append(span)
        covered.update(range(span[0], span[1] + 1))
        if sentence_of[span[0]] != sentence_of[span[1]]:
            raise ValueError(f"clusters: mention {span} crosses a sentence boundary (sentence_lengths "
                             f"{list(sentence_lengths)})")
    for span in sorted(cluster_of, key=lambda s: (s[1], -s[0])):  # innermost first
        closing[span[1]].append(span)
    labels: dict[int, int] = {}

    def label(span: Span) -> int:
        return labels.setdefault(cluster_of[span], len(labels))

    sequence: list[T] = []
    for begin, end in bounds:
        if marked:
            sequence.append(symbols.sentence_start)
        for position in range(begin, end):
            for span in opening[position]:
                sequence.append(symbols.mention_start)
                if identity == "before":
                    sequence += [*symbols.encode_int(label(span)), symbols.separator]
            if not mentions_only or position in covered:
                sequence.append(tokens[position])
            for span in closing[position]:
                if identity == "after":
                    sequence += [symbols.separator, *symbols.encode_int(label(span)), symbols.mention_end]
                elif identity == "before":
                    sequence.append(symbols.mention_end)
                else:
                    sequence.append(symbols.cluster_end(label(span)))
        if marked:
            sequence.append(symbols.sentence_end)
    return sequence


def linearize(tokens: Sequence[T], clusters: Sequence[Sequence[Span]], symbols: Symbols[T],
              identity: Identity = "after") -> list[T]:
    """Full linearization of the annotation: every source token, mentions bracketed (module doc)."""
    return _write(tokens, clusters, symbols, identity, mentions_only=False, sentence_lengths=None)


def linearize_partial(tokens: Sequence[T], clusters: Sequence[Sequence[Span]], symbols: Symbols[T],
                      sentence_lengths: Sequence[int] | None = None) -> list[T]:
    """Partial linearization (mention tokens only, integer after); with `sentence_lengths`, every sentence is
    wrapped in sentence markers, and a mention crossing a sentence boundary raises ValueError."""
    return _write(tokens, clusters, symbols, "after", mentions_only=True, sentence_lengths=sentence_lengths)


def mark_sentences(sentences: Sequence[Sequence[T]], symbols: Symbols[T]) -> list[T]:
    """The source document with sentence markers, for the encoder of the sentence-marker partial model."""
    return [token for sentence in sentences for token in (symbols.sentence_start, *sentence, symbols.sentence_end)]


class _Kind(enum.Enum):
    CONTENT = "content"  # a source token (a mention token in a partial linearization)
    SYMBOL = "symbol"
    IDENTITY = "identity"  # part of a written cluster number


@dataclasses.dataclass
class _Scan:
    """A sequence read leniently: the kind of each token, the content tokens, and the mentions found as
    (start, end, cluster label) over content positions."""

    kinds: list[_Kind] = dataclasses.field(default_factory=list)
    content: list = dataclasses.field(default_factory=list)
    mentions: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)

    def add_mention(self, start: int, end: int, label: int | None) -> None:
        if label is not None and start <= end:
            self.mentions.append((start, end, label))

    def add_token(self, token, symbols: Symbols) -> None:
        """A token that is not part of a mention's syntax: content unless special (then ignored)."""
        if symbols.is_special(token):
            self.kinds.append(_Kind.SYMBOL)
        else:
            self.kinds.append(_Kind.CONTENT)
            self.content.append(token)


def _scan_integer_after(sequence: Sequence[T], symbols: Symbols[T]) -> _Scan:
    scan = _Scan()
    open_starts: list[int] = []
    closing: tuple[int, int] | None = None  # (start, end) of the mention whose `|` was read
    identity: list[T] = []
    for token in sequence:
        if closing is not None:
            if token == symbols.mention_end:
                scan.add_mention(*closing, symbols.decode_int(identity))
                closing = None
                scan.kinds.append(_Kind.SYMBOL)
                continue
            if not symbols.is_special(token):
                identity.append(token)
                scan.kinds.append(_Kind.IDENTITY)
                continue
            closing = None  # the identity did not end with </m>: that mention is dropped
        if token == symbols.mention_start:
            open_starts.append(len(scan.content))
        elif token == symbols.separator and open_starts:
            closing, identity = (open_starts.pop(), len(scan.content) - 1), []
        elif token == symbols.mention_end and open_starts:
            open_starts.pop()  # closed without `| l`: no cluster identity, dropped
        scan.add_token(token, symbols)
    return scan


def _scan_integer_before(sequence: Sequence[T], symbols: Symbols[T]) -> _Scan:
    scan = _Scan()
    open_mentions: list[tuple[int, int | None]] = []  # (start, label)
    identity: list[T] | None = None  # tokens after the last `<m>`, until its `|`
    for token in sequence:
        if identity is not None:
            if token == symbols.separator:
                open_mentions.append((len(scan.content), symbols.decode_int(identity)))
                identity = None
                scan.kinds.append(_Kind.SYMBOL)
                continue
            if not symbols.is_special(token):
                identity.append(token)
                scan.kinds.append(_Kind.IDENTITY)
                continue
            open_mentions.append((len(scan.content), None))  # no `|`: the mention has no identity
            identity = None
        if token == symbols.mention_start:
            identity = []
        elif token == symbols.mention_end and open_mentions:
            start, label = open_mentions.pop()
            scan.add_mention(start, len(scan.content) - 1, label)
        scan.add_token(token, symbols)
    return scan


def _scan_integer_free(sequence: Sequence[T], symbols: Symbols[T]) -> _Scan:
    scan = _Scan()
    open_starts: list[int] = []
    for token in sequence:
        label = symbols.cluster_index(token)
        if token == symbols.mention_start:
            open_starts.append(len(scan.content))
        elif label is not None and open_starts:
            scan.add_mention(open_starts.pop(), len(scan.content) - 1, label)
        scan.add_token(token, symbols)
    return scan


_SCANNERS: dict[str, Callable[[Sequence, Symbols], _Scan]] = {
    "after": _scan_integer_after, "before": _scan_integer_before, "free": _scan_integer_free}


def _scan(sequence: Sequence[T], symbols: Symbols[T], identity: Identity) -> _Scan:
    if identity not in _SCANNERS:
        raise ValueError(f"identity: expected one of {IDENTITIES}, got {identity!r}")
    return _SCANNERS[identity](sequence, symbols)


def token_actions(linearization: Sequence[T], symbols: Symbols[T]) -> list[T]:
    """Token action: y_t = z_{t+1} for z = (<s>, *linearization), so y = (*linearization, eos)."""
    return [*linearization, symbols.eos]


def copy_actions(linearization: Sequence[T], symbols: Symbols[T], identity: Identity = "after") -> list[T]:
    """Copy action: token actions with every source token replaced by `<c>` (cluster numbers are kept).
    Only for full linearizations: a partial one skips source tokens, which `<c>` cannot express."""
    kinds = _scan(linearization, symbols, identity).kinds
    copied = [symbols.copy if kind is _Kind.CONTENT else token for token, kind in zip(linearization, kinds)]
    return [*copied, symbols.eos]


def new_actions(actions: Sequence[T], symbols: Symbols[T]) -> list[T]:
    """Integer-free actions with the first `</m_l>` of each cluster replaced by `<new>` (sec. 7.3.3)."""
    result, seen = [], 0
    for action in actions:
        label = symbols.cluster_index(action)
        if label is not None and label >= seen:
            if label != seen:
                raise ValueError(f"actions: {action!r} is the first closing of cluster {label} but only {seen} "
                                 "clusters came before; <new> needs clusters numbered by first appearance")
            action, seen = symbols.new, seen + 1
        result.append(action)
    return result


class ActionDecoder(Generic[T]):
    """The deterministic map F of eq. 7.1: each predicted action y_t gives the next decoder input z_{t+1}.

    `<c>` copies the next source token (eos once the source is used up), `<new>` becomes `</m_{l+1}>` where
    `</m_0> .. </m_l>` have appeared, and any other action is its own token.
    """

    def __init__(self, source: Sequence[T], symbols: Symbols[T]):
        self._source, self._symbols = source, symbols
        self._next_source = 0
        self._next_cluster = 0

    def step(self, action: T) -> T:
        symbols = self._symbols
        if action == symbols.copy:
            if self._next_source == len(self._source):
                return symbols.eos
            self._next_source += 1
            return self._source[self._next_source - 1]
        if action == symbols.new:
            action = symbols.cluster_end(self._next_cluster)
        label = symbols.cluster_index(action)
        if label is not None:
            self._next_cluster = max(self._next_cluster, label + 1)
        return action


def rebuild_linearization(actions: Sequence[T], source: Sequence[T], symbols: Symbols[T]) -> list[T]:
    """The linearization that `actions` (any of the action sequences, up to eos) stand for."""
    decoder = ActionDecoder(source, symbols)
    inputs = (decoder.step(action) for action in actions)
    return list(itertools.takewhile(lambda token: token != symbols.eos, inputs))


def _until_eos(sequence: Sequence[T], symbols: Symbols[T]) -> list[T]:
    return list(itertools.takewhile(lambda token: token != symbols.eos, sequence))


def _clusters(mentions: Iterable[tuple[int, int, int]]) -> Clusters:
    """Group labelled mentions into canonical clusters; a span seen again keeps its first label."""
    by_label: dict[int, list[Span]] = defaultdict(list)
    seen: set[Span] = set()
    for start, end, label in mentions:
        if (start, end) not in seen:
            seen.add((start, end))
            by_label[label].append((start, end))
    return canonical(by_label.values())


def parse_full(linearization: Sequence[T], symbols: Symbols[T], identity: Identity = "after",
               num_source_tokens: int | None = None) -> Clusters:
    """Clusters of a full linearization (model output welcome, see the module doc): source positions are
    counted over its non-special tokens, and with `num_source_tokens` mentions past the document are dropped."""
    scan = _scan(_until_eos(linearization, symbols), symbols, identity)
    limit = len(scan.content) if num_source_tokens is None else num_source_tokens
    return _clusters(mention for mention in scan.mentions if mention[1] < limit)


def _sentence_segments(sequence: Sequence[T], symbols: Symbols[T]) -> list[list[T]]:
    """The tokens after each `<sentence>` up to the next sentence marker; tokens outside sentences are lost."""
    segments: list[list[T]] = []
    current: list[T] | None = None
    for token in sequence:
        if token == symbols.sentence_start:
            current = []
            segments.append(current)
        elif token == symbols.sentence_end:
            current = None
        elif current is not None:
            current.append(token)
    return segments


def parse_partial(linearization: Sequence[T], source: Sequence[T], symbols: Symbols[T],
                  sentence_lengths: Sequence[int] | None = None, gap_penalty: float = 0.0) -> Clusters:
    """Clusters of a partial linearization, located in `source` (without sentence markers) by alignment.

    With `sentence_lengths` the i-th `<sentence>` group is aligned to the i-th sentence only (groups beyond
    the last sentence are ignored); without, the whole sequence is aligned to the whole document.
    """
    sequence = _until_eos(linearization, symbols)
    if sentence_lengths is None:
        scans = [_scan_integer_after(sequence, symbols)]
        aligned = [align_mentions(source, scans[0].content, [m[:2] for m in scans[0].mentions], gap_penalty)]
    else:
        sentences = [source[begin:end] for begin, end in _sentence_bounds(len(source), sentence_lengths)]
        segments = _sentence_segments(sequence, symbols)[:len(sentences)]
        scans = [_scan_integer_after(segment, symbols) for segment in segments]
        aligned = align_mentions_by_sentence(
            sentences, [(scan.content, [m[:2] for m in scan.mentions]) for scan in scans], gap_penalty)
    return _clusters((*span, mention[2]) for scan, spans in zip(scans, aligned)
                     for mention, span in zip(scan.mentions, spans) if span is not None)
