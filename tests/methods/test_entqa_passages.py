"""EntQA's passages: the authors' windowing, mentions fully inside a window, and the char <-> piece maps."""
import math

import pytest

from kipjax.data.demo import DEMO_ZESHEL_DIR
from kipjax.methods.entqa import passages as ps
from kipjax.models.hf import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(DEMO_ZESHEL_DIR / "tokenizer"))


TEXT = ("CRICKET - Varn beat Tolbek by five wickets at the Varn River ground on Sunday , "
        "while the Tolbek captain Arin Selt said his side would return to Varn next season . "
        "Selt scored forty runs before he was caught , and Varn 's bowlers took the last four wickets quickly .")


def links_of(*surfaces: str) -> list:
    """(start, end, title) of the given surface forms' occurrences, in order, titled by the surface."""
    out, at = [], 0
    for surface in surfaces:
        start = TEXT.index(surface, at)
        out.append((start, start + len(surface), surface.title()))
        at = start + len(surface)
    return out


def test_windows_follow_the_authors_preprocessing(tokenizer):
    ids, _ = ps.document_pieces(tokenizer, TEXT)
    passages = ps.cut_passages("d", TEXT, [], tokenizer, length=32, stride=16)
    # the authors: for ins_num in range(ceil(len / stride)): text_ids[ins_num * stride: ins_num * stride + 30]
    expected = [ids[i * 16:i * 16 + 30] for i in range(math.ceil(len(ids) / 16))]
    assert len(ids) > 30 and [list(p.piece_ids) for p in passages] == expected
    assert [p.offset for p in passages] == [i * 16 for i in range(len(expected))]
    short = ps.cut_passages("s", "Varn beat Tolbek .", [], tokenizer)
    assert len(short) == 1 and short[0].offset == 0
    assert ps.window_starts(30, 30, 16) == [0, 16] and ps.window_starts(29, 30, 16) == [0]


def test_a_mention_belongs_to_the_passages_holding_all_its_pieces(tokenizer):
    links = links_of("Varn", "Tolbek", "Varn River", "Tolbek", "Arin Selt", "Varn", "Selt", "Varn")
    ids, spans = ps.document_pieces(tokenizer, TEXT)
    passages = ps.cut_passages("d", TEXT, links, tokenizer, length=12, stride=5)
    for start, end, title in links:
        first, last = ps.char_span_to_pieces(spans, start, end)
        holders = [p for p in passages if p.offset <= first and last < p.offset + len(p.piece_ids)]
        assert holders  # stride < window: every short mention fits some window
        for p in passages:
            found = (first - p.offset, last - p.offset, title) in p.mentions
            assert found == (p in holders)
            if found:  # pieces back to characters: the link's own span
                assert p.char_span(first - p.offset, last - p.offset) == (start, end)
    assert sum(len(p.mentions) for p in passages) > len(links)  # overlapping windows repeat mentions


def test_char_and_piece_maps_round_trip(tokenizer):
    ids, spans = ps.document_pieces(tokenizer, TEXT)
    assert len(ids) == len(spans)
    for i, (start, end) in enumerate(spans):
        if ids[i] != tokenizer.unk_token_id:  # the piece spells its characters
            assert TEXT[start:end].lower() == tokenizer.convert_ids_to_tokens(ids[i]).removeprefix("##")
        assert ps.char_span_to_pieces(spans, start, end) == (i, i)
    with pytest.raises(ValueError, match="cover no word piece"):
        ps.char_span_to_pieces(spans, TEXT.index(" - "), TEXT.index(" - ") + 1)  # a lone space
    with pytest.raises(ValueError, match="outside its"):
        ps.cut_passages("d", TEXT, [(0, len(TEXT) + 1, "X")], tokenizer)
    with pytest.raises(ValueError, match="outside the passage"):
        ps.cut_passages("d", TEXT, [], tokenizer)[0].char_span(3, 40)


def test_topic_text_modes():
    assert ps.topic_text("CRICKET - Varn beat", "first_token") == "CRICKET"
    assert ps.topic_text("Varn's, coach said", "first_token") == "Varn"
    assert ps.topic_text("Varn beat Tolbek. Then more.", "first_sentence") == "Varn beat Tolbek"
    assert ps.topic_text("anything", "none") == ""
    with pytest.raises(ValueError, match="topic mode"):
        ps.topic_text("x", "title")
