"""Report plots: stage tables in, matplotlib figures out.

Pure: every function takes DataFrames (or arrays) and returns data or a `Figure`; nothing here
reads artifacts or model files. The figures are built with `matplotlib.figure.Figure` rather than
pyplot, so no global figure state or GUI backend is involved (saving renders through Agg).
`save_figure` is the one writer, atomic like every artifact.
"""

from __future__ import annotations

import math
import os
import re
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from groundflow.io.artifacts import atomic_path

KEPT_COLOR = "#2b7bba"
REJECTED_COLOR = "#d9822b"
BAND_COLOR = "#59a14f"
# What `causality.window_reason` writes for an entity outside the window; the rest of a rejected
# entity's reasons (no mention found, nothing masked) carry no perplexity.
_WINDOW_REASON = re.compile(r"^causality ppl (?P<ppl>[-+0-9.eE]+|nan|inf) outside ")


def _empty_note(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="grey")


def _integer_bins(values: Sequence[int], low: int = 0) -> np.ndarray:
    high = max([low, *values]) if len(values) else low
    return np.arange(low - 0.5, high + 1.5, 1.0)


# ---------------------------------------------------------------- entities


def entities_per_caption(captions: pd.DataFrame, entities: pd.DataFrame) -> pd.Series:
    """Number of entity rows that cite each caption (0 for captions that yielded none).

    captions: the entity stage's input, one row per caption (`id`); entities: its output, one row
    per (image, entity) with `caption_ids`, the captions that mention it.
    """
    cited = entities["caption_ids"].explode().dropna() if len(entities) else pd.Series(dtype=object)
    unknown = sorted(set(cited) - set(captions["id"]))
    if unknown:
        raise ValueError(f"entities cite captions that are not in the entity stage's input: {unknown[:5]}")
    counts = cited.value_counts()
    return counts.reindex(captions["id"], fill_value=0).rename("entities").astype(int)


