"""CoNLL-2012 coreference metrics on hand-computed cases (arithmetic in the comments), on the reference scorer's
own test suite, on brute-force re-derivations for random documents, and through the CLI."""
import itertools
import json
import random
import warnings

import pytest

from kipjax.data.coref import CorefDocument, write_conll, write_jsonlines
from kipjax.metrics.coref import (BlancCounts, b_cubed_counts, blanc_counts, blanc_scores, ceafe_counts, ceafm_counts,
                                  coref_scores, detected_mention_clustering, main, mention_detection, muc_counts)


def assert_scores(scores, expected, abs_tol=1e-9):
    """`expected`: {metric: (recall, precision, f1)} and optionally "conll_f1"."""
    for name, value in expected.items():
        if name == "conll_f1":
            assert scores[name] == pytest.approx(value, abs=abs_tol), name
        else:
            got = (scores[name]["recall"], scores[name]["precision"], scores[name]["f1"])
            assert got == pytest.approx(value, abs=abs_tol), name


# The reference scorer's test suite (conll/reference-coreference-scorers, test/CorefMetricTestConfig.pm and
# test/TestCases.README), key {a} {bc} {def}; the values are the suite's, rounded to 5 decimals where it gives
# decimals. Capital B is a different mention from b, except in A7/A8 where "b" is repeated (de-duplicated).
# A4 by hand: response {a} {bcx} {dy} {z}.
#   MUC: key links 0+1+2 = 3, correct: bc only -> R 1/3; response links 0+2+1+0 = 3 -> P 1/3.
#   B3 R: a 1, b 2/2, c 2/2, d 1/3, e 0, f 0 -> (3 + 1/3) / 6; P: a 1, b 2/3, c 2/3, x 0, d 1/2, y 0, z 0 -> 17/6 / 7.
#   CEAFe: a-a 1, bc-bcx 2*2/5, def-dy 2*1/5 -> 2.2; R 2.2/3, P 2.2/4.
#   BLANC: key coref {bc, de, df, ef} = 4, non-coref 15 - 4 = 11; response coref {bc, bx, cx, dy} = 4, non-coref
#   21 - 4 = 17; correct coref {bc} = 1, correct non-coref {ab, ac, ad, bd, cd} = 5.
#   R = (1/4 + 5/11) / 2 = 31/88, P = (1/4 + 5/17) / 2 = 37/136.
KEY_A = [["a"], ["b", "c"], ["d", "e", "f"]]
SCORER_SUITE = {
    "A1": ([["a"], ["b", "c"], ["d", "e", "f"]],
           {"muc": (1, 1, 1), "bcub": (1, 1, 1), "ceafm": (1, 1, 1), "ceafe": (1, 1, 1), "blanc": (1, 1, 1)}),
    "A2": ([["a"], ["d", "e"]],
           {"muc": (1 / 3, 1, 0.5), "bcub": ((7 / 3) / 6, 1, 14 / 25), "ceafm": (0.5, 1, 0.66667),
            "ceafe": (0.6, 0.9, 0.72), "blanc": (0.21591, 1, 0.35385)}),
    "A3": ([["a"], ["b", "c", "x"], ["d", "e", "f", "y"], ["z"]],
           {"muc": (1, 3 / 5, 0.75), "bcub": (1, (4 + 7 / 12) / 9, 110 / 163), "ceafm": (1, 0.66667, 0.8),
            "ceafe": (0.88571, 0.66429, 0.75918), "blanc": (1, 0.42593, 0.59717)}),
    "A4": ([["a"], ["b", "c", "x"], ["d", "y"], ["z"]],
           {"muc": (1 / 3, 1 / 3, 1 / 3),
            "bcub": ((3 + 1 / 3) / 6, (1 + 4 / 3 + 1 / 2) / 7, 2 * (5 / 9) * (17 / 42) / ((5 / 9) + (17 / 42))),
            "ceafm": (0.66667, 0.57143, 0.61538), "ceafe": (0.73333, 0.55, 0.62857),
            "blanc": (0.35227, 0.27206, 0.30357)}),
    "A5": ([["a"], ["b", "c", "x", "B"], ["d", "y"], ["z"]],
           {"muc": (1 / 3, 1 / 4, 2 / 7),
            "bcub": ((3 + 1 / 3) / 6, 2.5 / 8, 2 * (5 / 9) * (5 / 16) / ((5 / 9) + (5 / 16))),
            "ceafm": (0.66667, 0.5, 0.57143), "ceafe": (0.68889, 0.51667, 0.59048),
            "blanc": (0.35227, 0.19048, 0.24716)}),
    "A6": ([["a"], ["b", "c", "x"], ["d", "y"], ["B", "z"]],
           {"muc": (1 / 3, 1 / 4, 2 / 7),
            "bcub": ((10 / 3) / 6, (1 + 4 / 3 + 1 / 2) / 8, 2 * (5 / 9) * (17 / 48) / ((5 / 9) + (17 / 48))),
            "ceafm": (0.66667, 0.5, 0.57143), "ceafe": (0.73333, 0.55, 0.62857),
            "blanc": (0.35227, 0.20870, 0.25817)}),
    "A10": ([["a"], ["b"], ["c"], ["d"], ["e"], ["f"]],
            {"muc": (0, 0, 0), "bcub": (3 / 6, 6 / 6, 2 / 3), "blanc": (0.5, 0.36667, 0.42308)}),
    "A11": ([["a", "b", "c", "d", "e", "f"]],
            {"muc": (1, 3 / 5, 6 / 8), "bcub": (1, (1 / 6 + 2 * 2 / 6 + 3 * 3 / 6) / 6, 14 / 25),
             "blanc": (0.5, 0.13333, 0.21053)}),
}


