"""`groundflow trace <id>`: the path of one record through every stage of every method.

Any id a run writes can be traced: a caption id, an image id, an entity (instance) id, a hybrid
training record id (CVC); a Self-RAG record id, an evaluation question id (or one of its request
ids `{question id}|{setting}`), a rejected corpus line of a built evaluation set, a POPE question
or scene id (CINGS). At each stage the record is kept (with the key columns of the row it
became), rejected (with the stage's reason), `missing` (the stage's tables exist but hold neither:
a stale or broken run) or `not run` (the stage's tables are not there yet); stages that fan out
list their children under them. An evaluation question fans out to one child per trained mode x
setting: its prediction (or why its request was rejected) and its scores; the settings a job
asked are read from its counts file, so one in neither table shows as missing.

The core (`trace`) is pure: it asks a `Tables` source for rows by id and builds a tree of `Node`s.
`FrameTables` serves DataFrames held in memory (tests); `ParquetTables` finds the tables under a
results folder and reads only the rows and columns asked for, so a trace stays fast on big runs.
Table names are method-relative: `cvc/{stage}` and `cvc/{stage}.rejects` (all shards together),
`cvc/selection.rejects`, `cvc/hybrid`; `cings/convert`, `cings/tokenize:{mode}`,
`cings/train:{mode}` (one row: the run's summary); under results/cings/eval/,
`cings/eval/{dataset}/built.rejects` (cings_build_eval's rejected questions and corpus lines),
`cings/eval/{dataset}/records`, `cings/eval/{dataset}/{mode}/predictions` (one inference job:
every setting, one row per request `{question id}|{setting}`, with its counts file),
`cings/eval/scores` (keyed by request id), `cings/eval/pope/questions` and
`cings/eval/pope/{mode}/answers`; each with its `.rejects`.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from groundflow.cings.inference import INFER_STAGE, REQUEST_SEPARATOR, SETTINGS, request_id, split_request_id
from groundflow.cings.kilt_build import CORPUS_STAGE as KILT_CORPUS_STAGE
from groundflow.cings.kilt_build import QUESTIONS_STAGE as KILT_QUESTIONS_STAGE
from groundflow.cvc.hybrid import SAMPLE_ID
from groundflow.evaluate.pope import ANSWERS_STAGE as POPE_ANSWERS_STAGE
from groundflow.evaluate.pope import QUESTIONS_STAGE as POPE_QUESTIONS_STAGE
from groundflow.io.artifacts import REJECT_COLUMNS, read_table

KEPT, REJECTED, MISSING, NOT_RUN = "kept", "rejected", "missing", "not run"
# an instance whose picture was split off before trial learning for the evaluation probe
HELD_OUT = "held out"
PROBE_SPLIT = "probe_split"

# CVC stages whose rows are captions, then those whose rows are entities (instances); the
# columns each stage adds are what a trace shows of its row.
CAPTION_STAGES = {
    "ingest": ["image_id", "image", "caption"],
    "images": ["width", "height", "image_mode"],
}
ENTITY_STAGES = {
    "entities": ["label", "caption_ids", "full_forms"],
    "causality": ["caption_id", "full_form", "causality_ppl", "full_form_ppl"],
    "grounding": ["box", "box_score", "boxes"],
    "segmentation": ["mask_area", "mask_path"],
    "occlusion": ["occluded_image", "n_patches", "occluded_fraction"],
    "instructions": ["object_type", "instruction"],
    "trials": ["trials"],
    "extraction": ["predictions"],
    "checking": ["n_correct", "correct", "similarities"],
}
TRIAL_STAGES = ("trials", "extraction", "checking")
SELECTION = "selection"
# a hybrid sample id is `{occluded image stem}-{cot|answer}-{i}` (groundflow.cvc.hybrid.select_samples)
HYBRID_COLUMNS = ["id", "image", "source", "conversations"]

CINGS_CONVERT_FIELDS = ["dataset_name", "n_passages", "source_format", "input"]
CINGS_TOKENIZE_FIELDS = ["n_tokens", "n_supervised", "n_assistant_tokens", "n_masked_in_assistant"]
CINGS_TRAIN_FIELDS = ["steps", "final_loss", "examples"]
EVAL_RECORD_FIELDS = ["question", "answers", "docs", "line"]
EVAL_PREDICTION_FIELDS = ["n_docs", "doc_titles", "generation", "prediction"]
EVAL_SCORE_FIELDS = ["exact_match", "accuracy", "rouge_l", "label_accuracy"]
POPE_QUESTION_FIELDS = ["image", "split", "object", "label", "question"]
POPE_ANSWER_FIELDS = ["answer", "prediction"]


# ---------------------------------------------------------------------------------------------
# the trace structure


@dataclass
class Step:
    """What one stage did with a record: kept (`fields`: its output row), rejected (`reason`)."""

    stage: str
    status: str
    fields: dict = field(default_factory=dict)
    reason: str | None = None
    children: list["Node"] = field(default_factory=list)


@dataclass
class Node:
    """One record (or a part of one, such as a trial) and the stages it went through."""

    kind: str
    id: str
    method: str
    fields: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    children: list["Node"] = field(default_factory=list)


@dataclass
class Trace:
    query: str
    matches: list[Node]
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class UnknownId(LookupError):
    """No table under the results folder names the id; `suggestions` are ids that look alike."""

    def __init__(self, query: str, suggestions: Sequence[str], searched: Sequence[str]):
        self.query, self.suggestions, self.searched = query, list(suggestions), list(searched)
        hint = f"; did you mean: {', '.join(self.suggestions)}" if self.suggestions else ""
        methods = sorted({name.split("/", 1)[0] for name in self.searched})
        where = f"{len(self.searched)} tables of {', '.join(methods)}" if methods else "no tables: has a method run?"
        super().__init__(f"no record with id {query!r} (searched {where}){hint}")


# ---------------------------------------------------------------------------------------------
# table sources


class Tables(Protocol):
    def names(self) -> set[str]: ...

    def rows(self, name: str, where: str, values: Iterable, columns: Sequence[str]) -> pd.DataFrame:
        """Rows of table `name` whose column `where` is one of `values`, with those of `columns`
        the table has (empty when the table is absent)."""

    def mentioning(self, name: str, column: str, text: str, columns: Sequence[str]) -> pd.DataFrame:
        """Rows whose string column holds `text`."""

    def values(self, name: str, column: str) -> pd.Series:
        """Every value of one column (for suggestions)."""

    def counts(self, name: str) -> Mapping | None:
        """The counts file written with table `name` (None when there is none)."""


class FrameTables:
    """Tables held in memory: `{name: DataFrame}`, and counts files as `{name: dict}`."""

    def __init__(self, frames: Mapping[str, pd.DataFrame], counts: Mapping[str, Mapping] | None = None):
        self.frames = dict(frames)
        self.counts_files = dict(counts or {})

    def counts(self, name):
        return self.counts_files.get(name)

    def names(self) -> set[str]:
        return set(self.frames)

    def _frame(self, name: str, columns: Sequence[str]) -> pd.DataFrame:
        frame = self.frames.get(name)
        if frame is None:
            return pd.DataFrame(columns=list(columns))
        return frame

    def rows(self, name, where, values, columns):
        frame = self._frame(name, columns)
        if where not in frame:
            return frame.iloc[0:0][[c for c in columns if c in frame]]
        picked = frame[frame[where].isin(list(values))]
        return picked[[c for c in columns if c in picked]].reset_index(drop=True)

    def mentioning(self, name, column, text, columns):
        frame = self._frame(name, columns)
        if column not in frame:
            return frame.iloc[0:0]
        picked = frame[frame[column].astype(str).str.contains(text, regex=False)]
        return picked[[c for c in columns if c in picked]].reset_index(drop=True)

    def values(self, name, column):
        frame = self.frames.get(name)
        return frame[column] if frame is not None and column in frame else pd.Series([], dtype=object)


# ---------------------------------------------------------------------------------------------
# the core


def trace(query: str, tables: Tables) -> Trace:
    """Every record named `query`, traced through all stages; UnknownId if there is none."""
    names = tables.names()
    matches: list[Node] = []
    matches += [_caption_node(query, tables, names, expand=True)] if _is_caption(query, tables) else []
    image_rows = tables.rows("cvc/ingest", "image_id", [query], ["id", "image"])
    image_id = query
    if not len(image_rows):  # an image's file name (relative to cvc.image_root) names it too
        image_rows = tables.rows("cvc/ingest", "image", [query], ["id", "image", "image_id"])
        image_id = str(image_rows["image_id"].iloc[0]) if len(image_rows) else query
    if len(image_rows):
        matches.append(_image_node(image_id, image_rows, tables, names))
    if _is_entity(query, tables, names):
        matches.append(_entity_node(query, tables, names, with_origin=True))
    hybrid = tables.rows("cvc/hybrid", "id", [query], HYBRID_COLUMNS)
    if len(hybrid):
        matches.append(_hybrid_root(hybrid.iloc[0], tables, names))
    if len(tables.rows("cings/convert", "id", [query], ["id"])) or len(
        tables.rows("cings/convert.rejects", "id", [query], ["id"])
    ):
        matches.append(_cings_record_node(query, tables, names))
    request = _split_request(query)
    for dataset in _eval_datasets(names):
        if _is_eval_question(query, dataset, tables):
            matches.append(_eval_question_node(query, dataset, tables, names))
        elif request and _is_eval_question(request[0], dataset, tables):
            # predictions, their rejects and the scores name a request `{question id}|{setting}`
            node = _eval_question_node(request[0], dataset, tables, names)
            node.notes.insert(0, f"request {query}: the question in setting {request[1]}")
            matches.append(node)
        if len(_built_rejects(query, dataset, KILT_CORPUS_STAGE, tables)):
            matches.append(_eval_passage_node(query, dataset, tables))
    pope = tables.rows("cings/eval/pope/questions", "id", [query], ["id", "scene", *POPE_QUESTION_FIELDS])
    if len(pope):
        matches.append(_pope_question_node(pope.iloc[0], tables, names))
    scene = _pope_scene_node(query, tables, names)
    if scene is not None:
        matches.append(scene)
    if not matches:
        raise UnknownId(query, suggest(query, tables), sorted(n for n in names if not n.endswith(".rejects")))
    return Trace(query=query, matches=matches)


def _is_caption(query: str, tables: Tables) -> bool:
    return bool(len(tables.rows("cvc/ingest", "id", [query], ["id"])) or len(
        tables.rows("cvc/ingest.rejects", "id", [query], ["id"])))


def _is_entity(query: str, tables: Tables, names: set[str]) -> bool:
    """An entity row, or an entity-level reject (from causality on, rejects name entities)."""
    if len(tables.rows("cvc/entities", "id", [query], ["id"])):
        return True
    later = [s for s in ENTITY_STAGES if s != "entities"]
    if any(len(tables.rows(f"cvc/{s}.rejects", "id", [query], ["id"])) for s in later):
        return True
    return bool(len(_selection_rejects(query, tables)))


def _outcome(stage: str, record_id: str, kept_name: str, tables: Tables, names: set[str],
             columns: Sequence[str], rejects_name: str | None = None) -> tuple[Step, pd.Series | None]:
    """The step of one one-to-one stage (same id in and out) and the kept row, if kept."""
    rejects_name = rejects_name or f"{kept_name}.rejects"
    kept = tables.rows(kept_name, "id", [record_id], ["id", *columns])
    if len(kept):
        row = kept.iloc[0]
        return Step(stage, KEPT, fields=_fields(row, columns)), row
    rejected = tables.rows(rejects_name, "id", [record_id], REJECT_COLUMNS)
    if len(rejected):
        return Step(stage, REJECTED, reason=str(rejected["reason"].iloc[0])), None
    if kept_name not in names and rejects_name not in names:
        return Step(stage, NOT_RUN), None
    return Step(stage, MISSING, reason=f"in neither the output nor the rejects of {stage} "
                                       "(its shard not run yet, or a stale run)"), None


# --- CVC -------------------------------------------------------------------------------------


def _caption_node(caption_id: str, tables: Tables, names: set[str], *, expand: bool) -> Node:
    """A caption through ingest and images to the entities it gave (whole subtrees if `expand`)."""
    node = Node("caption", caption_id, "cvc")
    image_id = None
    for stage, columns in CAPTION_STAGES.items():
        step, row = _outcome(stage, caption_id, f"cvc/{stage}", tables, names, columns)
        node.steps.append(step)
        if row is None:
            _note_mentions(node, "cvc/ingest.rejects", caption_id, tables)
            return node
        image_id = row.get("image_id", image_id)
    # entities are de-duplicated per image: the caption's are those of its image that name it
    entities = tables.rows("cvc/entities", "image_id", [image_id], ["id", "caption_ids"])
    mine = [str(e) for e, ids in zip(entities["id"], entities.get("caption_ids", [])) if caption_id in _as_list(ids)]
    if mine:
        step = Step("entities", KEPT, fields={"entities": mine})
        if expand:
            step.children = [_entity_node(e, tables, names) for e in mine]
        node.steps.append(step)
    else:
        step, _ = _outcome("entities", caption_id, "cvc/entities", tables, names, [])
        if step.status == KEPT:  # the caption is in no entity's caption_ids: the id matched nothing
            step = Step("entities", MISSING, reason=f"no entity of image {image_id!r} names caption {caption_id!r}")
        node.steps.append(step)
    _note_mentions(node, "cvc/ingest.rejects", caption_id, tables)
    return node


def _image_node(image_id: str, captions: pd.DataFrame, tables: Tables, names: set[str]) -> Node:
    node = Node("image", image_id, "cvc", fields={"image": str(captions["image"].iloc[0]), "captions": len(captions)})
    node.children = [_caption_node(str(c), tables, names, expand=False) for c in captions["id"]]
    entities = tables.rows("cvc/entities", "image_id", [image_id], ["id"])
    node.children += [_entity_node(str(e), tables, names) for e in entities["id"]]
    return node


def _entity_node(entity_id: str, tables: Tables, names: set[str], *, with_origin: bool = False) -> Node:
    """An entity (instance) from extraction to its hybrid training records."""
    node = Node("entity", entity_id, "cvc")
    if with_origin:
        origin = tables.rows("cvc/entities", "id", [entity_id], ["image_id", "caption_ids"])
        if len(origin):
            node.notes.append(f"image {origin['image_id'].iloc[0]}, from captions "
                              + ", ".join(_as_list(origin["caption_ids"].iloc[0])))
    # each stage's row is read with that stage's columns only; the trials and selection need
    # columns of several (rationales, answers, checks; the occluded image naming the samples)
    seen: dict = {}
    for stage, columns in ENTITY_STAGES.items():
        if stage == TRIAL_STAGES[0] and len(tables.rows("cvc/probe", "id", [entity_id], ["id"])):
            node.steps.append(Step(PROBE_SPLIT, HELD_OUT, reason="its picture is held out of trial learning "
                                   "for the evaluation probe (results/cvc/eval/occluded_probe)"))
            break
        step, row = _outcome(stage, entity_id, f"cvc/{stage}", tables, names, columns)
        if row is not None:
            seen.update(row.to_dict())
            if stage in TRIAL_STAGES:
                step.fields = _trial_stage_summary(stage, row)
        node.steps.append(step)
        if row is None:
            break
    else:
        node.steps.append(_selection_step(entity_id, seen, tables, names))
    if "trials" in seen:
        last_trial_step = [s for s in node.steps if s.stage in TRIAL_STAGES and s.status == KEPT][-1]
        last_trial_step.children = _trial_nodes(entity_id, seen)
    return node


def _trial_stage_summary(stage: str, row: pd.Series) -> dict:
    if stage == "trials":
        return {"trials": len(_as_list(row.get("trials")))}
    if stage == "extraction":
        predictions = [str(p) for p in _as_list(row.get("predictions"))]
        return {"answered": sum(1 for p in predictions if p.strip()), "distinct": len(set(p for p in predictions if p.strip()))}
    return {"n_correct": _plain(row.get("n_correct"))}


def _trial_nodes(entity_id: str, row: dict) -> list[Node]:
    """One child per sampled rationale, with what extraction and checking made of it."""
    trials = _as_list(row.get("trials"))
    predictions = _as_list(row.get("predictions"))
    similarities = _as_list(row.get("similarities"))
    correct = _as_list(row.get("correct"))
    nodes = []
    for i, rationale in enumerate(trials):
        fields = {"rationale": str(rationale)}
        if i < len(predictions):
            fields["answer"] = str(predictions[i])
        if i < len(similarities):
            fields["similarity"] = _plain(similarities[i])
        if i < len(correct):
            fields["correct"] = bool(correct[i])
        nodes.append(Node("trial", f"{entity_id}#{i}", "cvc", fields=fields))
    return nodes


def _selection_rejects(entity_id: str, tables: Tables) -> pd.DataFrame:
    rejects = tables.rows("cvc/selection.rejects", "id", [entity_id], REJECT_COLUMNS)
    return rejects[rejects["stage"] == SELECTION] if "stage" in rejects else rejects


def _selection_step(entity_id: str, checked: dict, tables: Tables, names: set[str]) -> Step:
    """Selection keeps an instance with a correct trial: its CoT / answer samples in the hybrid mix."""
    rejected = _selection_rejects(entity_id, tables)
    if len(rejected):
        return Step(SELECTION, REJECTED, reason=str(rejected["reason"].iloc[0]))
    if "cvc/hybrid" not in names:
        return Step(SELECTION, NOT_RUN)
    stem = Path(str(checked.get("occluded_image") or "")).stem or entity_id
    # at most one sample of each kind per trial, so the candidate ids are known in advance
    n = len(_as_list(checked.get("trials")))
    candidates = [f"{stem}-{source}-{i}" for source in ("cot", "answer") for i in range(n)]
    samples = tables.rows("cvc/hybrid", "id", candidates, HYBRID_COLUMNS)
    if not len(samples):
        return Step(SELECTION, MISSING, reason=f"not rejected at selection, yet no hybrid record {stem}-cot-*/-answer-*")
    sources = samples["source"].tolist() if "source" in samples else []
    step = Step(SELECTION, KEPT, fields={"n_cot": sources.count("cot"), "n_answer": sources.count("answer")})
    step.children = [_hybrid_node(r) for _, r in samples.iterrows()]
    return step


def _hybrid_node(row: pd.Series, *, with_image: bool = False) -> Node:
    fields = {"source": _plain(row.get("source"))}
    if with_image:  # under an instance every sample has the instance's occluded image
        fields["image"] = _plain(row.get("image"))
    turns = json.loads(row["conversations"]) if isinstance(row.get("conversations"), str) else []
    answer = [t.get("value") for t in turns if t.get("from") == "gpt"]
    if answer:
        fields["gpt"] = answer[0]
    return Node("hybrid record", str(row["id"]), "cvc", fields=fields)


def _hybrid_root(row: pd.Series, tables: Tables, names: set[str]) -> Node:
    """A hybrid record traced on its own: where it came from (an instance, or the instruction data)."""
    node = _hybrid_node(row, with_image=True)
    node.notes.append("in results/cvc/hybrid/train.parquet (and train.json)")
    if row.get("source") not in ("cot", "answer"):
        node.notes.append("from the instruction data (cvc.instruction_data), not made from an instance")
        return node
    image = str(row.get("image") or "")
    # the sample's image is `{prefix}{occluded_image}`: try every tail of the path
    parts = image.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    instance = tables.rows("cvc/occlusion", "occluded_image", tails, ["id"])
    if not len(instance):
        match = SAMPLE_ID.match(str(row["id"]))
        instance = tables.rows("cvc/occlusion", "id", [match["stem"]] if match else [], ["id"])
    if len(instance):
        entity_id = str(instance["id"].iloc[0])
        node.notes.append(f"made from instance {entity_id}")
        node.children.append(_entity_node(entity_id, tables, names, with_origin=True))
    else:
        node.notes.append(f"no instance has the occluded image {image!r}")
    return node


def _note_mentions(node: Node, rejects_name: str, record_id: str, tables: Tables) -> None:
    """Rejected lines that name this id in their reason (e.g. a later duplicate of it)."""
    mentions = tables.mentioning(rejects_name, "reason", f"'{record_id}'", REJECT_COLUMNS)
    for _, r in mentions.iterrows():
        if str(r["id"]) != record_id:
            node.notes.append(f"named by rejected {r['id']} ({r['stage']}): {r['reason']}")


# --- CINGS -----------------------------------------------------------------------------------


def _modes(names: set[str]) -> list[str]:
    return sorted({n.split(":", 1)[1].removesuffix(".rejects") for n in names if n.startswith("cings/tokenize:")})


def _eval_datasets(names: set[str]) -> list[str]:
    return sorted({n.split("/")[2] for n in names if re.fullmatch(r"cings/eval/[^/]+/(records|built)(\.rejects)?", n)})


def _eval_modes(dataset: str, names: set[str]) -> list[str]:
    """The modes with an inference job (predictions or rejects) for `dataset`."""
    pattern = rf"cings/eval/{re.escape(dataset)}/([^/]+)/predictions(\.rejects)?"
    return sorted({m[1] for m in (re.fullmatch(pattern, n) for n in names) if m})


def _pope_modes(names: set[str]) -> list[str]:
    return sorted({m[1] for m in (re.fullmatch(r"cings/eval/pope/([^/]+)/answers(\.rejects)?", n) for n in names) if m})


def _cings_record_node(record_id: str, tables: Tables, names: set[str]) -> Node:
    """A Self-RAG record: converted, then per label mode tokenised and trained on."""
    node = Node("cings record", record_id, "cings")
    step, row = _outcome("convert", record_id, "cings/convert", tables, names, CINGS_CONVERT_FIELDS)
    node.steps.append(step)
    _note_mentions(node, "cings/convert.rejects", record_id, tables)
    if row is None:
        return node
    for mode in _modes(names):
        child = Node("mode", mode, "cings")
        step, row = _outcome(f"tokenize:{mode}", record_id, f"cings/tokenize:{mode}", tables, names, CINGS_TOKENIZE_FIELDS)
        child.steps.append(step)
        if row is not None:
            child.steps.append(_train_step(record_id, mode, tables, names))
        node.steps[0].children.append(child)
    return node


def _train_step(record_id: str, mode: str, tables: Tables, names: set[str]) -> Step:
    """Trained on unless the trainer skipped it; the fields are those of the whole run."""
    stage, name = f"train:{mode}", f"cings/train:{mode}"
    skipped = tables.rows(f"{name}.rejects", "id", [record_id], REJECT_COLUMNS)
    if len(skipped):
        return Step(stage, REJECTED, reason=str(skipped["reason"].iloc[0]))
    if name not in names:
        return Step(stage, NOT_RUN)
    run = tables.rows(name, "mode", [mode], CINGS_TRAIN_FIELDS)
    return Step(stage, KEPT, fields=_fields(run.iloc[0], CINGS_TRAIN_FIELDS) if len(run) else {})


def _built_rejects(record_id: str, dataset: str, stage: str, tables: Tables) -> pd.DataFrame:
    """Rejects of cings_build_eval naming `record_id` at `stage` (questions and corpus lines share
    one file, and a `line:N` id can be in both)."""
    rejects = tables.rows(f"cings/eval/{dataset}/built.rejects", "id", [record_id], REJECT_COLUMNS)
    return rejects[rejects["stage"] == stage] if "stage" in rejects else rejects


def _split_request(query: str) -> tuple[str, str] | None:
    try:
        return split_request_id(query)
    except ValueError:
        return None


def _is_eval_question(question_id: str, dataset: str, tables: Tables) -> bool:
    prefix = f"cings/eval/{dataset}"
    return bool(len(tables.rows(f"{prefix}/records", "id", [question_id], ["id"]))
                or len(tables.rows(f"{prefix}/records.rejects", "id", [question_id], ["id"]))
                or len(_built_rejects(question_id, dataset, KILT_QUESTIONS_STAGE, tables)))


def _eval_question_node(question_id: str, dataset: str, tables: Tables, names: set[str]) -> Node:
    """An evaluation question: built (a set made from questions + corpus), validated, then per
    trained mode answered and scored in each of the dataset's settings."""
    node = Node("eval question", question_id, "cings", notes=[f"dataset {dataset}"])
    prefix = f"cings/eval/{dataset}"
    if f"{prefix}/built.rejects" in names:
        built = _built_rejects(question_id, dataset, KILT_QUESTIONS_STAGE, tables)
        # the question was found in the records or these rejects: not rejected means it was built
        node.steps.append(Step(KILT_QUESTIONS_STAGE, REJECTED, reason=str(built["reason"].iloc[0])) if len(built)
                          else Step(KILT_QUESTIONS_STAGE, KEPT))
        _note_mentions(node, f"{prefix}/built.rejects", question_id, tables)
        if len(built):
            return node
    step, row = _outcome("eval_records", question_id, f"{prefix}/records", tables, names, EVAL_RECORD_FIELDS)
    if row is not None and "docs" in step.fields:
        step.fields["docs"] = len(_as_list(step.fields["docs"]))
    node.steps.append(step)
    _note_mentions(node, f"{prefix}/records.rejects", question_id, tables)
    if row is None:
        return node
    # A repeated question id is rejected as `line:N`, which names the id in its reason (a note
    # above). Results written before that rejected it under the question's own id: shown here.
    repeats = tables.rows(f"{prefix}/records.rejects", "id", [question_id], REJECT_COLUMNS)
    node.notes += [f"also rejected at {r['stage']}: {r['reason']}" for _, r in repeats.iterrows()]
    # every setting's request id is known in advance, so each table is read for those rows only
    requests = {request_id(question_id, setting): setting for setting in SETTINGS}
    scores = _question_scores(list(requests), dataset, tables, names)
    for mode in _eval_modes(dataset, names):
        step.children += _prediction_nodes(question_id, dataset, mode, requests, scores, tables)
    return node