def plot_entities_per_caption(counts: pd.Series, *, max_entities: int | None = None) -> Figure:
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    values = counts.to_numpy()
    if len(values):
        ax.hist(values, bins=_integer_bins(values), color=KEPT_COLOR, edgecolor="white")
    else:
        _empty_note(ax, "captions")
    if max_entities is not None:
        ax.axvline(max_entities + 0.5, color="grey", linestyle="--", label=f"max_entities = {max_entities}")
        ax.legend(loc="upper right")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("entities extracted from the caption")
    ax.set_ylabel("captions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    none = int((values == 0).sum()) if len(values) else 0
    ax.set_title(f"Entities per caption ({len(values)} captions, {none} without an entity)")
    return fig


# ---------------------------------------------------------------- causality


def causality_scores(kept: pd.DataFrame, rejects: pd.DataFrame) -> pd.DataFrame:
    """(id, ppl, kept) for every scored entity: the stage's kept rows and the rejected ones whose
    reason gives the perplexity outside the window. Rejects without a perplexity are left out."""
    rows = [pd.DataFrame({"id": kept["id"], "ppl": kept["causality_ppl"].astype(float), "kept": True})]
    if len(rejects):
        matched = rejects["reason"].str.extract(_WINDOW_REASON)["ppl"]
        scored = matched.notna()
        rows.append(pd.DataFrame({"id": rejects.loc[scored, "id"], "ppl": matched[scored].astype(float), "kept": False}))
    return pd.concat(rows, ignore_index=True)


def plot_causality(scores: pd.DataFrame, *, ppl_low: float, ppl_high: float, n_unscored: int = 0) -> Figure:
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    finite = scores[np.isfinite(scores["ppl"])]
    if len(finite):
        bins = np.histogram_bin_edges(np.r_[finite["ppl"].to_numpy(), ppl_low, ppl_high], bins=30)
        ax.hist([finite.loc[finite["kept"], "ppl"], finite.loc[~finite["kept"], "ppl"]], bins=bins, stacked=True,
                color=[KEPT_COLOR, REJECTED_COLOR], label=["kept (inside the window)", "rejected (outside)"])
    else:
        _empty_note(ax, "scored entities")
    ax.axvspan(ppl_low, ppl_high, color=BAND_COLOR, alpha=0.15, label=f"keep window ({ppl_low:g}, {ppl_high:g})")
    ax.axvline(ppl_low, color=BAND_COLOR)
    ax.axvline(ppl_high, color=BAND_COLOR)
    ax.set_xlabel("label perplexity under the masked LM (low = caption implies the entity)")
    ax.set_ylabel("entities")
    ax.yaxis.get_major_locator().set_params(integer=True)
    extra = f", {n_unscored} rejected without a score" if n_unscored else ""
    ax.set_title(f"Causality: {int(scores['kept'].sum())} kept of {len(scores)} scored{extra}")
    ax.legend(loc="upper right", fontsize="small")
    return fig


# ---------------------------------------------------------------- grounding


def box_scores(grounding: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(best box score per grounded entity, score of every kept candidate box)."""
    best = grounding["box_score"].to_numpy(dtype=float)
    candidates = np.concatenate([np.asarray(s, dtype=float) for s in grounding["box_scores"]]) if len(grounding) else np.array([])
    return best, candidates


def plot_box_scores(best: np.ndarray, candidates: np.ndarray, *, threshold: float, n_rejected: int) -> Figure:
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    if len(candidates):
        bins = np.histogram_bin_edges(np.r_[candidates, best, threshold], bins=25)
        ax.hist(candidates, bins=bins, histtype="step", linewidth=1.5, color="grey", label="every kept box")
        ax.hist(best, bins=bins, color=KEPT_COLOR, alpha=0.8, label="best box per entity")
    else:
        _empty_note(ax, "grounded entities")
    ax.axvline(threshold, color=REJECTED_COLOR, linestyle="--", label=f"threshold = {threshold:g}")
    ax.set_xlabel("detector box score")
    ax.set_ylabel("boxes")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Grounding: {len(best)} entities kept, {n_rejected} with no box >= threshold")
    ax.legend(loc="upper right", fontsize="small")
    return fig


# ---------------------------------------------------------------- occlusion


def choose_examples(instances: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to n instances in id order, one per image before a second from any image, so the grid
    shows as many scenes as there are."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ordered = instances.sort_values("id", kind="stable")
    rank = ordered.groupby("image_id", sort=False).cumcount()
    return ordered.assign(_rank=rank.to_numpy()).sort_values(["_rank", "id"], kind="stable").head(n).drop(columns="_rank")


def plot_occluded_grid(images: Sequence[np.ndarray], labels: Sequence[str], boxes: Sequence[Sequence[float]] | None = None,
                       *, ncols: int = 4) -> Figure:
    """Thumbnails with the hidden entity's label as title and its box outlined (dashed)."""
    if len(images) != len(labels) or (boxes is not None and len(boxes) != len(images)):
        raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(boxes or [])} boxes do not match")
    ncols = max(1, min(ncols, len(images)))
    nrows = max(1, math.ceil(len(images) / ncols))
    fig = Figure(figsize=(2.6 * ncols, 2.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if not len(images):
        _empty_note(axes[0, 0], "occluded instances")
    for index, (image, label) in enumerate(zip(images, labels)):
        ax = axes.flat[index]
        ax.imshow(image)
        if boxes is not None:
            x0, y0, x1, y1 = (float(v) for v in boxes[index])
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#e15759", linestyle="--", linewidth=1.2))
        ax.set_title(label, fontsize=10)
    return fig


# ---------------------------------------------------------------- trials


def correct_of_n(checked: pd.DataFrame) -> tuple[pd.Series, int]:
    """(correct trials per instance, trials per instance); every instance must have had the same n."""
    n_trials = checked["correct"].map(len)
    if n_trials.nunique() > 1:
        raise ValueError(f"instances have different trial counts {sorted(n_trials.unique())}")
    return checked["n_correct"].astype(int).rename("n_correct"), int(n_trials.iloc[0]) if len(checked) else 0


def plot_trial_success(n_correct: pd.Series, *, n_trials: int, cot_range: tuple[int, int]) -> Figure:
    low, high = cot_range
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    values = n_correct.to_numpy()
    if len(values):
        ax.hist(values, bins=np.arange(-0.5, n_trials + 1.5, 1.0), color=KEPT_COLOR, edgecolor="white")
    else:
        _empty_note(ax, "checked instances")
    ax.axvspan(low - 0.5, high + 0.5, color=BAND_COLOR, alpha=0.2, label=f"CoT samples: {low} <= k <= {high}")
    ax.set_xlim(-0.5, n_trials + 0.5)
    ax.margins(y=0.15)  # room for the legend above the bars
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(f"correct trials k of n = {n_trials}")
    ax.set_ylabel("instances")
    ax.yaxis.get_major_locator().set_params(integer=True)
    band = int(((values >= low) & (values <= high)).sum())
    ax.set_title(f"Trial success: {len(values)} instances, {band} in the CoT band, {int((values == 0).sum())} with none")
    ax.legend(loc="upper center", fontsize="small")
    return fig


# ---------------------------------------------------------------- reward-variance selection

SELECTION_COLORS = {"hard": "#d9822b", "easy": "#59a14f", "medium": "#2b7bba"}


def plot_variance_selection(table: pd.DataFrame, *, variance_threshold: float, mean_threshold: float) -> Figure:
    """Each sample at (mean, variance) of its rollout rewards, coloured by class (a selection table:
    id, mean, variance, class, kept); kept samples filled, the rest hollow; the thresholds drawn.
    Samples at one point (K rewards of 0 or 1 take few values) are drawn once, sized by their count."""
    fig = Figure(figsize=(6, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if len(table):
        points = table.groupby(["class", "kept", "mean", "variance"], sort=True).size().rename("n").reset_index()
        for kind, color in SELECTION_COLORS.items():
            of_kind = table["class"] == kind
            label = f"{kind}: {int(of_kind.sum())} samples, {int(table.loc[of_kind, 'kept'].sum())} kept"
            for kept in (True, False):
                mine = points[(points["class"] == kind) & (points["kept"] == kept)]
                if mine.empty:
                    continue
                ax.scatter(mine["mean"], mine["variance"], s=24 + 14 * np.sqrt(mine["n"]), label=label,
                           facecolors=color if kept else "none", edgecolors=color, linewidths=1.2)
                label = None  # one legend entry per class
    else:
        _empty_note(ax, "rolled-out samples")
    ax.axhline(variance_threshold, color="grey", linestyle="--", linewidth=1,
               label=f"variance threshold {variance_threshold:g} (Medium at or above)")
    ax.plot([mean_threshold, mean_threshold], [0, variance_threshold], color="grey", linestyle=":", linewidth=1,
            label=f"mean threshold {mean_threshold:g} (Hard below, Easy above)")
    ax.set_xlabel("mean reward over the rollouts")
    ax.set_ylabel("reward variance over the rollouts")
    ax.margins(x=0.05, y=0.1)
    kept = int(table["kept"].sum()) if len(table) else 0
    ax.set_title(f"Reward-variance selection: {kept} of {len(table)} samples kept (filled)")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")  # below the axes: the points fill them
    return fig


# ---------------------------------------------------------------- training


def loss_history(summary: dict) -> pd.DataFrame:
    """(step, loss) from a train_summary.json, one row per logged step, in step order."""
    if "losses" not in summary:
        raise ValueError("the training summary has no 'losses'")
    history = pd.DataFrame(summary["losses"], columns=["step", "loss"])
    return history.sort_values("step", kind="stable").reset_index(drop=True)


def plot_loss_curve(history: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    if len(history):
        ax.plot(history["step"], history["loss"], marker="o", color=KEPT_COLOR)
    else:
        _empty_note(ax, "logged steps")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    title = "Training loss"
    if len(history):
        title += f": {history['loss'].iloc[0]:.3f} -> {history['loss'].iloc[-1]:.3f} over {len(history)} logged steps"
    ax.set_title(title)
    return fig


# ---------------------------------------------------------------- overview


def plot_stage_counts(counts: pd.DataFrame) -> Figure:
    """Kept and rejected records per stage, stages top to bottom in pipeline order."""
    bad = counts[counts["in"] != counts["out"] + counts["rejected"]]
    if len(bad):
        raise ValueError(f"stage counts do not add up: {bad['stage'].tolist()}")
    fig = Figure(figsize=(7, 0.35 * max(len(counts), 2) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(counts))
    ax.barh(y, counts["out"], color=KEPT_COLOR, label="out")
    ax.barh(y, counts["rejected"], left=counts["out"], color=REJECTED_COLOR, label="rejected")
    for row, (out, total) in enumerate(zip(counts["out"], counts["in"])):
        ax.text(total, row, f" {out}/{total}", va="center", fontsize="small")
    ax.set_yticks(y, counts["stage"])
    ax.invert_yaxis()
    ax.set_xlabel("records in (the unit is each stage's input record)")
    ax.set_title("Records per stage")
    ax.margins(x=0.12)
    ax.legend(loc="lower right", fontsize="small")
    return fig


# ---------------------------------------------------------------- evaluation tables

EVAL_KEYS = ["dataset", "metric", "setting", "mode"]


def eval_panels(table: pd.DataFrame, *, group: str = "mode") -> list[tuple[str, str, pd.DataFrame]]:
    """(dataset, metric, scores) per panel of an evaluation plot, in the table's first-seen order:
    `scores` has one row per setting and one column per value of `group` (a checkpoint's mode),
    NaN where a run kept no prediction. A long table row names dataset, metric, setting, `group`
    and its score; two rows for one cell are an error, not averaged away."""
    keys = ["dataset", "metric", "setting", group]
    missing = [c for c in keys + ["score"] if c not in table.columns]
    if missing:
        raise ValueError(f"evaluation table lacks columns {missing}")
    twice = table[table.duplicated(keys, keep=False)]
    if len(twice):
        raise ValueError(f"evaluation table has several scores for {twice[keys].drop_duplicates().values.tolist()[:3]}")
    panels = []
    for (dataset, metric), rows in table.groupby(["dataset", "metric"], sort=False):
        scores = rows.pivot(index="setting", columns=group, values="score")
        scores = scores.reindex(index=pd.unique(rows["setting"]), columns=pd.unique(rows[group]))
        panels.append((str(dataset), str(metric), scores.astype(float)))
    return panels


def plot_eval_table(table: pd.DataFrame, *, group: str = "mode", title: str = "Evaluation",
                    ncols: int = 3, ylim: tuple[float, float] | None = (0, 1.15)) -> Figure:
    """One panel per dataset x metric: grouped bars, settings along x, one bar per `group` value
    (the same colour for it in every panel), the value written above; scores on a 0-1 axis, or
    each panel on its own scale with `ylim` None (benchmarks with scores like MME's 0-2000)."""
    panels = eval_panels(table, group=group)
    if not panels:
        fig = Figure(figsize=(5, 2), layout="constrained")
        _empty_note(fig.add_subplot(), "evaluation scores")
        return fig
    members = list(pd.unique(table[group]))
    colors = {m: c for m, c in zip(members, [KEPT_COLOR, REJECTED_COLOR, BAND_COLOR, "#9c6ade", "#e15759", "#76b7b2",
                                             "#59a14f", "#edc948"] * 4)}
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # one panel is widened for many bars (GWYS' seven models), and the legend wraps at four
    fig = Figure(figsize=(max(4.2 * ncols, 1.0 * len(members) + 2.5), 3.0 * nrows + 0.9), layout="constrained")
    width = 0.8 / max(len(members), 1)
    for index, (dataset, metric, scores) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        x = np.arange(len(scores.index))
        for offset, member in enumerate(members):
            values = scores[member].to_numpy() if member in scores.columns else np.full(len(x), np.nan)
            bars = ax.bar(x + (offset - (len(members) - 1) / 2) * width, np.nan_to_num(values), width,
                          color=colors[member], label=str(member) if index == 0 else None)
            for bar, value in zip(bars, values):
                label = "n/a" if np.isnan(value) else f"{value:.2f}"
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center",
                        va="bottom", fontsize="x-small", rotation=90)
        ax.set_xticks(x, [str(s).replace("_", "\n", 1) for s in scores.index], fontsize="x-small")
        if ylim is not None:
            ax.set_ylim(*ylim)
        else:  # the panel's own scale from 0, room above the tallest bar for its label
            values = scores.to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            top = float(finite.max()) if finite.size else 0.0
            if finite.size and finite.min() < 0:
                ax.margins(y=0.25)
            else:
                ax.set_ylim(0, top * 1.25 if top > 0 else 1.0)
        ax.set_title(f"{dataset}: {metric}", fontsize="small")
    fig.legend(loc="outside lower center", ncols=min(len(members), 4), fontsize="small", title=group)
    fig.suptitle(title)
    return fig


POPE_PLOT_METRICS = ["accuracy", "f1", "yes_ratio"]


def pope_long_table(metrics: pd.DataFrame, *, metrics_shown: Sequence[str] = POPE_PLOT_METRICS) -> pd.DataFrame:
    """POPE's table (one row per model x split) in the long form `plot_eval_table` draws: the
    splits as settings, the checkpoints as modes, one panel per metric."""
    missing = [c for c in ["model", "split", *metrics_shown] if c not in metrics.columns]
    if missing:
        raise ValueError(f"POPE table lacks columns {missing}")
    long = metrics.melt(id_vars=["model", "split"], value_vars=list(metrics_shown), var_name="metric", value_name="score")
    long = long.rename(columns={"model": "mode", "split": "setting"}).assign(dataset="POPE")
    return long[["dataset", "metric", "setting", "mode", "score"]]


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> None:
    """Write the figure atomically; the format follows the file's suffix (png, svg, pdf)."""
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if not suffix:
        raise ValueError(f"{path}: no file suffix to take the image format from")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=dpi)


# ---------------------------------------------------------------- GWYS

GWYS_CURVES = (("reward", "mean reward (weighted sum)"), ("kl", "KL to the reference"),
               ("infoNCE", "InfoNCE conflict term"))


def gwys_step_table(summaries: dict[str, dict]) -> pd.DataFrame:
    """(variant, step, metric, value) from each GRPO run's train_summary.json log_history: the
    curves of `GWYS_CURVES` and every rewards/<fn>/mean."""
    rows = []
    for variant, summary in summaries.items():
        if "log_history" not in summary:
            raise ValueError(f"GRPO run {variant!r}: the training summary has no 'log_history'")
        for entry in summary["log_history"]:
            for key, value in entry.items():
                if key == "step" or value is None:
                    continue
                if key in dict(GWYS_CURVES) or (key.startswith("rewards/") and key.endswith("/mean")):
                    rows.append({"variant": variant, "step": int(entry["step"]), "metric": key, "value": float(value)})
    return pd.DataFrame(rows, columns=["variant", "step", "metric", "value"])


def plot_gwys_training(steps: pd.DataFrame) -> Figure:
    """GRPO curves per variant: the weighted reward, KL, InfoNCE (runs with the term only) and each
    reward function's mean, one panel each, one line per variant (the same colour in every panel)."""
    reward_panels = sorted(m for m in pd.unique(steps["metric"]) if m.startswith("rewards/"))
    panels = [(m, label) for m, label in GWYS_CURVES] + [(m, m.split("/")[1] + " reward") for m in reward_panels]
    variants = list(pd.unique(steps["variant"]))
    palette = [KEPT_COLOR, REJECTED_COLOR, BAND_COLOR, "#9c6ade", "#e15759", "#76b7b2", "#59a14f", "#edc948"]
    colors = {v: palette[i % len(palette)] for i, v in enumerate(variants)}
    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows + 0.6), layout="constrained")
    for index, (metric, label) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        part = steps[steps["metric"] == metric]
        if not len(part):
            _empty_note(ax, f"{label} (no run logged it)")
        for variant, rows in part.groupby("variant", sort=False):
            rows = rows.sort_values("step")
            ax.plot(rows["step"], rows["value"], marker="o", markersize=3, color=colors[variant], label=variant)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("optimizer step", fontsize="small")
        ax.set_title(label, fontsize="small")
    handles = [Rectangle((0, 0), 1, 1, color=colors[v]) for v in variants]
    if variants:
        fig.legend(handles, variants, loc="outside lower center", ncols=min(len(variants), 6), fontsize="small", title="GRPO run")
    fig.suptitle("GWYS GRPO training")
    return fig


def gwys_eval_long_table(scores_by_model: dict[str, dict], *, metric: str = "accuracy") -> pd.DataFrame:
    """The long form `plot_eval_table` draws (group "model"): per eval set, `metric` over all its
    questions and per source (a set mixing POPE yes/no, shapes and counts shows each)."""
    rows = []
    for model, scores in scores_by_model.items():
        for name, score in scores["sets"].items():
            rows.append({"dataset": name, "metric": metric, "setting": "all", "model": model, "score": score[metric]})
            by_source = {s: v for s, v in (score.get("by_source") or {}).items() if s}
            if len(by_source) > 1:
                rows += [{"dataset": name, "metric": metric, "setting": source, "model": model, "score": value[metric]}
                         for source, value in by_source.items()]
    return pd.DataFrame(rows, columns=["dataset", "metric", "setting", "model", "score"])