@pytest.mark.parametrize("case", sorted(SCORER_SUITE))
def test_reference_scorer_suite(case):
    response, expected = SCORER_SUITE[case]
    assert_scores(coref_scores([KEY_A], [response]), expected, abs_tol=6e-6)


@pytest.mark.parametrize("response", [
    [["a"], ["b", "c", "x", "b"], ["d", "y"], ["z"]],   # A7: b repeated in its own cluster
    [["a"], ["b", "c", "x"], ["d", "y"], ["b", "z"]],   # A8: b repeated in another cluster
])
def test_duplicate_response_mentions_keep_first_occurrence(response):
    # The suite expects A7 and A8 to score exactly like A4 once the repeated "b" is dropped.
    with pytest.warns(UserWarning, match="'b' occurs more than once"):
        scores = coref_scores([KEY_A], [response])
    assert scores == coref_scores([KEY_A], [SCORER_SUITE["A4"][0]])


def test_vilain_example_split_cluster():
    # Vilain et al. (1995): key {A B C D}, response {A B} {C D}.
    # MUC: R = (4 - 2) / (4 - 1) = 2/3; P = ((2-1) + (2-1)) / ((2-1) + (2-1)) = 1; F = 0.8.
    # B3: each key mention sees 2 of its 4 -> R = 1/2; P = 1; F = 2/3.
    # CEAFm: best alignment keeps 2 mentions -> R = 2/4, P = 2/4. CEAFe: phi4 = 2*2/(4+2) = 2/3 -> R = 2/3 / 1,
    #   P = 2/3 / 2 = 1/3, F = 2 * (2/3)(1/3) / 1 = 4/9.
    # BLANC: the key has no non-coreference links -> coreference links only: key 6, response 2, correct 2
    #   -> R = 1/3, P = 1, F = 0.5.
    # CoNLL F1 = (0.8 + 2/3 + 4/9) / 3.
    key, response = [["A", "B", "C", "D"]], [["A", "B"], ["C", "D"]]
    assert muc_counts(key, response) == (2, 3, 2, 2)
    assert_scores(coref_scores([key], [response]), {
        "muc": (2 / 3, 1, 0.8), "bcub": (0.5, 1, 2 / 3), "ceafm": (0.5, 0.5, 0.5), "ceafe": (2 / 3, 1 / 3, 4 / 9),
        "blanc": (1 / 3, 1, 0.5), "conll_f1": (0.8 + 2 / 3 + 4 / 9) / 3})


