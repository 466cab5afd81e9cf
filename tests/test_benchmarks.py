"""The benchmark scripts run at toy sizes, and what they compute is right (FLOP count, same-weights losses)."""
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_flops_match_a_hand_count():
    bench = load("train_step_benchmark")
    config = bench.bert_config(bench.parse_args(["--layers=2", "--hidden=8", "--heads=2", "--intermediate=16",
                                                 "--seq_len=4"]))
    # per layer: q,k,v,out 4*8*8=256 + MLP 2*8*16=256 + biases/LayerNorms 9*8+16=88 -> 600; two layers 1200
    assert bench.non_embedding_params(config) == 1200
    sequences = 3 * (1 + 5)
    expected = 6 * 1200 * sequences * 4 + 12 * 2 * 4 ** 2 * 8 * sequences
    assert bench.model_flops_per_step(config, batch_size=3, num_candidates=5, seq_len=4) == expected


def test_train_step_benchmark_runs_both_frameworks_from_the_same_weights(tmp_path):
    bench = load("train_step_benchmark")
    result = bench.main(["--layers=1", "--hidden=32", "--heads=2", "--intermediate=64", "--seq_len=16",
                         "--num_candidates=3", "--batch_size=2", "--vocab_size=2000", "--steps=1", "--warmup=0",
                         "--matmul_sizes=64", "--matmul_repeats=1", "--dropout=0.0", "--rounds=1",
                         f"--out={tmp_path / 'r.json'}"])
    assert result["kipjax_eval_loss"] == pytest.approx(result["torch_eval_loss"], abs=1e-4)
    assert result["kipjax"]["median_s"] > 0 and result["torch"]["median_s"] > 0
    assert 0 < result["kipjax"]["mfu"] and result["memory"]["fits"]
    assert (tmp_path / "r.json").is_file()


def test_memory_only_compiles_without_allocating(tmp_path):
    bench = load("train_step_benchmark")
    result = bench.main(["--memory_only", "--layers=1", "--hidden=32", "--heads=2", "--intermediate=64",
                         "--seq_len=16", "--num_candidates=3", "--batch_size=2", "--vocab_size=2000"])
    memory = result["memory"]
    assert memory["total_bytes"] == memory["argument_bytes"] + memory["output_bytes"] + memory["temp_bytes"]
    # Arguments hold at least the fp32 params and both Adam moments of two encoders.
    assert memory["argument_bytes"] >= 3 * 4 * memory["param_count"]


def test_mining_benchmark_times_encoding_and_mining():
    bench = load("mining_benchmark")
    result = bench.main(["--entities=64", "--mentions=16", "--seq_len=16", "--num_candidates=4", "--layers=1",
                         "--hidden=32", "--heads=2", "--intermediate=64", "--encode_batch_size=16",
                         "--chunk_size=32", "--repeats=1"])
    assert result["encode_seconds"] > 0 and result["mine_seconds"] > 0
    assert result["overhead"] == pytest.approx(result["mine_seconds"] / result["encode_seconds"] - 1)
