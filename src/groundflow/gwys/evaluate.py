"""GWYS evaluation (spec §7): one model answers every evaluation set, scored by problem type.

Each set is a pool-form table (`schemas/gwys_pool`, read by `gwys.data.load_pool` from a
Video-R1-style file; a POPE-style set is multiple choice "A. yes" / "B. no", as the original
evaluates POPE). The model is asked each question in its own output form (four_tag for the
cold-start SFT model and ours, think_answer for the base model and the baseline; `gwys.asking`)
with near-greedy decoding: the original samples at temperature 0.1, top_p 0.001, which is greedy in
all but ties; here decoding is greedy (`do_sample=False`), with no repetition penalty whatever the
checkpoint's generation_config says.

The prediction is the first `<answer>…</answer>` of the output; an output without one is read
whole, as the original's evaluation does (its training reward reads "" instead). It is scored
against the solution's answer by `gwys.rewards.answer_score` (multiple choice by letter,
numerical by value; `rules` "fixed" or the original's). Per set: accuracy (mean score), the format
rate (outputs entirely in the model's form), the answered rate (outputs with an `<answer>` tag), and
the same by problem type and by data source.

The units of an evaluation job are (set, sample) pairs, id `{set}|{sample id}`, so one job loads its
model once for every set, resumes by chunks and accounts for every question (in = out + rejected:
an unreadable image or a video row is rejected with the reason).

`eval_table` gathers the scores of many models into one table: rows are models (base, sft, the
baseline, ours, ablations, in the order given), columns the sets.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import pandas as pd

from groundflow.generate.backends import SamplingParams, check_result_shape
from groundflow.gwys.asking import ask_rows, options_list
from groundflow.gwys.prompts import QuestionPrompts, check_form
from groundflow.gwys.rewards import FORMAT_PATTERNS, answer_score, check_rules, extract_answer
from groundflow.io.artifacts import read_table
from groundflow.io.stage import StageResult, check_accounting, rejects_frame, run_chunked

if TYPE_CHECKING:
    from groundflow.generate.backends import Generator

log = logging.getLogger(__name__)

EVAL_STAGE = "gwys_eval"
_ANSWER_TAG = re.compile(r"<answer>.*?</answer>", re.DOTALL)
UNIT_SEPARATOR = "|"
PREDICTION_COLUMNS = ["id", "set", "sample", "problem_type", "source", "output", "prediction", "solution", "score",
                      "correct", "formatted", "answered"]


@dataclass(frozen=True)
class EvalSettings:
    form: str  # the model's output form: four_tag (SFT, ours) or think_answer (base, baseline)
    max_new_tokens: int = 4096  # the original's max_tokens
    rules: str = "fixed"

    def __post_init__(self) -> None:
        check_form(self.form)
        check_rules(self.rules)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, n=1, do_sample=False, repetition_penalty=1.0)


def has_answer_tag(output: str) -> bool:
    return _ANSWER_TAG.search(output) is not None


def prediction_of(output: str) -> str:
    """The answer read from an output: its first `<answer>` tag's text, else the whole output."""
    return extract_answer(output) if has_answer_tag(output) else output.strip()


def score_output(output: str, row, settings: EvalSettings) -> dict:
    """One output's prediction and scores against its row (a pool-table row)."""
    prediction = prediction_of(output)
    score = answer_score(prediction, str(row.answer), str(row.problem_type), rules=settings.rules,
                         options=options_list(row.options))
    return {"output": output, "prediction": prediction, "solution": str(row.answer), "score": float(score),
            "correct": bool(score >= 1.0),
            "formatted": FORMAT_PATTERNS[settings.form].fullmatch(output) is not None,
            "answered": has_answer_tag(output)}


