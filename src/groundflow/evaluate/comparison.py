"""One comparison table of checkpoints over benchmarks, from the results of the evaluation jobs.

Each evaluation job (one checkpoint x one benchmark: `harness.run_benchmark`, or a method's own
probe in the same result shape) leaves {"metrics": {name: value}, "n_samples", "n_records",
"rejects": [...], ...}. `comparison_table` lays the headline metric of every benchmark out as one
row, one column per checkpoint, the difference of each checkpoint to the reference (the first),
and what the paper reports beside it where it reports something. `job_counts` gives every
evaluation job's in / out / rejected for `groundflow status`, `job_rejects` its rejected records
with their reasons.

Pure: dicts and DataFrames in and out; nothing here reads files or models.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

COUNT_COLUMNS = ["stage", "in", "out", "rejected"]
REJECT_COLUMNS = ["stage", "id", "reason"]


def headline(result: Mapping, metric: str, *, where: str) -> float:
    """The value of `metric` in one job's result; a metric the job did not report is an error
    naming the job and the metrics it did report (a renamed metric must not read as 0)."""
    metrics = result.get("metrics") or {}
    if metric not in metrics:
        raise KeyError(f"{where}: no metric {metric!r} in the result (it has: {sorted(metrics)})")
    return float(metrics[metric])


def comparison_table(results: Mapping[str, Mapping[str, Mapping]], *, benchmarks: Sequence[Mapping],
                     models: Sequence[str]) -> pd.DataFrame:
    """Rows: benchmarks in the given order ({name, metric, paper_delta?}); columns: benchmark,
    metric, one per model (in `models` order), `delta_<model>` for every model but the first (its
    score minus the first's), n (items scored, the same for every model or an error: a comparison
    over different items is no comparison), rejected, paper_delta (what the paper reports, verbatim;
    empty where it reports nothing). `results[benchmark][model]` is the job's result."""
    if len(models) < 1:
        raise ValueError("no models to compare")
    reference, others = models[0], list(models[1:])
    rows = []
    for benchmark in benchmarks:
        name, metric = benchmark["name"], benchmark["metric"]
        by_model = results.get(name)
        if by_model is None:
            raise KeyError(f"benchmark {name}: no results")
        row = {"benchmark": name, "metric": metric}
        sizes = {}
        rejected = {}
        for model in models:
            if model not in by_model:
                raise KeyError(f"benchmark {name}: no result for model {model}")
            result = by_model[model]
            row[model] = headline(result, metric, where=f"{name} / {model}")
            sizes[model] = int(result["n_samples"])
            rejected[model] = len(result.get("rejects") or [])
        if len(set(sizes.values())) > 1:
            raise ValueError(f"benchmark {name}: the models were scored on different numbers of items {sizes}")
        for model in others:
            row[f"delta_{model}"] = row[model] - row[reference]
        row["n"] = next(iter(sizes.values()))
        row["rejected"] = max(rejected.values())
        paper = benchmark.get("paper_delta")
        row["paper_delta"] = "" if paper is None else str(paper)
        rows.append(row)
    columns = ["benchmark", "metric", *models, *(f"delta_{m}" for m in others), "n", "rejected", "paper_delta"]
    return pd.DataFrame(rows, columns=columns)


def _cell(value, digits: int) -> str:
    if isinstance(value, str):
        return value or "–"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def table_markdown(table: pd.DataFrame, *, digits: int = 3, notes: Sequence[str] = ()) -> str:
    """The table as Markdown (deltas signed), followed by the notes as a list."""
    header = list(table.columns)
    align = ["---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in table.to_dict("records"):
        cells = []
        for column in header:
            value = row[column]
            if column.startswith("delta_") and isinstance(value, float) and not math.isnan(value):
                cells.append(f"{value:+.{digits}f}")
            else:
                cells.append(_cell(value, digits))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "".join(f"- {note}\n" for note in notes)
    return text


def job_stage(benchmark: str, model: str) -> str:
    return f"eval:{benchmark}:{model}"


def job_counts(results: Mapping[str, Mapping[str, Mapping]]) -> pd.DataFrame:
    """One row per evaluation job: in = records read, out = items scored, rejected = records
    rejected with a reason. A job whose numbers do not add up (a record neither scored nor
    rejected) is an error naming it, unless it ran on a limit (`limit` in its result)."""
    rows = []
    for benchmark, by_model in results.items():
        for model, result in by_model.items():
            n_in = int(result.get("n_records", result["n_samples"]))
            out, rejected = int(result["n_samples"]), len(result.get("rejects") or [])
            if n_in != out + rejected and result.get("limit") is None:
                raise ValueError(f"{job_stage(benchmark, model)}: {n_in} records read but {out} scored "
                                 f"and {rejected} rejected")
            rows.append({"stage": job_stage(benchmark, model), "in": n_in, "out": out, "rejected": rejected})
    return pd.DataFrame(rows, columns=COUNT_COLUMNS)


def job_rejects(results: Mapping[str, Mapping[str, Mapping]]) -> pd.DataFrame:
    """Every rejected record of every evaluation job: its job (stage), its id and the reason."""
    rows = []
    for benchmark, by_model in results.items():
        for model, result in by_model.items():
            for reject in result.get("rejects") or []:
                record = reject.get("question_id", reject.get("id"))
                if record is None:
                    record = f"{reject.get('file', '')}:{reject.get('line', '')}"
                rows.append({"stage": job_stage(benchmark, model), "id": str(record), "reason": str(reject["reason"])})
    return pd.DataFrame(rows, columns=REJECT_COLUMNS)


def long_table(table: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """The comparison in the long form of `report.plots.plot_eval_table` (dataset = benchmark,
    setting = its metric, one bar per model)."""
    long = table.melt(id_vars=["benchmark", "metric"], value_vars=list(models), var_name="model", value_name="score")
    long = long.rename(columns={"benchmark": "dataset"}).assign(setting=long["metric"])
    return long[["dataset", "metric", "setting", "model", "score"]]