def _prediction_nodes(question_id: str, dataset: str, mode: str, requests: Mapping[str, str],
                      scores: pd.DataFrame | None, tables: Tables) -> list[Node]:
    """One node per setting of one inference job (dataset x mode): answered or rejected, then scored."""
    name = f"cings/eval/{dataset}/{mode}/predictions"
    kept = tables.rows(name, "id", list(requests), ["id", *EVAL_PREDICTION_FIELDS])
    rejected = tables.rows(f"{name}.rejects", "id", list(requests), REJECT_COLUMNS)
    kept_rows = {requests[str(r["id"])]: r for _, r in kept.iterrows()}
    reasons = {requests[str(i)]: str(reason) for i, reason in zip(rejected.get("id", []), rejected.get("reason", []))}
    # the job's counts name the settings it asked: one absent from both tables is a broken run
    job_settings = list((tables.counts(name) or {}).get("produced_by", {}).get("settings") or [])
    found = [s for s in SETTINGS if s in kept_rows or s in reasons]
    settings = job_settings + [s for s in found if s not in job_settings]
    if not settings:
        return [Node("prediction", mode, "cings", steps=[Step(INFER_STAGE, MISSING, reason=(
            f"no request {question_id}{REQUEST_SEPARATOR}<setting> in the predictions or rejects of {dataset}/{mode}"))])]
    nodes = []
    for setting in settings:
        child = Node("prediction", f"{mode}/{setting}", "cings")
        if setting in kept_rows:
            child.steps.append(Step(INFER_STAGE, KEPT, fields=_fields(kept_rows[setting], EVAL_PREDICTION_FIELDS)))
            child.steps.append(_score_step(request_id(question_id, setting), dataset, mode, scores))
        elif setting in reasons:
            child.steps.append(Step(INFER_STAGE, REJECTED, reason=reasons[setting]))
        else:
            child.steps.append(Step(INFER_STAGE, MISSING, reason=(
                f"asked in {setting} by {dataset}/{mode}, yet in neither its predictions nor its rejects")))
        if setting not in job_settings and job_settings:
            child.notes.append(f"{setting} is not among the job's settings {job_settings} (a stale row)")
        nodes.append(child)
    return nodes


