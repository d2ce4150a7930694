"""VLM benchmarks through lmms-eval's Python API (DESIGN §6), on a local checkpoint.

`run_benchmark` runs one task of a tasks folder (groundflow's own: `TASKS_DIR`, the YAMLs of
`groundflow/evaluate/tasks`) over local data files with lmms-eval's `simple_evaluate` and a
`TaskManager(include_path=tasks_dir, include_defaults=False)`, so no hub task and no download is
involved. The model family comes from the checkpoint's config.json `model_type`
(groundflow.models.vision_families): "llava" runs through lmms-eval's `llava_hf` wrapper
(LLaVA-1.5 HF format), "qwen2_5_vl" through its `qwen2_5_vl` wrapper. The wrappers load a full
checkpoint: a LoRA adapter must be merged first.

Two kinds of task of ours:
- by record form (`TASK_FIELDS`: yes/no, multiple choice over JSON lines): every record is checked
  before any model loads; a bad one (a field missing, its image not found, an answer that is no
  option) goes to the result's `rejects` with its file, line and reason, and the run goes on with
  the good ones. Image paths relative to a data file are read against its folder; the records go
  to lmms-eval as a JSON-lines copy with absolute image paths.
- the paper benchmarks (`PAPER_TASKS`: MME, MMBench-EN dev, SEED-Bench image, MM-Vet): lmms-eval's
  own utils (named by dotted path in our YAMLs) over the parquet files of the lmms-lab hub datasets
  as downloaded; `datasets` restores their image columns from the parquet schema's metadata. The
  files are passed through whole; each file's columns are checked against what the utils read,
  its rows counted, and rows outside the benchmark's scored part (SEED-Bench's video questions)
  listed in `rejects` with the reason.
A data file may be a glob pattern naming a dataset's shards (`data/test-*.parquet`). A data
file that is missing (a pattern that matches nothing) raises FileNotFoundError naming it; one that cannot be read at all,
or holds no usable record, raises ValueError naming it. So `n_records` (records read) ==
`n_samples` (outputs) + len(`rejects`) when no limit is given.

Judge-scored tasks (`JUDGE_TASKS`: MM-Vet's GPT grading, MMBench's answer matching) talk to the
OpenAI-compatible endpoint of `judge` = {"base_url": "http://host:port/v1", "served_model":
"gpt-4-0613", "api_key_env": "EVAL_JUDGE_API_KEY"}. lmms-eval's utils of those tasks read
API_TYPE, OPENAI_API_URL, OPENAI_API_KEY and MODEL_VERSION from os.environ when they are
imported; the harness sets them for the run (forgetting any earlier import of those utils, so they
read this run's judge), puts the environment back afterwards, and asks the endpoint once before
the model loads, so a wrong URL, key or model name fails there: lmms-eval itself would score an
unanswered MM-Vet grade 0.0 and replace an unanswered MMBench match by a random letter.

Traps measured with lmms-eval 0.7.3: its CLI exits 0 on errors (hence the API); `llava_hf` needs
`device_map="cpu"` on a CPU (its default "" would leave the model where `from_pretrained` puts
it) and the device given to `simple_evaluate`, not as a model argument; a task that fails to
load is logged and dropped by lmms-eval, so a missing result raises here instead of reading 0.

lmms_eval (and with it torch) is imported inside the functions: this module stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"

# The fields each of groundflow's tasks reads from a record (see tasks/task_utils.py).
TASK_FIELDS = {
    "groundflow_yes_no": ("question_id", "image", "question", "answer"),
    "groundflow_multiple_choice": ("question_id", "image", "question", "options", "answer"),
}


@dataclass(frozen=True)
class PaperTask:
    """A paper benchmark over the lmms-lab hub dataset's parquet files.

    split: the split the task's YAML evaluates; id_column: the question's id; columns: what
    lmms-eval's utils read (image: a datasets.Image, or a list of them for `image_list`);
    keep: (column, value) of the rows the benchmark scores (the task's process_docs drops the
    others; the harness lists them as rejects with `drop_reason`)."""

    split: str
    id_column: str
    columns: tuple[str, ...]
    image_list: bool = False
    keep: tuple[str, str] | None = None
    drop_reason: str = ""


PAPER_TASKS = {
    "groundflow_mme": PaperTask("test", "question_id", ("question_id", "image", "question", "answer", "category")),
    "groundflow_mmbench_en_dev": PaperTask(
        "dev", "index", ("index", "image", "question", "hint", "answer", "A", "B", "C", "D", "category",
                         "L2-category", "source", "split")),
    "groundflow_seedbench": PaperTask(
        "test", "question_id", ("question_id", "image", "question", "answer", "choice_a", "choice_b", "choice_c",
                                "choice_d", "data_type"),
        image_list=True, keep=("data_type", "image"),
        drop_reason="not an image question: groundflow_seedbench scores SEED-Bench's image questions "
                    "(the number LLaVA-1.5 reports)"),
    "groundflow_mmvet": PaperTask("test", "question_id", ("question_id", "image", "question", "answer", "capability")),
}


@dataclass(frozen=True)
class JudgeUse:
    """How a task's lmms-eval utils reach the judge: the module that reads the environment when
    imported, and what it takes OPENAI_API_URL for ("base": the API's base URL, which the openai
    client extends; "chat_completions": the full .../chat/completions URL it posts to)."""

    module: str
    url: str


# The tasks that need a judge: run without one, they fail before the model loads.
JUDGE_TASKS = {
    # lmms_eval.llm_judge's OpenAIProvider: openai.OpenAI(base_url=OPENAI_API_URL), built at import
    "groundflow_mmvet": JudgeUse("lmms_eval.tasks.mmvet.utils", "base"),
    # MMBench_Evaluator: requests.post(OPENAI_API_URL) for answers no rule matches to an option
    "groundflow_mmbench_en_dev": JudgeUse("lmms_eval.tasks.mmbench.en_utils", "chat_completions"),
}
JUDGE_KEYS = ("base_url", "served_model", "api_key_env")
JUDGE_ENVIRONMENT = ("API_TYPE", "OPENAI_API_URL", "OPENAI_API_KEY", "MODEL_VERSION")

# config.json model_type -> lmms-eval model wrapper name
LMMS_EVAL_MODELS = {"llava": "llava_hf", "qwen2_5_vl": "qwen2_5_vl"}


class BenchmarkError(RuntimeError):
    """lmms-eval did not produce the task's result."""


