"""VLM benchmarks through lmms-eval's Python API (DESIGN §6), on a local checkpoint.

`run_benchmark` runs one task of a tasks folder (groundflow's own: `TASKS_DIR`, the YAMLs of
`groundflow/evaluate/tasks`) over local data files with lmms-eval's `simple_evaluate` and a
`TaskManager(include_path=tasks_dir, include_defaults=False)`, so no hub task and no download is
involved. The model family comes from the checkpoint's config.json `model_type`
(groundflow.models.vision_families): "llava" runs through lmms-eval's `llava_hf` wrapper
(LLaVA-1.5 HF format), "qwen2_5_vl" through its `qwen2_5_vl` wrapper. The wrappers load a full
checkpoint: a LoRA adapter must be merged first.

Before any model loads, every data file must exist (FileNotFoundError naming it) and, for
groundflow's tasks, every record must carry its task's fields and an existing image (ValueError
naming the file, the record and the reason); image paths relative to a data file are read
against its folder. The records go to lmms-eval as a JSON-lines copy with absolute image paths.

Traps measured with lmms-eval 0.7.3: its CLI exits 0 on errors (hence the API); `llava_hf` needs
`device_map="cpu"` on a CPU (its default "" would leave the model where `from_pretrained` puts
it) and the device given to `simple_evaluate`, not as a model argument; a task that fails to
load is logged and dropped by lmms-eval, so a missing result raises here instead of reading 0.

lmms_eval (and with it torch) is imported inside the functions: this module stays light.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"

# The fields each of groundflow's tasks reads from a record (see tasks/task_utils.py).
TASK_FIELDS = {
    "groundflow_yes_no": ("question_id", "image", "question", "answer"),
    "groundflow_multiple_choice": ("question_id", "image", "question", "options", "answer"),
}

# config.json model_type -> lmms-eval model wrapper name
LMMS_EVAL_MODELS = {"llava": "llava_hf", "qwen2_5_vl": "qwen2_5_vl"}


class BenchmarkError(RuntimeError):
    """lmms-eval did not produce the task's result."""


def model_wrapper(model_path: str | os.PathLike) -> str:
    """The lmms-eval wrapper for a local checkpoint, from its config.json model_type."""
    from groundflow.models.vision_families import vision_family

    config_path = Path(model_path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"model checkpoint has no config.json: {config_path}")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    family = vision_family(model_type)
    if family is None or family.model_type not in LMMS_EVAL_MODELS:
        raise ValueError(f"{model_path}: model_type {model_type!r} has no lmms-eval wrapper here "
                         f"(known: {sorted(LMMS_EVAL_MODELS)})")
    return LMMS_EVAL_MODELS[family.model_type]


def read_task_records(task: str, path: Path) -> list[dict]:
    """The records of one data file of a groundflow task, checked, image paths made absolute."""
    from groundflow.io.lines import read_json_records

    fields = TASK_FIELDS[task]
    records = []
    for entry in read_json_records(path):
        if entry.error is not None:
            raise ValueError(f"{path}: {entry.error}")
        record = entry.value
        name = f"{path}: record {entry.line} (question_id {record.get('question_id')!r})" if isinstance(record, dict) \
            else f"{path}: record {entry.line}"
        if not isinstance(record, dict):
            raise ValueError(f"{name}: not a JSON object")
        missing = [field for field in fields if field not in record]
        if missing:
            raise ValueError(f"{name}: missing field(s) {missing}")
        image = Path(record["image"])
        if not image.is_absolute():
            image = path.parent / image
        if not image.is_file():
            raise ValueError(f"{name}: image not found: {image}")
        if task == "groundflow_yes_no" and str(record["answer"]).strip().lower() not in ("yes", "no"):
            raise ValueError(f"{name}: answer must be 'yes' or 'no', got {record['answer']!r}")
        if task == "groundflow_multiple_choice":
            from groundflow.evaluate.tasks.task_utils import option_letters

            options = record["options"]
            if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
                raise ValueError(f"{name}: options must be a list of strings")
            try:
                letters = option_letters(len(options))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            if str(record["answer"]).strip().upper() not in letters:
                raise ValueError(f"{name}: answer {record['answer']!r} is not one of the option letters {letters}")
        records.append({**record, "image": str(image.resolve())})
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def run_benchmark(*, model: dict, task: str, tasks_dir: str | os.PathLike = TASKS_DIR,
                  data_files: dict[str, str | os.PathLike], limit: int | None = None,
                  batch_size: int = 1, judge: dict | None = None) -> dict:
    """Run `task` (a task of `tasks_dir`) on `model` ({path, dtype, device}) over `data_files`
    ({split: path}); `limit`: lmms-eval's (the first N items, or a fraction when a float);
    `judge` (an OpenAI-compatible endpoint) is not supported yet and raises.

    Returns {"task", "model", "metrics": {metric: value}, "n_samples", "samples": [{doc_id,
    question_id, target, response, scores: {metric: value}, prediction (record metrics such as
    POPE's: the answer as read; scores then holds "correct")}]}."""
    from groundflow.models.spec import ModelSpec

    spec = ModelSpec.from_config(model)
    if judge is not None:
        raise NotImplementedError("judge-scored tasks are not wired to the harness yet; "
                                  "groundflow's tasks score without a judge")
    if not data_files:
        raise ValueError(f"task {task}: no data files given")
    paths = {split: Path(path) for split, path in data_files.items()}
    for split, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"task {task}: data file of split {split!r} not found: {path}")
    wrapper = model_wrapper(spec.path)
    tasks_dir = Path(tasks_dir)

    with tempfile.TemporaryDirectory(prefix="groundflow-bench-") as scratch:
        expected = None  # how many outputs the run must give, where we know the records
        if task in TASK_FIELDS and tasks_dir.resolve() == TASKS_DIR.resolve():
            resolved = {}
            for split, path in paths.items():
                records = read_task_records(task, path)
                copy = Path(scratch) / f"{split}.jsonl"
                copy.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
                resolved[split] = str(copy)
                if split == "test":  # our tasks' test_split
                    expected = len(records) if limit is None or isinstance(limit, float) else min(limit, len(records))
        else:
            resolved = {split: str(path.resolve()) for split, path in paths.items()}
        result = _evaluate(spec, wrapper, task, tasks_dir, resolved, limit, batch_size)
    if expected is not None and result["n_samples"] != expected:
        raise BenchmarkError(f"task {task}: lmms-eval gave {result['n_samples']} outputs for {expected} items")
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


