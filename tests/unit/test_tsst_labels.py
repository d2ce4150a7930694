"""TSST value labels and round data (groundflow.tsst.labels): the spec's worked tree example, the
fixed leaf rule against the original's, the per-chain rule, D+ and dropped questions."""

import pytest

from groundflow.tsst.labels import (
    Chain,
    Question,
    accumulate,
    best_correct,
    linear_values,
    round_records,
    tree_values,
    value_targets,
)
from groundflow.tsst.prompts import load_question_prompts

# §3.5's self-test: root -> {a1 dead, a2, a3 dead}; a2 -> {b2, b3}; b2 -> {c1 dead, c2 ok}; b3 -> c3 -> d1 ok
WORKED = [
    (["a1"], False),
    (["a2", "b2", "c1"], False),
    (["a2", "b2", "c2"], True),
    (["a2", "b3", "c3", "d1"], True),
    (["a3"], False),
]
EXPECTED = {("a1",): 0.0, ("a3",): 0.0, ("a2",): 1 / 3, ("a2", "b2"): 2 / 3, ("a2", "b2", "c1"): 1 / 2,
            ("a2", "b2", "c2"): 1.0, ("a2", "b3"): 5 / 9, ("a2", "b3", "c3"): 7 / 9, ("a2", "b3", "c3", "d1"): 1.0}


@pytest.mark.parametrize("leaf_rule", ["any", "first"])
def test_worked_example_exact(leaf_rule):
    values = tree_values(WORKED, leaf_rule=leaf_rule)
    assert set(values) == set(EXPECTED)
    for node, expected in EXPECTED.items():
        assert values[node] == pytest.approx(expected, abs=1e-12), node


def test_worked_example_through_chain_texts_uses_one_space():
    chains = [Chain(" ".join(f"Step {s}." for s in steps), ok, score=0.0, rank=i) for i, (steps, ok) in enumerate(WORKED)]
    targets = dict(value_targets(chains, rule="tree"))
    assert targets["Step a2. Step b3. Step c3."] == pytest.approx(7 / 9)
    assert targets["Step a2. Step b2."] == pytest.approx(2 / 3)
    assert not any("  " in text for text in targets)  # the original's double spaces
    assert len(targets) == 9


def test_a_leaf_is_correct_if_any_chain_ending_there_is():
    # the same chain twice, judged wrong first (say the judge was unreachable), then right
    chains = [(["x", "y"], False), (["x", "y"], True)]
    assert tree_values(chains, leaf_rule="any") == {("x",): 0.5, ("x", "y"): 1.0}
    assert tree_values(chains, leaf_rule="first") == {}  # the original: the first chain decides, all dropped


def test_a_correct_chain_that_is_a_prefix_of_another_still_counts():
    chains = [(["x", "y", "z"], False), (["x", "y"], True)]
    fixed = tree_values(chains, leaf_rule="any")
    assert fixed[("x", "y")] == 1.0 and fixed[("x",)] == 0.5
    assert tree_values(chains, leaf_rule="first") == {}  # ("x", "y") has a child: never a leaf there


def test_question_without_a_correct_chain_is_dropped_from_tree_labels():
    assert tree_values([(["x"], False), (["y", "z"], False)]) == {}


def test_single_correct_chain_gets_the_linear_rule():
    values = tree_values([(["a", "b", "c", "d"], True)])
    assert list(values.values()) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert linear_values(["a", "b", "c", "d"], True) == [0.25, 0.5, 0.75, 1.0]
    assert linear_values(["a", "b"], False) == [0.0, 0.0]


def test_per_chain_rule_uses_the_best_correct_chain_and_all_incorrect_ones():
    chains = [
        Chain("One. Two. Final Answer: B.", True, score=0.4, rank=1),
        Chain("Uno. Final Answer: B.", True, score=0.9, rank=0),
        Chain("Bad. Final Answer: C.", False, score=0.2, rank=2),
    ]
    targets = value_targets(chains, rule="per_chain")
    assert targets == [("Uno.", 0.5), ("Uno. Final Answer: B.", 1.0),
                       ("Bad.", 0.0), ("Bad. Final Answer: C.", 0.0)]
    with pytest.raises(ValueError, match="value_labels"):
        value_targets(chains, rule="linear")


def test_best_correct_is_the_highest_scored_correct_chain():
    chains = [Chain("a", False, 0.99, 0), Chain("b", True, 0.5, 1), Chain("c", True, 0.7, 2)]
    assert best_correct(chains).text == "c"
    assert best_correct([Chain("a", False, 1.0, 0)]) is None


def test_require_final_answer_skips_chains_without_one():
    chains = [Chain("Red. Final Answer: A.", True, 0.5, 0), Chain("Blue. Green.", True, 0.6, 1)]
    with_filter = dict(value_targets(chains, rule="tree", require_final_answer=True))
    assert "Blue. Green." not in with_filter and with_filter["Red. Final Answer: A."] == 1.0
    assert dict(value_targets(chains, rule="tree"))["Blue. Green."] == 1.0


def test_round_records_llava_json_counts_and_text_only_questions():
    prompts = load_question_prompts()
    questions = [
        Question("q1", "What colour is the ball?", ("red", "blue"), "img/ball.png"),
        Question("q2", "Which number is larger?", ("2", "3"), None),
        Question("q3", "Is it day?", ("yes", "no"), "img/sky.png"),  # only wrong chains
        Question("q4", "Anything?", ("a", "b"), None),  # no chains at all
    ]
    chains = {
        "q1": [Chain("The ball is red. Final Answer: A.", True, 0.8, 0), Chain("It is blue. Final Answer: B.", False, 0.3, 1)],
        "q2": [Chain("Three is more than two. Final Answer: B.", True, 0.6, 0)],
        "q3": [Chain("It is night. Final Answer: B.", False, 0.9, 0)],
    }
    policy, value, counts = round_records(questions, chains, prompts, round_index=2)
    assert [r["id"] for r in policy] == ["tsst-r2-q1", "tsst-r2-q2"]
    q1, q2 = policy
    assert q1["image"] == "img/ball.png" and q1["conversations"][0]["value"].startswith("<image>\n")
    assert q1["conversations"][0]["value"] == prompts.human_turn("What colour is the ball?", ("red", "blue"), has_image=True)
    assert q1["conversations"][1] == {"from": "gpt", "value": "The ball is red. Final Answer: A."}
    assert "image" not in q2 and "<image>" not in q2["conversations"][0]["value"]
    assert {r["id"].rsplit("-v", 1)[0] for r in value} == {"tsst-r2-q1", "tsst-r2-q2"}  # q3 dropped
    assert all(isinstance(r["value"], float) and 0.0 <= r["value"] <= 1.0 for r in value)
    assert counts == {"round": 2, "value_labels": "tree", "questions": 4, "no_chains": 1, "with_correct_chain": 2,
                      "dplus_records": 2, "value_records": len(value), "dropped_questions": 2}
    _, per_chain, per_counts = round_records(questions, chains, prompts, round_index=2, value_labels="per_chain")
    assert any(r["id"].startswith("tsst-r2-q3-") and r["value"] == 0.0 for r in per_chain)  # negatives kept
    assert per_counts["dropped_questions"] == 1
    with pytest.raises(ValueError, match="not in the question table"):
        round_records(questions[:1], chains, prompts, round_index=2)


def test_accumulate_refuses_a_record_twice():
    assert accumulate([{"id": "a"}], [{"id": "b"}], "policy") == [{"id": "a"}, {"id": "b"}]
    with pytest.raises(ValueError, match="'a'"):
        accumulate([{"id": "a"}], [{"id": "a"}], "policy")
