"""The coreference decoding benchmark: its transformers logits processor enforces exactly the kipjax constraint,
and the benchmark runs both frameworks at toy sizes to the same outputs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kipjax.decoding import NEG_INF
from kipjax.methods.coref.linearize import linearize
from test_benchmarks import load

bench = load("coref_decoding_benchmark")
V = 160  # coreference symbols at 153..159, digits at 100..109
WORDS = [3, 5, 17, 100, 101, 120, 150]  # 100 and 101 are also the digits 0 and 1


def gold_rows(rng, rows):
    """Random sources and the gold linearizations (+ eos) of random annotations of them."""
    symbols = bench.coref_symbols(V)
    sources = [[int(w) for w in rng.choice(WORDS, int(rng.integers(1, 9)))] for _ in range(rows)]
    return sources, [linearize(s, bench.random_annotation(rng, len(s), 4), symbols) + [symbols.eos] for s in sources]


def drive(constraint, sources, max_length, next_tokens):
    """Steps both implementations along the same prefixes; at every step the processor's output must equal
    `process_logits` to the bit, and its allowed set `allowed`. `next_tokens(t, allowed)` picks each row's next
    token."""
    rows = len(sources)
    width = max(map(len, sources))
    source = np.asarray([s + [WORDS[0]] * (width - len(s)) for s in sources], np.int32)
    # the processor takes the source length from its source's width: one processor per row
    processors = [bench.LinearizationLogitsProcessor(constraint, torch.tensor([s]), 1, max_length) for s in sources]
    lengths = np.asarray([len(s) for s in sources])
    state = constraint.init_state(jnp.asarray(source), jnp.asarray(lengths), max_length)
    process, allowed_fn, update = jax.jit(constraint.process_logits), jax.jit(constraint.allowed), jax.jit(
        constraint.update)
    ids = np.zeros((rows, 1), np.int64)  # the decoder start
    rng = np.random.default_rng(0)
    for t in range(max_length):
        scores = rng.normal(size=(rows, V)).astype(np.float32)
        expected = np.asarray(process(state, jnp.asarray(scores)))
        allowed = np.asarray(allowed_fn(state))
        for i, p in enumerate(processors):
            got = p(torch.from_numpy(ids[i:i + 1]), torch.from_numpy(scores[i:i + 1])).numpy()[0]
            np.testing.assert_array_equal(got, expected[i], err_msg=f"row {i} step {t}: {ids[i].tolist()}")
            np.testing.assert_array_equal(got > NEG_INF / 2, allowed[i])
        tokens = next_tokens(t, allowed)
        state = update(state, jnp.asarray(tokens, jnp.int32))
        ids = np.concatenate([ids, np.asarray(tokens)[:, None]], axis=1)


@pytest.mark.parametrize("actions", ["copy", "token"])
def test_processor_allows_exactly_what_the_constraint_allows(actions):
    rng = np.random.default_rng(1)
    constraint = bench.make_constraint(V, actions)
    # Gold linearizations, with the length budget exactly their length (the tightest) and with room to spare.
    for slack in (0, 6):
        sources, targets = gold_rows(rng, 8)
        max_length = max(map(len, targets)) + slack
        padded = [t + [constraint.symbols.eos] * (max_length - len(t)) for t in targets]
        drive(constraint, sources, max_length, lambda t, allowed: [row[t] for row in padded])
    # Random walks under the constraint, eager to open mentions and write long cluster numbers, against
    # tight nesting and number caps.
    capped = dataclasses.replace(constraint, max_depth=2, max_identity_tokens=2)
    specials = [capped.symbols.mention_start, capped.symbols.separator, *capped.integer_tokens]
    for c in (constraint, capped):
        for trial in range(3):
            sources = [[int(w) for w in rng.choice(WORDS, int(rng.integers(1, 9)))] for _ in range(4)]
            walk = np.random.default_rng(trial)

            def next_tokens(t, allowed):
                picks = []
                for row in allowed:
                    eager = [s for s in specials if row[s]]
                    picks.append(int(walk.choice(eager if eager and walk.random() < 0.6 else np.flatnonzero(row))))
                return picks

            drive(c, sources, 28, next_tokens)


@pytest.mark.slow
def test_benchmark_runs_both_frameworks_to_the_same_outputs(tmp_path):
    result = bench.main(["--d_model=32", "--layers=1", "--heads=2", "--d_ff=64", "--vocab_size=512",
                         "--batch_size=2", "--beams=3", "--source_len=10", "--repeats=1", "--warmup=0",
                         "--rounds=1", "--mask_vocab_sizes=256,1024", "--mask_repeats=1",
                         f"--out={tmp_path / 'r.json'}"])
    assert result["same_outputs"] and result["valid_linearizations"]
    assert result["kipjax"]["tokens_per_s"] > 0 and result["transformers"]["tokens_per_s"] > 0
    assert result["kipjax"]["tokens"] == result["transformers"]["tokens"] >= 2 * 11  # source + eos at least
    np.testing.assert_allclose(result["best_scores"]["kipjax"], result["best_scores"]["transformers"], atol=1e-4)
    for side in ("kipjax", "transformers"):
        assert set(result["mask_cost"][side]["us_per_step"]) == {"256", "512", "1024"}
    assert (tmp_path / "r.json").is_file()
