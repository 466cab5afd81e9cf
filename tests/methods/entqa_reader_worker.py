"""One process of the multi-host EntQA reader test (tests/methods/test_entqa_reader.py): builds the test's tiny
reader over the candidate files in OUT/candidates, links testa's passages over all processes' devices with
initialised params with sharpened heads (the same on every host) and (process 0) saves the links to OUT/links.json.

    python tests/methods/entqa_reader_worker.py OUT PROCESS_ID NUM_PROCESSES PORT
"""
import json
import sys
from pathlib import Path

from kipjax import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the test module's helpers


def main(out: str, process_id: int, num_processes: int, port: int) -> None:
    if num_processes > 1:
        cli.initialize_distributed(True, f"localhost:{port}", num_processes, process_id)
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from kipjax.methods.entqa.reader import EntqaReader
    from test_entqa_reader import FILES, NUM_RETRIEVED, TINY

    reader = EntqaReader(**FILES, candidates_dir=f"{out}/candidates", encoder_config=TINY, num_candidates=12,
                         eval_num_candidates=NUM_RETRIEVED, entity_tokens=24, max_tokens=64, eval_batch_size=8)
    examples = reader.train_examples()
    batch = {k: jnp.asarray(v[:1]) for k, v in examples.items()}
    params = nn.unbox(reader.init(jax.random.PRNGKey(0), {**batch, "tables": reader.tables()}))
    # sharper heads than at initialisation, so that no two spans nearly tie and float noise cannot reorder them
    params = {**params, **{h: jax.tree.map(lambda x: 300 * x, params[h]) for h in ("span_head", "rerank_head")}}
    links = reader.passage_links(params, reader.eval, reader.eval_rows, reader.eval_valid)  # all 8 devices
    if jax.process_index() == 0:
        with open(f"{out}/links.json", "w") as f:
            json.dump([[list(link) for link in passage] for passage in links], f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