def _question_scores(requests: Sequence[str], dataset: str, tables: Tables, names: set[str]) -> pd.DataFrame | None:
    """The score rows of a question's requests in `dataset` (None: the table is not made yet)."""
    if "cings/eval/scores" not in names:
        return None
    scores = tables.rows("cings/eval/scores", "id", requests, ["id", "dataset", "mode", *EVAL_SCORE_FIELDS])
    return scores[scores["dataset"] == dataset] if "dataset" in scores else scores.iloc[0:0]


def _score_step(request: str, dataset: str, mode: str, scores: pd.DataFrame | None) -> Step:
    if scores is None:
        return Step("score", NOT_RUN)
    mine = scores[(scores["id"] == request) & (scores["mode"] == mode)] if len(scores) else scores
    if not len(mine):
        return Step("score", MISSING, reason=f"no score for request {request!r} of {dataset}/{mode}")
    # a metric the dataset does not ask for is NaN in the scores table: left out
    fields = {k: v for k, v in _fields(mine.iloc[0], EVAL_SCORE_FIELDS).items() if v is not None}
    return Step("score", KEPT, fields=fields)


def _eval_passage_node(passage_id: str, dataset: str, tables: Tables) -> Node:
    """A corpus line cings_build_eval rejected (kept passages are in no table: only in built.jsonl)."""
    rejected = _built_rejects(passage_id, dataset, KILT_CORPUS_STAGE, tables)
    return Node("eval passage", passage_id, "cings", notes=[f"dataset {dataset}, corpus"],
                steps=[Step(KILT_CORPUS_STAGE, REJECTED, reason=str(rejected["reason"].iloc[0]))])


