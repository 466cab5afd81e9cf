"""EntQA's token layouts, checked token by token on a small BERT-style vocabulary with the reserved markers."""
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax.data.tokenizer import SPECIAL_TOKENS, save_wordpiece_tokenizer
from kipjax.methods.entqa import inputs
from kipjax.methods.joint_rerank import pack_pairs

WORDS = ["varn", "beat", "tolbek", "river", "city", "in", "arvenia", "a", "the", "soccer"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = [*SPECIAL_TOKENS, "[unused1]", "[unused2]", *WORDS]
    return save_wordpiece_tokenizer(vocab, tmp_path_factory.mktemp("entqa_tok"))


def ids(tokenizer, *tokens):
    return tokenizer.convert_tokens_to_ids(list(tokens))


def test_entities_read_cls_title_marker_description_sep(tokenizer):
    table = inputs.entity_tokens(tokenizer, ["Varn River", "Varn"], ["a river in Arvenia", "a city " * 10], 8)
    assert table.shape == (2, 8) and table.dtype == np.int32
    assert table[0].tolist() == ids(tokenizer, "[CLS]", "varn", "river", "[unused2]", "a", "river", "in", "[SEP]")
    assert table[1].tolist() == ids(tokenizer, "[CLS]", "varn", "[unused2]", "a", "city", "a", "city", "[SEP]")
    short = inputs.entity_tokens(tokenizer, ["Varn"], ["a city"], 8)[0]
    assert short.tolist() == ids(tokenizer, "[CLS]", "varn", "[unused2]", "a", "city", "[SEP]") + [0, 0]


def test_the_retriever_passage_carries_the_topic_after_a_marker(tokenizer):
    p = ids(tokenizer, "varn", "beat", "tolbek")
    row = inputs.retriever_passage(tokenizer, p, ids(tokenizer, "soccer"), 16)
    assert row == ids(tokenizer, "[CLS]", "varn", "beat", "tolbek", "[SEP]", "[unused1]", "soccer")
    assert inputs.retriever_passage(tokenizer, p, [], 16) == ids(tokenizer, "[CLS]", "varn", "beat", "tolbek", "[SEP]")
    assert len(inputs.retriever_passage(tokenizer, p, ids(tokenizer, "soccer"), 5)) == 5


def test_the_reader_pairs_passage_and_entity_with_types(tokenizer):
    p = ids(tokenizer, "varn", "beat", "tolbek")
    first = inputs.reader_first_part(tokenizer, p, ids(tokenizer, "soccer"), 8)
    assert first == ids(tokenizer, "[CLS]", "varn", "beat", "tolbek", "[unused1]", "soccer", "[SEP]")
    entity = inputs.entity_tokens(tokenizer, ["Varn"], ["a city in Arvenia"], 9)
    pad = lambda row, n: np.array([row + [tokenizer.pad_token_id] * (n - len(row))])
    pair, mask, types = (np.asarray(x)[0, 0] for x in pack_pairs(
        jnp.asarray(pad(first, 8)), jnp.asarray(pad([1] * len(first), 8)), jnp.asarray(entity[None]),
        jnp.asarray((entity != tokenizer.pad_token_id)[None].astype(np.int32))))
    expected = ids(tokenizer, "[CLS]", "varn", "beat", "tolbek", "[unused1]", "soccer", "[SEP]",
                   "varn", "[unused2]", "a", "city", "in", "arvenia", "[SEP]")
    assert pair.tolist() == expected + [0] * 2 and mask.tolist() == [1] * 14 + [0] * 2
    assert types.tolist() == [0] * 7 + [1] * 7 + [0] * 2


def test_the_reader_cuts_the_topic_never_the_passage(tokenizer):
    p = ids(tokenizer, "varn", "beat", "tolbek")
    topic = ids(tokenizer, "the", "soccer")
    assert inputs.reader_first_part(tokenizer, p, topic, 7) == ids(
        tokenizer, "[CLS]", "varn", "beat", "tolbek", "[unused1]", "the", "[SEP]")
    assert inputs.reader_first_part(tokenizer, p, topic, 6) == ids(tokenizer, "[CLS]", "varn", "beat", "tolbek",
                                                                   "[SEP]")  # a marker without a topic is dropped
    with pytest.raises(ValueError, match="does not fit"):
        inputs.reader_first_part(tokenizer, p, [], 4)


def test_a_tokenizer_without_the_markers_is_refused(tmp_path):
    plain = save_wordpiece_tokenizer([*SPECIAL_TOKENS, *WORDS], tmp_path)
    with pytest.raises(ValueError, match=r"no \[unused2\] token"):
        inputs.entity_tokens(plain, ["Varn"], ["a city"])