def eval_units(sets: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (set, sample): the set's pool rows with `set`, `sample` (their own id) and a unit
    `id` of `{set}|{sample}`."""
    parts = []
    for name, table in sets.items():
        if UNIT_SEPARATOR in name:
            raise ValueError(f"an evaluation set's name may not hold {UNIT_SEPARATOR!r}: {name!r}")
        part = table.copy()
        part.insert(0, "set", name)
        part["sample"] = part["id"].astype(str)
        part["id"] = name + UNIT_SEPARATOR + part["sample"]
        parts.append(part)
    if not parts:
        raise ValueError("no evaluation set to answer")
    return pd.concat(parts, ignore_index=True)


def answer_units(units: pd.DataFrame, generator: "Generator", prompts: QuestionPrompts, settings: EvalSettings,
                 media_roots: Mapping[str, str | Path]) -> StageResult:
    """Every unit's output (one generate() call for the chunk), prediction and scores."""
    if prompts.form != settings.form:
        raise ValueError(f"the evaluation prompts are in the {prompts.form} form, the settings ask for {settings.form}")
    asked_rows, asked_prompts, rejected = [], [], []
    for name, part in units.groupby("set", sort=False):
        asked = ask_rows(part, prompts, media_roots[name])
        asked_rows.append(asked.rows)
        asked_prompts.extend(asked.prompts)
        rejected.extend(asked.rejected)
    params = settings.sampling()
    outputs = generator.generate(asked_prompts, params) if asked_prompts else []
    check_result_shape(outputs, asked_prompts, 1)
    rows = []
    for row, texts in zip(pd.concat(asked_rows, ignore_index=True).itertuples(index=False), outputs):
        rows.append({"id": str(row.id), "set": str(row.set), "sample": str(row.sample),
                     "problem_type": str(row.problem_type), "source": row.source,
                     **score_output(texts[0], row, settings)})
    return StageResult(kept=pd.DataFrame(rows, columns=PREDICTION_COLUMNS), rejects=rejects_frame(EVAL_STAGE, rejected))


@dataclass
class Evaluation:
    predictions: pd.DataFrame
    rejects: pd.DataFrame
    scores: dict  # {"sets": {set: scores}, "counts": in/out/rejected, ...}


def evaluate_model(sets: Mapping[str, tuple[str | Path, str | Path]], generator: "Generator",
                   prompts: QuestionPrompts, settings: EvalSettings, *, chunk_size: int = 64,
                   progress_dir: str | Path | None = None, produced_by: Mapping | None = None) -> Evaluation:
    """Answer and score every set ({name: (pool-form table, media folder)}) with one generator, in
    chunks a killed job resumes from (`progress_dir`), every question kept or rejected."""
    start = time.perf_counter()
    units = eval_units({name: read_table(table) for name, (table, _) in sets.items()})
    media_roots = {name: root for name, (_, root) in sets.items()}
    produced_by = {**dict(produced_by or {}), "eval": {"form": settings.form, "max_new_tokens": settings.max_new_tokens,
                                                       "rules": settings.rules},
                   "sampling": settings.sampling().describe(), "prompts": prompts.version}
    result, stats = run_chunked(units, lambda chunk: answer_units(chunk, generator, prompts, settings, media_roots),
                                chunk_size=chunk_size, progress_dir=progress_dir, params=produced_by,
                                group_column="set")
    counts = check_accounting(EVAL_STAGE, units["id"], result)
    scores = {"sets": score_predictions(result.kept, list(sets), result.rejects), "counts": counts, **stats,
              "seconds": round(time.perf_counter() - start, 3), "produced_by": produced_by}
    for name, entry in scores["sets"].items():
        log.info("%s: accuracy %s over %d questions (format %s, answered %s, %d rejected)", name,
                 None if entry["accuracy"] is None else round(entry["accuracy"], 4), entry["n"],
                 entry["format_rate"], entry["answered_rate"], entry["rejected"])
    return Evaluation(predictions=result.kept, rejects=result.rejects, scores=scores)


def _rates(part: pd.DataFrame) -> dict:
    n = len(part)
    return {"n": n,
            "accuracy": float(part["score"].mean()) if n else None,
            "format_rate": float(part["formatted"].mean()) if n else None,
            "answered_rate": float(part["answered"].mean()) if n else None}


def score_predictions(predictions: pd.DataFrame, set_names: Sequence[str], rejects: pd.DataFrame | None = None) -> dict:
    """Scores per set (see the module docstring); a set's rejected questions are counted, not scored."""
    rejected = (rejects["id"].str.split(UNIT_SEPARATOR, n=1).str[0].value_counts().to_dict()
                if rejects is not None and len(rejects) else {})
    scores = {}
    for name in set_names:
        part = predictions[predictions["set"] == name]
        scores[name] = {**_rates(part), "rejected": int(rejected.get(name, 0)),
                        "by_type": {t: _rates(g) for t, g in part.groupby("problem_type", sort=True)},
                        "by_source": {str(s): _rates(g) for s, g in part.groupby(part["source"].fillna(""), sort=True)}}
    return scores


def eval_table(scores_by_model: Mapping[str, Mapping], *, metric: str = "accuracy",
               sets: Sequence[str] | None = None) -> pd.DataFrame:
    """Models (rows, in the order given) x sets (columns: `sets`, else in order of first appearance)
    of one metric from each model's scores file (`{"sets": {set: {metric: value}}}`); a model not
    evaluated on a set gets no value there."""
    if not scores_by_model:
        raise ValueError("no model scores to tabulate")
    if sets is None:
        sets = list(dict.fromkeys(name for scores in scores_by_model.values() for name in scores["sets"]))
    rows = {}
    for model, scores in scores_by_model.items():
        per_set = scores["sets"]
        unknown = [name for name in per_set if name not in sets]
        if unknown:
            raise ValueError(f"model {model!r} has scores for sets {unknown} outside the table's {list(sets)}")
        missing = [name for name in per_set if metric not in per_set[name]]
        if missing:
            raise ValueError(f"model {model!r}'s scores of {missing} have no metric {metric!r}")
        rows[model] = {name: per_set[name][metric] if name in per_set else None for name in sets}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(sets), dtype="float64")
    table.index.name = "model"
    return table


def table_markdown(table: pd.DataFrame, *, percent: bool = True, digits: int = 1) -> str:
    """The table as Markdown, values as percentages (the paper's layout, §8); "–" where missing."""
    header = ["model", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for model, row in table.iterrows():
        cells = ["–" if pd.isna(v) else f"{v * 100 if percent else v:.{digits}f}" for v in row]
        lines.append("| " + " | ".join([str(model), *cells]) + " |")
    return "\n".join(lines) + "\n"