class JudgeError(RuntimeError):
    """The judge endpoint is not configured or did not answer."""


def model_wrapper(model_path: str | os.PathLike) -> str:
    """The lmms-eval wrapper for a local checkpoint, from its config.json model_type."""
    from groundflow.models.vision_families import vision_family

    config_path = Path(model_path) / "config.json"
    if not Path(model_path).is_dir() and not config_path.is_file():
        # a hub id (a paper preset's llava-hf/llava-1.5-7b-hf): its config.json in the local HF cache
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model_path), "config.json")
        if isinstance(cached, str):
            config_path = Path(cached)
    if not config_path.is_file():
        raise FileNotFoundError(f"model checkpoint has no config.json: {config_path} (neither a local folder "
                                f"nor a hub id in the local Hugging Face cache)")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    family = vision_family(model_type)
    if family is None or family.model_type not in LMMS_EVAL_MODELS:
        raise ValueError(f"{model_path}: model_type {model_type!r} has no lmms-eval wrapper here "
                         f"(known: {sorted(LMMS_EVAL_MODELS)})")
    return LMMS_EVAL_MODELS[family.model_type]


def _reject(path: Path, line: int, question_id, reason: str) -> dict:
    return {"question_id": question_id, "line": line, "file": str(path), "reason": reason}


def _record_problem(task: str, record: dict, path: Path) -> tuple[str | None, Path | None]:
    """Why a record of a groundflow task cannot be evaluated (None when it can), and its image."""
    missing = [field for field in TASK_FIELDS[task] if field not in record]
    if missing:
        return f"missing field(s) {missing}", None
    image = Path(str(record["image"]))
    if not image.is_absolute():
        image = path.parent / image
    if not image.is_file():
        return f"image not found: {image}", None
    if task == "groundflow_yes_no" and str(record["answer"]).strip().lower() not in ("yes", "no"):
        return f"answer must be 'yes' or 'no', got {record['answer']!r}", None
    if task == "groundflow_multiple_choice":
        from groundflow.evaluate.tasks.task_utils import option_letters

        options = record["options"]
        if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
            return "options must be a list of strings", None
        try:
            letters = option_letters(len(options))
        except ValueError as error:
            return str(error), None
        if str(record["answer"]).strip().upper() not in letters:
            return f"answer {record['answer']!r} is not one of the option letters {letters}", None
    return None, image


