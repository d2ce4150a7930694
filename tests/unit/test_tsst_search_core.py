"""TSST search core (groundflow.tsst.search) with scripted policies and a text-only scorer: no model."""
import sys
from pathlib import Path

import numpy as np
import pytest

from groundflow.tsst.search import (Expansion, Proposal, SearchConfig, SearchQuestion, end_reason, question_rng,
                                    search_questions, select_indices, selection_weights)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.tsst_search import TextScorer, reference_search  # noqa: E402


class ScriptedPolicy:
    """Proposals from a function of (question id, chain, seed); records every request."""

    def __init__(self, script):
        self.script = script
        self.requests = []
        self.calls = 0
        self.sizes = []

    def propose(self, requests):
        self.calls += 1
        self.sizes.append(len(requests))
        self.requests.extend(requests)
        return [self.script(r.question_id, r.chain, r.seed) for r in requests]


class TableScorer:
    """Scores from a table by prefix text; records the batches it was called with."""

    def __init__(self, table, default=0.5):
        self.table, self.default, self.batches = table, default, []

    def score(self, prompts, prefixes, images, groups):
        self.batches.append(list(prefixes))
        return [self.table.get(p, self.default) for p in prefixes]


def q(qid="q1", image=None):
    return SearchQuestion(qid, f"Which one is {qid}?", ("red", "blue"), image)


def expansion(*sentences, eos=(), empty=False):
    return Expansion(tuple(Proposal(s, s in eos) for s in sentences), empty)


def test_g_is_twice_num_beams_as_the_original_unless_set():
    assert SearchConfig(num_beams=5).width == 10
    assert SearchConfig(num_beams=1).width == 2
    assert SearchConfig(num_beams=5, expansions=3).width == 3
    with pytest.raises(ValueError, match="unknown search settings"):
        SearchConfig.from_config({"beam_width": 3})
    with pytest.raises(ValueError, match="branch must be a positive integer"):
        SearchConfig(branch=0)


def test_non_positive_scores_get_no_weight_and_the_original_squares_them():
    scores = [0.5, -0.4, 0.0, 0.25]
    fixed = selection_weights(scores, SearchConfig())
    np.testing.assert_allclose(fixed, [0.25 / 0.3125, 0.0, 0.0, 0.0625 / 0.3125])
    original = selection_weights(scores, SearchConfig(weights="original"))
    total = 0.25 + 0.16 + 0.0625
    np.testing.assert_allclose(original, [0.25 / total, 0.16 / total, 0.0, 0.0625 / total])
    # nothing positive: uniform (the original divided by zero on all zeros)
    np.testing.assert_allclose(selection_weights([-1.0, 0.0, -0.5], SearchConfig()), [1 / 3] * 3)
    np.testing.assert_allclose(selection_weights([0.0, 0.0], SearchConfig(weights="original")), [0.5, 0.5])


def test_selection_keeps_all_up_to_branch_and_never_draws_a_non_positive_candidate():
    config = SearchConfig(branch=3)
    rng = np.random.default_rng(0)
    assert select_indices([0.1, -2.0, 0.3], config, rng) == [0, 1, 2]
    drawn = [i for _ in range(200) for i in select_indices([0.9, -0.9, 0.0, 0.2, 0.1], config, rng)]
    assert set(drawn) <= {0, 3, 4} and 0 in drawn
    # with replacement (the original) a chain can fill several slots; without it cannot
    with_replacement = [select_indices([0.9, 0.01, 0.01, 0.01], SearchConfig(branch=3), rng) for _ in range(50)]
    assert any(len(set(s)) < len(s) for s in with_replacement)
    without = [select_indices([0.9, 0.01, 0.01, 0.01], SearchConfig(branch=3, replacement=False), rng) for _ in range(50)]
    assert all(len(set(s)) == 3 for s in without)
    # without replacement, only candidates with weight are drawn
    assert sorted(select_indices([0.5, -1.0, 0.0, 0.2], SearchConfig(branch=3, replacement=False), rng)) == [0, 3]


def test_end_markers_whole_words_by_default_substrings_as_the_original():
    config, original = SearchConfig(max_chars=40), SearchConfig(end_markers="substring")
    assert end_reason("Step 1: red. Final Answer: A. red", config) == "final_answer"
    assert end_reason("Step 1: see ### here", config) == "end_marker"
    assert end_reason("so --- then", config) == "end_marker"
    assert end_reason("It waits . . . then", config) == "end_marker"
    assert end_reason("The user asks which.", config) == "end_marker"
    assert end_reason("Human: next question", config) == "end_marker"
    assert end_reason("The username is short.", config) is None
    assert end_reason("It helps humanity.", config) is None
    assert end_reason("The username is short.", original) == "end_marker"
    assert end_reason("It helps humanity.", original) == "end_marker"
    assert end_reason("x" * 41, config) == "length"
    assert end_reason("x" * 40, config) is None


