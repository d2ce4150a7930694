"""GRPO advantages and the k3 KL (spec §11.4): zero advantages for equal rewards."""

import numpy as np
import pytest

from groundflow.gwys.advantages import group_advantages, group_outcomes, identical_groups, k3_kl


def test_equal_rewards_give_zero_advantages():
    advantages = group_advantages([1.1] * 8 + [0.0] * 8, group_size=8)
    assert advantages.shape == (16,) and np.all(advantages == 0.0)


def test_advantages_are_normalised_within_each_group_only():
    rewards = [1.0, 0.0, 0.0, 0.0, 2.1, 2.1, 0.1, 0.1]
    advantages = group_advantages(rewards, group_size=4)
    first = np.array([0.75, -0.25, -0.25, -0.25]) / (np.std([1, 0, 0, 0], ddof=1) + 1e-4)
    assert advantages[:4] == pytest.approx(first)
    assert advantages[4:] == pytest.approx(np.array([1, 1, -1, -1]) / (np.std([2.1, 2.1, 0.1, 0.1], ddof=1) + 1e-4))
    assert group_advantages(rewards, group_size=4, scale=False)[:4] == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_rewards_must_fill_whole_groups():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages([1.0] * 8, group_size=3)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages([1.0], group_size=1)


def test_k3_kl_is_non_negative_and_zero_at_equal_log_probs():
    rng = np.random.default_rng(0)
    logp, ref = -rng.random(100) * 5, -rng.random(100) * 5
    assert np.all(k3_kl(ref, logp) >= 0)
    assert np.all(k3_kl(logp, logp) == 0)
    assert k3_kl([20.0], [0.0], clamp=10.0)[0] == pytest.approx(np.expm1(10.0) - 10.0)


def test_groups_of_identical_completions_are_counted():
    texts = ["a", "a", "a", "b", "b", "b", "c", "d", "e"]
    assert identical_groups(texts, 3) == 2
    assert identical_groups(texts, 9) == 0
    with pytest.raises(ValueError, match="groups of 2"):
        identical_groups(texts, 2)


def test_group_outcomes_read_the_accuracy_reward():
    accuracy = [0, 0, 1, 1, 1, 0, 0, 0]
    assert group_outcomes(accuracy, 2) == {"all_wrong": 0.5, "all_correct": 0.25}
