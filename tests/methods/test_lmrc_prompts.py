import pytest

from kipjax.data.demo_docred import RELATIONS, demo_docred_path
from kipjax.data.docred import DocredDocument, Entity, Fact, Mention, read_docred
from kipjax.methods.lmrc import prompts
from kipjax.models.hf import load_tokenizer

NAMES = {"P17": "country", "P108": "employer", "P26": "spouse"}
PAIRS = [(0, 1), (1, 0), (0, 2)]


def doc() -> DocredDocument:
    sents = [["Greta", "Quist", "works", "for", "Falk", "Bank", "."], ["She", "married", "Ivo", "Dorn", "."]]
    entities = [Entity((Mention("Greta Quist", 0, (0, 2), "PER"), Mention("She", 1, (0, 1), "PER"))),
                Entity((Mention("Falk  Bank", 0, (4, 6), "ORG"),)),
                Entity((Mention("Ivo Dorn", 1, (2, 4), "PER"),))]
    facts = [Fact(0, 1, "P108"), Fact(0, 1, "P17"), Fact(0, 2, "P26"), Fact(2, 0, "P26")]
    return DocredDocument("Greta Quist", sents, entities, facts)


ANSWER = ("( Greta Quist | country | Falk Bank ) ( Greta Quist | employer | Falk Bank ) "
          "( Falk Bank | none | Greta Quist ) ( Greta Quist | spouse | Ivo Dorn )")


def test_entity_name_and_group_pairs():
    assert prompts.entity_name(doc().entities[1]) == "Falk Bank"
    assert prompts.entity_name(Entity((Mention("A (b)|c", 0, (0, 1), "ORG"),))) == "A [b]/c"
    assert [len(g) for g in prompts.group_pairs([(i, i + 1) for i in range(40)])] == [18, 18, 4]
    assert prompts.group_pairs([], 3) == []
    with pytest.raises(ValueError):
        prompts.group_pairs(PAIRS, 0)


def test_build_prompt_and_answer_exact():
    assert prompts.build_prompt(doc(), PAIRS, NAMES) == (
        "Relations : country ; employer ; spouse Document : Greta Quist works for Falk Bank . She married Ivo "
        "Dorn . Pairs : ( Greta Quist | - | Falk Bank ) ( Falk Bank | - | Greta Quist ) "
        "( Greta Quist | - | Ivo Dorn ) Answer :")
    assert prompts.build_answer(doc(), PAIRS, NAMES) == ANSWER  # relations in rel2id order, `none` when none
    with pytest.raises(ValueError, match="P26"):
        prompts.build_answer(doc(), [(0, 2)], {"P17": "country"})
    for bad in ({"P17": "none"}, {"P17": "a|b"}, {"P17": "x", "P19": " x "}):
        with pytest.raises(ValueError):
            prompts.build_prompt(doc(), PAIRS, bad)


def test_parse_answer_round_trip():
    parsed = prompts.parse_answer(ANSWER, doc(), PAIRS, NAMES)
    assert parsed.malformed == 0
    assert parsed.facts == [(0, 1, "P17"), (0, 1, "P108"), (0, 2, "P26")]
    gold = {(f.h, f.t, f.r) for f in doc().facts if (f.h, f.t) in PAIRS}
    assert set(parsed.facts) == gold
    # The compact style of the paper, repeats and odd spacing parse the same.
    compact = "(Greta Quist| employer| Falk Bank)(Greta  Quist |employer|Falk Bank)\n(Falk Bank| none| Greta Quist)"
    assert prompts.parse_answer(compact, doc(), PAIRS, NAMES) == prompts.ParsedAnswer([(0, 1, "P108")], 0)


@pytest.mark.parametrize("text, facts, malformed", [
    ("", [], 0),
    ("(a| b", [], 1),
    ("(x| country| y)", [], 1),  # names of no listed pair
    ("( Greta Quist | founder | Falk Bank )", [], 1),  # unknown relation
    ("( Greta Quist | - | Falk Bank )", [], 1),
    ("( Ivo Dorn | spouse | Greta Quist )", [], 1),  # a real fact, but not of a listed pair
    ("((Greta Quist| employer| Falk Bank))", [(0, 1, "P108")], 2),  # nested: the stray parentheses count
    ("( Greta Quist | employer | Falk Bank ) blah ( Falk Bank | none | Greta Quist ) </s>", [(0, 1, "P108")], 2),
    ("( Greta Quist | employer | ( Falk Bank )", [], 1),
])
def test_parse_answer_counts_malformed(text, facts, malformed):
    assert prompts.parse_answer(text, doc(), PAIRS, NAMES) == prompts.ParsedAnswer(facts, malformed)


def test_parse_answer_prefers_pairs_in_order():
    twins = DocredDocument("t", [["A", "A", "B"]], [Entity((Mention("A", 0, (0, 1), "X"),)),
                                                   Entity((Mention("A", 0, (1, 2), "X"),)),
                                                   Entity((Mention("B", 0, (2, 3), "X"),))], [])
    pairs = [(0, 2), (1, 2)]
    text = "( A | country | B ) ( A | spouse | B ) ( A | employer | B )"
    assert prompts.parse_answer(text, twins, pairs, NAMES).facts == [(0, 2, "P17"), (0, 2, "P26"), (0, 2, "P108")]
    assert prompts.parse_answer("( A | none | B ) ( A | spouse | B )", twins, pairs[::-1], NAMES).facts == [
        (1, 2, "P26")]


def test_demo_tokenizer_encodes_prompts_and_answers_exactly():
    tokenizer = load_tokenizer(demo_docred_path("llama_tokenizer"))
    docs = read_docred(demo_docred_path("dev.json"))
    for d in docs:
        pairs = [(h, t) for h in range(len(d.entities)) for t in range(len(d.entities)) if h != t]
        for group in prompts.group_pairs(pairs):
            for text in (prompts.build_prompt(d, group, RELATIONS), prompts.build_answer(d, group, RELATIONS)):
                ids = tokenizer(text)["input_ids"]
                assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
                assert tokenizer.unk_token_id not in ids, text
                assert tokenizer.decode(ids, skip_special_tokens=True) == text
            answer = prompts.build_answer(d, group, RELATIONS)
            gold = {(f.h, f.t, f.r) for f in d.facts if (f.h, f.t) in group}
            parsed = prompts.parse_answer(answer, d, group, RELATIONS)
            assert parsed.malformed == 0 and set(parsed.facts) == gold
