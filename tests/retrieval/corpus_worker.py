"""One process of the multi-host corpus test (tests/retrieval/test_corpus_encoding.py): encodes a fixed random
corpus over all processes' devices into OUT/encoding, searches it exactly on the devices and with ScaNN, and
(process 0) saves the results to OUT/result.npz.

    python tests/retrieval/corpus_worker.py OUT PROCESS_ID NUM_PROCESSES PORT [KILL_AT_BLOCK]
"""
import sys

import numpy as np

from kipjax import cli


def main(out: str, process_id: int, num_processes: int, port: int, kill_at_block: int | None) -> None:
    if num_processes > 1:
        cli.initialize_distributed(True, f"localhost:{port}", num_processes, process_id)
    import jax
    import jax.numpy as jnp

    from kipjax import partitioning
    from kipjax.retrieval import corpus_encoding as ce

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (203, 6)).astype(np.int32)
    mask = (ids % 7 != 0).astype(np.int32)
    params = {"w": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)}
    queries = rng.normal(size=(9, 8)).astype(np.float32)
    exclude = np.array([[i, i + 1] for i in range(9)], np.int32)

    def encoder(p, i, m):
        return (i * m).astype(jnp.float32) @ p["w"]

    if kill_at_block is not None:
        real_save = ce._save_block

        def save(path, array):
            if path.endswith(f"block_{kill_at_block:06d}.npy"):
                raise SystemExit(3)
            real_save(path, array)
        ce._save_block = save
    mesh = partitioning.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    local, layout = ce.encode_corpus(encoder, params, ids, mask, mesh=mesh, batch_size=16,
                                     out_dir=f"{out}/encoding", fingerprint="f", steps_per_block=2)
    scores, top = ce.exact_search(queries, ce.device_table(local, layout, mesh), layout, mesh, 12, exclude=exclude,
                                  query_batch=4, chunk_size=8)
    scann_scores, scann_top = ce.scann_search(queries, local, layout, 12, exclude=exclude)
    everywhere = ce.encode_everywhere(encoder, params, ids, mask, mesh=mesh, batch_size=16, desc="queries")
    if jax.process_index() == 0:
        np.savez(f"{out}/result.npz", scores=scores, top=top, scann_scores=scann_scores, scann_top=scann_top,
                 everywhere=everywhere, queries=queries, exclude=exclude, expected=(ids * mask).astype(np.float64) @ np.asarray(params["w"]))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
         int(sys.argv[5]) if len(sys.argv) > 5 else None)