def read_task_records(task: str, path: Path) -> tuple[list[dict], list[dict]]:
    """The records of one data file of a groundflow task, image paths made absolute, and the
    rejects [{question_id, line, file, reason}] of the records that cannot be evaluated.
    A file that cannot be read, or holds no good record, raises ValueError naming it."""
    from groundflow.io.lines import read_json_records

    path = Path(path)
    records, rejects = [], []
    try:
        for entry in read_json_records(path):
            if entry.error is not None:
                rejects.append(_reject(path, entry.line, None, entry.error))
                continue
            record = entry.value
            if not isinstance(record, dict):
                rejects.append(_reject(path, entry.line, None, "not a JSON object"))
                continue
            reason, image = _record_problem(task, record, path)
            if reason is not None:
                rejects.append(_reject(path, entry.line, record.get("question_id"), reason))
            else:
                records.append({**record, "image": str(image.resolve())})
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: cannot be read as {task} records: {error}") from error
    if not records:
        detail = f"; {len(rejects)} rejected, the first: line {rejects[0]['line']}: {rejects[0]['reason']}" \
            if rejects else ""
        raise ValueError(f"{path}: no usable records{detail}")
    return records, rejects


def check_paper_file(task: str, path: Path) -> tuple[int, list[dict]]:
    """A paper task's parquet file checked without reading its images: its columns against what
    lmms-eval's utils read, its image column a datasets.Image (from the schema's metadata). Returns
    its row count and the rejects of the rows the task does not score (`PaperTask.keep`)."""
    import datasets
    import pyarrow.parquet as pq

    paper = PAPER_TASKS[task]
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
        features = datasets.Features.from_arrow_schema(parquet.schema_arrow)
    except Exception as error:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"{path}: cannot be read as a parquet file of {task}: {error}") from error
    missing = [column for column in paper.columns if column not in features]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}, which lmms-eval's utils for {task} read "
                         f"(it has {sorted(features)})")
    image = features["image"]
    if paper.image_list:
        image = getattr(image, "feature", None)
    if not isinstance(image, datasets.Image):
        raise ValueError(f"{path}: column 'image' is {features['image']!r}, not "
                         f"{'a list of images' if paper.image_list else 'an image'} (datasets.Image); the hub "
                         f"dataset's parquet files say so in their schema metadata")
    n_rows = parquet.metadata.num_rows
    if n_rows == 0:
        raise ValueError(f"{path}: no rows")
    rejects = []
    if paper.keep is not None:
        column, value = paper.keep
        table = parquet.read(columns=[paper.id_column, column]).to_pydict()
        for row, (question_id, kind) in enumerate(zip(table[paper.id_column], table[column]), start=1):
            if kind != value:
                rejects.append(_reject(path, row, question_id, f"{column} {kind!r}: {paper.drop_reason}"))
    return n_rows, rejects


def _data_paths(task: str, data_files: dict, split: str | None) -> dict[str, list[Path]]:
    """{split: [paths]} from {split: path | [paths]}, every path an existing file; `split`: the
    one split the task evaluates (None: any)."""
    if not data_files:
        raise ValueError(f"task {task}: no data files given")
    if split is not None and set(data_files) != {split}:
        raise ValueError(f"task {task} evaluates split {split!r} only; data_files gives {sorted(data_files)}")
    paths = {}
    for name, value in data_files.items():
        listed = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        if not listed:
            raise ValueError(f"task {task}: no data file for split {name!r}")
        paths[name] = []
        for path in map(str, listed):
            if glob.has_magic(path):  # a dataset's shards, e.g. data/test-*.parquet
                matched = sorted(glob.glob(path))
                if not matched:
                    raise FileNotFoundError(f"task {task}: no data file of split {name!r} matches {path}")
                paths[name] += [Path(p) for p in matched]
            else:
                paths[name].append(Path(path))
        for path in paths[name]:
            if not path.is_file():
                raise FileNotFoundError(f"task {task}: data file of split {name!r} not found: {path}")
    return paths