def test_chains_grow_by_one_spaced_sentence_and_end_at_final_answer():
    steps = {"": expansion("Step 1: it is red."), "Step 1: it is red.": expansion("Final Answer: A. red")}
    policy = ScriptedPolicy(lambda qid, chain, seed: steps[chain])
    scorer = TableScorer({"Step 1: it is red.": 0.4, "Step 1: it is red. Final Answer: A. red": 0.9})
    [result] = search_questions([q()], policy, scorer, SearchConfig(n_consistency=1), seed=0)
    assert result["chains"] == [{"text": "Step 1: it is red. Final Answer: A. red", "score": 0.9, "end": "final_answer"}]
    assert (result["rounds"], result["restarts"], result["policy_calls"], result["value_calls"]) == (2, 0, 2, 2)
    assert [r.chain for r in policy.requests] == ["", "Step 1: it is red."]


def test_eos_keeps_the_unterminated_answer_sentence():
    # (e): the continuation "The answer is A" ended at EOS without a period; the original dropped it
    steps = {"": expansion("Step 1: it is red."),
             "Step 1: it is red.": expansion("The answer is A", eos=("The answer is A",))}
    policy = ScriptedPolicy(lambda qid, chain, seed: steps[chain])
    [result] = search_questions([q()], policy, TextScorer(), SearchConfig(n_consistency=1), seed=0)
    assert [(c["text"], c["end"]) for c in result["chains"]] == [("Step 1: it is red. The answer is A", "eos")]
    # a chain whose continuations all ended at EOS with nothing is finished as it is
    steps["Step 1: it is red."] = expansion(empty=True)
    [result] = search_questions([q()], ScriptedPolicy(lambda qid, chain, seed: steps[chain]), TextScorer(),
                                SearchConfig(n_consistency=1), seed=0)
    assert [(c["text"], c["end"]) for c in result["chains"]] == [("Step 1: it is red.", "eos")]


def test_candidates_are_deduplicated_across_the_round_and_scored_in_one_call():
    steps = {"": expansion("A one.", "B two.", "C three."),
             "A one.": expansion("Same.", "Final Answer: A"), "B two.": expansion("Same.", "Final Answer: B"),
             "C three.": expansion("Final Answer: C")}
    policy = ScriptedPolicy(lambda qid, chain, seed: steps.get(chain, expansion("Final Answer: X")))
    scorer = TableScorer({})
    search_questions([q(), q("q2")], policy, scorer, SearchConfig(branch=3, n_consistency=3), seed=0)
    assert scorer.batches[0] == ["A one.", "B two.", "C three."] * 2  # both questions in one value call
    assert policy.sizes[:2] == [2, 6]  # both questions in one policy call per round
    second = scorer.batches[1][:5]
    assert second == ["A one. Same.", "A one. Final Answer: A", "B two. Same.", "B two. Final Answer: B",
                      "C three. Final Answer: C"]
    duplicate = ScriptedPolicy(lambda qid, chain, seed: expansion("X.", "X.", " X. "))
    scorer = TableScorer({})
    search_questions([q()], duplicate, scorer, SearchConfig(n_consistency=1, max_rounds=1), seed=0)
    assert scorer.batches[0] == ["X."]


def test_an_empty_beam_restarts_from_a_fresh_root_keeping_finished_chains():
    calls = {"root": 0}

    def script(qid, chain, seed):
        if chain == "":
            calls["root"] += 1
            return expansion(f"Start {calls['root']}.")
        return expansion(empty=True)  # every chain ends at EOS after one sentence

    [result] = search_questions([q()], ScriptedPolicy(script), TextScorer(), SearchConfig(n_consistency=3), seed=0)
    assert [c["text"] for c in sorted(result["chains"], key=lambda c: c["text"])] == ["Start 1.", "Start 2.", "Start 3."]
    assert result["restarts"] == 2 and result["rounds"] == 6
    # a root that proposes nothing empties the beam too: the search restarts until the round cap
    [empty] = search_questions([q()], ScriptedPolicy(lambda *a: expansion()), TextScorer(),
                               SearchConfig(max_rounds=4), seed=0)
    assert (empty["chains"], empty["rounds"], empty["restarts"]) == ([], 4, 3)


