"""CVC's held-out occluded-object probe: CVC's direct effect, measured on pictures training never saw.

Before trial learning, each shard's instances (one per (image, entity), from the instructions
stage) are split by source picture into a trial side, which goes on to trial learning and the
hybrid data, and a probe side, which never enters training. A checkpoint (the base LLaVA, the
CVC-trained one) then answers each probe instance's question on its occluded image, in the
layout of the hybrid data's answer samples, and the answer is scored with trial learning's own
answer check (`groundflow.cvc.trials.check_answers`: embedder similarity with the entity label
above the threshold).

The split:
- by picture, not by instance: every instance of one picture lands on the same side, or the
  probe would ask about pictures whose other objects were trained on;
- deterministic from (seed, picture key) through a hash: the same picture goes to the same side
  whatever shard it is in, whatever the row order, however many shards there are;
- pictures the LLaVA instruction data uses (mixed into the hybrid data, so seen in training) can
  be kept off the probe side (`exclude`). A picture is recognised across file names by
  `image_key`: the paper's CVC captions name COCO train2014 files (COCO_train2014_000000391895.jpg)
  while LLaVA-665k names the same pictures by their train2017 names (000000391895.jpg).

The probe's result has the shape of `groundflow.evaluate.harness.run_benchmark`'s, so reports
read both alike.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

from groundflow.cvc.hybrid import answer_question
from groundflow.cvc.trials import check_answers, occluded_prompts, parse_short_answer
from groundflow.io.stage import StageResult, check_accounting, rejects_frame, run_chunked

if TYPE_CHECKING:  # the backends module is shared; imported lazily where it is used
    from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams

log = logging.getLogger(__name__)

SPLIT_STAGE = "probe_split"
ANSWER_STAGE = "probe_answers"
PROBE_TASK = "cvc_probe"
# What a config sets to get a probe at all; named in the error an empty probe raises.
FRACTION_KEY = "cvc.probe.fraction"
UNSEEN_KEY = "cvc.probe.unseen_by_instruction_data"

# COCO's own file-name prefix, e.g. "COCO_train2014_", "COCO_val2014_" (train2017 names have none).
_COCO_PREFIX = re.compile(r"^COCO_[A-Za-z]+\d*_")


# ---------------------------------------------------------------------------------------------
# pure core: picture identity and the split


def image_key(path: str | os.PathLike) -> str:
    """The identity of a source picture across file names: the file's stem, without a COCO
    `COCO_<split>_` prefix. COCO_train2014_000000391895.jpg, train2017/000000391895.jpg and
    000000391895.png share the key "000000391895".

    Leading zeros stay as written: COCO pads its ids to 12 digits in every year's names, while
    other sources in LLaVA-665k (Visual Genome, GQA) name pictures by unpadded numbers that are
    other pictures; stripping zeros would make VG's 2345.jpg the same as COCO's 000000002345.jpg.
    """
    stem = PurePosixPath(os.fspath(path).replace("\\", "/")).stem
    key = _COCO_PREFIX.sub("", stem)
    if not key:
        raise ValueError(f"image path {os.fspath(path)!r} has no file name to identify the picture by")
    return key


def instruction_data_images(records: Iterable[dict]) -> set[str]:
    """The keys (`image_key`) of every picture LLaVA instruction records use; text-only records
    (no "image") use none. An "image" that is neither a path nor a list of paths raises, naming
    the record."""
    keys: set[str] = set()
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"instruction record {position}: not an object but {type(record).__name__}")
        image = record.get("image")
        if image is None:
            continue
        images = image if isinstance(image, list) else [image]
        if not images or not all(isinstance(item, str) and item.strip() for item in images):
            raise ValueError(f"instruction record {position} (id {record.get('id')!r}): image must be a "
                             f"non-empty path or list of paths, got {image!r}")
        keys.update(image_key(item) for item in images)
    return keys


def probe_share(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, picture key) alone: pictures with a share below the
    probe fraction are held out."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_probe(
    instances: pd.DataFrame, *, fraction: float, seed: int, exclude: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(trial instances, probe instances, counts): instances split by source picture (`image`).

    A picture goes to the probe side when `probe_share(seed, key) < fraction` and its key is not
    in `exclude` (pictures seen in the instruction data stay on the trial side); every instance
    of a picture goes where the picture goes. fraction 0 gives an empty probe, 1 holds out every
    picture not excluded. Both sides keep the input's columns and row order. counts: in, trial,
    probe (instances; in == trial + probe), images, trial_images, probe_images, excluded_images
    (pictures of these instances found in `exclude`), excluded_instances.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"probe fraction ({FRACTION_KEY}) must be a number in [0, 1], got {fraction!r}")
    if "image" not in instances.columns:
        raise ValueError(f"instances have no 'image' column to split by picture (columns: {list(instances.columns)})")
    records = instances.reset_index(drop=True)
    keys: list[str] = []
    for record_id, image in zip(records["id"] if "id" in records else records.index, records["image"]):
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"instance {record_id!r}: no source image to split by (image {image!r})")
        keys.append(image_key(image))
    distinct = set(keys)
    probe_keys = {key for key in distinct if key not in exclude and probe_share(seed, key) < fraction}
    on_probe = np.array([key in probe_keys for key in keys], dtype=bool)
    excluded = [key in exclude for key in keys]
    trial, probe = records[~on_probe].reset_index(drop=True), records[on_probe].reset_index(drop=True)
    counts = {
        "in": len(records),
        "trial": len(trial),
        "probe": len(probe),
        "images": len(distinct),
        "trial_images": len(distinct) - len(probe_keys),
        "probe_images": len(probe_keys),
        "excluded_images": len(distinct & exclude),
        "excluded_instances": int(sum(excluded)),
    }
    if counts["in"] != counts["trial"] + counts["probe"]:
        raise AssertionError(f"probe split lost instances: {counts}")
    return trial, probe, counts


# ---------------------------------------------------------------------------------------------
# pure core: asking and scoring


def probe_prompt(instruction: str, image) -> "ChatPrompt":
    """One user turn as in the hybrid data's answer samples (the instruction's header, newline,
    question, one space, the answer suffix once), with the occluded image."""
    from groundflow.generate.backends import ChatPrompt

    return ChatPrompt(messages=[{"role": "user", "content": answer_question(instruction)}], image=image)


def answer_probe(
    instances: pd.DataFrame, generator: "Generator", params: "SamplingParams", *, image_dir: str | Path
) -> StageResult:
    """Add `response` (the model's text) and `predictions` ([parse_short_answer(response)], a
    one-element list so `check_answers` applies unchanged) to each instance.

    Greedy, one answer per instance, ONE generate() call for the chunk. The occluded image is
    `image_dir / occluded_image`; an image that cannot be read rejects its instance with the reason.
    """
    if params.n != 1 or params.do_sample:
        raise ValueError(f"the probe takes one greedy answer per instance; got n={params.n}, "
                         f"do_sample={params.do_sample}")
    from groundflow.generate.backends import check_result_shape

    records = instances.reset_index(drop=True)
    prompts, positions, rejected = occluded_prompts(records, probe_prompt, image_dir=image_dir)
    outputs = generator.generate(prompts, params) if prompts else []
    check_result_shape(outputs, prompts, 1)
    kept = records.iloc[positions].reset_index(drop=True)
    kept["response"] = pd.Series([texts[0] for texts in outputs], dtype=object)
    kept["predictions"] = pd.Series([[parse_short_answer(texts[0])] for texts in outputs], dtype=object)
    return StageResult(kept=kept, rejects=rejects_frame(ANSWER_STAGE, rejected), parent_column="id")


def _first_similarity(similarities) -> float:
    values = list(similarities)
    if len(values) != 1:
        raise ValueError(f"a probe instance has one answer, found {len(values)} similarities")
    return float(values[0])


def probe_metrics(checked: pd.DataFrame) -> dict:
    """{"probe_accuracy": share of instances answered correctly (n_correct > 0),
    "probe_similarity": mean similarity with the label (an empty answer, NaN, counted as 0),
    "n": instances scored}. Needs `check_answers` output; raises on none."""
    if len(checked) == 0:
        raise ValueError("no checked probe instances to compute metrics over")
    similarities = np.array([_first_similarity(row) for row in checked["similarities"]], dtype=np.float64)
    return {
        "probe_accuracy": float((checked["n_correct"].to_numpy() > 0).mean()),
        "probe_similarity": float(np.nan_to_num(similarities, nan=0.0).mean()),
        "n": len(checked),
    }


# Columns of the answers table, where the instances have them (the rest are dropped).
ANSWER_COLUMNS = ["id", "image", "image_id", "label", "occluded_image", "instruction", "response",
                  "prediction", "similarity", "correct"]


def probe_report(checked: pd.DataFrame, rejects: pd.DataFrame, *, model: str, n_records: int,
                 produced_by: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """(result, answers table) from the checked answers and the rejects.

    result = {"task": "cvc_probe", "model", "metrics", "n_samples", "n_records", "rejects": [{stage,
    id, reason}], "samples": [{doc_id, question_id, target, response, prediction, scores:
    {"correct": 1.0 | 0.0, "similarity": float | None (no answer)}}], "produced_by"}: the shape of
    `run_benchmark`'s result, with what the probe adds. n_records (instances asked) must equal
    n_samples + rejects.
    """
    if len(checked) + len(rejects) != n_records:
        raise ValueError(f"probe accounting: {len(checked)} answered + {len(rejects)} rejected != "
                         f"{n_records} instances")
    metrics = probe_metrics(checked)
    similarity = [_first_similarity(row) for row in checked["similarities"]]
    prediction = [str(next(iter(row))) for row in checked["predictions"]]
    correct = [bool(n > 0) for n in checked["n_correct"]]
    samples = [
        {"doc_id": position, "question_id": str(record_id), "target": str(label), "response": str(response),
         "prediction": answer, "scores": {"correct": float(ok), "similarity": None if math.isnan(s) else s}}
        for position, (record_id, label, response, answer, ok, s) in enumerate(
            zip(checked["id"], checked["label"], checked["response"], prediction, correct, similarity))
    ]
    result = {
        "task": PROBE_TASK,
        "model": model,
        "metrics": metrics,
        "n_samples": len(samples),
        "n_records": int(n_records),
        "rejects": [{"stage": str(r.stage), "id": str(r.id), "reason": str(r.reason)}
                    for r in rejects.itertuples(index=False)],
        "samples": samples,
        "produced_by": produced_by or {},
    }
    answers = checked.assign(prediction=pd.Series(prediction, dtype=object),
                             similarity=pd.Series(similarity, dtype="float64"),
                             correct=pd.Series(correct, dtype=bool))
    answers = answers[[c for c in ANSWER_COLUMNS if c in answers.columns]].reset_index(drop=True)
    return result, answers


# ---------------------------------------------------------------------------------------------
# files and models (the scripts' one library call each)


def optional_path(value) -> str | None:
    """A rule's optional single input: a path, or [] (absent) -> None."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return None if value in (None, "") else os.fspath(value)
    items = list(value)
    if len(items) > 1:
        raise ValueError(f"expected one path or none, got {items}")
    return os.fspath(items[0]) if items else None


