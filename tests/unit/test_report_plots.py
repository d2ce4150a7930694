"""Report plots: the numbers behind each plot, and what each figure draws, on small frames."""
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from groundflow.cvc.causality import window_reason
from groundflow.report.plots import (
    box_scores,
    causality_scores,
    choose_examples,
    correct_of_n,
    entities_per_caption,
    eval_panels,
    loss_history,
    plot_box_scores,
    plot_causality,
    plot_entities_per_caption,
    plot_eval_table,
    plot_loss_curve,
    plot_occluded_grid,
    plot_stage_counts,
    plot_trial_success,
    pope_long_table,
    save_figure,
)


def bar_heights(ax) -> list[float]:
    """Heights of the histogram / bar rectangles (not spans or other patches)."""
    return [p.get_height() for container in ax.containers for p in container if p.get_height() > 0]


def test_entities_per_caption_counts_every_citing_row_and_keeps_empty_captions():
    captions = pd.DataFrame({"id": ["c1", "c2", "c3"]})
    entities = pd.DataFrame({"caption_ids": [["c1"], ["c1", "c3"], ["c1"]]})
    counts = entities_per_caption(captions, entities)
    assert counts.to_dict() == {"c1": 3, "c2": 0, "c3": 1}
    fig = plot_entities_per_caption(counts, max_entities=4)
    ax = fig.axes[0]
    assert sorted(bar_heights(ax)) == [1, 1, 1]  # one caption each at 0, 1 and 3 entities
    assert "3 captions, 1 without an entity" in ax.get_title()


def test_entities_citing_an_unknown_caption_is_an_error():
    with pytest.raises(ValueError, match="c9"):
        entities_per_caption(pd.DataFrame({"id": ["c1"]}), pd.DataFrame({"caption_ids": [["c9"]]}))


def test_causality_scores_take_rejected_perplexities_from_the_stage_reason():
    kept = pd.DataFrame({"id": ["a", "b"], "causality_ppl": [700.0, 900.0]})
    rejects = pd.DataFrame({
        "id": ["c", "d", "e"],
        "reason": [
            window_reason(512.25, 620, 1050, "tree", "cap-1"),
            window_reason(1234.5, 620, 1050, "red", "cap-2"),
            "full form 'red car' not found in caption cap-3",
        ],
    })
    scores = causality_scores(kept, rejects)
    assert scores.set_index("id")["ppl"].to_dict() == {"a": 700.0, "b": 900.0, "c": 512.25, "d": 1234.5}
    assert scores.set_index("id")["kept"].to_dict() == {"a": True, "b": True, "c": False, "d": False}
    fig = plot_causality(scores, ppl_low=620, ppl_high=1050, n_unscored=1)
    ax = fig.axes[0]
    assert sum(bar_heights(ax)) == 4
    assert "2 kept of 4 scored, 1 rejected without a score" in ax.get_title()
    window = [p for p in ax.patches if p.get_label().startswith("keep window")]
    assert len(window) == 1
    assert math.isclose(window[0].get_x(), 620) and math.isclose(window[0].get_x() + window[0].get_width(), 1050)


def test_box_scores_and_their_plot():
    grounding = pd.DataFrame({"box_score": [0.9, 0.7], "box_scores": [[0.9, 0.65], [0.7]]})
    best, candidates = box_scores(grounding)
    assert best.tolist() == [0.9, 0.7] and candidates.tolist() == [0.9, 0.65, 0.7]
    ax = plot_box_scores(best, candidates, threshold=0.6, n_rejected=5).axes[0]
    assert "2 entities kept, 5 with no box >= threshold" in ax.get_title()
    assert [line.get_xdata()[0] for line in ax.lines] == [0.6]


def test_choose_examples_takes_one_per_image_before_a_second():
    instances = pd.DataFrame({"id": ["a-1", "a-2", "a-3", "b-1", "c-1"], "image_id": ["a", "a", "a", "b", "c"]})
    assert choose_examples(instances, 4)["id"].tolist() == ["a-1", "b-1", "c-1", "a-2"]
    assert choose_examples(instances, 10)["id"].tolist() == ["a-1", "b-1", "c-1", "a-2", "a-3"]
    with pytest.raises(ValueError):
        choose_examples(instances, 0)


def test_occluded_grid_titles_each_thumbnail_with_its_label_and_outlines_its_box():
    images = [np.zeros((24, 32, 3), dtype=np.uint8), np.full((24, 32, 3), 200, dtype=np.uint8), np.zeros((10, 10, 3), np.uint8)]
    fig = plot_occluded_grid(images, ["cat", "red car", "kite"], [[1, 2, 10, 12], [0, 0, 5, 5], [2, 2, 4, 4]], ncols=2)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["cat", "red car", "kite"]
    assert len(fig.axes) == 4  # 2 x 2 grid, the last one empty
    (box,) = [p for p in titled[0].patches if isinstance(p, Rectangle)]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (1, 2, 9, 10)
    with pytest.raises(ValueError, match="do not match"):
        plot_occluded_grid(images, ["cat"])


def test_trial_success_counts_instances_per_k_and_marks_the_cot_band():
    checked = pd.DataFrame({"correct": [[True, False, False], [False] * 3, [True] * 3, [True, True, False]],
                            "n_correct": [1, 0, 3, 2]})
    n_correct, n_trials = correct_of_n(checked)
    assert n_trials == 3 and n_correct.tolist() == [1, 0, 3, 2]
    ax = plot_trial_success(n_correct, n_trials=3, cot_range=(1, 2)).axes[0]
    assert bar_heights(ax) == [1, 1, 1, 1]  # one instance at each k of 0..3
    assert "4 instances, 2 in the CoT band, 1 with none" in ax.get_title()
    (band,) = [p for p in ax.patches if p.get_label().startswith("CoT samples")]
    assert (band.get_x(), band.get_x() + band.get_width()) == (0.5, 2.5)