def judge_environment(task: str, judge: dict) -> dict[str, str]:
    """The environment lmms-eval's utils of `task` read their judge from. The key comes from the
    variable named by `api_key_env`; an unset or empty one is an error naming the variable."""
    if not isinstance(judge, dict):
        raise TypeError(f"judge must be a dict with {list(JUDGE_KEYS)}, not {type(judge).__name__}")
    unknown = set(judge) - set(JUDGE_KEYS) - {"backend"}
    if unknown:
        raise ValueError(f"judge has keys {sorted(unknown)} that lmms-eval's judge utils do not take; "
                         f"known: {list(JUDGE_KEYS)}")
    if judge.get("backend", "openai") != "openai":
        raise ValueError(f"judge backend must be 'openai' (an OpenAI-compatible endpoint), not {judge['backend']!r}")
    missing = [key for key in JUDGE_KEYS if not judge.get(key)]
    if missing:
        raise ValueError(f"judge needs {list(JUDGE_KEYS)}; missing or empty: {missing}")
    key = os.environ.get(judge["api_key_env"], "")
    if not key:
        raise JudgeError(f"the judge's API key is read from the environment variable {judge['api_key_env']}, "
                         f"which is not set or empty; export {judge['api_key_env']}=...")
    base_url = str(judge["base_url"]).rstrip("/")
    url = base_url + "/chat/completions" if JUDGE_TASKS[task].url == "chat_completions" else base_url
    return {"API_TYPE": "openai", "OPENAI_API_URL": url, "OPENAI_API_KEY": key,
            "MODEL_VERSION": str(judge["served_model"])}


@contextlib.contextmanager
def _judged(task: str, environment: dict[str, str] | None):
    """The judge's environment for the run; before and after, the task's utils are forgotten
    (sys.modules) so that they read it at their import and keep no key past the run."""
    if environment is None:
        yield
        return
    module = JUDGE_TASKS[task].module
    saved = {name: os.environ.get(name) for name in environment}
    sys.modules.pop(module, None)
    os.environ.update(environment)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.modules.pop(module, None)


def check_judge(judge: dict) -> None:
    """One short request to the judge endpoint (groundflow's OpenAI-compatible generator)."""
    from groundflow.generate.backends import ChatPrompt, SamplingParams, make_generator

    spec = {"backend": "openai", "base_url": judge["base_url"], "served_model": judge["served_model"],
            "api_key_env": judge["api_key_env"], "max_retries": 1, "timeout_s": 60}
    try:
        answers = make_generator(spec, kind="text").generate(
            [ChatPrompt(messages=[{"role": "user", "content": "Reply with the word OK."}])],
            SamplingParams(max_new_tokens=8))
    except Exception as error:
        raise JudgeError(f"the judge endpoint {judge['base_url']} (model {judge['served_model']}) did not answer: "
                         f"{error}") from error
    if not answers or not answers[0] or not answers[0][0].strip():
        raise JudgeError(f"the judge endpoint {judge['base_url']} (model {judge['served_model']}) gave an empty answer")


