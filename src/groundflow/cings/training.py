"""CINGS steps over files: convert Self-RAG records, tokenise each mode once (the cache the trainer
reads), train one LM per mode through the shared trainer, and make LLaVAs of the trained LMs.

Every step accounts for its input: a record is kept or rejected with a reason (in = out +
rejected), and every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from groundflow.cings.data import convert_lines, read_record_lines, training_conversation
from groundflow.cings.labels import CingsLabeler, Encoded, LabelSettings
from groundflow.io.artifacts import atomic_path, atomic_write_json, atomic_write_text, write_table
from groundflow.io.stage import StageResult, check_accounting, rejects_frame
from groundflow.train.chat_formats import resolve_chat_template
from groundflow.train.conversations import IGNORE_INDEX

log = logging.getLogger(__name__)

CONVERTED_COLUMNS = ["id", "input", "output", "n_passages", "dataset_name", "source_format"]
TOKENIZED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("n_tokens", pa.int32()),
    ("n_supervised", pa.int32()),
    ("n_assistant_tokens", pa.int32()),
    ("n_masked_in_assistant", pa.int32()),
])


# ---------------------------------------------------------------- conversion


def convert_records(
    records_path: str | os.PathLike, *, variant: str, keep_no_retrieval: bool, input_separator: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(converted records, rejects, counts) of a Self-RAG (or already filtered) records file."""
    path = Path(records_path)
    if not path.is_file():
        raise FileNotFoundError(f"CINGS records file not found: {path}")
    lines = read_record_lines(path.read_text(encoding="utf-8"))
    kept, rejects, count = convert_lines(
        lines, variant=variant, keep_no_retrieval=keep_no_retrieval, input_separator=input_separator
    )
    frame = pd.DataFrame([r.as_dict() for r in kept], columns=CONVERTED_COLUMNS)
    rejected = rejects_frame("convert", rejects)
    input_ids = list(frame["id"]) + list(rejected["id"])
    counts = check_accounting("convert", input_ids, StageResult(frame, rejected))
    if counts["in"] != count:
        raise AssertionError(f"convert read {count} records but accounted for {counts['in']}")
    counts["passages"] = {str(k): int(v) for k, v in frame["n_passages"].value_counts().sort_index().items()}
    return frame, rejected, counts


def write_converted(frame: pd.DataFrame, rejects: pd.DataFrame, counts: dict, *, table: str, filtered: str, rejects_path: str, counts_path: str) -> None:
    """The converted table, the same records as the original's filtered JSONL (`input`, marker
    `output`), the rejects and the counts."""
    write_table(frame, table)
    lines = [json.dumps({"id": r.id, "input": r.input, "output": r.output}, ensure_ascii=False) for r in frame.itertuples()]
    atomic_write_text(filtered, "\n".join(lines) + ("\n" if lines else ""))
    write_table(rejects, rejects_path)
    atomic_write_json(counts_path, counts)


# ---------------------------------------------------------------- tokenisation cache


def load_tokenizer(model_path: str, tokenizer_path: str = ""):
    """The tokenizer the trainer will use: `tokenizer_path` when given, else the model's."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_path or model_path)


def tokenizer_fingerprint(tokenizer, chat_template: str | None = None) -> dict:
    """What makes cached ids valid: vocabulary, specials and the chat template that rendered them
    (`train.chat_template`, a template or a format's name, else the tokenizer's own)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    template = resolve_chat_template(chat_template) if chat_template is not None else (tokenizer.chat_template or "")
    return {
        "vocab_size": len(tokenizer),
        "vocab_sha": hashlib.sha256(vocab).hexdigest()[:16],
        "chat_template_sha": hashlib.sha256(str(template).encode()).hexdigest()[:16],
        "bos": tokenizer.bos_token,
        "eos": tokenizer.eos_token,
    }


def tokenize_mode(
    records: pd.DataFrame,
    tokenizer,
    *,
    settings: LabelSettings,
    system_prompt: str,
    max_length: int,
    batch_size: int = 1024,
    chat_template: str | None = None,
) -> tuple[pa.Table, pd.DataFrame, dict]:
    """Tokenise and label every converted record for one mode, in batches.

    A record is rejected (with its reason) when the template cannot render it, when it is longer
    than max_length (the original never truncates; cutting the end would drop the answer and keep
    the passage), or when no token carries a loss.
    """
    labeler = CingsLabeler(tokenizer, settings, chat_template=chat_template)
    rows: dict[str, list] = {name: [] for name in TOKENIZED_SCHEMA.names}
    rejects: list[tuple[str, str]] = []
    items = records.to_dict("records")
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        conversations = [training_conversation(r, settings.mode, system_prompt) for r in batch]
        for record, result in zip(batch, labeler.encode(conversations)):
            reason = _tokenized_reject(result, max_length)
            if reason:
                rejects.append((record["id"], f"record {record['id']}: {reason}"))
                continue
            supervised = sum(1 for label in result.labels[1:] if label != IGNORE_INDEX)
            rows["id"].append(record["id"])
            rows["input_ids"].append(result.input_ids)
            rows["labels"].append(result.labels)
            rows["n_tokens"].append(len(result.input_ids))
            rows["n_supervised"].append(supervised)
            rows["n_assistant_tokens"].append(result.n_assistant_tokens)
            rows["n_masked_in_assistant"].append(result.n_masked_in_assistant)
    table = pa.Table.from_pydict(rows, schema=TOKENIZED_SCHEMA)
    stage = f"tokenize:{settings.mode}"
    rejected = rejects_frame(stage, rejects)
    counts = check_accounting(stage, records["id"], StageResult(pd.DataFrame({"id": rows["id"]}), rejected))
    counts.update({
        "mode": settings.mode,
        "mask_mode": settings.mask_mode,
        "tokens": int(sum(rows["n_tokens"])),
        "supervised_tokens": int(sum(rows["n_supervised"])),
        "masked_assistant_tokens": int(sum(rows["n_masked_in_assistant"])),
        "tokenizer": tokenizer_fingerprint(tokenizer, chat_template),
    })
    return table, rejected, counts