def test_round_cap_stops_and_optionally_takes_the_beam_as_finished():
    endless = ScriptedPolicy(lambda qid, chain, seed: expansion(f"More {len(chain)}."))
    [capped] = search_questions([q()], endless, TextScorer(), SearchConfig(), seed=0)
    assert capped["rounds"] == 30 and capped["chains"] == []
    [fallback] = search_questions([q()], endless, TextScorer(), SearchConfig(max_rounds=3, finish_beam_at_cap=True), seed=0)
    assert fallback["rounds"] == 3 and [c["end"] for c in fallback["chains"]] == ["round_cap"]
    assert fallback["chains"][0]["text"].count("More") == 3


def test_finished_chains_sorted_by_score_and_short_sentences_dropped_when_asked():
    script = lambda qid, chain, seed: expansion("Final Answer: A", "Final Answer: B", "Final Answer: C", "ok")  # noqa: E731
    scorer = TableScorer({"Final Answer: A": 0.2, "Final Answer: B": 0.7, "Final Answer: C": 0.5, "ok": 0.99})
    [result] = search_questions([q()], ScriptedPolicy(script), scorer, SearchConfig(branch=5, n_consistency=3,
                                                                                     min_sentence_chars=3), seed=0)
    assert [c["score"] for c in result["chains"]] == [0.7, 0.5, 0.2]
    assert "ok" not in scorer.batches[0]


def _seeded_script(qid, chain, seed):
    rng = np.random.default_rng(seed)
    if chain.count(".") >= int(rng.integers(2, 5)):
        return expansion(f"Final Answer: {'ABC'[int(rng.integers(0, 3))]}")
    return expansion(*{f"S{int(rng.integers(0, 4))}." for _ in range(4)})


def test_results_depend_on_the_seed_and_question_not_on_the_batch():
    questions = [q(f"q{i}") for i in range(5)]
    config = SearchConfig(branch=2, n_consistency=3)
    together = search_questions(questions, ScriptedPolicy(_seeded_script), TextScorer(), config, seed=7)
    reordered = search_questions(questions[::-1][:3], ScriptedPolicy(_seeded_script), TextScorer(), config, seed=7)
    by_id = {r["id"]: r for r in together}
    for result in reordered:
        assert result == by_id[result["id"]]
    alone = [reference_search(question, ScriptedPolicy(_seeded_script), TextScorer(), config, seed=7)
             for question in questions]
    assert alone == together
    other_seed = search_questions(questions, ScriptedPolicy(_seeded_script), TextScorer(), config, seed=8)
    assert other_seed != together
    assert question_rng(7, "q1").random() == question_rng(7, "q1").random() != question_rng(7, "q2").random()


def test_a_question_failing_in_the_search_is_rejected_alone_and_a_broken_job_fails(tmp_path):
    import pandas as pd

    from groundflow.tsst.prompts import load_question_prompts
    from groundflow.tsst.search_stage import search_frame

    def script(qid, chain, seed):
        if qid == "bad":
            raise RuntimeError("prompt too long for the policy")
        return expansion("Final Answer: A")

    records = pd.DataFrame({"id": ["a", "bad", "c", "no-choices"], "question": ["Q?"] * 4,
                            "choices": [["x", "y"], ["x", "y"], ["x", "y"], []], "image": [None] * 4})
    result = search_frame(records, ScriptedPolicy(script), TextScorer(), SearchConfig(n_consistency=1), 0,
                          image_root=tmp_path, prompts=load_question_prompts())
    assert list(result.kept["id"]) == ["a", "c"]
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    assert reasons == {"no-choices": "no answer choices",
                       "bad": "search failed: RuntimeError: prompt too long for the policy"}
    alone = search_frame(records.iloc[[0]], ScriptedPolicy(script), TextScorer(), SearchConfig(n_consistency=1), 0,
                         image_root=tmp_path, prompts=load_question_prompts())
    assert alone.kept.iloc[0]["chains"] == result.kept.iloc[0]["chains"]

    def broken(qid, chain, seed):
        raise RuntimeError("no such model")

    with pytest.raises(RuntimeError, match="no such model"):
        search_frame(records.iloc[:3], ScriptedPolicy(broken), TextScorer(), SearchConfig(), 0,
                     image_root=tmp_path, prompts=load_question_prompts())