def test_trial_counts_must_be_the_same_for_every_instance():
    with pytest.raises(ValueError, match="different trial counts"):
        correct_of_n(pd.DataFrame({"correct": [[True], [True, False]], "n_correct": [1, 1]}))


def test_loss_history_is_in_step_order_and_plotted_as_is():
    history = loss_history({"losses": [{"step": 2, "loss": 1.5}, {"step": 1, "loss": 2.0}]})
    assert history.to_dict("list") == {"step": [1, 2], "loss": [2.0, 1.5]}
    ax = plot_loss_curve(history).axes[0]
    (line,) = ax.lines
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [2.0, 1.5]
    assert "2.000 -> 1.500 over 2 logged steps" in ax.get_title()
    with pytest.raises(ValueError, match="losses"):
        loss_history({"steps": 3})


def test_stage_counts_plot_stacks_kept_and_rejected_and_refuses_counts_that_do_not_add_up():
    counts = pd.DataFrame({"stage": ["ingest", "images"], "in": [10, 8], "out": [8, 5], "rejected": [2, 3]})
    ax = plot_stage_counts(counts).axes[0]
    widths = sorted(p.get_width() for container in ax.containers for p in container)
    assert widths == [2, 3, 5, 8]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ingest", "images"]
    with pytest.raises(ValueError, match="images"):
        plot_stage_counts(counts.assign(rejected=[2, 2]))


def test_empty_stages_still_give_a_figure_that_says_so(tmp_path):
    fig = plot_trial_success(pd.Series([], dtype=int), n_trials=0, cot_range=(1, 4))
    assert any("no checked instances" in t.get_text() for t in fig.axes[0].texts)
    save_figure(fig, tmp_path / "empty.png")
    assert Image.open(tmp_path / "empty.png").size[0] > 0


def test_save_figure_writes_the_format_of_the_suffix_atomically(tmp_path):
    fig = plot_loss_curve(pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}))
    save_figure(fig, tmp_path / "plots" / "loss.png")
    with Image.open(tmp_path / "plots" / "loss.png") as im:
        assert im.format == "PNG" and im.size == (600, 360)
        assert len(np.unique(np.asarray(im.convert("L")))) > 2  # drawn, not blank
    save_figure(fig, tmp_path / "plots" / "loss.svg")
    assert (tmp_path / "plots" / "loss.svg").read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss.png", "loss.svg"]  # no temp files left
    with pytest.raises(ValueError, match="suffix"):
        save_figure(fig, tmp_path / "plots" / "loss")


def _eval_table():
    rows = []
    for dataset, metrics, settings in [("nq", ["exact_match", "accuracy"], ["prefilled_1doc", "closed_book"]),
                                       ("eli5", ["rouge_l"], ["prefilled_1doc"])]:
        for metric in metrics:
            for setting in settings:
                for mode, score in [("context", 0.5), ("no_context", 0.25)]:
                    rows.append({"dataset": dataset, "metric": metric, "setting": setting, "mode": mode,
                                 "score": score if setting != "closed_book" else score / 5})
    return pd.DataFrame(rows)


def test_eval_panels_pivot_each_dataset_metric_by_setting_and_mode():
    table = _eval_table()
    table.loc[(table["dataset"] == "eli5") & (table["mode"] == "no_context"), "score"] = float("nan")
    panels = eval_panels(table)
    assert [(d, m) for d, m, _ in panels] == [("nq", "exact_match"), ("nq", "accuracy"), ("eli5", "rouge_l")]
    scores = panels[0][2]
    assert list(scores.index) == ["prefilled_1doc", "closed_book"] and list(scores.columns) == ["context", "no_context"]
    assert scores.loc["closed_book", "context"] == pytest.approx(0.1)
    assert np.isnan(panels[2][2].loc["prefilled_1doc", "no_context"])


def test_eval_panels_refuse_two_scores_for_one_cell():
    table = _eval_table()
    with pytest.raises(ValueError, match="several scores"):
        eval_panels(pd.concat([table, table.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks columns"):
        eval_panels(table.drop(columns="score"))


def test_eval_plot_draws_one_bar_per_mode_and_setting_at_its_score():
    fig = plot_eval_table(_eval_table(), title="CINGS")
    axes = fig.get_axes()
    assert len(axes) == 3
    heights = sorted(round(p.get_height(), 4) for p in axes[0].patches if isinstance(p, Rectangle))
    assert heights == [0.05, 0.1, 0.25, 0.5]
    assert len([p for p in axes[2].patches if isinstance(p, Rectangle)]) == 2


def test_pope_table_becomes_one_panel_per_metric_with_splits_as_settings():
    metrics = pd.DataFrame({"model": ["context"] * 3, "split": ["random", "popular", "adversarial"],
                            "accuracy": [0.9, 0.8, 0.7], "f1": [0.91, 0.81, 0.71], "yes_ratio": [0.5, 0.55, 0.6]})
    long = pope_long_table(metrics)
    panels = eval_panels(long)
    assert [m for _, m, _ in panels] == ["accuracy", "f1", "yes_ratio"]
    assert panels[2][2].loc["adversarial", "context"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="lacks columns"):
        pope_long_table(metrics.drop(columns="f1"))
