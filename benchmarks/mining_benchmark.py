"""Cost of re-mining hard negatives at an epoch start, against encoding alone.

An epoch's refresh must encode the entity table and the training mentions whatever happens next; mining adds
the scoring of every mention against every entity, the Gumbel perturbation (sampling without replacement,
eq. 3.9) and the chunked top-(K-1) with the gold excluded. The benchmark runs the production code path,
`HardNCERetrieval.mine_hard_negatives`, on a synthetic table of the requested size (random token ids, no
padding) and reports

    overhead = time(mine) / time(encode entities + encode mentions) - 1      (target: <= 15 %)

medians of interleaved repeats, after one untimed call of each (compilation).

  python benchmarks/mining_benchmark.py --out benchmarks/results/mining.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import linen as nn

from kipjax.data.demo import bundled_demo_dir
from kipjax.methods.hard_nce import HardNCERetrieval
from kipjax.models.bert import BertConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entities", type=int, default=8192, help="entity table rows")
    p.add_argument("--mentions", type=int, default=1024, help="training mentions")
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--num_candidates", type=int, default=64, help="K: K-1 negatives are mined per mention")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--encode_batch_size", type=int, default=256)
    p.add_argument("--chunk_size", type=int, default=4096)
    p.add_argument("--sampling", choices=("sample", "topk"), default="sample")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def synthetic_method(args: argparse.Namespace) -> HardNCERetrieval:
    """A HardNCERetrieval whose training tables are replaced by random tokens of the requested size."""
    config = BertConfig(vocab_size=1024, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate,
                        max_position_embeddings=max(128, args.seq_len), add_pooler=False)
    method = HardNCERetrieval(data_dir=bundled_demo_dir(), encoder_config=config, share_encoders=False,
                              num_candidates=args.num_candidates, negatives="hard", hard_sampling=args.sampling,
                              max_len=args.seq_len, encode_batch_size=args.encode_batch_size,
                              chunk_size=args.chunk_size)
    rng = np.random.default_rng(0)

    def table(n: int) -> dict[str, np.ndarray]:
        ids = rng.integers(16, config.vocab_size, (n, args.seq_len), dtype=np.int32)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    method.train_entities = table(args.entities)
    method.train_mentions = {**table(args.mentions),
                             "gold_entity": rng.integers(0, args.entities, args.mentions, dtype=np.int32)}
    method.num_train_entities = args.entities
    return method


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    method = synthetic_method(args)
    batch = {"mention_input_ids": method.train_mentions["input_ids"][:1],
             "mention_attention_mask": method.train_mentions["attention_mask"][:1],
             "tables": method.tables()}
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch))

    def encode() -> tuple:
        return (method.encode_table(params, method.train_entities, entities=True),
                method.encode_table(params, method.train_mentions, entities=False))

    def mine() -> jax.Array:
        return method.mine_hard_negatives(params, jax.random.PRNGKey(1))

    _timed(encode), _timed(mine)  # compile both
    encode_times, mine_times = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        encode_times.append(_timed(encode))
        mine_times.append(_timed(mine))
    encode_s, mine_s = statistics.median(encode_times), statistics.median(mine_times)
    return {"config": vars(args), "machine": {"platform": platform.platform(), "devices": str(jax.devices())},
            "encode_seconds": encode_s, "mine_seconds": mine_s, "overhead": mine_s / encode_s - 1.0,
            "encode_times": encode_times, "mine_times": mine_times,
            "target_overhead": 0.15, "meets_target": mine_s / encode_s - 1.0 <= 0.15}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print(f"entities {args.entities} x mentions {args.mentions}, L={args.seq_len}, K={args.num_candidates}, "
          f"{args.layers}x{args.hidden} encoders, sampling={args.sampling}")
    print(f"encode (entities + mentions): {result['encode_seconds']:.2f} s   "
          f"mine (encode + score + sample): {result['mine_seconds']:.2f} s   "
          f"overhead {100 * result['overhead']:+.1f} % (target <= 15 %)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
