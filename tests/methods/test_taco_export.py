"""A TACO checkpoint exported as Hugging Face T5 directories: transformers' T5Model embeds queries and passages
as the trained method does, for the shared encoder and for per-task query encoders."""
import json
from pathlib import Path

import gin
import jax
import numpy as np
import pytest
import torch
import transformers

from kipjax import cli
from kipjax.methods.taco import export, inputs
from kipjax.methods.taco.retrieval import configured_taco

REPO = Path(__file__).resolve().parents[2]
TINY = ["T5Config.d_model = 32", "T5Config.d_kv = 8", "T5Config.d_ff = 64", "T5Config.num_layers = 1",
        "BATCH_SIZE = 16"]


def t5model_embeddings(path: Path, ids: np.ndarray) -> np.ndarray:
    model = transformers.T5Model.from_pretrained(path).eval()
    mask = torch.from_numpy((ids != 0).astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=mask,
                    decoder_input_ids=torch.zeros((len(ids), 1), dtype=torch.long))
    return out.last_hidden_state[:, 0].numpy()


@pytest.mark.slow  # a T5 checkpoint, two exports and transformers loads: about 25 s each
@pytest.mark.parametrize("query_encoder", ["shared", "per_task"])
def test_exported_encoders_embed_as_the_method_does(query_encoder, tmp_path, monkeypatch, save_initial_checkpoint):
    monkeypatch.chdir(REPO)  # gin includes are relative to the repository root
    bindings = [*TINY, f"TacoRetrieval.query_encoder = '{query_encoder}'"]
    gin.parse_config_files_and_bindings(["gin_configs/taco/demo.gin"], [*bindings, cli.METHOD_BINDING])
    state = save_initial_checkpoint(configured_taco("the test"), tmp_path / "run")
    gin.clear_config()
    record = export.main(["--gin_file=gin_configs/taco/demo.gin", *(f"--gin.{b.replace(' ', '')}" for b in bindings),
                          f"--checkpoint={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"])
    method = configured_taco("the test")
    params = jax.tree.map(np.asarray, state.params)
    assert record["step"] == 0 and record["prefix_mode"] == "task"
    assert record["query_markers"] == {t.task.name: inputs.marker(t.task, "task") for t in method.data.tasks}
    assert json.loads((tmp_path / "hf" / export.EXPORT_FILE).read_text()) == record
    task = method.data.tasks[1]
    ids = np.zeros((3, 24), np.int32)
    for i, row in enumerate(task.train_query_ids[:3]):
        ids[i, :len(row)] = row
    passages = method.data.passage_ids[:4].astype(np.int32)
    query_dir = tmp_path / "hf" / ("" if query_encoder == "shared" else f"queries_{task.task.name}")
    passage_dir = tmp_path / "hf" / ("" if query_encoder == "shared" else "passages")
    np.testing.assert_allclose(t5model_embeddings(query_dir, ids),
                               np.asarray(method.encode_queries(params, 1, task.train_query_ids[:3], "q")),
                               atol=1e-4)
    own = np.asarray(jax.jit(method._encode)(method.passage_params(params), passages, (passages != 0)
                                             .astype(np.int32)))
    np.testing.assert_allclose(t5model_embeddings(passage_dir, passages), own, atol=1e-4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(query_dir)
    assert tokenizer.convert_ids_to_tokens(task.train_query_ids[0][:2]) == [task.task.prefix, inputs.TASK_TOKEN]