def run_benchmark(*, model: dict, task: str, tasks_dir: str | os.PathLike = TASKS_DIR,
                  data_files: dict, limit: int | float | None = None,
                  batch_size: int = 1, judge: dict | None = None) -> dict:
    """Run `task` (a task of `tasks_dir`) on `model` ({path, dtype, device}) over `data_files`
    ({split: path | [paths]}, every path checked); `limit`: lmms-eval's (the first N items, or a
    fraction when a float); `judge`: the OpenAI-compatible endpoint {base_url, served_model,
    api_key_env} the tasks of `JUDGE_TASKS` need (unused by the others; the result says whether
    one was used).

    Returns {"task", "model", "metrics": {metric: value}, "n_samples", "n_records" (records read,
    rejected ones included; None for a task of another folder), "rejects": [{question_id, line,
    file, reason}], "limit", "judge": {base_url, served_model} | None, "samples": [{doc_id,
    question_id, target, response, scores: {metric: value}, prediction (record metrics such as
    POPE's: the answer as read; scores then holds "correct"), judged (MM-Vet: whether the judge
    gave a grade)}]}."""
    from groundflow.models.spec import ModelSpec

    spec = ModelSpec.from_config(model)
    ours = Path(tasks_dir).resolve() == TASKS_DIR.resolve()
    judge_env = None
    if ours and task in JUDGE_TASKS:
        if judge is None:
            raise JudgeError(f"task {task} is scored by a judge: give run_benchmark a judge "
                             f"{{{', '.join(JUDGE_KEYS)}}} (an OpenAI-compatible endpoint)")
        judge_env = judge_environment(task, judge)
    # the split our tasks evaluate: every record given must end in an output or a reject
    split = None if not ours else PAPER_TASKS[task].split if task in PAPER_TASKS else \
        "test" if task in TASK_FIELDS else None
    paths = _data_paths(task, data_files, split)
    tasks_dir = Path(tasks_dir)

    rejects: list[dict] = []
    n_records = n_usable = None  # known for our tasks
    with tempfile.TemporaryDirectory(prefix="groundflow-bench-") as scratch:
        if ours and task in TASK_FIELDS:
            from groundflow.io.artifacts import atomic_write_text

            resolved = {}
            for split, split_paths in paths.items():
                records = []
                for path in split_paths:
                    good, bad = read_task_records(task, path)
                    records += good
                    rejects += bad
                copy = Path(scratch) / f"{split}.jsonl"
                atomic_write_text(copy, "".join(json.dumps(record) + "\n" for record in records))
                resolved[split] = str(copy)
                n_usable = len(records)
            n_records = n_usable + len(rejects)
        else:
            if ours and task in PAPER_TASKS:
                n_records = 0
                for path in paths[split]:
                    n_rows, dropped = check_paper_file(task, path)
                    n_records += n_rows
                    rejects += dropped
                n_usable = n_records - len(rejects)
                if n_usable == 0:
                    keep = PAPER_TASKS[task].keep
                    raise ValueError(f"task {task}: no row of {[str(path) for path in paths[split]]} has "
                                     f"{keep[0]} {keep[1]!r}, the rows it scores")
            resolved = {split: [str(path.resolve()) for path in split_paths] for split, split_paths in paths.items()}
        expected = None
        if n_usable is not None and not isinstance(limit, float):
            expected = n_usable if limit is None else min(limit, n_usable)
        wrapper = model_wrapper(spec.path)
        if judge_env is not None:
            check_judge(judge)
        with _judged(task, judge_env):
            result = _evaluate(spec, wrapper, task, tasks_dir, resolved, limit, batch_size, Path(scratch))
    if expected is not None and result["n_samples"] != expected:
        raise BenchmarkError(f"task {task}: lmms-eval gave {result['n_samples']} outputs for {expected} items")
    if judge_env is not None:
        ungraded = [sample["question_id"] for sample in result["samples"] if sample.get("judged") is False]
        if ungraded:
            raise JudgeError(f"task {task}: the judge {judge['base_url']} gave no grade for {len(ungraded)} of "
                             f"{result['n_samples']} answers (question_ids {ungraded[:5]}); lmms-eval would "
                             f"count them as 0")
    result.update(n_records=n_records, rejects=rejects, limit=limit,
                  judge={"base_url": judge["base_url"], "served_model": judge["served_model"]}
                  if judge_env is not None else None)
    return result


