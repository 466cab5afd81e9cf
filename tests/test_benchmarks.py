"""The benchmark scripts run at toy sizes, and what they compute is right (FLOP count, same-weights losses). The
runs that build and time whole train steps are in the slow suite."""
import importlib.util
import json
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


@pytest.mark.slow  # a whole benchmark run: kept out of the fast suite's 10 minutes
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


@pytest.mark.slow  # a whole benchmark run: kept out of the fast suite's 10 minutes
def test_memory_only_compiles_without_allocating(tmp_path):
    bench = load("train_step_benchmark")
    result = bench.main(["--memory_only", "--layers=1", "--hidden=32", "--heads=2", "--intermediate=64",
                         "--seq_len=16", "--num_candidates=3", "--batch_size=2", "--vocab_size=2000"])
    memory = result["memory"]
    assert memory["total_bytes"] == memory["argument_bytes"] + memory["output_bytes"] + memory["temp_bytes"]
    # Arguments hold at least the fp32 params and both Adam moments of two encoders.
    assert memory["argument_bytes"] >= 3 * 4 * memory["param_count"]


@pytest.mark.slow
def test_mining_benchmark_times_encoding_and_mining():
    bench = load("mining_benchmark")
    result = bench.main(["--entities=64", "--mentions=16", "--seq_len=16", "--num_candidates=4", "--layers=1",
                         "--hidden=32", "--heads=2", "--intermediate=64", "--encode_batch_size=16",
                         "--chunk_size=32", "--repeats=1"])
    assert result["encode_seconds"] > 0 and result["mine_seconds"] > 0
    assert result["overhead"] == pytest.approx(result["mine_seconds"] / result["encode_seconds"] - 1)


HLO = """HloModule jit_step

%fused_computation (param_0: f32[4,8], param_1: f32[8,3]) -> f32[4,3] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8,3]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,3]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_batched (param_0: f32[2,4,8], param_1: f32[2,8,3]) -> f32[2,4,3] {
  %param_0 = f32[2,4,8]{2,1,0} parameter(0)
  %param_1 = f32[2,8,3]{2,1,0} parameter(1)
  ROOT %dot.2 = f32[2,4,3]{2,1,0} dot(%param_0, %param_1), lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

ENTRY %main (a: f32[4,8], b: f32[8,3]) -> f32[4,3] {
  %a = f32[4,8]{1,0} parameter(0)
  %ynn_fusion.3 = f32[4,3]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation
  %ynn_fusion.4 = f32[2,4,3]{2,1,0} fusion(%c, %d), kind=kCustom, calls=%fused_batched
  ROOT %copy_bitcast_fusion.2 = f32[4,3]{1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fused_computation.9
}
"""


def test_profile_breakdown_classes_ops_and_counts_matmul_flops():
    profile = load("profile_train_step")
    ops = profile.classify_ops(HLO)
    assert ops["ynn_fusion.3"] == ("matmul, 2-D", 2 * 4 * 3 * 8)
    assert ops["ynn_fusion.4"] == ("matmul, batched (attention)", 2 * 2 * 4 * 3 * 8)
    assert ops["copy_bitcast_fusion.2"] == ("copy_bitcast_fusion", 0.0)
    rows = profile.breakdown(ops, {"ynn_fusion.3": 0.5, "ynn_fusion.4": 0.5, "copy_bitcast_fusion.2": 1.0,
                                   "ThunkExecutor::Execute": 9.0})
    assert [r["category"] for r in rows] == ["copy_bitcast_fusion", "matmul, 2-D", "matmul, batched (attention)"]
    assert rows[0]["share"] == pytest.approx(0.5) and rows[0]["gflops_per_s"] is None
    assert rows[1]["gflops_per_s"] == pytest.approx(2 * 4 * 3 * 8 / 0.5 / 1e9)


@pytest.mark.slow  # a whole benchmark run: kept out of the fast suite's 10 minutes
def test_input_pipeline_benchmark_times_the_feed_against_the_step():
    bench = load("input_pipeline_benchmark")
    result = bench.main(["--steps=2", "--warmup=1", "--gin_bindings=Trainer.eval_at_start = False"])
    assert result["task"] == "demo_zeshel_retrieval" and result["batch_size"] == 16
    assert result["input"]["median_s"] > 0 and result["step"]["median_s"] > 0
    assert result["input_fraction"] == pytest.approx(result["input"]["median_s"] / result["step"]["median_s"])


@pytest.mark.slow  # three multi-task T5 train steps compile (about 30 s of the 70 s): kept out of the fast suite
def test_taco_combiner_benchmark_steps_agree_until_the_adaptive_burn_in_ends(tmp_path):
    bench = load("taco_combiner_benchmark")
    result = bench.main(["--quick", "--gin_bindings=demo_kilt_data.tasks = ['qa', 'fc']",
                         f"--out={tmp_path / 'r.json'}"])
    burn_in, adaptive = result["checks"]["burn_in_step"], result["checks"]["adaptive_step"]
    # The same batch and params: the same loss in all three, and in burn-in the same gradient and update.
    for check in (burn_in, adaptive):
        assert check["loss"]["naive_combiner"] == pytest.approx(check["loss"]["naive"], rel=1e-5)
        assert check["loss"]["adaptive"] == pytest.approx(check["loss"]["naive"], rel=1e-5)
    assert burn_in["grad_norm"]["adaptive"] == pytest.approx(burn_in["grad_norm"]["naive"], rel=1e-5)
    assert max(d for v in burn_in["difference_from_naive"].values() for d in v.values()) < 1e-3
    # After burn-in the per-task mean still matches the naive gradient; the adaptive one does not.
    assert adaptive["grad_norm"]["naive_combiner"] == pytest.approx(adaptive["grad_norm"]["naive"], rel=1e-4)
    assert adaptive["difference_from_naive"]["naive_combiner"]["optimizer"] < 1e-2
    assert adaptive["difference_from_naive"]["adaptive"]["optimizer"] > 0.1
    assert adaptive["grad_norm"]["adaptive"] != pytest.approx(adaptive["grad_norm"]["naive"], rel=1e-2)
    # I is T x the params in float32; the adaptive step's arguments carry it on top of the naive step's.
    assert result["num_tasks"] == 2 and result["combiner_state_bytes"] == 2 * 4 * result["param_count"]
    memory = {name: s["memory"] for name, s in result["steps"].items()}
    assert memory["adaptive"]["argument_bytes"] >= memory["naive"]["argument_bytes"] + result["combiner_state_bytes"]
    steps = result["steps"]
    assert result["adaptive_over_naive"] == pytest.approx(steps["adaptive"]["median_s"] / steps["naive"]["median_s"])
    assert result["flops_check"]["formula_flops"] == pytest.approx(result["flops_check"]["xla_flops"], rel=0.2)
    assert set(json.loads((tmp_path / "r.json").read_text())) >= {"steps", "checks", "combiner_alone", "config"}