def split_probe_files(*, records: str, instruction_data: str | None, trial_out: str, probe_out: str,
                      counts_out: str, fraction: float, seed: int, unseen_by_instruction_data: bool) -> dict:
    """Split one shard's instances (records) into trial_out and probe_out, counts into counts_out.

    With `unseen_by_instruction_data`, pictures the instruction data (a LLaVA JSON array; None:
    none) uses stay on the trial side."""
    from groundflow.cvc.hybrid import read_llava_json
    from groundflow.io.artifacts import atomic_write_json, read_table, write_table

    instances = read_table(records)
    if instances.empty and "image" not in instances.columns:
        instances = instances.assign(image=pd.Series([], dtype=object))
    exclude: set[str] = set()
    if unseen_by_instruction_data and instruction_data is not None:
        data = read_llava_json(instruction_data)  # its errors name the file
        try:
            exclude = instruction_data_images(data)
        except ValueError as error:
            raise ValueError(f"{instruction_data}: {error}") from None
    try:
        trial, probe, counts = split_probe(instances, fraction=fraction, seed=seed, exclude=exclude)
    except ValueError as error:
        raise ValueError(f"{records}: {error}") from None
    write_table(trial, trial_out)
    write_table(probe, probe_out)
    counts = {"stage": SPLIT_STAGE, **counts, "fraction": fraction, "seed": seed,
              "unseen_by_instruction_data": bool(unseen_by_instruction_data),
              "instruction_data": instruction_data, "instruction_data_images": len(exclude)}
    atomic_write_json(counts_out, counts)
    log.info("probe split of %s: in %d = trial %d + probe %d (%d of %d pictures held out; %d seen in the "
             "instruction data kept for trials)", records, counts["in"], counts["trial"], counts["probe"],
             counts["probe_images"], counts["images"], counts["excluded_images"])
    return counts


