"""The selection stage's logic without a model: K rollouts scored by the rule rewards, the selection
over them, the kept pool rows, and the (mean, variance) report plot."""

import pandas as pd
import pytest
from PIL import Image

from groundflow.gwys.prompts import load_question_prompts
from groundflow.gwys.rollouts import RolloutSettings, roll_out, rollout_rewards, score_group, select_pool
from groundflow.gwys.selection import SelectionSettings
from groundflow.report.plots import plot_variance_selection, save_figure

FOUR_TAG = "<prethink>p</prethink>\n<caption>c</caption>\n<think>t</think>\n<answer>{}</answer>"


class ScriptedGenerator:
    """Each prompt gets the next scripted group of completions; records the calls."""

    features = frozenset()

    def __init__(self, groups):
        self.groups, self.calls = list(groups), []

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        return [self.groups.pop(0) for _ in prompts]


@pytest.fixture
def pool(tmp_path):
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "a.png")
    rows = []
    for i, (ptype, answer, options) in enumerate([("multiple choice", "B", ["A. red", "B. blue"]),
                                                  ("numerical", "3", []), ("multiple choice", "A", ["A. x", "B. y"]),
                                                  ("numerical", "2", []), ("numerical", "1", [])]):
        rows.append({"id": str(i + 1), "line": i + 1, "problem": "q", "problem_type": ptype, "options": options,
                     "solution": f"<answer>{answer}</answer>", "answer": answer, "data_type": "image",
                     "media": "a.png" if i != 4 else "gone.png", "format_question": f"question {i}",
                     "max_frames": None, "source": None})
    return pd.DataFrame(rows), tmp_path


def test_settings_state_every_sampling_knob_and_refuse_unknown_keys():
    settings = RolloutSettings.from_dict({"k": 8, "max_new_tokens": 64})
    assert settings.sampling().describe() == {"max_new_tokens": 64, "n": 8, "do_sample": True, "temperature": 1.0,
                                              "top_p": 0.95, "seed": 0, "stop": [], "top_k": 50,
                                              "repetition_penalty": 1.0}
    with pytest.raises(ValueError, match="unknown rollout settings \\['K'\\]"):
        RolloutSettings.from_dict({"K": 8})
    with pytest.raises(ValueError, match="k must be >= 2"):
        RolloutSettings(k=1)
    with pytest.raises(ValueError, match="output form"):
        RolloutSettings(form="cot")


def test_score_group_mixes_accuracy_and_format():
    row = pd.Series({"solution": "<answer>B</answer>", "problem_type": "multiple choice", "options": ["A. r", "B. b"]})
    completions = [FOUR_TAG.format("B"), "<answer>B</answer>", FOUR_TAG.format("A"), "nothing"]
    plain = score_group(completions, row, RolloutSettings(k=4))
    assert plain == {"accuracy": [1.0, 1.0, 0.0, 0.0], "format": [1.0, 0.0, 1.0, 0.0], "reward": [1.0, 1.0, 0.0, 0.0]}
    mixed = score_group(completions, row, RolloutSettings(k=4, format_weight=0.1))
    assert mixed["reward"] == pytest.approx([1.1, 1.0, 0.1, 0.0])


def test_roll_out_one_call_rewards_and_rejects(pool):
    table, media = pool
    settings = RolloutSettings(k=4, max_new_tokens=16)
    groups = [
        [FOUR_TAG.format(a) for a in "BBAB"],          # sample 1: 3 of 4 right
        [FOUR_TAG.format(n) for n in ("3", "3", "3", "3.0")],  # sample 2: always right
        [FOUR_TAG.format(a) for a in "BBBB"],          # sample 3: always wrong
        ["same"] * 4,                                  # sample 4: identical completions
    ]
    generator = ScriptedGenerator(groups)
    result = roll_out(table, generator, settings, load_question_prompts("four_tag"), media)
    (prompts, params), = generator.calls
    assert params == settings.sampling() and len(prompts) == 4  # every readable sample in one call
    assert prompts[0].messages[0]["content"].startswith("question 0\n") and prompts[0].image.size == (16, 16)
    assert "write only the letter" in prompts[0].messages[0]["content"]  # the type instruction
    kept = result.kept.set_index("id")
    assert kept.loc["1", "accuracy"] == [1.0, 1.0, 0.0, 1.0] and kept.loc["1", "mean"] == 0.75
    assert kept.loc["2", "mean"] == 1.0 and kept.loc["3", "mean"] == 0.0
    assert kept["distinct"].tolist() == [2, 2, 1, 1]
    assert result.rejects["id"].tolist() == ["5"] and "missing image file" in result.rejects["reason"][0]
    with pytest.raises(ValueError, match="think_answer form"):
        roll_out(table, generator, settings, load_question_prompts("think_answer"), media)


def _rollouts(rewards: dict) -> pd.DataFrame:
    return pd.DataFrame({"id": list(rewards), "reward": list(rewards.values()),
                         "distinct": [len(set(r)) for r in rewards.values()]})


def test_select_pool_keeps_top_medium_in_pool_order(pool):
    table, _ = pool
    rollouts = _rollouts({"1": [1, 1, 0, 1], "2": [1, 1, 1, 1], "3": [0, 0, 0, 0], "4": [1, 0, 1, 0]})
    selection = select_pool(table, rollouts, SelectionSettings(variance_threshold=0.1, mean_threshold=0.5, keep_frac=0.5))
    classes = dict(zip(selection.table["id"], selection.table["class"]))
    assert classes == {"1": "medium", "2": "easy", "3": "hard", "4": "medium"}
    assert selection.train_pool["id"].tolist() == ["4"]  # the higher variance of the two Medium, ceil(0.5 x 2) = 1
    assert list(selection.train_pool.columns) == list(table.columns)
    summary = selection.summary
    assert (summary["pool"], summary["rolled_out"], summary["not_rolled_out"], summary["kept"]) == (5, 4, 1, 1)
    assert summary["by_class"] == {"hard": 1, "easy": 1, "medium": 2} and summary["identical_groups"] == 2


def test_select_pool_refuses_strangers_repeats_and_an_empty_selection(pool):
    table, _ = pool
    settings = SelectionSettings(variance_threshold=0.1, mean_threshold=0.5)
    with pytest.raises(ValueError, match="not in the pool: \\['99'\\]"):
        select_pool(table, _rollouts({"99": [0, 1]}), settings)
    with pytest.raises(ValueError, match="rolled out twice"):
        rollout_rewards(pd.concat([_rollouts({"1": [0, 1]})] * 2))
    with pytest.raises(ValueError, match="keeps no sample.*'hard': 2"):
        select_pool(table, _rollouts({"1": [0, 0], "2": [0, 0]}), settings)


def test_selection_plot_is_written(pool, tmp_path):
    table, _ = pool
    rollouts = _rollouts({"1": [1, 1, 0, 1], "2": [1, 1, 1, 1], "3": [0, 0, 0, 0], "4": [1, 0, 1, 0]})
    selection = select_pool(table, rollouts, SelectionSettings(variance_threshold=0.1, mean_threshold=0.5))
    figure = plot_variance_selection(selection.table, variance_threshold=0.1, mean_threshold=0.5)
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels[:3] == ["hard: 1 samples, 0 kept", "easy: 1 samples, 0 kept", "medium: 2 samples, 1 kept"]
    assert "2 kept" not in figure.axes[0].get_title() and "1 of 4 samples kept" in figure.axes[0].get_title()
    save_figure(figure, tmp_path / "selection.png")
    with Image.open(tmp_path / "selection.png") as image:
        assert image.size[0] > 300
