import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kipjax.data.demo_docred import RELATIONS, demo_docred_path
from kipjax.data.docred import read_docred
from kipjax.decoding import beam_search, repeat_for_beams
from kipjax.methods.lmrc import answer_constraint as ac
from kipjax.methods.lmrc import prompts
from kipjax.models.hf import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(demo_docred_path("llama_tokenizer"))


@pytest.fixture(scope="module")
def constraint(tokenizer):
    return ac.answer_constraint_from_tokenizer(tokenizer, RELATIONS)


@pytest.fixture(scope="module")
def rows():
    """Every pair group (18 pairs) of the first three dev documents, and a shorter pair list."""
    out = []
    for d in read_docred(demo_docred_path("dev.json"))[:3]:
        pairs = [(h, t) for h in range(len(d.entities)) for t in range(len(d.entities)) if h != t]
        out += [(d, group) for group in prompts.group_pairs(pairs)]
    return out + [(out[0][0], [(0, 1)])]


@pytest.fixture(scope="module")
def compiled(constraint):
    return jax.jit(constraint.allowed), jax.jit(constraint.update)


def init(constraint, tokenizer, rows, max_length):
    inputs = ac.encode_pair_lists(tokenizer, rows)
    return constraint.init_state(inputs["prefix"], inputs["prefix_length"], inputs["suffix"],
                                 inputs["suffix_length"], inputs["num_pairs"], max_length)


def minimal(constraint, tokenizer, rows):
    inputs = ac.encode_pair_lists(tokenizer, rows)
    return np.asarray(constraint.minimal_length(inputs["prefix_length"], inputs["suffix_length"],
                                                inputs["num_pairs"]))


def collapse(items):
    return [item for item, _ in itertools.groupby(items)]


def assert_well_formed(tokenizer, row, ids, max_length):
    """`ids` end with EOS within `max_length`, and the text before it is a complete answer for the pairs."""
    doc, pairs = row
    ids = list(ids)
    assert tokenizer.eos_token_id in ids[:max_length], "no EOS within max_length"
    text = tokenizer.decode(ids[:ids.index(tokenizer.eos_token_id)])
    parsed = prompts.parse_answer(text, doc, pairs, RELATIONS)
    assert parsed.malformed == 0, text
    assert all((h, t) in pairs and r in RELATIONS for h, t, r in parsed.facts)
    triples = [(head.strip(), tail.strip()) for head, _, tail in prompts.TRIPLE_PATTERN.findall(text)]
    names = [(prompts.entity_name(doc.entities[h]), prompts.entity_name(doc.entities[t])) for h, t in pairs]
    assert collapse(triples) == collapse(names), text  # every pair, in order
    relations = [relation.strip() for _, relation, _ in prompts.TRIPLE_PATTERN.findall(text)]
    for _, group in itertools.groupby(zip(triples, relations), key=lambda x: x[0]):
        written = [relation for _, relation in group]
        assert written == [prompts.NONE_NAME] or (len(set(written)) == len(written) and
                                                  prompts.NONE_NAME not in written), text
    return parsed


def test_relation_trie():
    trie = ac.build_relation_trie([[5], [5, 6, 7], [8]])
    assert trie.terminal.tolist().count(-1) == 2 and trie.remaining[0].tolist() == [1, 3, 1]
    for bad in ([[5], [5]], [[5], []]):
        with pytest.raises(ValueError):
            ac.build_relation_trie(bad)