# --- POPE (of the CINGS VL checkpoints) --------------------------------------------------------


def _pope_question_node(row: pd.Series, tables: Tables, names: set[str], *, with_scene: bool = True) -> Node:
    """A POPE question and, per VL checkpoint, its answer, the yes/no read from it and the truth."""
    question_id = str(row["id"])
    node = Node("pope question", question_id, "cings", fields={"scene": _plain(row.get("scene"))} if with_scene else {})
    step = Step(POPE_QUESTIONS_STAGE, KEPT, fields=_fields(row, POPE_QUESTION_FIELDS))
    for mode in _pope_modes(names):
        child = Node("answer", mode, "cings")
        answer_step, answer = _outcome(POPE_ANSWERS_STAGE, question_id, f"cings/eval/pope/{mode}/answers", tables,
                                       names, POPE_ANSWER_FIELDS)
        if answer is not None:
            answer_step.fields["correct"] = bool(answer.get("prediction") == row.get("label"))
        child.steps.append(answer_step)
        step.children.append(child)
    node.steps.append(step)
    return node


def _pope_scene_node(scene_id: str, tables: Tables, names: set[str]) -> Node | None:
    """A POPE scene (an annotated image): rejected with why, or the questions asked of it."""
    rejected = tables.rows("cings/eval/pope/questions.rejects", "id", [scene_id], REJECT_COLUMNS)
    if len(rejected):
        return Node("pope scene", scene_id, "cings",
                    steps=[Step(POPE_QUESTIONS_STAGE, REJECTED, reason=str(rejected["reason"].iloc[0]))])
    questions = tables.rows("cings/eval/pope/questions", "scene", [scene_id], ["id", "scene", *POPE_QUESTION_FIELDS])
    if not len(questions):
        return None
    node = Node("pope scene", scene_id, "cings", fields={"questions": len(questions)})
    node.children = [_pope_question_node(r, tables, names, with_scene=False) for _, r in questions.iterrows()]
    return node