def test_merged_clusters():
    # key {a b} {c d}, response {a b c d}.
    # MUC: R = (1 + 1) / 2 = 1; P = (4 - 2) / 3 = 2/3; F = 0.8.
    # B3: R = 1; each response mention sees 2 of 4 -> P = 1/2; F = 2/3.
    # CEAFm: 2 of 4 either way -> 1/2, 1/2. CEAFe: phi4({ab}, {abcd}) = 4/6 -> R = (2/3) / 2 = 1/3, P = 2/3,
    #   F = 2 (1/3)(2/3) / 1 = 4/9.
    # BLANC: coref key {ab, cd} 2, response 6, correct 2 -> Rc = 1, Pc = 1/3, Fc = 1/2; non-coref key 4,
    #   response 0 -> Rn = Pn = Fn = 0. BLANC R = 1/2, P = 1/6, F = 1/4.
    key, response = [["a", "b"], ["c", "d"]], [["a", "b", "c", "d"]]
    assert blanc_counts(key, response) == BlancCounts(2, 2, 6, 0, 4, 0)
    assert_scores(coref_scores([key], [response]), {
        "muc": (1, 2 / 3, 0.8), "bcub": (1, 0.5, 2 / 3), "ceafm": (0.5, 0.5, 0.5), "ceafe": (1 / 3, 2 / 3, 4 / 9),
        "blanc": (0.5, 1 / 6, 0.25)})


def test_singletons():
    # key {a} {b c}, response {a} {b} {c}.
    # MUC: key links 1, correct 0 -> R 0; no response links -> P 0; F 0 (singletons carry no links).
    # B3: R = (1 + 1/2 + 1/2) / 3 = 2/3, P = 1, F = 0.8.
    # CEAFm: a-a 1, bc-b 1 -> R = P = 2/3. CEAFe: 1 + 2*1/(2+1) = 5/3 -> R = 5/6, P = 5/9.
    # BLANC: key coref {bc}, non-coref {ab, ac}; response coref none, non-coref {ab, ac, bc}.
    #   Rc = 0, Pc = 0 (no response links), Fc = 0; Rn = 2/2, Pn = 2/3, Fn = 0.8 -> R 1/2, P 1/3, F 0.4.
    key, response = [["a"], ["b", "c"]], [["a"], ["b"], ["c"]]
    assert_scores(coref_scores([key], [response]), {
        "muc": (0, 0, 0), "bcub": (2 / 3, 1, 0.8), "ceafm": (2 / 3, 2 / 3, 2 / 3),
        "ceafe": (5 / 6, 5 / 9, 2 * (5 / 6) * (5 / 9) / (5 / 6 + 5 / 9)), "blanc": (0.5, 1 / 3, 0.4)})


def test_missing_and_spurious_mentions():
    # key {a b c}, response {a b x}: c missing, x spurious.
    # MUC: K splits into {a b} {c} -> (3 - 2) / 2 = 1/2; R splits into {a b} {x} -> P = 1/2.
    # B3: R = (2/3 + 2/3 + 0) / 3 = 4/9 (c: 0 in the numerator, 1 in the denominator); P = (2/3 + 2/3 + 0) / 3.
    # CEAFm: 2 shared -> 2/3, 2/3. CEAFe: phi4 = 2*2/6 = 2/3 over one cluster each side -> 2/3, 2/3.
    # BLANC: the key has no non-coreference links -> coref only: key {ab ac bc}, response {ab ax bx},
    #   correct {ab} -> 1/3, 1/3, 1/3.
    key, response = [["a", "b", "c"]], [["a", "b", "x"]]
    assert b_cubed_counts(key, response) == pytest.approx((4 / 3, 3, 4 / 3, 3))
    assert ceafm_counts(key, response) == (2, 3, 2, 3)
    assert ceafe_counts(key, response) == pytest.approx((2 / 3, 1, 2 / 3, 1))
    assert_scores(coref_scores([key], [response]), {
        "muc": (0.5, 0.5, 0.5), "bcub": (4 / 9, 4 / 9, 4 / 9), "ceafm": (2 / 3, 2 / 3, 2 / 3),
        "ceafe": (2 / 3, 2 / 3, 2 / 3), "blanc": (1 / 3, 1 / 3, 1 / 3)})


def test_identical_and_empty_responses():
    key = [[(0, 1), (5, 5)], [(2, 2)], [(3, 3), (7, 9), (12, 12)]]
    perfect = coref_scores([key], [key])
    assert all(perfect[m] == {"recall": 1.0, "precision": 1.0, "f1": 1.0} for m in ("muc", "bcub", "ceafm", "ceafe",
                                                                                      "blanc"))
    assert perfect["conll_f1"] == 1.0
    empty = coref_scores([key], [[]])
    assert all(empty[m] == {"recall": 0.0, "precision": 0.0, "f1": 0.0} for m in ("muc", "bcub", "ceafm", "ceafe",
                                                                                    "blanc"))
    assert empty["conll_f1"] == 0.0