def test_gold_answers_are_allowed_step_by_step(tokenizer, constraint, compiled, rows):
    allowed, update = compiled
    gold = [ac.encode_answer(tokenizer, d, pairs, RELATIONS) for d, pairs in rows]
    # With the demo's word-level tokenizer, the answer assembled piece by piece is the answer text's encoding.
    assert gold == [tokenizer(prompts.build_answer(d, pairs, RELATIONS), add_special_tokens=False)["input_ids"]
                    + [tokenizer.eos_token_id] for d, pairs in rows]
    width = max(map(len, gold))
    tokens = np.full((len(rows), width + 2), tokenizer.eos_token_id, np.int32)
    for i, ids in enumerate(gold):
        tokens[i, :len(ids)] = ids
    lengths = np.array([len(ids) for ids in gold])
    np.testing.assert_array_equal(minimal(constraint, tokenizer, rows) <= lengths, True)
    state = init(constraint, tokenizer, rows, lengths)  # exactly as long as the gold answers: the budget holds
    for step in range(tokens.shape[1]):
        mask = np.asarray(allowed(state))
        assert mask[np.arange(len(rows)), tokens[:, step]].all(), f"step {step}"
        state = update(state, jnp.asarray(tokens[:, step]))


def allowed_after(tokenizer, constraint, compiled, row, text, max_length=200):
    allowed, update = compiled
    state = init(constraint, tokenizer, [row], max_length)
    for token in tokenizer(text, add_special_tokens=False)["input_ids"] if text else []:
        assert np.asarray(allowed(state))[0, token], (text, token)
        state = update(state, jnp.array([token]))
    return set(tokenizer.convert_ids_to_tokens(np.flatnonzero(np.asarray(allowed(state))[0]).tolist()))


def test_hand_computed_allowed_sets(tokenizer, constraint, compiled, rows):
    doc = rows[0][0]
    row = (doc, [(0, 1), (1, 0)])  # ( Greta Quist | . | Falkirsk ) then ( Falkirsk | . | Greta Quist )
    firsts = {"country", "located", "date", "place", "employer", "headquarters", "spouse"}
    first = "( Greta Quist | country | Falkirsk )"

    def after(text, max_length=200):
        return allowed_after(tokenizer, constraint, compiled, row, text, max_length)

    assert after("") == {"("}
    assert after("(") == {"Greta"}
    assert after("( Greta Quist |") == firsts | {"none"}
    assert after("( Greta Quist | country") == {"of", "|"}
    assert after(first) == {"("}  # no EOS before the last pair
    assert after(first + " (") == {"Greta", "Falkirsk"}  # another triple for the pair, or the next pair
    assert after(first + " ( Greta Quist |") == firsts  # no `none` after a relation; `country` leads on
    assert after(first + " ( Greta Quist | country") == {"of"}  # ... to the unused `country of citizenship`
    assert after("( Greta Quist | none | Falkirsk )") == {"("}
    assert after("( Greta Quist | none | Falkirsk ) (") == {"Falkirsk"}  # nothing after `none`
    assert after(first + " ( Falkirsk | none | Greta Quist )") == {"</s>"}
    assert after(first + " ( Falkirsk | spouse | Greta Quist )") == {"(", "</s>"}
    # The budget: at the minimal length (4 + 1 + 3 + 3 + 1 + 4 + EOS = 17) only one-token relations fit.
    assert minimal(constraint, tokenizer, [row]).tolist() == [17]
    assert after("( Greta Quist |", 17) == {"country", "employer", "spouse", "none"}
    assert after(first + " (", 17 + 7) == {"Falkirsk"}  # no room for another triple for the first pair
    assert after(first + " (", 17 + 8) == {"Greta", "Falkirsk"}
    assert after(first + " ( Greta Quist | country", 17 + 8 + 2) == {"of"}  # 2 spare: "of citizenship" fits
    assert after(first + " ( Greta Quist |", 17 + 8) == {"employer", "spouse"}


