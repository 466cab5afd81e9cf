"""Sharded, resumable corpus encoding and the searches over its shards, on the test session's 8 CPU devices."""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax import partitioning
from kipjax.retrieval import corpus_encoding as ce
from local_hosts import free_port, run_hosts

NUM_ROWS, LENGTH, DIM = 83, 5, 4  # 83 rows: the 8 device shards end in padding
WORKER = Path(__file__).with_name("corpus_worker.py")


def linear_encoder(params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """A stand-in encoder whose output is known in closed form: the masked token ids times a matrix."""
    return (ids * mask).astype(jnp.float32) @ params["w"]


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (NUM_ROWS, LENGTH)).astype(np.int32)
    mask = (np.arange(LENGTH) < rng.integers(1, LENGTH + 1, (NUM_ROWS, 1))).astype(np.int32)
    params = {"w": jnp.asarray(rng.normal(size=(LENGTH, DIM)), jnp.float32)}
    expected = (ids * mask).astype(np.float64) @ np.asarray(params["w"], np.float64)
    return ids, mask, params, expected


@pytest.fixture(scope="module")
def mesh():
    return partitioning.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})


def test_layout_gives_one_host_every_padded_row(mesh):
    layout = ce.corpus_layout(NUM_ROWS, mesh)
    assert (layout.num_rows, layout.padded_rows, layout.rows_per_host, layout.host_start) == (83, 88, 88, 0)
    assert layout.host_stop == 83
    with pytest.raises(ValueError, match="empty corpus"):
        ce.corpus_layout(0, mesh)


def test_encoding_matches_the_encoder_row_by_row(corpus, mesh):
    ids, mask, params, expected = corpus
    local, layout = ce.encode_corpus(linear_encoder, params, ids, mask, mesh=mesh, batch_size=16)
    assert local.shape == (layout.rows_per_host, DIM)
    np.testing.assert_allclose(local[:NUM_ROWS], expected, rtol=1e-5, atol=1e-4)
    everywhere = ce.encode_everywhere(linear_encoder, params, ids, mask, mesh=mesh, batch_size=16, desc="q")
    np.testing.assert_array_equal(everywhere, local[:NUM_ROWS])
    with pytest.raises(ValueError, match="divisible"):
        ce.encode_corpus(linear_encoder, params, ids, mask, mesh=mesh, batch_size=12)


def test_a_mask_function_of_the_batch_ids_serves_as_the_mask(corpus, mesh):
    ids, _, params, _ = corpus
    odd = lambda batch_ids: batch_ids % 2  # noqa: E731  (a mask no `ids != 0` gives)
    local, _ = ce.encode_corpus(linear_encoder, params, ids, odd, mesh=mesh, batch_size=16)
    expected = (ids * (ids % 2)).astype(np.float64) @ np.asarray(params["w"], np.float64)
    np.testing.assert_allclose(local[:NUM_ROWS], expected, rtol=1e-5, atol=1e-4)


def test_a_killed_encoding_resumes_from_its_finished_blocks(corpus, mesh, tmp_path, monkeypatch):
    ids, mask, params, expected = corpus
    steps = []
    real_jitted = ce._jitted

    def counting(fn, sharding):
        compiled = real_jitted(fn, sharding)

        def run(*args):
            steps.append(1)
            return compiled(*args)
        return run

    monkeypatch.setattr(ce, "_jitted", counting)
    real_save = ce._save_block

    def dies_at_block_3(path, array):
        if path.endswith("block_000003.npy"):
            raise KeyboardInterrupt("killed")
        real_save(path, array)

    kwargs = dict(mesh=mesh, batch_size=8, out_dir=str(tmp_path), steps_per_block=2)  # 11 steps, 6 blocks
    monkeypatch.setattr(ce, "_save_block", dies_at_block_3)
    with pytest.raises(KeyboardInterrupt):
        ce.encode_corpus(linear_encoder, params, ids, mask, fingerprint="A", **kwargs)
    assert len(steps) == 8
    host_dir = tmp_path / "host_00000-of-00001"
    assert sorted(p.name for p in host_dir.iterdir()) == [f"block_00000{b}.npy" for b in range(3)] + ["manifest.json"]
    assert json.loads((host_dir / "manifest.json").read_text())["fingerprint"] == "A"

    monkeypatch.setattr(ce, "_save_block", real_save)
    steps.clear()
    local, _ = ce.encode_corpus(linear_encoder, params, ids, mask, fingerprint="A", **kwargs)
    assert len(steps) == 11 - 6  # blocks 0-2 (steps 0-5) were loaded, not encoded
    np.testing.assert_allclose(local[:NUM_ROWS], expected, rtol=1e-5, atol=1e-4)

    steps.clear()  # finished and unchanged: nothing is encoded
    np.testing.assert_array_equal(ce.encode_corpus(linear_encoder, params, ids, mask, fingerprint="A", **kwargs)[0],
                                  local)
    assert not steps
    # other params (another fingerprint): the old blocks are stale and everything is encoded again
    doubled = {"w": params["w"] * 2}
    again, _ = ce.encode_corpus(linear_encoder, doubled, ids, mask, fingerprint="B", **kwargs)
    assert len(steps) == 11
    np.testing.assert_allclose(again[:NUM_ROWS], 2 * expected, rtol=1e-5, atol=1e-4)


