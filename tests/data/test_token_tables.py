"""The token tables' row masks: the tokens `encode_texts` wrote, found by each row's EOS, not by `ids != 0`."""
import numpy as np

from kipjax.data import token_tables


class ZeroIsAWordTokenizer:
    """A tokenizer whose id 0 is a real word, as Llama 3's "!" is; EOS = 7."""
    eos_token_id = 7
    vocab = {"!": 0, "a": 3, "b": 4}

    def __len__(self) -> int:
        return 8

    def __call__(self, texts, add_special_tokens):
        return {"input_ids": [[self.vocab[w] for w in t.split()] for t in texts]}


def test_row_mask_keeps_a_real_token_zero_and_drops_the_padding():
    table = token_tables.token_table(ZeroIsAWordTokenizer(), ["a ! b", "! !", "b"], max_tokens=5)
    assert table.tolist() == [[3, 0, 4, 7], [0, 0, 7, 0], [4, 7, 0, 0]]
    assert token_tables.row_mask(table, 7).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]


def test_row_mask_of_a_missing_candidate_is_empty_and_works_on_batches_of_rows():
    rows = np.array([[[3, 7, 0], [0, 0, 0]], [[0, 7, 7], [3, 4, 7]]])  # [batch, candidates, width]
    assert token_tables.row_mask(rows, 7).tolist() == [[[1, 1, 0], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]]
