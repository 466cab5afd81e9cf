"""Exact chunked / sharded top-k against numpy brute force; ScaNN recall and save / load."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax.partitioning import make_mesh
from kipjax.retrieval.index import (ScannIndex, chunked_topk, dot_product_score, gumbel_bias,
                                    sharded_topk)

N, B, H, K = 37, 5, 4, 6  # N is prime: divisible by no chunk size or shard count used below


def _int_vectors(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Small integers, so float32 dot products are exact and many scores tie."""
    return np.random.default_rng(seed).integers(-2, 3, size=shape).astype(np.float32)


def _brute_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable reference: descending score, ties to the lower id, -inf slots reported as id -1."""
    ids = np.stack([np.lexsort((np.arange(row.size), -row))[:k] for row in scores])
    top = np.take_along_axis(scores, ids, axis=1)
    return top, np.where(np.isneginf(top), -1, ids)


def _assert_same(got: tuple[jax.Array, jax.Array], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])


@pytest.fixture(scope="module")
def dual():
    queries, table = _int_vectors(0, (B, H)), _int_vectors(1, (N, H))
    assert any(len(set(row)) < N for row in queries @ table.T)  # ties are exercised
    return queries, table


@pytest.mark.parametrize("chunk_size", [5, N, 64])
def test_chunked_topk_equals_brute_force(dual, chunk_size):
    queries, table = dual
    got = chunked_topk(dot_product_score, jnp.asarray(queries), jnp.asarray(table), K, chunk_size=chunk_size)
    _assert_same(got, _brute_topk(queries @ table.T, K))


def test_chunked_topk_group_shortlist_is_exact():
    """Chunks of 48 with k=6 go through the group-max shortlist (groups of 2); many ties, 5 chunks."""
    queries, table = _int_vectors(5, (B, H)), _int_vectors(6, (203, H))
    got = chunked_topk(dot_product_score, jnp.asarray(queries), jnp.asarray(table), K, chunk_size=48)
    _assert_same(got, _brute_topk(queries @ table.T, K))


def test_chunked_topk_pytree_table_sum_of_max():
    """Multi-vector entities with masks: score = sum over query tokens of the max over entity vectors."""
    q_tokens, m = 3, 4
    queries = _int_vectors(2, (B, q_tokens, H))
    table = {"vectors": _int_vectors(3, (N, m, H)),
             "mask": np.arange(m)[None, :] < np.random.default_rng(4).integers(1, m + 1, size=(N, 1))}

    def sum_of_max(q, chunk):
        sims = jnp.einsum("bqh,cmh->bcqm", q, chunk["vectors"])
        return jnp.where(chunk["mask"][None, :, None, :], sims, -jnp.inf).max(-1).sum(-1)

    sims = np.einsum("bqh,nmh->bnqm", queries, table["vectors"])
    want = np.where(table["mask"][None, :, None, :], sims, -np.inf).max(-1).sum(-1)
    got = chunked_topk(sum_of_max, jnp.asarray(queries), jax.tree.map(jnp.asarray, table), K, chunk_size=8)
    _assert_same(got, _brute_topk(want, K))


def _world_bias(queries, chunk, ids):
    del ids
    return jnp.where(queries["world"][:, None] == chunk["world"][None, :], 0.0, -jnp.inf)


def _world_inputs(dual):
    queries, table = dual
    worlds = np.arange(N) % 4
    worlds[worlds == 3] = 2
    worlds[-2:] = 3  # world 3 has only 2 < K entities: the remaining slots must come back as -1
    query_worlds = np.array([0, 1, 2, 3, 0])
    q = {"vec": jnp.asarray(queries), "world": jnp.asarray(query_worlds)}
    t = {"vec": jnp.asarray(table), "world": jnp.asarray(worlds)}
    scores = np.where(query_worlds[:, None] == worlds[None, :], queries @ table.T, -np.inf)
    return q, t, _brute_topk(scores, K)


def _dual_score(q, chunk):
    return q["vec"] @ chunk["vec"].T


def test_bias_restricts_each_query_to_its_world(dual):
    q, t, want = _world_inputs(dual)
    got = chunked_topk(_dual_score, q, t, K, chunk_size=8, bias_fn=_world_bias)
    _assert_same(got, want)
    assert (np.asarray(got[1])[3, 2:] == -1).all()


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


@pytest.mark.parametrize("entity_axes,chunk_size", [(None, 3), (("fsdp", "tensor"), 4)])
def test_sharded_topk_equals_brute_force(dual, mesh, entity_axes, chunk_size):
    # 37 rows -> 8 shards of 5 (3 padding rows) scanned in chunks of 3, or 4 shards of 10 in chunks of 4.
    queries, table = dual
    got = sharded_topk(dot_product_score, jnp.asarray(queries), jnp.asarray(table), K, mesh=mesh,
                       chunk_size=chunk_size, entity_axes=entity_axes)
    _assert_same(got, _brute_topk(queries @ table.T, K))


def test_sharded_topk_never_returns_padding_rows(dual, mesh):
    queries, table = dual
    # Pre-padded to 48 rows; padding row i is 100 * query (i mod B), so it would win that query if scored.
    padded = np.concatenate([table, np.resize(100 * queries, (48 - N, H))])
    assert (np.abs(queries).sum(1) > 0).all()
    got = sharded_topk(dot_product_score, jnp.asarray(queries), jnp.asarray(padded), K, mesh=mesh,
                       chunk_size=2, num_entities=N)
    _assert_same(got, _brute_topk(queries @ table.T, K))


def test_sharded_topk_with_world_bias(dual, mesh):
    q, t, want = _world_inputs(dual)
    _assert_same(sharded_topk(_dual_score, q, t, K, mesh=mesh, chunk_size=3, bias_fn=_world_bias), want)


def test_gumbel_sample_is_the_same_for_every_chunking_and_sharding(dual, mesh):
    queries, table = dual
    q, t = jnp.asarray(queries), jnp.asarray(table)
    bias = gumbel_bias(jax.random.key(7), B, temperature=0.5)
    full = chunked_topk(dot_product_score, q, t, K, chunk_size=N, bias_fn=bias)  # one chunk: full table
    noise = np.asarray(bias(None, None, jnp.arange(N, dtype=jnp.int32)))
    _assert_same(full, _brute_topk(queries @ table.T + noise, K))
    _assert_same(chunked_topk(dot_product_score, q, t, K, chunk_size=4, bias_fn=bias), full)
    _assert_same(sharded_topk(dot_product_score, q, t, K, mesh=mesh, chunk_size=2, bias_fn=bias), full)


def test_gumbel_top1_frequencies_follow_softmax():
    num_queries, logits = 4000, np.array([1.0, 0.0, -1.0, 0.5, 2.0], np.float32)
    table = jnp.asarray(logits)[:, None]
    queries = jnp.ones((num_queries, 1))
    _, ids = chunked_topk(dot_product_score, queries, table, 2, chunk_size=2,
                          bias_fn=gumbel_bias(jax.random.key(0), num_queries))
    ids = np.asarray(ids)
    assert (ids[:, 0] != ids[:, 1]).all()  # without replacement
    freq = np.bincount(ids[:, 0], minlength=logits.size) / num_queries
    softmax = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(freq, softmax, atol=0.03)  # binomial std <= 0.008


def test_empty_table_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        chunked_topk(dot_product_score, jnp.ones((1, 2)), jnp.ones((0, 2)), 1, chunk_size=4)


def _clustered(seed: int, n: int, num_queries: int, dim: int = 32, clusters: int = 50):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    db = centers[rng.integers(clusters, size=n)] + 0.4 * rng.normal(size=(n, dim))
    queries = centers[rng.integers(clusters, size=num_queries)] + 0.4 * rng.normal(size=(num_queries, dim))
    return db.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def scann_setup():
    db, queries = _clustered(0, 20_000, 200)
    index = ScannIndex.build(db)  # N >= brute_force_below: tree + AH + reorder with default knobs
    return db, queries, index


def test_scann_recall_at_10(scann_setup):
    db, queries, index = scann_setup
    assert not index.metadata["brute_force"]
    exact = np.argsort(-(queries @ db.T), axis=1)[:, :10]
    scores, ids = index.search(queries, 10)
    assert ids.shape == scores.shape == (len(queries), 10)
    assert (np.diff(scores, axis=1) <= 0).all()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.9, recall


def test_scann_save_load_round_trip(scann_setup, tmp_path):
    _, queries, index = scann_setup
    directory = tmp_path / "index"
    index.save(directory)
    index.save(directory)  # overwriting an existing index works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no staging dirs left behind
    moved = tmp_path / "moved"
    directory.rename(moved)  # assets are stored with relative paths
    loaded = ScannIndex.load(moved)
    assert loaded.metadata == index.metadata
    for got, want in zip(loaded.search(queries, 10), index.search(queries, 10)):
        np.testing.assert_array_equal(got, want)


def test_scann_brute_force_for_tiny_tables_is_exact():
    db, queries = _clustered(1, 300, 20)
    index = ScannIndex.build(db)
    assert index.metadata["brute_force"]
    scores, ids = index.search(queries, 5)
    exact = queries @ db.T
    np.testing.assert_array_equal(ids, np.argsort(-exact, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), rtol=1e-5)


def test_scann_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ScannIndex.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="missing"):
        ScannIndex.load(tmp_path)
    (tmp_path / "scann_assets.pbtxt").write_text("")
    (tmp_path / "kipjax_scann.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid index metadata"):
        ScannIndex.load(tmp_path)
