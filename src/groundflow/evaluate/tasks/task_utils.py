"""The Python side of groundflow's lmms-eval tasks (the YAMLs beside this file name these
functions with `!function task_utils.<name>`; lmms-eval loads this file by its path).

Records (one JSON object per line, or a JSON list), checked by `groundflow.evaluate.harness`
before any model loads, image paths made absolute there:
- yes/no (POPE form): `question_id`, `image`, `question`, `answer` ("yes" or "no").
- multiple choice: `question_id`, `image`, `question`, `options` (a list of 2..26 strings, shown
  as "A. ...", "B. ..."), `answer` (the correct option's letter).

The paper benchmarks' YAMLs (groundflow_mme, groundflow_mmbench_en_dev, groundflow_seedbench,
groundflow_mmvet) name lmms-eval's own utils by dotted path; from here they take only
`seedbench_image_docs`, SEED-Bench's image questions.

Pure helpers (`read_choice_letter`, `yes_no_result`, `multiple_choice_result`) hold the scoring,
tested without a model; the lmms-eval hooks are thin wrappers over them. The yes/no answers are
read with POPE's reading (`groundflow.evaluate.pope.parse_answer`), and the yes/no metrics are
lmms-eval's own POPE aggregations (named by dotted path in the YAML); the option letter of a
multiple-choice answer is read by lmms-eval's shared `extract_mcq_answer`.
"""

from __future__ import annotations

import string

YES_NO_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")
LETTERS = string.ascii_uppercase


def option_letters(count: int) -> str:
    if not 2 <= count <= len(LETTERS):
        raise ValueError(f"a multiple-choice item needs 2..{len(LETTERS)} options, got {count}")
    return LETTERS[:count]


def read_choice_letter(text: str, count: int) -> str | None:
    """The option letter an answer names, or None when it names none: lmms-eval's shared reader
    (`extract_mcq_answer`: "B", "(B)", "B.", "The answer is B", ...; the last answer of the
    most telling form wins), limited to this item's letters."""
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

    letter = extract_mcq_answer(text, list(option_letters(count)))
    return letter or None


def yes_no_result(question_id, answer_text: str, truth: str) -> dict:
    """lmms-eval's POPE result record (what its pope_aggregate_* read) for one answer."""
    from groundflow.evaluate.pope import parse_answer

    truth = str(truth).strip().lower()
    if truth not in ("yes", "no"):
        raise ValueError(f"question {question_id}: answer must be 'yes' or 'no', got {truth!r}")
    prediction = parse_answer(answer_text)
    record = {"question_id": question_id, "score": float(prediction == truth),
              "prediction": prediction, "ground_truth": truth}
    return {metric: dict(record) for metric in YES_NO_METRICS}


def multiple_choice_result(answer_text: str, truth: str, count: int) -> dict:
    letter = read_choice_letter(answer_text, count)
    return {"mc_accuracy": float(letter == str(truth).strip().upper()),
            "mc_answered": float(letter is not None)}


def multiple_choice_prompt(question: str, options: list[str], post_prompt: str = "") -> str:
    letters = option_letters(len(options))
    lines = [question.strip()] + [f"{letter}. {option}" for letter, option in zip(letters, options)]
    return "\n".join(lines) + post_prompt


# lmms-eval hooks -------------------------------------------------------------------------------

def doc_to_visual(doc):
    from PIL import Image

    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def yes_no_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question'].strip()}{kwargs.get('post_prompt', '')}"


def yes_no_process_results(doc, results):
    return yes_no_result(doc["question_id"], results[0], doc["answer"])


def multiple_choice_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return kwargs.get("pre_prompt", "") + multiple_choice_prompt(doc["question"], doc["options"], kwargs.get("post_prompt", ""))


def multiple_choice_process_results(doc, results):
    return multiple_choice_result(results[0], doc["answer"], len(doc["options"]))


def seedbench_image_docs(dataset):
    """SEED-Bench's image questions (groundflow_seedbench.yaml's process_docs), told by the
    data_type column alone so that no image is decoded to tell them."""
    return dataset.filter(lambda data_type: data_type == "image", input_columns="data_type")
