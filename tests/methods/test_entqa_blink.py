"""BLINK's bi-encoder checkpoint imported as EntQA's two encoders: a random state dict in BLINK's layout goes
in, two BERT directories come out that transformers and kipjax load to the same outputs as the originals."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from torch_init import randomized

from kipjax.methods.entqa import blink
from kipjax.models import hf

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40)
IDS = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
MASK = (IDS != 0).astype(np.int64)


@pytest.fixture(scope="module")
def blink_files(tmp_path_factory):
    """BLINK's layout: one state dict, the two encoders under their prefixes; plus the base BERT's directory."""
    root = tmp_path_factory.mktemp("blink")
    config = transformers.BertConfig(**TINY)
    context, candidate = randomized(transformers.BertModel(config)), transformers.BertModel(config)
    with torch.no_grad():  # a second, different random encoder
        for p in candidate.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    state = {**{f"context_encoder.bert_model.{k}": v for k, v in context.state_dict().items()},
             **{f"cand_encoder.bert_model.{k}": v for k, v in candidate.state_dict().items()}}
    torch.save(state, root / "biencoder_wiki_large.bin")
    config.save_pretrained(root / "bert")
    (root / "bert" / "vocab.txt").write_text("\n".join(f"w{i}" for i in range(64)) + "\n")
    return root, {"passage_encoder": context.eval(), "entity_encoder": candidate.eval()}


def test_the_two_encoders_load_with_their_own_weights(blink_files):
    root, originals = blink_files
    out = blink.import_blink_biencoder(str(root / "biencoder_wiki_large.bin"), str(root / "bert"),
                                       str(root / "imported"))
    for name, original in originals.items():
        directory = out / name
        assert (directory / "vocab.txt").read_text() == (root / "bert" / "vocab.txt").read_text()
        loaded = transformers.BertModel.from_pretrained(directory).eval()
        with torch.no_grad():
            want = original(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK)).last_hidden_state
            got = loaded(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK)).last_hidden_state
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        model, params = hf.load_pretrained(directory)
        ours = model.apply({"params": params}, jnp.asarray(IDS), jnp.asarray(MASK)).last_hidden_state
        np.testing.assert_allclose(np.asarray(ours) * MASK[..., None], want.numpy() * MASK[..., None], atol=1e-4)
    with pytest.raises(FileExistsError):
        blink.import_blink_biencoder(str(root / "biencoder_wiki_large.bin"), str(root / "bert"), str(out))


def test_unexpected_layouts_fail_clearly(blink_files):
    root, _ = blink_files
    with pytest.raises(ValueError, match="additional_linear"):
        blink.split_biencoder({"context_encoder.bert_model.x": np.zeros(1), "cand_encoder.bert_model.x": np.zeros(1),
                               "context_encoder.additional_linear.weight": np.zeros(1)}, "ck.bin")
    with pytest.raises(ValueError, match="no tensors under"):
        blink.split_biencoder({"context_encoder.bert_model.x": np.zeros(1)}, "ck.bin")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        blink.import_blink_biencoder(str(root / "biencoder_wiki_large.bin"), str(root), str(root / "o"))
