"""Exact resume for every method, not only the quickstart's: the coreference, both LMRC (one with LoRA), the
ImpRAG and the RA-DIT-Llama retriever demo configs (shrunk to a few tiny steps) are killed after step 4 and
resumed from their step-3 checkpoint, and end with the same parameters and method state, bit for bit, as an
uninterrupted run."""
import os

import gin
import jax
import numpy as np
import pytest

from kipjax import runner  # noqa: F401  (the configurables the gin files bind)
from kipjax.data.demo_kilt import demo_kilt_path
from kipjax.methods.base import Method
from kipjax.methods.imprag import pseudo_labels
from kipjax.trainer import Trainer

SHORT = ["TRAIN_STEPS = 6", "Trainer.eval_at_start = False", "Trainer.eval_every = 0", "Trainer.log_every = 1",
         "Checkpointer.every_steps = 3", "Trainer.batch_size = 8"]
CONFIGS = {
    "coref": ("gin_configs/coref/demo.gin", ["T5Config.num_layers = 1", "T5Config.d_model = 32",
                                              "T5Config.d_ff = 64", "T5Config.num_heads = 2"]),
    "lmrc_rcp": ("gin_configs/lmrc/demo_rcp.gin", ["BertConfig.num_hidden_layers = 1",
                                                   "RelationCandidateProposal.candidates_file = None"]),
    "lmrc_rc": ("gin_configs/lmrc/demo_rc.gin", ["LlamaConfig.num_hidden_layers = 1", "LlamaConfig.hidden_size = 32",
                                                 "LlamaConfig.intermediate_size = 64",
                                                 "RelationClassification.eval_candidates_file = None",
                                                 "RelationClassification.predictions_file = None"]),
}
# LoRA freezes the base Llama: its optimizer state is optax MaskedNodes, which the restore target must match.
CONFIGS["lmrc_rc_lora"] = (CONFIGS["lmrc_rc"][0], [*CONFIGS["lmrc_rc"][1], "RelationClassification.lora_rank = 2"])
# The ImpRAG methods by class: gin file and own bindings. Their training rows (3 files x 6 examples + 2 plain-text
# rows; 2 files x 8 examples) fill 2 batches per epoch: epoch 1's candidates, drawn before step 3, are in the step-3
# checkpoint and read at step 4; epoch 2 redraws them after the resume and switches from the warmup to distillation.
IMPRAG_CONFIGS = {
    "Imprag": ("gin_configs/imprag/demo.gin", ["LayerGroups.bottom_end = 0", "LayerGroups.middle_end = 1",
                                               "Imprag.examples_per_dataset = 6"]),
    "LlamaRetriever": ("gin_configs/imprag/baselines/ra_dit_llama_retriever_demo.gin",
                       ["LlamaRetriever.bottom_end = 0", "LlamaRetriever.examples_per_dataset = 8",
                        "LlamaRetriever.rankings_out = None"]),
}
PASSAGES = demo_kilt_path("passages.tsv")  # what the pseudo-labels rank; bound over each demo's own
IMPRAG_SHARED = [f"passages_file = '{PASSAGES}'", "warmup_epochs = 2", "passage_tokens = 32", "max_prompt_tokens = 48",
                 "max_response_tokens = 8", "eval_limit = 2"]
TINY_LLAMA = ["LlamaConfig.num_hidden_layers = 3", "LlamaConfig.hidden_size = 32",
              "LlamaConfig.intermediate_size = 64"]


@gin.configurable("method_resume_test")
def configured_method(method: Method = gin.REQUIRED) -> Method:
    return method


@pytest.fixture(scope="module")
def pseudo_labels_dir(tmp_path_factory):
    """BM25's rankings of PASSAGES for the ImpRAG demos' retrieval training files, as their first command does."""
    out = tmp_path_factory.mktemp("pseudo_labels")
    pseudo_labels.main(["--teacher", "bm25", "--passages", PASSAGES, "--out", str(out),
                        *(a for name in ("qa-train-kilt.jsonl", "sf-train-kilt.jsonl")
                          for a in ("--task", f"kilt:{demo_kilt_path(name)}"))])
    return out


def train(gin_file: str, bindings: list[str], model_dir):
    """(final train state, final method state) of the config's run in `model_dir`, on the host."""
    gin.clear_config()
    gin.parse_config_files_and_bindings([gin_file], [*bindings, *SHORT, f"MODEL_DIR = '{model_dir}'",
                                                     "method_resume_test.method = %METHOD"])
    try:
        method = configured_method()
        state, _ = Trainer(method, model_dir=str(model_dir)).fit()
    finally:
        gin.clear_config()
    return jax.device_get((state, method.state_dict()))


def assert_killed_run_resumes_bit_for_bit(gin_file, bindings, tmp_path, kill_switch, capsys):
    """Returns the resumed run's (train state, method state), equal to the uninterrupted run's."""
    full = train(gin_file, bindings, tmp_path / "full")
    kill_switch.arm(4)
    with pytest.raises(kill_switch.Killed):
        train(gin_file, bindings, tmp_path / "killed")
    kill_switch.disarm()
    assert os.listdir(tmp_path / "killed" / "checkpoints") == ["3"]
    capsys.readouterr()
    resumed = train(gin_file, bindings, tmp_path / "killed")
    assert "at step 3" in capsys.readouterr().out and int(resumed[0].step) == 6
    assert jax.tree.structure(full) == jax.tree.structure(resumed)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    return resumed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_killed_demo_run_resumes_bit_for_bit(name, tmp_path, kill_switch, capsys):
    assert_killed_run_resumes_bit_for_bit(*CONFIGS[name], tmp_path, kill_switch, capsys)


@pytest.mark.slow  # 40-80 s on 2 cores: three runs, each compiling its step
@pytest.mark.parametrize("name", sorted(IMPRAG_CONFIGS))
def test_a_killed_imprag_demo_run_resumes_bit_for_bit(name, pseudo_labels_dir, tmp_path, kill_switch, capsys):
    """Across the epoch boundaries where the candidates are redrawn and the objective switches to distillation
    (for the retriever: against its frozen reader, whose parameters have no optimizer state)."""
    gin_file, own = IMPRAG_CONFIGS[name]
    shared = [f"{name}.{b}" for b in (*IMPRAG_SHARED, f"pseudo_labels_dir = '{pseudo_labels_dir}'")]
    _, method_state = assert_killed_run_resumes_bit_for_bit(gin_file, [*TINY_LLAMA, *own, *shared], tmp_path,
                                                            kill_switch, capsys)
    assert method_state["distill"]