def _evaluate(spec, wrapper: str, task: str, tasks_dir: Path, data_files: dict, limit, batch_size) -> dict:
    simple_evaluate, get_model, TaskManager = _import_lmms_eval()

    device = spec.torch_device()
    dtype = spec.dtype if spec.dtype != "auto" else ("float32" if device.type == "cpu" else "bfloat16")
    model_args = {"pretrained": str(spec.path), "device": str(device), "device_map": str(device),
                  "batch_size": batch_size}
    if wrapper == "llava_hf":
        # The checkpoint's own chat template (transformers' LLaVA processor template) reads only
        # typed content parts; lmms-eval's simple llava_hf sends a plain string, which that
        # template drops silently ("USER: ASSISTANT:"). LLaVA-1.5's own conversation format
        # (Vicuna v1), which lmms-eval ships, reads the string.
        from lmms_eval.models.simple.llava_hf import VICUNA_CHAT_TEMPLATE

        model_args.update(dtype=dtype, chat_template=VICUNA_CHAT_TEMPLATE)
    elif spec.dtype not in ("auto", "bfloat16"):
        # lmms-eval's qwen2_5_vl wrapper always loads bfloat16; say so rather than ignore the spec
        raise ValueError(f"{spec.path}: lmms-eval's qwen2_5_vl wrapper loads bfloat16 only, not {spec.dtype!r}")
    task_manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    if task not in task_manager.all_tasks:
        raise ValueError(f"task {task!r} not in {tasks_dir} (found: {sorted(task_manager.all_tasks)})")
    # The simple (doc_to_text) wrapper, built here rather than from a "key=value,..." string
    # (lmms-eval's only string form, which a chat template's commas would break).
    lm = get_model(wrapper, force_simple=True)(**model_args)
    config = {"task": task, "dataset_kwargs": {"data_files": data_files}}
    output = simple_evaluate(model=lm, tasks=[config], task_manager=task_manager, device=str(device),
                             batch_size=batch_size, limit=limit, log_samples=True, bootstrap_iters=0,
                             verbosity="WARNING", force_simple=True)
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
        record = {"doc_id": sample.get("doc_id"), "question_id": doc.get("question_id"),
                  "target": sample.get("target"), "response": response, "scores": {}}
        for metric in metrics:
            value = sample.get(metric)
            if isinstance(value, dict):
                # a record metric (POPE's form: every metric holds the same record for its
                # aggregation): the answer as read and whether it was right, once
                record["prediction"] = value.get("prediction")
                record["scores"]["correct"] = value.get("score")
            elif isinstance(value, (int, float)):
                record["scores"][metric] = float(value)
        samples.append(record)
    return {"task": task, "model": spec.path, "metrics": metrics, "n_samples": len(samples), "samples": samples}