def _import_lmms_eval():
    """lmms-eval's evaluator, model registry and task manager. Importing lmms_eval.api.task sets
    PIL's process-wide ImageFile.LOAD_TRUNCATED_IMAGES = True, after which a truncated image
    decodes silently (grey rows) everywhere in the process: the flag is put back as it was."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.models import get_model
        from lmms_eval.tasks import TaskManager
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
    return simple_evaluate, get_model, TaskManager


def _evaluate(spec, wrapper: str, task: str, tasks_dir: Path, data_files: dict, limit, batch_size,
              scratch: Path) -> dict:
    simple_evaluate, get_model, TaskManager = _import_lmms_eval()

    device = spec.torch_device()
    # the torch name lmms-eval resolves with getattr(torch, ...): "bf16" in a config is "bfloat16"
    dtype = str(spec.torch_dtype()).removeprefix("torch.")
    model_args = {"pretrained": str(spec.path), "device": str(device), "device_map": str(device),
                  "batch_size": batch_size}
    if wrapper == "llava_hf":
        # The checkpoint's own chat template (transformers' LLaVA processor template) reads only
        # typed content parts; lmms-eval's simple llava_hf sends a plain string, which that
        # template drops silently ("USER: ASSISTANT:"). LLaVA-1.5's own conversation format
        # (Vicuna v1), which lmms-eval ships, reads the string.
        from lmms_eval.models.simple.llava_hf import VICUNA_CHAT_TEMPLATE

        model_args.update(dtype=dtype, chat_template=VICUNA_CHAT_TEMPLATE)
    elif spec.dtype != "auto" and dtype != "bfloat16":
        # lmms-eval's qwen2_5_vl wrapper always loads bfloat16; say so rather than ignore the spec
        raise ValueError(f"{spec.path}: lmms-eval's qwen2_5_vl wrapper loads bfloat16 only, not {spec.dtype!r}")
    task_manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    if task not in task_manager.all_tasks:
        raise ValueError(f"task {task!r} not in {tasks_dir} (found: {sorted(task_manager.all_tasks)})")
    # The simple (doc_to_text) wrapper, built here rather than from a "key=value,..." string
    # (lmms-eval's only string form, which a chat template's commas would break).
    lm = get_model(wrapper, force_simple=True)(**model_args)
    config = {"task": task, "dataset_kwargs": {"data_files": data_files}}
    # Aggregations that write files (MMBench's per-category details) write under output_path,
    # else into the working directory: the scratch folder takes them.
    cli_args = argparse.Namespace(output_path=str(scratch / "lmms-eval"), process_with_media=True)
    output = simple_evaluate(model=lm, tasks=[config], task_manager=task_manager, device=str(device),
                             batch_size=batch_size, limit=limit, log_samples=True, bootstrap_iters=0,
                             verbosity="WARNING", force_simple=True, cli_args=cli_args)
    if not output or task not in output.get("results", {}):
        raise BenchmarkError(f"lmms-eval returned no result for task {task} (model {spec.path}); see its log")
    raw = output["results"][task]
    metrics = {}
    for key, value in raw.items():
        metric, _, filter_name = key.partition(",")
        if filter_name and "_stderr" not in metric and isinstance(value, (int, float)):
            metrics[metric] = float(value)
    if not metrics:
        raise BenchmarkError(f"task {task}: lmms-eval returned no metric values: {raw}")
    samples = []
    for sample in output.get("samples", {}).get(task, []):
        doc = sample.get("doc", {})
        response = sample["filtered_resps"][0] if sample.get("filtered_resps") else None
        if isinstance(response, (list, tuple)):
            response = response[0]
        question_id = doc.get("question_id", doc.get("index"))
        record = {"doc_id": sample.get("doc_id"), "question_id": question_id,
                  "target": sample.get("target"), "response": response, "scores": {}}
        for metric in metrics:
            value = sample.get(metric)
            if isinstance(value, dict):
                # a record metric (POPE's form: every metric holds the same record for its
                # aggregation): the answer as read and whether it was right, once
                if "prediction" in value or "pred" in value:
                    record["prediction"] = value.get("prediction", value.get("pred"))
                if isinstance(value.get("score"), (int, float)):
                    record["scores"]["correct" if "prediction" in value else metric] = float(value["score"])
                if "eval_model" in value:
                    # MM-Vet's grade: an empty eval_model is lmms-eval's mark of a grade the judge never gave
                    record["judged"] = bool(value["eval_model"])
            elif isinstance(value, (int, float)):
                record["scores"][metric] = float(value)
        samples.append(record)
    return {"task": task, "model": spec.path, "metrics": metrics, "n_samples": len(samples), "samples": samples}