# ---------------------------------------------------------------------------------------------
# suggestions for an unknown id

ID_COLUMNS = [("cvc/ingest", "id"), ("cvc/ingest", "image_id"), ("cvc/entities", "id"),
              ("cvc/ingest.rejects", "id"), ("cings/convert", "id"), ("cings/convert.rejects", "id")]
MAX_FUZZY_POOL = 50_000  # difflib over more ids than this takes seconds; keep substring hits only


def suggest(query: str, tables: Tables, n: int = 5) -> list[str]:
    names = tables.names()
    columns = (ID_COLUMNS + [(f"cings/eval/{d}/records", "id") for d in _eval_datasets(names)]
               + [("cings/eval/pope/questions", "id"), ("cings/eval/pope/questions", "scene")])
    pool = pd.unique(pd.concat([tables.values(name, col).astype(str) for name, col in columns if name in names]
                               or [pd.Series([], dtype=str)]))
    lowered = query.lower()
    near = {i for i in pool if lowered in i.lower() or i.lower() in lowered}
    if len(pool) <= MAX_FUZZY_POOL:
        near.update(difflib.get_close_matches(query, list(pool), n=n, cutoff=0.6))
    # most alike first; ties in a stable (alphabetical) order
    return sorted(near, key=lambda i: (-difflib.SequenceMatcher(None, query, i).ratio(), i))[:n]