def read_probe_instances(paths: Iterable[str]) -> pd.DataFrame:
    """The probe shards, concatenated; an empty probe raises, naming the config keys that make one."""
    from groundflow.io.artifacts import concat_tables

    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no probe shards given")
    instances = concat_tables(paths)
    if instances.empty:
        raise ValueError(
            f"the CVC probe is empty: no instance in {len(paths)} probe shard(s) was held out. Raise "
            f"{FRACTION_KEY} above 0, or set {UNSEEN_KEY}: false when the instruction data uses every "
            "caption picture (the demo's instruction data is drawn from the same images)"
        )
    return instances


def _release_accelerator_memory() -> None:
    """Give a freed model's GPU memory back before the next model loads."""
    gc.collect()
    torch = sys.modules.get("torch")  # only a backend that loaded a model has imported it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _answer_all(instances: pd.DataFrame, generation: dict, params: "SamplingParams", *, image_dir,
                chunk_size: int, progress_dir: str | None, server_log: str | None) -> tuple[StageResult, dict]:
    """`answer_probe` over chunks (resumable in `progress_dir`) with the generator of `generation`,
    which lives only as long as this call."""
    from groundflow.generate.backends import open_generator

    with open_generator(generation, kind="vision", server_log=server_log) as generator:
        described = generator.describe()
        answered, _ = run_chunked(
            instances,
            lambda chunk: answer_probe(chunk, generator, params, image_dir=image_dir),
            chunk_size=chunk_size, progress_dir=progress_dir,
            params={"generator": described, "sampling": params.describe()},
        )
    return answered, described


