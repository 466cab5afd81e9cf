import pytest

from kipjax.data.padding import pad_rows


def test_rows_are_padded_on_the_right_by_default_and_on_the_left_on_request():
    assert pad_rows([[1, 2], [3], []], 3, pad=9).tolist() == [[1, 2, 9], [3, 9, 9], [9, 9, 9]]
    assert pad_rows([[1, 2], [3], []], 3, pad=9, left=True).tolist() == [[9, 1, 2], [9, 9, 3], [9, 9, 9]]


def test_rows_longer_than_the_length_are_refused():
    with pytest.raises(ValueError, match="row 1 has 3 tokens"):
        pad_rows([[1], [1, 2, 3]], 2)
