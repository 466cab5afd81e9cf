"""ImpRAG's data helpers: task-file specs, training arrays by hand, candidate draws from a short ranking, and
pseudo-label files with bad lines."""
import numpy as np
import pytest

from kipjax.methods.imprag import data


def test_source_specs_name_the_known_formats():
    assert data.split_source("kilt:/d/nq-dev-kilt.jsonl") == ("kilt", "/d/nq-dev-kilt.jsonl")
    with pytest.raises(ValueError, match="FORMAT:PATH.*nq_open"):
        data.split_source("/d/nq-dev-kilt.jsonl")
    with pytest.raises(ValueError, match="FORMAT:PATH"):
        data.split_source("jsonl:/d/x.jsonl")


def test_training_arrays_shift_targets_and_mask_the_response():
    # [BOS=9] prompt 5 6 | response 7 | EOS 1, and a plain-text row without a prompt.
    arrays = data.training_arrays([data.TokenSequence([9, 5, 6, 7, 1], 3), data.TokenSequence([4, 3, 1], 0)], 6)
    np.testing.assert_array_equal(arrays["input_ids"], [[9, 5, 6, 7, 0, 0], [4, 3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["targets"], [[5, 6, 7, 1, 0, 0], [3, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["loss_mask"], [[0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["attention_mask"], [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["query_index"], [2, 0])  # the prompt's last token predicts the response


def test_a_short_ranking_pads_the_candidates():
    rng = np.random.default_rng(0)
    rows, positive = data.draw_candidates([7, 8, 9, 10, 11, 12], positives=2, hard_negatives=3, hard_ranks=(4, 50),
                                          rng=rng)
    assert list(rows[:2]) == [7, 8] and set(rows[2:]) == {10, 11, 12}
    rows, positive = data.draw_candidates([7], positives=2, hard_negatives=2, hard_ranks=(10, 50), rng=rng)
    assert rows.tolist() == [7, -1, -1, -1] and positive.tolist() == [True, False, False, False]


def test_pseudo_label_files_name_the_bad_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": 3, "passages": ["a", "b"]}\n{"id": "4", "passages": ["c"]}\n')
    assert data.read_pseudo_labels(path, {"a": 0, "b": 1, "c": 2}) == {"3": [0, 1], "4": [2]}
    path.write_text('{"id": "3", "passages": ["a"]}\n{"id": "4", "passages": ["zz"]}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:2: passage id 'zz'"):
        data.read_pseudo_labels(path, {"a": 0})
    path.write_text('{"id": "3", "passages": ["a"]}\n{"id": "3", "passages": ["a"]}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:2: duplicate id '3'"):
        data.read_pseudo_labels(path, {"a": 0})