def brute_force(queries: np.ndarray, table: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
    scores = queries @ table.T
    for i, row in enumerate(exclude):
        scores[i, row[row >= 0]] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_exact_search_over_the_sharded_table_equals_brute_force(corpus, mesh):
    ids, mask, params, expected = corpus
    local, layout = ce.encode_corpus(linear_encoder, params, ids, mask, mesh=mesh, batch_size=16)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(7, DIM)).astype(np.float32)
    exclude = np.full((7, 3), -1, np.int32)
    exclude[0, :2] = brute_force(queries[:1], local[:NUM_ROWS], 2, exclude[:1])[0]  # drop query 0's best two
    exclude[3, 0] = 82
    table = ce.device_table(local, layout, mesh)
    assert table.sharding.spec == ce.table_sharding(mesh).spec and table.shape == (88, DIM)
    scores, top = ce.exact_search(queries, table, layout, mesh, 10, exclude=exclude, query_batch=4, chunk_size=4)
    np.testing.assert_array_equal(top, brute_force(queries, local[:NUM_ROWS], 10, exclude))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ local[:NUM_ROWS].T, top, 1), rtol=1e-5)
    assert (top < NUM_ROWS).all()  # padding rows are never returned
    _, everything = ce.exact_search(queries[:2], table, layout, mesh, 100)
    assert everything.shape == (2, NUM_ROWS) and sorted(everything[0]) == list(range(NUM_ROWS))


@pytest.mark.slow
def test_scann_search_over_host_rows_equals_exact_search(corpus, mesh):
    """Below ScaNN's brute-force threshold its search is exact, so both paths must agree row for row."""
    ids, mask, params, _ = corpus
    local, layout = ce.encode_corpus(linear_encoder, params, ids, mask, mesh=mesh, batch_size=16)
    queries = np.random.default_rng(2).normal(size=(6, DIM)).astype(np.float32)
    exclude = np.array([[5, 7, -1], [-1, -1, -1], [0, 1, 2], [82, -1, -1], [-1, -1, -1], [3, -1, -1]], np.int32)
    exclude[1, :2] = brute_force(queries[1:2], local[:NUM_ROWS], 2, exclude[1:2])[0]
    scores, top = ce.scann_search(queries, local, layout, 10, exclude=exclude)
    np.testing.assert_array_equal(top, brute_force(queries, local[:NUM_ROWS], 10, exclude))
    exact_scores, _ = ce.exact_search(queries, ce.device_table(local, layout, mesh), layout, mesh, 10,
                                      exclude=exclude)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)


def run_workers(out, processes: int, kill_at_block: int | None = None) -> list[int]:
    """Runs tests/retrieval/corpus_worker.py in `processes` processes sharing 8 CPU devices; their exit codes."""
    port = free_port()
    extra = [] if kill_at_block is None else [str(kill_at_block)]
    codes, outputs = run_hosts([[sys.executable, str(WORKER), str(out), str(i), str(processes), str(port), *extra]
                                for i in range(processes)])
    assert kill_at_block is not None or codes == [0] * processes, "\n".join(o[-3000:] for o in outputs)
    return codes


@pytest.mark.slow
def test_two_hosts_encode_their_shards_resume_and_search_like_one(tmp_path):
    """2 processes x 4 devices: each host writes only its own shard; killed at the same block, they resume
    from it; exact and ScaNN search over both hosts' rows equal one process's and brute force."""
    single, multi = tmp_path / "one", tmp_path / "two"
    run_workers(single, 1)
    assert run_workers(multi, 2, kill_at_block=2) == [3, 3]
    hosts = sorted(p.name for p in (multi / "encoding").iterdir())
    assert hosts == ["host_00000-of-00002", "host_00001-of-00002"]
    for host in hosts:  # 208 padded rows: 104 per host, 13 steps of 8 local rows, blocks of 2 steps
        assert sorted(p.name for p in (multi / "encoding" / host).iterdir()) == [
            "block_000000.npy", "block_000001.npy", "manifest.json"]
    starts = [json.loads((multi / "encoding" / h / "manifest.json").read_text())["host_start"] for h in hosts]
    assert starts == [0, 104]
    run_workers(multi, 2)
    one, two = np.load(single / "result.npz"), np.load(multi / "result.npz")
    np.testing.assert_allclose(two["everywhere"], two["expected"], rtol=1e-5, atol=1e-4)
    for name in ("top", "scann_top"):
        np.testing.assert_array_equal(two[name], one[name])
    np.testing.assert_array_equal(two["top"], brute_force(two["queries"], two["everywhere"], 12, two["exclude"]))
    np.testing.assert_array_equal(two["scann_top"], two["top"])
    block = np.load(multi / "encoding" / hosts[1] / "block_000000.npy")  # host 1's rows start at 104
    np.testing.assert_allclose(block, two["expected"][104:120], rtol=1e-5, atol=1e-4)
