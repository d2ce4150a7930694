"""CINGS steps over files: convert Self-RAG records, tokenise each mode once (the cache the trainer
reads), train one LM per mode through the shared trainer, make LLaVAs of the trained LMs, and
gather the steps' counts and rejects.

Every step accounts for its input with the shared `io.stage.check_accounting` (in = out +
rejected, each input id kept or rejected exactly once), writes through `io.artifacts` (atomic)
and declares each table it writes in `groundflow/schemas/`: `cings_records`, `cings_tokenized`,
`cings_stage_counts`, `rejects`.

- convert reads the user's JSONL / JSON file, not a stage table, so it is one call here
  (`convert_to_files`): the input ids are fixed by `read_source_records` before any record is
  converted, and the conversion is checked against them.
- tokenize is a `TokenizeStep`, a function over a chunk of converted records that the script
  hands `pipeline.StageJob` once per mode (chunked, resumable; the counts file's `produced_by`
  holds the tokenizer fingerprint the trainer checks the cache against). `tokenize_mode` runs
  the same step in memory.
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

from groundflow.cings.data import (
    convert_source_records,
    read_source_records,
    training_conversation,
)
from groundflow.cings.labels import CingsLabeler, Encoded, LabelSettings
from groundflow.io.artifacts import atomic_path, atomic_write_json, atomic_write_text, read_table, write_table
from groundflow.io.lines import read_json_records
from groundflow.io.schemas import table_schema
from groundflow.io.stage import StageResult, check_accounting, rejects_frame, write_stage_counts
from groundflow.train.chat_formats import resolve_chat_template
from groundflow.train.conversations import IGNORE_INDEX

log = logging.getLogger(__name__)

RECORDS_TABLE = "cings_records"
TOKENIZED_TABLE = "cings_tokenized"
STAGE_COUNTS_TABLE = "cings_stage_counts"
CONVERT_STAGE = "convert"


def conform(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """`frame` with exactly the declared columns of `table`, in order, cast to their types (raises
    naming the table when a column is missing or does not cast)."""
    schema = table_schema(table)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}")
    try:
        return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ValueError(f"{table}: {error}") from error


# ---------------------------------------------------------------- conversion


def convert_records(
    records_path: str | os.PathLike, *, variant: str, keep_no_retrieval: bool, input_separator: str
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(converted records, rejects, counts) of a Self-RAG (or already filtered) records file."""
    path = Path(records_path)
    if not path.is_file():
        raise FileNotFoundError(f"CINGS records file not found: {path} (config cings.records)")
    options = {"variant": variant, "keep_no_retrieval": keep_no_retrieval, "input_separator": input_separator}
    try:
        sources = read_source_records(read_json_records(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"CINGS records file {path} starts with '[' but is not a JSON list ({error}); "
                         f"a JSON list cannot be salvaged, fix or regenerate it") from None
    kept, rejects = convert_source_records(sources, **options)
    frame = conform(pd.DataFrame([r.as_dict() for r in kept], columns=table_schema(RECORDS_TABLE).names), RECORDS_TABLE)
    rejected = rejects_frame(CONVERT_STAGE, rejects)
    counts = check_accounting(CONVERT_STAGE, [s.id for s in sources], StageResult(frame, rejected))
    counts["passages"] = {str(k): int(v) for k, v in frame["n_passages"].value_counts().sort_index().items()}
    counts["produced_by"] = options
    return frame, rejected, counts


def write_converted(frame: pd.DataFrame, rejects: pd.DataFrame, counts: dict, *, table: str, filtered: str, rejects_path: str, counts_path: str) -> None:
    """The converted table, the same records as the original's filtered JSONL (`input`, marker
    `output`), the rejects and the counts."""
    write_table(frame, table, schema=table_schema(RECORDS_TABLE))
    lines = [json.dumps({"id": r.id, "input": r.input, "output": r.output}, ensure_ascii=False) for r in frame.itertuples()]
    atomic_write_text(filtered, "\n".join(lines) + ("\n" if lines else ""))
    write_table(rejects, rejects_path, schema=table_schema("rejects"))
    atomic_write_json(counts_path, counts)


def convert_to_files(records_path: str | os.PathLike, options: dict, *, table: str, filtered: str,
                     rejects_path: str, counts_path: str) -> dict:
    """The convert stage: `convert_records` with `options` (config `cings.data`: variant,
    keep_no_retrieval, input_separator), then `write_converted`; returns the counts."""
    frame, rejects, counts = convert_records(
        records_path,
        variant=options["variant"],
        keep_no_retrieval=options["keep_no_retrieval"],
        input_separator=options["input_separator"],
    )
    write_converted(frame, rejects, counts, table=table, filtered=filtered, rejects_path=rejects_path,
                    counts_path=counts_path)
    log.info("convert: in %d = out %d + rejected %d; passages per record %s",
             counts["in"], counts["out"], counts["rejected"], counts["passages"])
    return counts


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


def tokenize_stage_name(mode: str) -> str:
    return f"tokenize:{mode}"


class TokenizeStep:
    """Tokenise and label converted records for one mode: a function over a chunk of records
    giving a `StageResult` (kept rows in the `cings_tokenized` layout, rejects with reasons).

    A record is rejected when the template cannot render it, when it is longer than max_length
    (the original never truncates; cutting the end would drop the answer and keep the passage),
    or when no token carries a loss. `produced_by` is what the cache depends on; the trainer
    refuses a cache whose tokenizer fingerprint is not that of the tokenizer it loads.
    """

    def __init__(self, tokenizer, *, settings: LabelSettings, system_prompt: str, max_length: int,
                 chat_template: str | None = None, batch_size: int = 1024):
        self.settings = settings
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.batch_size = batch_size
        self.stage = tokenize_stage_name(settings.mode)
        self.labeler = CingsLabeler(tokenizer, settings, chat_template=chat_template)
        self.produced_by = {
            "tokenizer": tokenizer_fingerprint(tokenizer, chat_template),
            "mode": settings.mode,
            "mask_mode": settings.mask_mode,
            "unmask_tokens": list(settings.unmask_tokens),
            "system_prompt_sha": hashlib.sha256(system_prompt.encode()).hexdigest()[:16],
            "max_length": max_length,
        }

    def __call__(self, records: pd.DataFrame) -> StageResult:
        rows: dict[str, list] = {name: [] for name in table_schema(TOKENIZED_TABLE).names}
        rejects: list[tuple[str, str]] = []
        items = records.to_dict("records")
        # the labeler tokenises a whole batch in one call; batch_size bounds its memory
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            conversations = [training_conversation(r, self.settings.mode, self.system_prompt) for r in batch]
            for record, result in zip(batch, self.labeler.encode(conversations)):
                reason = _tokenized_reject(result, self.max_length)
                if reason:
                    rejects.append((record["id"], f"record {record['id']}: {reason}"))
                    continue
                rows["id"].append(record["id"])
                rows["input_ids"].append(result.input_ids)
                rows["labels"].append(result.labels)
                rows["n_tokens"].append(len(result.input_ids))
                rows["n_supervised"].append(sum(1 for label in result.labels[1:] if label != IGNORE_INDEX))
                rows["n_assistant_tokens"].append(result.n_assistant_tokens)
                rows["n_masked_in_assistant"].append(result.n_masked_in_assistant)
        kept = pa.Table.from_pydict(rows, schema=table_schema(TOKENIZED_TABLE)).to_pandas()
        return StageResult(kept, rejects_frame(self.stage, rejects))


def token_totals(tokenized: pd.DataFrame) -> dict:
    """Token counts of a tokenised table (the log's and the benchmark's numbers)."""
    return {
        "tokens": int(tokenized["n_tokens"].sum()),
        "supervised_tokens": int(tokenized["n_supervised"].sum()),
        "masked_assistant_tokens": int(tokenized["n_masked_in_assistant"].sum()),
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
    """`TokenizeStep` over all records in memory: (table, rejects, counts); the counts have the
    layout of the stage's counts file (`produced_by` included) plus `token_totals`."""
    step = TokenizeStep(tokenizer, settings=settings, system_prompt=system_prompt, max_length=max_length,
                        chat_template=chat_template, batch_size=batch_size)
    return run_in_memory(step, records)


def run_in_memory(step: TokenizeStep, records: pd.DataFrame) -> tuple[pa.Table, pd.DataFrame, dict]:
    """`step` over all records at once, accounting checked: (table, rejects, counts)."""
    result = step(records)
    counts = check_accounting(step.stage, records["id"], result)
    counts.update(token_totals(result.kept))
    counts["produced_by"] = step.produced_by
    table = pa.Table.from_pandas(result.kept, schema=table_schema(TOKENIZED_TABLE), preserve_index=False)
    return table, result.rejects, counts


def tokenize_steps_for_training(*, model_path: str, train: dict, settings: Sequence[LabelSettings],
                                system_prompt: str, batch_size: int = 1024) -> list[TokenizeStep]:
    """One `TokenizeStep` per entry of `settings`, sharing one tokenizer: the one, with the chat
    template, that `train_mode` will check the cache against, both read from the same `train`
    section (`tokenizer`, `chat_template`, `max_length`)."""
    tokenizer = load_tokenizer(model_path, train.get("tokenizer", ""))
    return [
        TokenizeStep(tokenizer, settings=one, system_prompt=system_prompt, max_length=train["max_length"],
                     chat_template=train.get("chat_template"), batch_size=batch_size)
        for one in settings
    ]


def tokenize_for_training(
    records: pd.DataFrame,
    *,
    model_path: str,
    train: dict,
    settings: LabelSettings,
    system_prompt: str,
    batch_size: int = 1024,
) -> tuple[pa.Table, pd.DataFrame, dict]:
    """`tokenize_mode` with the tokenizer and template of `tokenize_steps_for_training`."""
    [step] = tokenize_steps_for_training(model_path=model_path, train=train, settings=[settings],
                                         system_prompt=system_prompt, batch_size=batch_size)
    return run_in_memory(step, records)


def same_layout(actual: pa.Schema, declared: pa.Schema) -> bool:
    """Same column names in order and the same types, where string and large_string are one type
    and a list's item name does not count: a table written from pandas (as `StageJob` writes its
    kept records) comes back as large_string with `element` items."""
    def normal(kind: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(kind):
            return pa.string()
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return pa.list_(normal(kind.value_type))
        return kind

    return actual.names == declared.names and all(
        normal(a.type) == normal(d.type) for a, d in zip(actual, declared))


def check_tokenized(path: str | os.PathLike, mode: str) -> dict:
    """The written cache of `mode` has the declared layout and at least one example; returns its
    token totals. (When every record is rejected the stage machinery writes its input's columns,
    and a trainer given no example would fail later with less to go on.)"""
    if pq.read_metadata(path).num_rows == 0:
        raise ValueError(f"{tokenize_stage_name(mode)}: every record was rejected (see its rejects table)")
    schema, declared = pq.read_schema(path), table_schema(TOKENIZED_TABLE)
    if not same_layout(schema, declared):
        raise ValueError(f"{path}: columns {schema} are not the declared {TOKENIZED_TABLE} layout {declared}")
    return token_totals(read_table(path, columns=["n_tokens", "n_supervised", "n_masked_in_assistant"]))


def _tokenized_reject(result: Encoded | str, max_length: int) -> str | None:
    if isinstance(result, str):
        return result
    if len(result.input_ids) > max_length:
        return f"{len(result.input_ids)} tokens, more than max_length {max_length}"
    if all(label == IGNORE_INDEX for label in result.labels[1:]):
        return "no token carries a loss"
    return None


def write_tokenized(table: pa.Table, path: str | os.PathLike) -> None:
    if not table.schema.equals(table_schema(TOKENIZED_TABLE), check_metadata=False):
        raise ValueError(f"{path}: not the declared {TOKENIZED_TABLE} layout: {table.schema}")
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

    # a cache from before the counts file held `produced_by` has no fingerprint: refused as stale
    cached = json.loads(Path(tokenize_counts_path).read_text()).get("produced_by", {}).get("tokenizer")
    tokenizer = load_tokenizer(model["path"], train.get("tokenizer", ""))
    current = tokenizer_fingerprint(tokenizer, train.get("chat_template"))
    if cached != current:
        raise ValueError(f"{tokenized_path} was tokenised with {cached}, but training loads {current}; re-run tokenisation")
    return run_sft(model=model, records_path=tokenized_path, image_root=None, out_dir=out_dir, train=train)


def stage_counts(convert_counts: dict, tokenize_counts: Sequence[dict], summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per step (convert, tokenize:{mode}, train:{mode}) with in / out / rejected; a
    training record is "rejected" when the trainer skipped it (its summary gives the reason).

    Each step checked its own accounting when it ran; here the steps are checked to be one chain:
    every mode tokenised what convert kept, and each training read what its tokenisation kept (a
    cache or summary left from other records would break it)."""
    rows = [{key: convert_counts[key] for key in ("stage", "in", "out", "rejected")}]
    tokenized_out = {}
    for counts in tokenize_counts:
        rows.append({key: counts[key] for key in ("stage", "in", "out", "rejected")})
        tokenized_out[counts["stage"]] = counts["out"]
    for mode, summary in summaries.items():
        skipped = len(summary.get("skipped", []))
        rows.append({"stage": f"train:{mode}", "in": int(summary["records"]), "out": int(summary["examples"]), "rejected": skipped})
    frame = conform(pd.DataFrame(rows), STAGE_COUNTS_TABLE)
    problems = [f"{row['stage']}: in {row['in']} != out {row['out']} + rejected {row['rejected']}"
                for row in frame.to_dict("records") if row["in"] != row["out"] + row["rejected"]]
    for stage, n_in in zip(frame["stage"], frame["in"]):
        if stage.startswith("tokenize:") and n_in != convert_counts["out"]:
            problems.append(f"{stage} read {n_in} records, convert kept {convert_counts['out']}")
        if stage.startswith("train:"):
            source = tokenize_stage_name(stage.removeprefix("train:"))
            if source in tokenized_out and n_in != tokenized_out[source]:
                problems.append(f"{stage} read {n_in} records, {source} kept {tokenized_out[source]}")
    if problems:
        raise AssertionError("CINGS counts do not add up: " + "; ".join(problems))
    return frame


def train_rejects(summaries: dict[str, dict]) -> pd.DataFrame:
    frames = [rejects_frame(f"train:{mode}", [(s["id"], s["reason"]) for s in summary.get("skipped", [])])
              for mode, summary in summaries.items()]
    return pd.concat(frames, ignore_index=True) if frames else rejects_frame("train")


def _read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def gather_counts(*, convert_counts: str, convert_rejects: str, tokenize_counts: Sequence[str],
                  tokenize_rejects: Sequence[str], summaries: dict[str, str], counts_out: str,
                  rejects_out: str) -> pd.DataFrame:
    """`stage_counts.tsv` (`cings_stage_counts`) and `rejects.parquet` (every step's rejects, the
    trainer's skipped records included) from the steps' files; `summaries` maps mode -> the
    training's `train_summary.json`."""
    summary_of = {mode: _read_json(path) for mode, path in summaries.items()}
    counts = stage_counts(_read_json(convert_counts), [_read_json(p) for p in tokenize_counts], summary_of)
    parts = [read_table(convert_rejects)] + [read_table(p) for p in tokenize_rejects] + [train_rejects(summary_of)]
    write_stage_counts(counts, parts, counts_out=counts_out, rejects_out=rejects_out, what="CINGS")
    log.info("CINGS steps:\n%s", counts.to_string(index=False))
    return counts


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