@pytest.mark.parametrize("bias_kind, spare", [("none", 0), ("none", 40), ("random", 15), ("repeat", 30)])
def test_random_walks_are_well_formed(tokenizer, constraint, compiled, rows, bias_kind, spare):
    allowed, update = compiled
    rng = np.random.default_rng(len(bias_kind) + spare)
    vocab = constraint.vocab_size
    bias = np.zeros(vocab)
    if bias_kind == "random":
        bias = rng.normal(scale=3.0, size=vocab)
    elif bias_kind == "repeat":  # start another triple rather than end; avoid `none`
        ids = tokenizer.convert_tokens_to_ids(["(", "none", "</s>"])
        bias[ids] = [6.0, -6.0, -6.0]
    max_length = minimal(constraint, tokenizer, rows) + spare
    state = init(constraint, tokenizer, rows, max_length)
    walk = []
    for _ in range(int(max_length.max())):
        mask = np.asarray(allowed(state))
        assert mask.any(axis=1).all()
        scores = np.where(mask, rng.gumbel(size=mask.shape) + bias, -np.inf)
        tokens = scores.argmax(axis=1).astype(np.int32)
        walk.append(tokens)
        state = update(state, jnp.asarray(tokens))
    walk = np.stack(walk, axis=1)
    for i, row in enumerate(rows):
        assert_well_formed(tokenizer, row, walk[i], max_length[i])
    if spare == 0:  # the minimal length leaves no room but for exactly the shortest answer
        assert (walk[np.arange(len(rows)), max_length - 1] == tokenizer.eos_token_id).all()


@pytest.mark.parametrize("spare", [0, 25])
def test_constrained_beam_search_with_random_model(tokenizer, constraint, rows, spare):
    rows = rows[:4] + rows[-1:]
    beams = 3
    vocab = constraint.vocab_size
    table = jax.random.normal(jax.random.PRNGKey(0), (vocab, vocab)) * 4.0

    def step_fn(cache, tokens):
        return table[tokens], cache

    row_lengths = minimal(constraint, tokenizer, rows) + spare
    max_length = int(row_lengths.max())
    state = repeat_for_beams(init(constraint, tokenizer, rows, row_lengths), beams)

    @jax.jit
    def search(state):
        return beam_search(step_fn, jnp.zeros((len(rows) * beams,)), batch_size=len(rows), beam_size=beams,
                           max_length=max_length, start_token=tokenizer.bos_token_id,
                           eos_token=tokenizer.eos_token_id, pad_token=tokenizer.pad_token_id,
                           constraint=constraint, constraint_state=state)

    out = search(state)
    sequences, scores = np.asarray(out.sequences), np.asarray(out.scores)
    for i, row in enumerate(rows):
        assert scores[i, 0] > -1e8
        for b in range(beams):
            if scores[i, b] > -1e8:
                assert_well_formed(tokenizer, row, sequences[i, b], row_lengths[i])


def test_answers_assembled_from_pieces_fit_the_constraint_under_a_byte_level_bpe_tokenizer(rows):
    """With byte-level BPE a piece's tokens depend on its context (" (" is not "("), so the training targets
    are assembled from the pieces the constraint forces: they must pass it and parse back to the gold facts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [prompts.build_prompt(d, pairs, RELATIONS) + " " + prompts.build_answer(d, pairs, RELATIONS)
             for d, pairs in rows]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    answer = prompts.build_answer(rows[0][0], rows[0][1], RELATIONS)
    assert ac.encode_answer(tokenizer, rows[0][0], rows[0][1], RELATIONS)[:-1] != tokenizer(answer)["input_ids"]
    constraint = ac.answer_constraint_from_tokenizer(tokenizer, RELATIONS)
    allowed, update = jax.jit(constraint.allowed), jax.jit(constraint.update)
    for doc, pairs in rows[:4]:
        gold = ac.encode_answer(tokenizer, doc, pairs, RELATIONS)
        state = init(constraint, tokenizer, [(doc, pairs)], len(gold))
        for step, token in enumerate(gold):
            assert np.asarray(allowed(state))[0, token], f"step {step}"
            state = update(state, jnp.asarray([token]))
        parsed = prompts.parse_answer(tokenizer.decode(gold[:-1]), doc, pairs, RELATIONS)
        assert parsed.malformed == 0
        assert set(parsed.facts) == {(f.h, f.t, f.r) for f in doc.facts if (f.h, f.t) in pairs}