def test_blanc_boundary_cases():
    # Key all singletons {a} {b} {c}: no key coreference links -> BLANC is the non-coreference score alone.
    #   Response {a b} {c}: non-coref key {ab ac bc}, response {ac bc} -> R 2/3, P 1, F 0.8 (the spurious
    #   coreference link ab is not averaged in as a zero).
    assert blanc_scores(blanc_counts([["a"], ["b"], ["c"]], [["a", "b"], ["c"]]))["blanc"] == pytest.approx(
        {"recall": 2 / 3, "precision": 1, "f1": 0.8})
    # Key one entity {a b c}: no key non-coreference links -> coreference score alone.
    #   Response {a b} {c}: coref key 3, response 1, correct 1 -> R 1/3, P 1, F 1/2.
    scores = blanc_scores(blanc_counts([["a", "b", "c"]], [["a", "b"], ["c"]]))
    assert scores["blanc"] == pytest.approx({"recall": 1 / 3, "precision": 1, "f1": 0.5})
    assert scores["noncoref_links"] == {"recall": 0.0, "precision": 0.0, "f1": 0.0}
    # Key with a single mention: no links at all -> 0 whatever the response.
    assert blanc_scores(blanc_counts([["a"]], [["a"]]))["blanc"] == {"recall": 0.0, "precision": 0.0, "f1": 0.0}


def test_micro_average_over_documents_differs_from_macro():
    # doc 1: key {a b c d}, response {a b} {c d}: MUC counts (2, 3, 2, 2).
    # doc 2: key {x y}, response {x} {y}: MUC counts (0, 1, 0, 0) (R 0; P 0/0 -> 0).
    # micro: R = (2 + 0) / (3 + 1) = 1/2, P = (2 + 0) / (2 + 0) = 1, F = 2/3.
    # (macro would give R = (2/3 + 0) / 2 = 1/3, P = (1 + 0) / 2 = 1/2.)
    # B3 micro: R = (4 * 1/2 + 2 * 1/2) / (4 + 2) = 1/2, P = (4 + 2) / (4 + 2) = 1.
    gold = [[["a", "b", "c", "d"]], [["x", "y"]]]
    pred = [[["a", "b"], ["c", "d"]], [["x"], ["y"]]]
    assert muc_counts(gold[1], pred[1]) == (0, 1, 0, 0)
    assert_scores(coref_scores(gold, pred), {"muc": (0.5, 1, 2 / 3), "bcub": (0.5, 1, 2 / 3)})


def test_documents_must_pair_up():
    with pytest.raises(ValueError, match="same documents"):
        coref_scores([[["a"]]], [])


def test_mention_detection_and_detected_mention_clustering():
    # gold {a b} {c d}; pred {a b x} {c} {d}.
    # Mention detection: gold 4, pred 5, correct 4 -> R 1, P 4/5, F 8/9.
    # Restricted to the shared mentions {a b c d}: gold {a b} {c d}, pred {a b} {c} {d}.
    #   MUC: R = (1 + 0) / 2, P = 1/1 -> F 2/3.  B3: R = (1 + 1 + 1/2 + 1/2) / 4 = 3/4, P = 1 -> F 6/7.
    #   CEAFe: 1 + 2*1/3 = 5/3 -> R 5/6, P 5/9 -> F = 2 (5/6)(5/9) / (25/18) = 2/3.
    #   CoNLL F1 = (2/3 + 6/7 + 2/3) / 3 = 46/63.
    gold = [[["a", "b"], ["c", "d"]]]
    pred = [[["a", "b", "x"], ["c"], ["d"]]]
    assert mention_detection(gold, pred) == pytest.approx({"recall": 1, "precision": 0.8, "f1": 8 / 9})
    assert detected_mention_clustering(gold, pred) == pytest.approx(46 / 63)


# ---------------------------------------------------------------- brute-force re-derivations on random documents

def random_clusters(rng, mentions, max_clusters):
    """A random partition of a random subset of `mentions` (singletons included)."""
    chosen = rng.sample(mentions, rng.randint(0, len(mentions)))
    labels = [rng.randrange(max_clusters) for _ in chosen]
    return [[m for m, l in zip(chosen, labels) if l == c] for c in range(max_clusters) if c in labels]


