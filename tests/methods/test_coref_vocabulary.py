"""Coreference symbols in a SentencePiece-style vocabulary, digit pieces, and the new rows' initialisation."""
import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast

from kipjax.methods.coref.linearize import linearize, parse_full
from kipjax.methods.coref.vocabulary import (add_coref_tokens, cluster_end_token, init_new_token_rows,
                                             integer_token_ids)
from kipjax.models.t5 import T5Config

PIECES = ["<pad>", "</s>", "<unk>", "\u2581the", "\u2581cat", "\u2581sat", "\u2581it", "\u2581purred", "\u2581",
          "\u25811", "\u25812", "1", "2", "0", "\u258110", "s", "a", "t"]


def tiny_t5_tokenizer() -> PreTrainedTokenizerFast:
    """A Unigram (SentencePiece-like) tokenizer laid out like T5's: pad 0, eos 1, unk 2."""
    tok = tokenizers.Tokenizer(models.Unigram([(p, -float(i)) for i, p in enumerate(PIECES)], unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def test_symbols_become_single_new_ids_and_cluster_numbers_round_trip():
    tokenizer = tiny_t5_tokenizer()
    before = len(tokenizer)
    symbols = add_coref_tokens(tokenizer, max_clusters=3)
    new_ids = [symbols.mention_start, symbols.mention_end, symbols.separator, symbols.copy, symbols.new,
               symbols.sentence_start, symbols.sentence_end, *(symbols.cluster_end(k) for k in range(3))]
    assert sorted(new_ids) == list(range(before, before + 10))
    assert symbols.eos == 1 and symbols.cluster_index(symbols.cluster_end(2)) == 2
    assert tokenizer.convert_ids_to_tokens(symbols.cluster_end(1)) == cluster_end_token(1)
    assert tokenizer.encode("<m> the cat | 12 </m>", add_special_tokens=False)[0] == symbols.mention_start
    for label in (0, 1, 2, 10, 12, 21):
        assert symbols.decode_int(symbols.encode_int(label)) == label
    assert symbols.decode_int([symbols.mention_start]) is None
    # Idempotent: a tokenizer that already has the symbols keeps their ids.
    assert add_coref_tokens(tokenizer, max_clusters=3).separator == symbols.separator
    # The whole linearization round-trips through token ids.
    source = tokenizer.encode("the cat sat it purred", add_special_tokens=False)
    clusters = [[(0, 1), (3, 3)]]
    assert parse_full(linearize(source, clusters, symbols), symbols) == clusters


def test_integer_pieces_are_the_digit_only_pieces():
    tokenizer = tiny_t5_tokenizer()
    digits = {tokenizer.convert_ids_to_tokens(i) for i in integer_token_ids(tokenizer)}
    assert digits == {"\u25811", "\u25812", "1", "2", "0", "\u258110"}


def test_new_rows_are_the_mean_of_the_pretrained_rows():
    rng = np.random.default_rng(0)
    config = T5Config(vocab_size=6, d_model=4, d_kv=2, d_ff=8, num_layers=1, num_heads=2, tie_word_embeddings=False)
    params = {"shared": {"embedding": rng.normal(size=(6, 4))}, "lm_head": {"kernel": rng.normal(size=(4, 6))},
              "other": 1}
    grown, grown_config = init_new_token_rows(params, config, first_new_id=5, vocab_size=8)
    assert grown_config.vocab_size == 8 and grown["other"] == 1
    table, kernel = grown["shared"]["embedding"], grown["lm_head"]["kernel"]
    np.testing.assert_array_equal(table[:5], params["shared"]["embedding"][:5])
    np.testing.assert_allclose(table[5:], np.tile(params["shared"]["embedding"][:5].mean(0), (3, 1)))
    np.testing.assert_allclose(kernel[:, 5:].T, np.tile(params["lm_head"]["kernel"][:, :5].mean(1), (3, 1)))
    with pytest.raises(ValueError, match="first_new_id"):
        init_new_token_rows(params, config, first_new_id=9, vocab_size=10)