def evaluate_probe(instances: pd.DataFrame, *, generation: dict, embedder: dict, opts: dict,
                   image_dir: str | Path, progress_dir: str | None = None,
                   server_log: str | None = None) -> tuple[dict, pd.DataFrame]:
    """Answer every probe instance with the checkpoint of `generation` (a vision generation spec:
    backend settings + "model"), free it, then check the answers with `embedder` (a model spec).

    opts: threshold (the answer check's), batch_size (the embedder's), max_new_tokens,
    chunk_size (instances per generate() call; finished chunks are kept in `progress_dir`, when
    given, for a restarted job). Returns (result, answers table), see `probe_report`.
    """
    from groundflow.embed import load_embedder
    from groundflow.generate.backends import SamplingParams

    if instances.empty:
        raise ValueError(f"no probe instances to evaluate; see {FRACTION_KEY} and {UNSEEN_KEY}")
    model = generation.get("model")
    model_path = model if isinstance(model, str) else (model or {}).get("path")
    params = SamplingParams(max_new_tokens=int(opts["max_new_tokens"]), n=1, do_sample=False)
    answered, described = _answer_all(instances, generation, params, image_dir=image_dir,
                                      chunk_size=int(opts["chunk_size"]), progress_dir=progress_dir,
                                      server_log=server_log)
    _release_accelerator_memory()  # the generator is gone with _answer_all's frame
    counts = check_accounting(ANSWER_STAGE, instances["id"], answered)
    log.info("probe answers: in %d = answered %d + rejected %d", counts["in"], counts["out"], counts["rejected"])
    if answered.kept.empty:
        reasons = "; ".join(answered.rejects["reason"].head(3))
        raise ValueError(f"no probe instance could be asked (all {counts['in']} rejected), e.g.: {reasons}")
    checker = load_embedder(embedder, batch_size=int(opts["batch_size"]))
    checked = check_answers(answered.kept, checker, threshold=float(opts["threshold"])).kept
    produced_by = {"generator": described, "sampling": params.describe(), "embedder": checker.describe(),
                   "threshold": float(opts["threshold"])}
    result, answers = probe_report(checked, answered.rejects, model=model_path, n_records=len(instances),
                                   produced_by=produced_by)
    log.info("probe on %s: %s", model_path, result["metrics"])
    return result, answers


def run_probe_eval(*, probe_paths: Iterable[str], generation: dict, embedder: dict, opts: dict,
                   image_dir: str, result_out: str, answers_out: str, progress_dir: str | None = None,
                   server_log: str | None = None) -> dict:
    """The probe evaluation of one checkpoint from its shards to result_out (JSON) and
    answers_out (Parquet); returns the result."""
    import shutil

    from groundflow.io.artifacts import atomic_write_json, write_table

    instances = read_probe_instances(probe_paths)
    result, answers = evaluate_probe(instances, generation=generation, embedder=embedder, opts=opts,
                                     image_dir=image_dir, progress_dir=progress_dir, server_log=server_log)
    write_table(answers, answers_out)
    atomic_write_json(result_out, result)
    if progress_dir:
        shutil.rmtree(progress_dir, ignore_errors=True)
    return result


__all__ = [
    "ANSWER_COLUMNS",
    "ANSWER_STAGE",
    "FRACTION_KEY",
    "PROBE_TASK",
    "SPLIT_STAGE",
    "UNSEEN_KEY",
    "answer_probe",
    "evaluate_probe",
    "image_key",
    "instruction_data_images",
    "optional_path",
    "probe_metrics",
    "probe_prompt",
    "probe_report",
    "probe_share",
    "read_probe_instances",
    "run_probe_eval",
    "split_probe",
    "split_probe_files",
]