def random_pairs(seed, count=200):
    rng = random.Random(seed)
    mentions = list(range(9))
    return [(random_clusters(rng, mentions, 4), random_clusters(rng, mentions, 5)) for _ in range(count)]


def brute_force_ceaf(key, response, phi):
    """Best total similarity over every injective assignment of the smaller side to the larger."""
    if not key or not response:
        return 0.0
    small, large, swap = (key, response, False) if len(key) <= len(response) else (response, key, True)
    best = 0.0
    for chosen in itertools.permutations(range(len(large)), len(small)):
        best = max(best, sum(phi(large[j], s) if swap else phi(s, large[j]) for s, j in zip(small, chosen)))
    return best


def test_ceaf_alignment_is_optimal():
    def phi3(k, r):
        return len(set(k) & set(r))

    def phi4(k, r):
        return 2 * len(set(k) & set(r)) / (len(k) + len(r))

    for key, response in random_pairs(seed=0):
        assert ceafm_counts(key, response)[0] == pytest.approx(brute_force_ceaf(key, response, phi3))
        assert ceafe_counts(key, response)[0] == pytest.approx(brute_force_ceaf(key, response, phi4))


def test_blanc_counts_match_explicit_link_sets():
    def links(clusters):
        mentions = [(m, i) for i, c in enumerate(clusters) for m in c]
        coref = {frozenset((a, b)) for (a, i), (b, j) in itertools.combinations(mentions, 2) if i == j}
        noncoref = {frozenset((a, b)) for (a, i), (b, j) in itertools.combinations(mentions, 2) if i != j}
        return coref, noncoref

    for key, response in random_pairs(seed=1):
        (key_coref, key_noncoref), (response_coref, response_noncoref) = links(key), links(response)
        assert blanc_counts(key, response) == BlancCounts(
            len(key_coref & response_coref), len(key_coref), len(response_coref),
            len(key_noncoref & response_noncoref), len(key_noncoref), len(response_noncoref))


def test_counts_are_symmetric_and_muc_matches_partition_definition():
    # Swapping key and response swaps recall and precision (all four link/mention metrics are symmetric), and
    # MUC recall numerator is sum_K (|K| - |p(K)|) with missing mentions as parts of their own.
    def muc_recall_numerator(key, response):
        owner = {m: i for i, c in enumerate(response) for m in c}
        return sum(len(k) - len({owner.get(m, ("missing", m)) for m in k}) for k in key)

    for key, response in random_pairs(seed=2):
        for counts in (muc_counts, b_cubed_counts, ceafm_counts, ceafe_counts):
            r_num, r_den, p_num, p_den = counts(key, response)
            assert counts(response, key) == pytest.approx((p_num, p_den, r_num, r_den))
        assert muc_counts(key, response)[0] == muc_recall_numerator(key, response)


# ---------------------------------------------------------------------------------------------------------- CLI

