"""TSST's judged tables: search chains verified, direct answers generated and verified, and the
round data and evaluation table built from them (the stage scripts' logic; no files read here).

Every question of the search table ends up in the verified table (one row per chain) or among the
rejects with its reason: not in the question table, or no finished chain. A direct-evaluation
question whose image cannot be read is rejected with the reason; every other question gets a row,
an empty response included (it counts wrong, as the metrics say).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams, check_result_shape
from groundflow.io.artifacts import read_table
from groundflow.io.stage import StageResult, rejects_frame
from groundflow.judge.llm_judge import JudgeItem, MultipleChoiceJudge, Verdict
from groundflow.tsst.labels import Chain, Question
from groundflow.tsst.metrics import QuestionKey, VerifiedChain, direct_metrics, search_metrics, table_rows
from groundflow.tsst.prompts import QuestionPrompts, format_options

VERIFY_STAGE = "tsst_verify"
DIRECT_STAGE = "tsst_direct"
VERIFIED_COLUMNS = ["id", "rank", "text", "score", "answer", "verdict", "correct", "judged_by"]
DIRECT_COLUMNS = ["id", "response", "answer", "verdict", "correct", "judged_by"]


def _questions_by_id(questions: pd.DataFrame) -> dict[str, dict]:
    if questions["id"].duplicated().any():
        dup = questions.loc[questions["id"].duplicated(), "id"].tolist()
        raise ValueError(f"question table ids are not unique: {dup[:3]}")
    return {str(row["id"]): row for row in questions.to_dict("records")}


def judge_item(question: Mapping, response: str) -> JudgeItem:
    choices = tuple(str(c) for c in question["choices"])
    return JudgeItem(question_id=str(question["id"]), question=str(question["question"]), choices=choices,
                     options=format_options(choices), answer_label=int(question["answer_label"]), response=response)


def _verdict_columns(verdict: Verdict) -> dict:
    return {"answer": verdict.answer, "verdict": verdict.verdict, "correct": verdict.correct,
            "judged_by": verdict.judged_by}


def verify_search(search: pd.DataFrame, questions: pd.DataFrame, judge: MultipleChoiceJudge) -> StageResult:
    """Judge every chain of `search` (tsst_search rows); one judge call for all of them."""
    by_id = _questions_by_id(questions)
    rejected: list[tuple[str, str]] = []
    rows, items = [], []
    for record in search.to_dict("records"):
        qid = str(record["id"])
        if qid not in by_id:
            rejected.append((qid, f"question {qid}: not in the question table"))
            continue
        chains = list(record["chains"]) if record["chains"] is not None else []
        if not chains:
            rejected.append((qid, f"question {qid}: the search finished no chain"))
            continue
        for rank, chain in enumerate(chains):
            rows.append({"id": qid, "rank": rank, "text": str(chain["text"]), "score": float(chain["score"])})
            items.append(judge_item(by_id[qid], str(chain["text"])))
    verdicts = judge.judge(items) if items else []
    kept = pd.DataFrame([{**row, **_verdict_columns(v)} for row, v in zip(rows, verdicts)], columns=VERIFIED_COLUMNS)
    return StageResult(kept=kept, rejects=rejects_frame(VERIFY_STAGE, rejected))


def direct_prompt(question: Mapping, prompts: QuestionPrompts, image) -> ChatPrompt:
    """The policy's prompt: our question prompt as the user turn (the conversation format adds the
    system sentence), the image when the question has one."""
    text = prompts.render(str(question["question"]), [str(c) for c in question["choices"]], has_image=image is not None)
    return ChatPrompt(messages=[{"role": "user", "content": text}], image=image)


def answer_directly(records: pd.DataFrame, generator: Generator, judge: MultipleChoiceJudge, prompts: QuestionPrompts,
                    params: SamplingParams, *, image_dir: str | Path) -> StageResult:
    """Greedy answers of the policy to a chunk of questions, judged; unreadable images rejected."""
    from groundflow.vision.image_io import ImageMemo

    if params.n != 1 or params.do_sample:
        raise ValueError("direct evaluation is one greedy answer per question (n=1, do_sample=False)")
    image_dir = Path(image_dir)
    images = ImageMemo(image_dir)
    kept_questions, chat, rejected = [], [], []
    for question in records.to_dict("records"):
        qid, name = str(question["id"]), question.get("image")
        image = None
        if isinstance(name, str):
            image, problem = images.get(name)
            if problem is not None:
                rejected.append((qid, f"question {qid}: {problem}"))
                continue
        kept_questions.append(question)
        chat.append(direct_prompt(question, prompts, image))
    outputs = generator.generate(chat, params) if chat else []
    check_result_shape(outputs, chat, 1)
    responses = [texts[0] for texts in outputs]
    verdicts = judge.judge([judge_item(q, r) for q, r in zip(kept_questions, responses)]) if chat else []
    kept = pd.DataFrame([{"id": str(q["id"]), "response": r, **_verdict_columns(v)}
                         for q, r, v in zip(kept_questions, responses, verdicts)], columns=DIRECT_COLUMNS)
    return StageResult(kept=kept, rejects=rejects_frame(DIRECT_STAGE, rejected))


def questions_for_labels(questions: pd.DataFrame) -> list[Question]:
    return [Question(str(r["id"]), str(r["question"]), tuple(str(c) for c in r["choices"]),
                     r["image"] if isinstance(r["image"], str) else None) for r in questions.to_dict("records")]


def as_list(paths) -> list:
    """Snakemake gives a named input of one file as a string, of several as a list."""
    return [paths] if isinstance(paths, str) else list(paths)


def train_questions(paths, image_roots) -> pd.DataFrame:
    """The question tables of every train set as one, each image path joined to its set's folder
    (training files name images from the run folder); an id in two sets is an error, since D+ and
    D_v records are keyed by it."""
    paths, image_roots = as_list(paths), as_list(image_roots)
    if len(paths) != len(image_roots):
        raise ValueError(f"{len(paths)} question tables but {len(image_roots)} image folders")
    frames = []
    for path, root in zip(paths, image_roots):
        frame = read_table(path)
        frame["image"] = [str(Path(root) / image) if isinstance(image, str) else None for image in frame["image"]]
        frames.append(frame)
    questions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "image"])
    clashes = questions.loc[questions["id"].duplicated(), "id"].tolist()
    if clashes:
        raise ValueError(f"question ids {clashes[:5]} appear in more than one train set; give the sets distinct ids")
    return questions


def chains_for_labels(verified: pd.DataFrame) -> dict[str, list[Chain]]:
    chains: dict[str, list[Chain]] = {}
    for r in verified.sort_values(["id", "rank"], kind="stable").to_dict("records"):
        chains.setdefault(str(r["id"]), []).append(Chain(str(r["text"]), bool(r["correct"]), float(r["score"]), int(r["rank"])))
    return chains


def evaluation_rows(questions: pd.DataFrame, *, direct: Mapping[int, pd.DataFrame] | None = None,
                    search: Mapping[int, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The long evaluation table (tsst_eval_table) over all `questions` of the split, from each
    round's direct answers (tsst_direct_answers) and verified search chains (tsst_verified)."""
    keys = {str(r["id"]): QuestionKey(tuple(str(c) for c in r["choices"]), int(r["answer_label"]))
            for r in questions.to_dict("records")}
    ids = list(keys)
    rows: list[dict] = []
    for round_index, answers in sorted((direct or {}).items()):
        correct = dict(zip(answers["id"].astype(str), answers["correct"].astype(bool)))
        rows += table_rows(round_index, "direct", direct_metrics(correct, ids))
    for round_index, verified in sorted((search or {}).items()):
        chains: dict[str, list[VerifiedChain]] = {}
        for r in verified.to_dict("records"):
            answer = r["answer"] if isinstance(r["answer"], str) else None
            chains.setdefault(str(r["id"]), []).append(
                VerifiedChain(int(r["rank"]), float(r["score"]), bool(r["correct"]), answer))
        rows += table_rows(round_index, "search", search_metrics(chains, keys))
    return pd.DataFrame(rows, columns=["round", "mode", "metric", "value", "n"])


def pivot(table: pd.DataFrame) -> pd.DataFrame:
    """mode x metric rows, one column per round (the .tsv beside the table)."""
    if table.empty:
        return pd.DataFrame(columns=["mode", "metric"])
    wide = table.pivot_table(index=["mode", "metric"], columns="round", values="value", sort=False, dropna=False)
    wide.columns = [f"round_{c}" for c in wide.columns]
    return wide.reset_index()


__all__ = [
    "DIRECT_COLUMNS",
    "as_list",
    "train_questions",
    "DIRECT_STAGE",
    "VERIFIED_COLUMNS",
    "VERIFY_STAGE",
    "answer_directly",
    "chains_for_labels",
    "direct_prompt",
    "evaluation_rows",
    "judge_item",
    "pivot",
    "questions_for_labels",
    "verify_search",
]
