"""Tokenizers (saving, AutoTokenizer loading) and featurization (window centring, markers, truncation)."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kipjax.data.featurize import (EntityTable, centred_window, featurize_entities, featurize_mentions,
                                   load_zeshel_split)
from kipjax.data.tokenizer import (MARKER_TOKENS, SPECIAL_TOKENS, save_wordpiece_tokenizer,
                                   train_wordpiece_tokenizer, word_vocabulary)
from kipjax.data.zeshel import Document, Mention

ALPHABET = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
            "quebec romeo sierra tango")
TITLES = "Vel Dorath . Order of Dorath"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """Whole-word vocabulary over the test words: one wordpiece per word, easy to check by hand."""
    out = tmp_path_factory.mktemp("tokenizer")
    save_wordpiece_tokenizer(word_vocabulary([ALPHABET, TITLES, "is a bold knight"]), out)
    return AutoTokenizer.from_pretrained(str(out))


def tokens(tokenizer, row):
    return [t for t in tokenizer.convert_ids_to_tokens(row.tolist()) if t != "[PAD]"]


# --------------------------------------------------------------------------------------------- tokenizers

def test_saved_tokenizer_loads_with_special_tokens_first(tokenizer, tmp_path):
    assert tokenizer.convert_ids_to_tokens(list(range(8))) == list(SPECIAL_TOKENS)
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token) == ("[CLS]", "[SEP]", "[PAD]")
    encoded = tokenizer("Vel [M_START] Dorath [M_END] [ENT] KNIGHT")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(encoded) == ["[CLS]", "vel", "[M_START]", "dorath", "[M_END]", "[ENT]",
                                                        "knight", "[SEP]"]
    out = tmp_path / "again"
    save_wordpiece_tokenizer(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), out)
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert {p.name for p in out.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                               "special_tokens_map.json"}


def test_word_vocabulary_is_deterministic_and_spells_unseen_words():
    vocab = word_vocabulary(["b a a", "c a"])
    assert vocab == list(SPECIAL_TOKENS) + ["a", "b", "c", "##a", "##b", "##c"]  # words are single characters
    vocab = word_vocabulary(["Kilo kilo lima", "mike"], min_frequency=2)
    assert vocab[-1] == "kilo" and "lima" not in vocab and "##m" in vocab


def test_save_rejects_vocabulary_without_special_tokens(tmp_path):
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[ENT\]'\]"):
        save_wordpiece_tokenizer([t for t in SPECIAL_TOKENS if t != "[ENT]"] + ["a"], tmp_path)


def test_trained_wordpiece_tokenizer_loads_with_auto_tokenizer(tmp_path):
    corpus = [ALPHABET, TITLES, "Dorath Keep is a ruined keep ."] * 20
    train_wordpiece_tokenizer(corpus, tmp_path, vocab_size=300, min_frequency=2)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.convert_ids_to_tokens(list(range(8))) == list(SPECIAL_TOKENS)
    ids = loaded("[M_START] dorath [M_END]", add_special_tokens=False)["input_ids"]
    assert loaded.convert_ids_to_tokens(ids)[0] == "[M_START]" and loaded.convert_ids_to_tokens(ids)[-1] == "[M_END]"
    assert set(MARKER_TOKENS) <= set(loaded.all_special_tokens)
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()[:8] == list(SPECIAL_TOKENS)


# --------------------------------------------------------------------------------------------- mentions

@pytest.mark.parametrize("left, right, budget, expected", [
    (6, 6, 8, (3, 3)),   # context split evenly around a 2-piece mention
    (6, 6, 7, (2, 3)),   # the odd piece goes right
    (1, 9, 8, (1, 5)),   # left runs out: its leftover goes right
    (9, 1, 8, (5, 1)),   # right runs out: its leftover goes left
    (1, 1, 8, (1, 1)),   # both short: everything fits
])
def test_centred_window_budgets(left, right, budget, expected):
    l_ids, m_ids, r_ids = list(range(100, 100 + left)), [1, 2], list(range(200, 200 + right))
    got_left, got_mention, got_right = centred_window(l_ids, m_ids, r_ids, budget)
    assert (len(got_left), len(got_right)) == expected
    assert got_mention == [1, 2]
    assert got_left == l_ids[len(l_ids) - expected[0]:]  # the context nearest the mention is kept
    assert got_right == r_ids[:expected[1]]


def test_centred_window_truncates_a_long_mention():
    assert centred_window([7], [1, 2, 3, 4, 5], [8], 3) == ([], [1, 2, 3], [])


def featurize_one(tokenizer, text, start, end, max_len):
    document = Document("D", "Title", text, "w")
    m = Mention("M", "D", start, end, "E", "w", "HIGH_OVERLAP")
    return featurize_mentions(tokenizer, [m], {"D": document}, {"E": 3}, max_len)


@pytest.mark.parametrize("start, end, max_len, expected", [
    (10, 11, 12, "[CLS] hotel india juliet [M_START] kilo lima [M_END] mike november oscar [SEP]"),
    (10, 11, 11, "[CLS] india juliet [M_START] kilo lima [M_END] mike november oscar [SEP]"),
    (1, 1, 12, "[CLS] alpha [M_START] bravo [M_END] charlie delta echo foxtrot golf hotel [SEP]"),
    (18, 18, 12, "[CLS] mike november oscar papa quebec romeo [M_START] sierra [M_END] tango [SEP]"),
    (0, 19, 8, "[CLS] [M_START] alpha bravo charlie delta [M_END] [SEP]"),
])
def test_mention_window_and_markers(tokenizer, start, end, max_len, expected):
    features = featurize_one(tokenizer, ALPHABET, start, end, max_len)
    assert tokens(tokenizer, features["input_ids"][0]) == expected.split()
    assert features["gold_entity"].tolist() == [3]


def test_mention_budget_counts_wordpieces_not_words(tokenizer):
    # "oscarpapa" is not in the vocabulary: it is spelled oscar ##p ##a ##p ##a.
    features = featurize_one(tokenizer, "alpha bravo oscarpapa charlie", 3, 3, 8)
    assert tokens(tokenizer, features["input_ids"][0]) == ["[CLS]", "##a", "##p", "##a", "[M_START]", "charlie",
                                                           "[M_END]", "[SEP]"]


def test_mention_arrays_are_padded_int32(tokenizer):
    features = featurize_one(tokenizer, ALPHABET, 1, 1, 32)
    assert features["input_ids"].shape == features["attention_mask"].shape == (1, 32)
    assert features["input_ids"].dtype == features["attention_mask"].dtype == features["gold_entity"].dtype == np.int32
    length = int(features["attention_mask"].sum())
    assert length == 24  # [CLS] + 20 words + 2 markers + [SEP]
    assert (features["input_ids"][0, length:] == tokenizer.pad_token_id).all()


def test_mention_errors(tokenizer):
    document = Document("D", "T", ALPHABET, "w")
    m = Mention("M9", "D", 0, 0, "GONE", "w", "HIGH_OVERLAP")
    with pytest.raises(ValueError, match="mention M9: label document 'GONE' is not in the entity table"):
        featurize_mentions(tokenizer, [m], {"D": document}, {}, 16)
    with pytest.raises(ValueError, match="at least 5"):
        featurize_mentions(tokenizer, [], {}, {}, 4)
    # A BERT-like vocabulary without the markers, as pretrained checkpoints ship.
    raw = Tokenizer(models.WordPiece({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    no_markers = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]",
                                         cls_token="[CLS]", sep_token="[SEP]")
    with pytest.raises(ValueError, match=r"tokenizer lacks the tokens \['\[M_START\]', '\[M_END\]', '\[ENT\]'\]"):
        featurize_mentions(no_markers, [m], {"D": document}, {"GONE": 0}, 16)


# --------------------------------------------------------------------------------------------- entities

@pytest.mark.parametrize("title, max_len, expected", [
    ("Vel Dorath", 16, "[CLS] vel dorath [ENT] vel dorath is a bold knight [SEP]"),
    ("Vel Dorath", 8, "[CLS] vel dorath [ENT] vel dorath is [SEP]"),          # description cut
    ("Order of Dorath", 5, "[CLS] order of [ENT] [SEP]"),                       # title alone overflows
])
def test_entity_layout_and_truncation(tokenizer, title, max_len, expected):
    features = featurize_entities(tokenizer, [Document("E", title, "Vel Dorath is a bold knight", "w")], max_len)
    assert tokens(tokenizer, features["input_ids"][0]) == expected.split()
    assert features["input_ids"].shape == (1, max_len) and features["input_ids"].dtype == np.int32
    assert features["attention_mask"][0].sum() == len(expected.split())


def test_entity_table_orders_worlds_then_file_order():
    docs = {"b": [Document("B1", "t", "x", "b")], "a": [Document("A1", "t", "x", "a"), Document("A2", "t", "x", "a")]}
    table = EntityTable.for_worlds(docs, ["a", "b"])
    assert [d.document_id for d in table.documents] == ["A1", "A2", "B1"]
    assert table.index == {"A1": 0, "A2": 1, "B1": 2}
    assert table.world.tolist() == [0, 0, 1] and table.world.dtype == np.int32
    with pytest.raises(ValueError, match=r"worlds \['c'\] have no documents file"):
        EntityTable.for_worlds(docs, ["c"])


# --------------------------------------------------------------------------------------------- split loader

def test_load_zeshel_split_restricts_entities_to_the_split_worlds(tokenizer, tmp_path):
    worlds = {"zulu": [("Z1", "Vel Dorath", "Vel Dorath is a bold knight"), ("Z2", "Order of Dorath", "alpha")],
              "yank": [("Y1", "Kilo", "kilo lima mike")],
              "xray": [("X1", "Golf", "golf hotel")]}
    (tmp_path / "documents").mkdir()
    for world, docs in worlds.items():
        lines = [json.dumps({"document_id": i, "title": t, "text": x}) for i, t, x in docs]
        (tmp_path / "documents" / f"{world}.json").write_text("\n".join(lines) + "\n")
    mentions = [("m1", "Z2", 0, 0, "Z1", "zulu"), ("m2", "Y1", 1, 2, "Y1", "yank"), ("m3", "Z1", 1, 1, "Z2", "zulu")]
    (tmp_path / "mentions").mkdir()
    (tmp_path / "mentions" / "test.json").write_text("".join(
        json.dumps({"mention_id": i, "context_document_id": c, "start_index": s, "end_index": e,
                    "label_document_id": label, "corpus": w, "category": "LOW_OVERLAP"}) + "\n"
        for i, c, s, e, label, w in mentions))
    mention_arrays, entity_arrays, world_names, mention_ids, entity_ids = load_zeshel_split(
        tmp_path, "test", tokenizer, max_len=16)
    assert world_names == ["yank", "zulu"]  # sorted; xray has no test mention, so none of its entities
    assert mention_ids == ["m1", "m2", "m3"] and entity_ids == ["Y1", "Z1", "Z2"]  # rows named in table order
    assert entity_arrays["entity_world"].tolist() == [0, 1, 1]  # Y1 | Z1 Z2
    assert entity_arrays["input_ids"].shape == (3, 16)
    assert mention_arrays["gold_entity"].tolist() == [1, 0, 2]
    assert mention_arrays["world"].tolist() == [1, 0, 1]
    assert mention_arrays["mention_index"].tolist() == [0, 1, 2]
    assert all(a.dtype == np.int32 for a in [*mention_arrays.values(), *entity_arrays.values()])
    assert tokens(tokenizer, mention_arrays["input_ids"][1]) == "[CLS] kilo [M_START] lima mike [M_END] [SEP]".split()