# ---------------------------------------------------------------------------------------------
# values and text


def _as_list(value) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return [value]


def _plain(value):
    """JSON-ready: numpy scalars and arrays to Python, NaN to None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fields(row: pd.Series, columns: Sequence[str]) -> dict:
    return {c: _plain(row[c]) for c in columns if c in row.index}


def render_text(result: Trace, *, width: int = 100) -> str:
    lines = [f"trace {result.query}: {len(result.matches)} match{'es' if len(result.matches) != 1 else ''}"]
    for node in result.matches:
        lines.append("")
        _render_node(node, 0, lines, width)
    return "\n".join(lines)


def _render_node(node: Node, depth: int, lines: list[str], width: int) -> None:
    pad = "  " * depth
    head = f"{pad}{node.kind} {node.id}"
    if node.kind in ("caption", "image", "entity", "cings record", "eval question", "eval passage",
                     "pope question", "pope scene"):
        head += f"  [{node.method}]"
    if node.fields:
        head += "  " + _format_fields(node.fields, width)
    lines.append(head)
    for note in node.notes:
        lines.append(f"{pad}  ({note})")
    stage_width = max([12, *(len(step.stage) for step in node.steps)])
    for step in node.steps:
        text = f"{pad}  {step.stage:<{stage_width}} {step.status:<9}"
        if step.fields:
            text += f" {_format_fields(step.fields, width)}"
        if step.reason:
            text += f" {step.reason}"
        lines.append(text.rstrip())
        for child in step.children:
            _render_node(child, depth + 2, lines, width)
    for child in node.children:
        _render_node(child, depth + 1, lines, width)


def _format_fields(fields: dict, width: int) -> str:
    return " ".join(f"{k}={_format_value(v, width // 2)}" for k, v in fields.items())


def _format_value(value, limit: int) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        text = " ".join(value.split())
        return json.dumps(text if len(text) <= limit else text[: limit - 1] + "…", ensure_ascii=False)
    if isinstance(value, list):
        shown = [_format_value(v, limit // 2) for v in value[:4]]
        more = f", … {len(value)} in all" if len(value) > 4 else ""
        return "[" + ", ".join(shown) + more + "]"
    return str(value)


def render_json(result: Trace) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------------------------
# the reader: tables under a results folder


class ParquetTables:
    """The tables of a results folder, read lazily: only the rows asked for (pushed down to the
    Parquet reader as a filter) and only the columns asked for."""

    def __init__(self, results_dir: str | Path):
        self.root = Path(results_dir)
        self.files: dict[str, list[Path]] = {}
        self.summaries: dict[str, Path] = {}
        self.counts_files: dict[str, Path] = {}
        self._discover()

    def _add(self, name: str, paths: Iterable[Path]) -> None:
        paths = sorted(p for p in paths if p.is_file())
        if paths:
            self.files.setdefault(name, []).extend(paths)

    def _discover(self) -> None:
        cvc = self.root / "cvc"
        for stage in [*CAPTION_STAGES, *ENTITY_STAGES]:
            shards = sorted((cvc / stage).glob("*.parquet"))
            self._add(f"cvc/{stage}", [p for p in shards if not p.name.endswith("rejects.parquet")])
            self._add(f"cvc/{stage}.rejects", [p for p in shards if p.name.endswith("rejects.parquet")])
        if "cvc/instructions" not in self.files:  # shards cleaned up after the gather
            self._add("cvc/instructions", [cvc / "instances.parquet"])
        self._add("cvc/selection.rejects", [cvc / "trial_rejects.parquet"])
        self._add("cvc/probe", sorted((cvc / "probe").glob("*.parquet")))
        self._add("cvc/hybrid", [cvc / "hybrid" / "train.parquet"])
        cings = self.root / "cings"
        self._add("cings/convert", [cings / "data" / "records.parquet"])
        self._add("cings/convert.rejects", [cings / "data" / "rejects.parquet"])
        for path in sorted((cings / "tokenized").glob("*.parquet")):
            mode = path.name.removesuffix(".parquet")
            if mode.endswith(".rejects"):
                self._add(f"cings/tokenize:{mode.removesuffix('.rejects')}.rejects", [path])
            else:
                self._add(f"cings/tokenize:{mode}", [path])
        for summary in sorted((cings / "train").glob("*/train_summary.json")):
            self.summaries[f"cings/train:{summary.parent.name}"] = summary
        eval_dir = cings / "eval"
        # hidden folders hold a job's progress and retrieval vectors, not its tables
        datasets = sorted(p for p in eval_dir.glob("*") if p.is_dir() and not p.name.startswith("."))
        for folder in datasets:
            for table in ("built.rejects", "records", "records.rejects"):
                self._add(f"cings/eval/{folder.name}/{table}", [folder / f"{table}.parquet"])
            for mode in sorted(p for p in folder.glob("*") if p.is_dir() and not p.name.startswith(".")):
                name = f"cings/eval/{folder.name}/{mode.name}/predictions"
                self._add(name, [mode / "predictions.parquet"])
                self._add(f"{name}.rejects", [mode / "predictions.rejects.parquet"])
                if (mode / "predictions.counts.json").is_file():
                    self.counts_files[name] = mode / "predictions.counts.json"
        self._add("cings/eval/scores", [eval_dir / "scores.parquet"])
        pope = eval_dir / "pope"
        self._add("cings/eval/pope/questions", [pope / "questions.parquet"])
        self._add("cings/eval/pope/questions.rejects", [pope / "questions.rejects.parquet"])
        for mode in sorted(p for p in pope.glob("*") if p.is_dir() and not p.name.startswith(".")):
            self._add(f"cings/eval/pope/{mode.name}/answers", [mode / "answers.parquet"])
            self._add(f"cings/eval/pope/{mode.name}/answers.rejects", [mode / "answers.rejects.parquet"])

    def names(self) -> set[str]:
        return set(self.files) | set(self.summaries) | {f"{n}.rejects" for n in self.summaries}

    def counts(self, name):
        path = self.counts_files.get(name)
        return json.loads(path.read_text()) if path is not None else None

    def _summary_frame(self, name: str) -> pd.DataFrame:
        base = name.removesuffix(".rejects")
        summary = json.loads(self.summaries[base].read_text())
        if name.endswith(".rejects"):
            skipped = summary.get("skipped", [])
            return pd.DataFrame({"stage": [base.split("/", 1)[1]] * len(skipped),
                                 "id": [str(s.get("id")) for s in skipped],
                                 "reason": [str(s.get("reason")) for s in skipped]}, columns=REJECT_COLUMNS)
        return pd.DataFrame([{"mode": base.split(":", 1)[1], "steps": summary.get("steps"),
                              "final_loss": summary.get("final_loss"), "examples": summary.get("examples")}])

    def _read(self, name: str, columns: Sequence[str], filters=None) -> pd.DataFrame:
        import pyarrow.parquet as pq

        if name.removesuffix(".rejects") in self.summaries:
            frame = self._summary_frame(name)
            return frame if filters is None else frame[frame[filters[0][0]].isin(filters[0][2])]
        frames = []
        for path in self.files.get(name, []):
            present = set(pq.read_schema(path).names)
            wanted = [c for c in dict.fromkeys(columns) if c in present]
            if filters is not None and filters[0][0] not in present:
                continue
            frames.append(read_table(path, columns=wanted, filters=filters))
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))

    def rows(self, name, where, values, columns):
        values = list(values)
        if not values or name not in self.names():
            return pd.DataFrame(columns=list(columns))
        frame = self._read(name, columns, filters=[(where, "in", values)])
        return frame[[c for c in columns if c in frame]]

    def mentioning(self, name, column, text, columns):
        frame = self._read(name, list(dict.fromkeys([*columns, column])))
        if column not in frame:
            return frame
        return frame[frame[column].astype(str).str.contains(text, regex=False)].reset_index(drop=True)

    def values(self, name, column):
        frame = self._read(name, [column])
        return frame[column] if column in frame else pd.Series([], dtype=object)


def trace_results(query: str, results_dir: str | Path) -> Trace:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no results folder {results_dir}")
    return trace(query, ParquetTables(results_dir))


__all__ = [
    "FrameTables",
    "HELD_OUT",
    "KEPT",
    "MISSING",
    "NOT_RUN",
    "Node",
    "ParquetTables",
    "REJECTED",
    "Step",
    "Trace",
    "UnknownId",
    "render_json",
    "render_text",
    "trace",
    "trace_results",
]