def tokenize_for_training(
    records: pd.DataFrame,
    *,
    model_path: str,
    train: dict,
    settings: LabelSettings,
    system_prompt: str,
    batch_size: int = 1024,
) -> tuple[pa.Table, pd.DataFrame, dict]:
    """`tokenize_mode` with the tokenizer and chat template that `train_mode` will check the cache
    against, both read from the same `train` section (`tokenizer`, `chat_template`, `max_length`)."""
    return tokenize_mode(
        records,
        load_tokenizer(model_path, train.get("tokenizer", "")),
        settings=settings,
        system_prompt=system_prompt,
        max_length=train["max_length"],
        batch_size=batch_size,
        chat_template=train.get("chat_template"),
    )


def _tokenized_reject(result: Encoded | str, max_length: int) -> str | None:
    if isinstance(result, str):
        return result
    if len(result.input_ids) > max_length:
        return f"{len(result.input_ids)} tokens, more than max_length {max_length}"
    if all(label == IGNORE_INDEX for label in result.labels[1:]):
        return "no token carries a loss"
    return None


def write_tokenized(table: pa.Table, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------- training per mode


def train_mode(
    *,
    tokenized_path: str,
    tokenize_counts_path: str,
    model: dict,
    train: dict,
    out_dir: str,
) -> Path:
    """Train the model on one mode's cached examples through the shared trainer.

    The cache is refused when the tokenizer the trainer loads, or the chat template it is given
    (`train.chat_template`), is not the one the cache was made with.
    """
    from groundflow.train.launch import run_sft

    cached = json.loads(Path(tokenize_counts_path).read_text())["tokenizer"]
    tokenizer = load_tokenizer(model["path"], train.get("tokenizer", ""))
    current = tokenizer_fingerprint(tokenizer, train.get("chat_template"))
    if cached != current:
        raise ValueError(f"{tokenized_path} was tokenised with {cached}, but training loads {current}; re-run tokenisation")
    return run_sft(model=model, records_path=tokenized_path, image_root=None, out_dir=out_dir, train=train)


def stage_counts(convert_counts: dict, tokenize_counts: Sequence[dict], summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per step (convert, tokenize:{mode}, train:{mode}) with in / out / rejected; a
    training record is "rejected" when the trainer skipped it (its summary gives the reason)."""
    rows = [{"stage": "convert", "in": convert_counts["in"], "out": convert_counts["out"], "rejected": convert_counts["rejected"]}]
    for counts in tokenize_counts:
        rows.append({"stage": counts["stage"], "in": counts["in"], "out": counts["out"], "rejected": counts["rejected"]})
    for mode, summary in summaries.items():
        skipped = len(summary.get("skipped", []))
        rows.append({"stage": f"train:{mode}", "in": int(summary["records"]), "out": int(summary["examples"]), "rejected": skipped})
    frame = pd.DataFrame(rows, columns=["stage", "in", "out", "rejected"])
    broken = frame[frame["in"] != frame["out"] + frame["rejected"]]
    if not broken.empty:
        raise AssertionError(f"counts do not add up: {broken.to_dict('records')}")
    return frame


def train_rejects(summaries: dict[str, dict]) -> pd.DataFrame:
    frames = [rejects_frame(f"train:{mode}", [(s["id"], s["reason"]) for s in summary.get("skipped", [])])
              for mode, summary in summaries.items()]
    return pd.concat(frames, ignore_index=True) if frames else rejects_frame("train")


# ---------------------------------------------------------------- vision-language step


def vl_records(path: str | os.PathLike, *, system_prompt: str = "") -> list[dict]:
    """LLaVA-format records (LCS-558K / 665K), with `system_prompt` as a first system turn."""
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA records")
    if not system_prompt:
        return records
    prepared = []
    for record in records:
        conversation = record.get("conversations")
        if isinstance(conversation, list) and not (conversation and conversation[0].get("from") == "system"):
            record = {**record, "conversations": [{"from": "system", "value": system_prompt}, *conversation]}
        prepared.append(record)
    return prepared


def train_vl_stage(
    *,
    stage: int,
    base_model: dict,
    records_path: str,
    image_folder: str,
    train: dict,
    out_dir: str,
    system_prompt: str = "",
) -> Path:
    """LLaVA-1.5 stage 1 (projector only, `plain` prompts) or stage 2 (LM + projector, Llama-3
    chat template with the vision system prompt) through the shared trainer."""
    from groundflow.models.llava import LLAVA_PLAIN_CHAT_TEMPLATE
    from groundflow.train.launch import run_sft

    settings = dict(train)
    if stage == 1:
        if settings.get("lora") is not None or settings.get("train_language_model", True):
            raise ValueError("VL stage 1 trains the projector alone: set lora: null and train_language_model: false")
        settings["chat_template"] = LLAVA_PLAIN_CHAT_TEMPLATE
        records = vl_records(records_path)
    elif stage == 2:
        records = vl_records(records_path, system_prompt=system_prompt)
    else:
        raise ValueError(f"stage must be 1 or 2, not {stage}")
    out = Path(out_dir)
    prepared = out / "records.json"
    atomic_write_json(prepared, records)
    return run_sft(model=base_model, records_path=str(prepared), image_root=image_folder, out_dir=str(out), train=settings)
