"""Reward-variance selection (spec §2.3): classes, the Medium ranking and the keep fraction."""

import pandas as pd
import pytest

from groundflow.gwys.selection import SelectionSettings, rewards_by_sample, select_by_variance

SETTINGS = SelectionSettings(variance_threshold=0.1, mean_threshold=0.5, keep_frac=0.5)


def test_classes_ranks_and_kept():
    rewards = {
        "always_wrong": [0, 0, 0, 0],
        "always_right": [1, 1, 1, 1],
        "half": [1, 0, 1, 0],  # variance 0.25
        "quarter": [1, 0, 0, 0],  # variance 0.1875
        "three_quarters": [1, 1, 1, 0],  # variance 0.1875, after "quarter" (input order)
        "mostly_wrong_low_var": [0.1, 0.1, 0.0, 0.1],
    }
    table = select_by_variance(rewards, SETTINGS).set_index("id")
    assert list(table["class"]) == ["hard", "easy", "medium", "medium", "medium", "hard"]
    assert table.loc["half", "variance"] == pytest.approx(0.25)
    assert table.loc["quarter", "mean"] == pytest.approx(0.25)
    assert table["rank"].tolist()[2:5] == [1, 2, 3] and table["rank"].isna().sum() == 3
    # ceil(0.5 * 3) = 2 kept
    assert table.index[table["kept"]].tolist() == ["half", "quarter"]
    assert table["rollouts"].tolist() == [4] * 6


def test_every_sample_is_in_the_table_and_keep_frac_one_keeps_all_medium():
    rewards = {str(i): [i % 2, (i + 1) % 2] for i in range(7)}
    table = select_by_variance(rewards, SelectionSettings(variance_threshold=0.2, mean_threshold=0.5, keep_frac=1.0))
    assert len(table) == 7 and table["kept"].all()


def test_sample_variance_option_and_bad_inputs():
    table = select_by_variance({"a": [1, 0]}, SelectionSettings(variance_threshold=0.0, mean_threshold=0.5, ddof=1))
    assert table.loc[0, "variance"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs more than 1"):
        select_by_variance({"a": [1]}, SelectionSettings(variance_threshold=0.0, mean_threshold=0.5, ddof=1))
    with pytest.raises(ValueError, match="finite"):
        select_by_variance({"a": [1, float("nan")]}, SETTINGS)
    with pytest.raises(ValueError, match="keep_frac"):
        SelectionSettings(variance_threshold=0.1, mean_threshold=0.5, keep_frac=0)


def test_rewards_from_a_long_rollout_table():
    long = pd.DataFrame({"id": ["b", "a", "b", "a"], "reward": [1.0, 0.0, 0.0, 1.1]})
    assert rewards_by_sample(long) == {"b": [1.0, 0.0], "a": [0.0, 1.1]}


def test_the_table_fits_its_schema(tmp_path):
    import pyarrow as pa

    from groundflow.io.schemas import table_schema

    table = select_by_variance({"a": [1, 0], "b": [0, 0]}, SETTINGS)
    arrow = pa.Table.from_pandas(table, schema=table_schema("gwys_selection"), preserve_index=False)
    assert arrow.column("rank").to_pylist() == [1, None]
