"""The ImpRAG / RA-IT generation benchmark at toy sizes: what it reports, its cache sizes against a hand count
from the shapes, and ImpRAG reading only padding decoding as the plain model does."""
import json
import math

import pytest

from test_benchmarks import load

pytestmark = pytest.mark.slow  # the whole benchmark at toy sizes, about 25 s of compilation; its CLI about 40 s
bench = load("imprag_generation_benchmark")
BATCH, LAYERS, HIDDEN, HEADS, KV_HEADS, K, L_MAX, PROMPT, NEW = 2, 4, 32, 4, 2, 2, 8, 6, 4
HEAD_DIM, FLOAT32 = HIDDEN // HEADS, 4
B, T = 1, 2  # layer groups: L_M is layers 1..2
TINY = [f"--layers={LAYERS}", f"--hidden={HIDDEN}", f"--heads={HEADS}", f"--kv_heads={KV_HEADS}", "--mlp=64",
        "--vocab_size=64", f"--bottom_end={B}", f"--middle_end={T}", f"--top_k={K}", f"--passage_tokens={L_MAX}",
        f"--prompt_tokens={PROMPT}", f"--new_tokens={NEW}", f"--batch_size={BATCH}", "--corpus_size=1000",
        "--search_chunk=256", "--passage_rows=16", "--repeats=2", "--step_repeats=2"]


def kv_bytes(layers: int, length: int) -> int:
    """Keys and values of `layers` layers over `length` positions for the batch, float32."""
    return BATCH * layers * length * KV_HEADS * HEAD_DIM * 2 * FLOAT32


@pytest.fixture(scope="module")
def result():
    return bench.measure(bench.parse_args(TINY))


def test_both_methods_generate_and_split_generate_as_generate(result):
    checks = result["checks"]
    assert checks["imprag_tokens_ok"] and checks["ra_it_tokens_ok"]
    assert checks["imprag_split_equals_generate"] and checks["ra_it_split_equals_generate"]


def test_imprag_reading_only_padding_decodes_as_the_plain_model(result):
    """All k passages masked: L_M reads nothing, so ImpRAG's tokens are plain decoding's of the question alone,
    although its question positions are shifted by k * l_max (RoPE: only position differences count)."""
    blind = result["checks"]["blind_imprag_against_plain"]
    assert blind["blind_tokens"] == blind["plain_tokens"] and blind["same_tokens"]
    assert len(blind["plain_tokens"]) == BATCH and {len(row) for row in blind["plain_tokens"]} == {NEW}


def test_cache_bytes_match_a_hand_count_from_the_shapes(result):
    imprag, ra_it = result["imprag"]["memory"], result["ra_it"]["memory"]
    assert imprag["self_cache"]["length"] == PROMPT + NEW
    assert imprag["self_cache"]["kv_bytes"] == kv_bytes(LAYERS, PROMPT + NEW)
    assert imprag["passages"]["kv_bytes"] == kv_bytes(T - B + 1, K * L_MAX)
    assert imprag["passages"]["mask_bytes"] == (T - B + 1) * BATCH * K * L_MAX * 4  # int32, one per middle layer
    assert imprag["kv_bytes"] == imprag["self_cache"]["kv_bytes"] + imprag["passages"]["kv_bytes"]
    assert ra_it["self_cache"]["length"] == K * L_MAX + PROMPT + NEW
    assert ra_it["kv_bytes"] == ra_it["self_cache"]["kv_bytes"] == kv_bytes(LAYERS, K * L_MAX + PROMPT + NEW)
    for memory in (imprag, ra_it):  # DecodeSlots: the key mask, each row's next position, the slot index
        length = memory["self_cache"]["length"]
        assert memory["self_cache"]["bookkeeping_bytes"] == 4 * (BATCH * length + BATCH + 1)
    assert ra_it["kv_bytes"] > imprag["self_cache"]["kv_bytes"]
    assert result["ratios_ra_it_over_imprag"]["kv_bytes"] == ra_it["kv_bytes"] / imprag["kv_bytes"]


def test_times_shares_and_xla_memory_are_reported(result):
    for name, own in (("imprag", {"passage_states"}), ("ra_it", {"prompt"})):
        x = result[name]
        assert set(x["phases_s"]) == {"embed", "search", "prefill", "decode"} | own
        assert all(0 < p["min_s"] <= p["median_s"] <= p["max_s"] for p in x["phases_s"].values())
        assert x["decode_ms_per_token"] == pytest.approx(1e3 * x["phases_s"]["decode"]["median_s"] / NEW)
        assert x["end_to_end_ms_per_query"] == pytest.approx(x["end_to_end_ms_per_batch"] / BATCH)
        assert 0 < x["retrieval_share"] < 1 and x["step_alone_ms"] > 0
        for analysis in ("step_xla", "generate_xla"):
            m = x["memory"][analysis]
            assert m["total_bytes"] == m["argument_bytes"] + m["output_bytes"] + m["temp_bytes"]
            assert m["argument_bytes"] >= result["param_bytes"]
        assert x["memory"]["step_xla"]["alias_bytes"] > 0  # the cache is donated to the step
    states = result["imprag"]["memory"]["passage_states_xla"]  # jit drops the unused params of layers t+1..N-1
    assert 0 < states["argument_bytes"] < result["param_bytes"] and states["temp_bytes"] > 0
    assert all(math.isfinite(v) and v > 0 for v in result["ratios_ra_it_over_imprag"].values())
    assert result["ra_it_prompt_tokens"] == K * L_MAX + PROMPT and result["middle_layers"] == T - B + 1


def test_cli_writes_the_results(tmp_path, capsys):
    out = tmp_path / "r.json"
    bench.main([*TINY, f"--out={out}"])
    saved = json.loads(out.read_text())
    assert {"checks", "imprag", "ra_it", "ratios_ra_it_over_imprag", "config", "platform", "cpu_count",
            "versions", "load_before", "load_after", "threads", "devices"} <= set(saved)
    assert saved["config"]["top_k"] == K and saved["checks"]["blind_imprag_against_plain"]["same_tokens"]
    printed = capsys.readouterr().out
    assert "| ImpRAG |" in printed and "| RA-IT |" in printed and "RA-IT / ImpRAG" in printed