def test_cli_json_scores_conll_gold_against_jsonlines_pred(tmp_path, capsys):
    words = [["A", "B", "C", "D"]]
    gold = tmp_path / "gold.conll"
    write_conll(gold, [CorefDocument("d1_0", words, [[(0, 0), (1, 1), (2, 2), (3, 3)]]),
                       CorefDocument("d2_0", [["x", "y"]], [[(0, 0), (1, 1)]])])
    pred = tmp_path / "pred.jsonlines"
    write_jsonlines(pred, [CorefDocument("d1_0", words, [[(0, 0), (1, 1)], [(2, 2), (3, 3)]])])
    # d1 is the Vilain example; d2 has no prediction and scores as an empty response.
    # MUC micro: R = (2 + 0) / (3 + 1) = 1/2, P = 2/2 = 1.
    # B3: R = (4 * 1/2 + 0) / (4 + 2) = 1/3, P = 4/4 = 1.
    # CEAFe: d1 phi4 = 2/3, d2 0 -> R = (2/3) / 2 = 1/3, P = (2/3) / 2 = 1/3.
    result = main(["--gold", str(gold), "--pred", str(pred), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == result
    assert set(printed) == {"muc", "bcub", "ceafm", "ceafe", "blanc", "conll_f1"}
    assert all(set(printed[m]) == {"recall", "precision", "f1"} for m in ("muc", "bcub", "ceafm", "ceafe", "blanc"))
    assert_scores(printed, {"muc": (0.5, 1, 2 / 3), "bcub": (1 / 3, 1, 0.5), "ceafe": (1 / 3, 1 / 3, 1 / 3),
                            "conll_f1": (2 / 3 + 0.5 + 1 / 3) / 3})


def test_cli_table_and_unknown_prediction(tmp_path, capsys):
    gold = tmp_path / "gold.jsonl"
    write_jsonlines(gold, [CorefDocument("d1", [["a", "b"]], [[(0, 0), (1, 1)]])])
    main(["--gold", str(gold), "--pred", str(gold)])
    table = capsys.readouterr().out
    assert "muc" in table and "conll_f1" in table and "100.00" in table
    pred = tmp_path / "pred.jsonl"
    write_jsonlines(pred, [CorefDocument("other", [["a"]], [])])
    with pytest.raises(SystemExit, match=r"doc_key\(s\) \['other'\] are not in the gold file"):
        main(["--gold", str(gold), "--pred", str(pred)])


def test_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coref_scores([KEY_A], [SCORER_SUITE["A5"][0]])


# ------------------------------------------------------------------- files in every layout the scorer reads

# Token spans of the suite's mentions over 12 tokens: c nested at b's start, B at b's end, x inside b, e ending
# where d ends, so cells such as "(1(1)", "1)(1)" and "2)2)" occur.
SPANS = {"a": (0, 1), "b": (2, 4), "c": (2, 2), "x": (3, 3), "B": (4, 4), "d": (5, 7), "e": (6, 7), "z": (8, 8),
         "f": (9, 9), "y": (10, 11)}
NUM_TOKENS = 12
HEADER = "#begin document (LuoTestCase); "


def cells(clusters, rng: random.Random) -> list[str]:
    """Each token's brackets in a random order, joined by '|' or by nothing: the scorer reads both alike."""
    items = [[] for _ in range(NUM_TOKENS)]
    for cluster_id, cluster in enumerate(clusters):
        for start, end in (SPANS[m] for m in cluster):
            if start == end:
                items[start].append(f"({cluster_id})")
            else:
                items[start].append(f"({cluster_id}")
                items[end].append(f"{cluster_id})")
    out = []
    for token_items in items:
        rng.shuffle(token_items)
        out.append(rng.choice(["|", ""]).join(token_items))
    return out


def render(layout: str, clusters, rng: random.Random) -> str:
    """One document in `layout`: 2 tab columns; the scorer suite's 5 tab columns; OntoNotes' space-aligned
    columns with speakers; LitBank's 13 tab columns with an empty cell for no mention."""
    lines = [HEADER]
    for i, cell in enumerate(cells(clusters, rng)):
        if layout == "two_columns":
            lines.append(f"test1\t{cell or '-'}")
        elif layout == "scorer_suite":
            lines.append("\t".join(["test1", "0", str(i), f"w{i}", cell or "_"]))
        elif layout == "ontonotes":
            lines.append(f"test1   0   {i:>3}   w{i}   NN   (NP*)   -   -   -   Speaker#1   *   (ARG0*)   {cell or '-'}")
        else:
            lines.append("\t".join(["test1", "0", str(i), f"w{i}"] + ["_"] * 8 + [cell]))
        if i == 5:
            lines.append("")  # a sentence break inside mention d, which the scorer ignores
    return "\n".join(lines + ["#end document", ""])


LAYOUTS = ["two_columns", "scorer_suite", "ontonotes", "litbank"]


@pytest.mark.parametrize("case", sorted(SCORER_SUITE))
@pytest.mark.parametrize("key_layout", LAYOUTS)
def test_scorer_suite_from_files_in_every_layout(case, key_layout, tmp_path, capsys):
    response, expected = SCORER_SUITE[case]
    rng = random.Random(f"{case}/{key_layout}")
    response_layout = LAYOUTS[(LAYOUTS.index(key_layout) + 1) % len(LAYOUTS)]
    key_file, response_file = tmp_path / "key.conll", tmp_path / "response.conll"
    key_file.write_text(render(key_layout, KEY_A, rng))
    response_file.write_text(render(response_layout, response, rng))
    scores = main(["--gold", str(key_file), "--pred", str(response_file), "--json"])
    assert_scores(scores, expected, abs_tol=6e-6)
