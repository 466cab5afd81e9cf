"""Exact resume for every method, not only the quickstart's: the coreference and both LMRC demo configs (shrunk
to a few tiny steps) are killed after step 4 and resumed from their step-3 checkpoint, and end with the same
parameters, bit for bit, as an uninterrupted run."""
import os

import gin
import jax
import numpy as np
import pytest

from kipjax import runner  # noqa: F401  (the configurables the gin files bind)
from kipjax.methods.base import Method
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


@gin.configurable("method_resume_test")
def configured_method(method: Method = gin.REQUIRED) -> Method:
    return method


def train(gin_file: str, bindings: list[str], model_dir):
    gin.clear_config()
    gin.parse_config_files_and_bindings([gin_file], [*bindings, *SHORT, f"MODEL_DIR = '{model_dir}'",
                                                     "method_resume_test.method = %METHOD"])
    try:
        state, _ = Trainer(configured_method(), model_dir=str(model_dir)).fit()
    finally:
        gin.clear_config()
    return jax.device_get(state)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_killed_demo_run_resumes_bit_for_bit(name, tmp_path, kill_switch, capsys):
    gin_file, bindings = CONFIGS[name]
    full = train(gin_file, bindings, tmp_path / "full")
    kill_switch.arm(4)
    with pytest.raises(kill_switch.Killed):
        train(gin_file, bindings, tmp_path / "killed")
    kill_switch.disarm()
    assert os.listdir(tmp_path / "killed" / "checkpoints") == ["3"]
    capsys.readouterr()
    resumed = train(gin_file, bindings, tmp_path / "killed")
    assert "at step 3" in capsys.readouterr().out and int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
