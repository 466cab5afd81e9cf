"""The LMRC decoding benchmark: its transformers logits processor enforces exactly the kipjax answer constraint,
and the benchmark runs both frameworks at toy sizes to the same outputs."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kipjax.data.docred import Entity, Fact
from kipjax.methods.lmrc import answer_constraint as ac
from test_benchmarks import load

bench = load("lmrc_decoding_benchmark")
# 12 relations: prefix-sharing names (`head of government` / `head of state`, `place of birth` / `place of
# death`) and one name a prefix of another (`country` / `country of citizenship`).
TINY = ["--vocab_size=600", "--relations=12", "--entities=4", "--pairs=5", "--doc_words=10"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """(args, tokenizer, constraint, rows): pair lists covering shared heads, several relations per pair,
    `none`, and two entities of the same name (another triple for a pair and the next pair's first triple
    then read alike to the end)."""
    args = bench.parse_args(TINY)
    workdir = tmp_path_factory.mktemp("lmrc")
    bench.save_tokenizer(args, str(workdir / "tokenizer"))
    tokenizer, constraint, problem = bench.setup(args, str(workdir))
    relations = list(bench.relation_names(args))
    doc, _ = problem.rows[0]
    every = [(h, t) for h in range(4) for t in range(4) if h != t]  # consecutive pairs share their head
    many = dataclasses.replace(doc, facts=[Fact(0, 1, r) for r in relations[:4]] + [Fact(0, 2, relations[7]),
                                                                                    Fact(2, 0, relations[1])])
    twins = dataclasses.replace(doc, entities=[*doc.entities[:3], Entity(doc.entities[0].mentions)],
                                facts=[Fact(0, 1, relations[1]), Fact(3, 2, relations[2])])
    rows = [*problem.rows, (many, every), (many, [(0, 1)]), (twins, [(0, 1), (3, 1), (3, 2)]),
            (dataclasses.replace(doc, facts=[]), every[:3])]
    return args, tokenizer, constraint, rows


def drive(constraint, tokenizer, rows, max_length, next_tokens):
    """Steps the JAX constraint and the processor (one per row, beams 1, a one-token prompt) along the same
    prefixes: at every step the processor's output must equal `process_logits` to the bit.
    `next_tokens(t, allowed)` picks each row's next token; returns the tokens taken [rows, max_length]."""
    affixes = ac.encode_pair_lists(tokenizer, rows)
    processors = [bench.AnswerLogitsProcessor(constraint, ac.encode_pair_lists(tokenizer, [row]), 1, 1, max_length)
                  for row in rows]
    state = constraint.init_state(**affixes, max_length=max_length)
    process, allowed_fn, update = (jax.jit(f) for f in (constraint.process_logits, constraint.allowed,
                                                        constraint.update))
    ids = np.full((len(rows), 1), tokenizer.bos_token_id, np.int64)  # stands for the prompt
    rng = np.random.default_rng(0)
    for t in range(max_length):
        scores = rng.normal(size=(len(rows), constraint.vocab_size)).astype(np.float32)
        expected = np.asarray(process(state, jnp.asarray(scores)))
        for i, p in enumerate(processors):
            got = p(torch.from_numpy(ids[i:i + 1]), torch.from_numpy(scores[i:i + 1])).numpy()[0]
            np.testing.assert_array_equal(got, expected[i], err_msg=f"row {i} step {t}: "
                                                                    f"{tokenizer.decode(ids[i, 1:])}")
        tokens = next_tokens(t, np.asarray(allowed_fn(state)))
        state = update(state, jnp.asarray(tokens, jnp.int32))
        ids = np.concatenate([ids, np.asarray(tokens)[:, None]], axis=1)
    return ids[:, 1:]


def test_processor_allows_exactly_what_the_constraint_allows_along_gold_answers(setting):
    args, tokenizer, constraint, rows = setting
    gold = [ac.encode_answer(tokenizer, doc, pairs, bench.relation_names(args)) for doc, pairs in rows]
    for slack in (0, 7):  # the budget exactly the longest answer, and room to spare
        max_length = max(map(len, gold)) + slack
        padded = np.asarray([g + [tokenizer.eos_token_id] * (max_length - len(g)) for g in gold])

        def next_tokens(t, allowed):
            assert allowed[np.arange(len(rows)), padded[:, t]].all(), f"step {t}"
            return padded[:, t]

        drive(constraint, tokenizer, rows, max_length, next_tokens)


@pytest.mark.parametrize("spare", [0, 30])
def test_processor_allows_exactly_what_the_constraint_allows_along_random_walks(setting, spare):
    """Walks eager to start another triple (and to take `none`, so both candidates and `none`'s exclusivity
    come into play), within the tightest budget and with room to spare."""
    _, tokenizer, constraint, rows = setting
    affixes = ac.encode_pair_lists(tokenizer, rows)
    max_length = int(np.asarray(constraint.minimal_length(affixes["prefix_length"], affixes["suffix_length"],
                                                          affixes["num_pairs"])).max()) + spare
    eager = tokenizer.convert_tokens_to_ids(["(", "none"])
    for trial in range(2):
        walk = np.random.default_rng(trial)

        def next_tokens(t, allowed):
            picks = []
            for row in allowed:
                favoured = [s for s in eager if row[s]]
                options = favoured if favoured and walk.random() < 0.5 else np.flatnonzero(row)
                picks.append(int(walk.choice(options)))
            return picks

        taken = drive(constraint, tokenizer, rows, max_length, next_tokens)
        assert (taken == tokenizer.eos_token_id).any(axis=1).all()  # the budget holds for every walk


@pytest.mark.slow  # two fresh worker processes, three compilations: 25 s on 2 idle cores, 50 s under load
def test_benchmark_runs_both_frameworks_to_the_same_outputs(tmp_path):
    out = tmp_path / "r.json"
    result = bench.main([*TINY, "--layers=1", "--hidden=32", "--heads=2", "--kv_heads=1", "--mlp=64",
                         "--batch_size=2", "--beams=3", "--pairs=3", "--repeats=1", "--warmup=0", "--rounds=1",
                         "--mask_vocab_sizes=600,1200", "--mask_repeats=1", f"--out={out}"])
    assert result["same_outputs"] and result["repeatable"] and result["valid_answers"]
    assert result["kipjax"]["steps"] == result["transformers"]["steps"] <= result["budget"]
    # at least `( h | r | t )` per pair, then EOS
    assert result["kipjax"]["tokens"] == result["transformers"]["tokens"] >= 2 * (3 * 5 + 1)
    np.testing.assert_allclose(result["best_scores"]["kipjax"], result["best_scores"]["transformers"], atol=1e-4)
    saved = json.loads(out.read_text())
    assert {"same_outputs", "differences", "throughput_ratio_kipjax_over_transformers", "mask_cost", "config",
            "versions", "platform", "cpu_count", "load_before"} <= set(saved)
    for side in ("kipjax", "transformers"):
        assert saved[side]["tokens_per_s"] > 0 and set(saved[side]["per_step_ms"]) == {
            "search_step", "decoder_step", "constraint", "rest"}
        assert set(saved["mask_cost"][side]["us_per_step"]) == {"600", "1200"}
