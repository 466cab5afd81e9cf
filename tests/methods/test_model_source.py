import pytest

from kipjax.methods.model_source import check_model_source


def test_exactly_one_model_source_and_a_tokenizer_for_scratch_runs():
    check_model_source("M", "Llama", "/models/llama", None, None)  # a checkpoint brings its tokenizer
    check_model_source("M", "Llama", None, object(), "/tok")
    for pretrained, config in ((None, None), ("/models/llama", object())):
        with pytest.raises(ValueError, match=r"M: set exactly one of `pretrained` .*\(a LlamaConfig to train"):
            check_model_source("M", "Llama", pretrained, config, "/tok")
    with pytest.raises(ValueError, match="M: training from scratch needs `tokenizer_dir`"):
        check_model_source("M", "Llama", None, object(), None)
