# CINGS evaluation: each evaluation set (a KILT-style file, or questions + a passage corpus that
# cings_build_eval turns into one with a dense retriever) -> validated records -> greedy answers of
# every trained checkpoint (one per training mode) in each of the set's prompt settings -> one long
# table (dataset x mode x setting x metric). The VL checkpoints of rules/cings.smk are measured in
# the POPE form (groundflow.evaluate.pope). Checkpoints: `results/cings/train/{mode}/model`.
import re

from groundflow.cings.eval_fixture import EVAL_KINDS
from groundflow.cings.inference import SENTENCE_COMPLETION, check_dataset, resolved_entry

# Included only when the config has a `cings` section (Snakefile). It names what it needs from
# the config itself, so it also works alone: an evaluation-only workflow of checkpoints already
# under results/cings/train/{mode}/model (tests/workflow/test_cings_eval.py includes it that way).
CINGS_INFERENCE = config["cings"]["inference"]
CINGS_SCORING = config["cings"]["scoring"]
CINGS_EVAL_MODES = list(config["cings"]["modes"])
CINGS_EVAL_FIXTURE_DIR = config["cings"]["fixture"]["dir"]
CINGS_EVAL_FIXTURES = {kind: f"{CINGS_EVAL_FIXTURE_DIR}/eval/{kind}.jsonl" for kind in EVAL_KINDS}
CINGS_RETRIEVAL_FIXTURES = {name: f"{CINGS_EVAL_FIXTURE_DIR}/retrieval/{name}.jsonl" for name in ["questions", "corpus"]}

# dataset name -> its config entry, in config order; the settings each is answered in
CINGS_EVAL_SETS = {d["name"]: d for d in CINGS_INFERENCE["datasets"]}
if len(CINGS_EVAL_SETS) != len(CINGS_INFERENCE["datasets"]):
    raise ValueError("cings.inference.datasets names a dataset twice")
for _name, _entry in CINGS_EVAL_SETS.items():
    _has_path, _has_sources = bool(_entry.get("path")), bool(_entry.get("questions") or _entry.get("corpus"))
    if _has_path == _has_sources or (_has_sources and not (_entry.get("questions") and _entry.get("corpus"))):
        raise ValueError(f"cings.inference.datasets {_name!r}: give either path (a KILT-style file) "
                         "or questions and corpus (built by cings_build_eval), not both or neither")
CINGS_EVAL_SETTINGS = {name: check_dataset(entry, CINGS_INFERENCE["settings"]) for name, entry in CINGS_EVAL_SETS.items()}
CINGS_BUILT_SETS = [name for name, entry in CINGS_EVAL_SETS.items() if entry.get("questions")]
if CINGS_BUILT_SETS and "retriever" not in config["models"]:
    raise ValueError(f"cings.inference.datasets {CINGS_BUILT_SETS} are built from questions + corpus: "
                     "they need models.retriever")


def cings_eval(*parts):
    return results("cings", "eval", *parts)


def cings_eval_runs():
    """(dataset, mode) of every inference job, in table order."""
    return [(dataset, mode) for dataset in CINGS_EVAL_SETS for mode in CINGS_EVAL_MODES]


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or "^$"


CINGS_EVAL_DATASETS = _alternatives(CINGS_EVAL_SETS)


def cings_eval_entry(dataset):
    """`dataset`'s entry with its settings and ndocs resolved: a job's params hold its own set only."""
    return resolved_entry(CINGS_EVAL_SETS[dataset], CINGS_INFERENCE)


def cings_eval_reading(dataset):
    """What reading `dataset`'s file depends on (its records' labels are checked for label_accuracy)."""
    entry = CINGS_EVAL_SETS[dataset]
    return {key: entry.get(key) for key in ("name", "metrics", "labels")}


# cings.inference without the per-set entries: what every cings_infer job reads
CINGS_INFER_OPTS = {k: v for k, v in CINGS_INFERENCE.items() if k not in ("datasets", "fixture", "settings", "ndocs")}


def cings_instruction_prompt(wildcards):
    """A user's sentence-completion prompt file, for the sets that ask with it (null: ours, packaged)."""
    if CINGS_EVAL_SETS[wildcards.dataset].get("prompt") not in SENTENCE_COMPLETION:
        return []
    return CINGS_INFERENCE["sentence_completion_prompt"] or []


def cings_eval_targets():
    return [cings_eval("table.tsv"), cings_eval("table.parquet"), cings_eval("scores.parquet")]


def cings_eval_source(dataset):
    """The KILT-style file of `dataset`: its own, or the one cings_build_eval writes."""
    entry = CINGS_EVAL_SETS[dataset]
    if entry.get("questions"):
        return cings_eval(dataset, "built.jsonl")
    return user_file_or_fixture(entry["path"], entry["path"] if entry["path"] in CINGS_EVAL_FIXTURES.values() else None)


def cings_source_file(entry, key):
    fixture = CINGS_RETRIEVAL_FIXTURES[key]
    return user_file_or_fixture(entry[key], fixture if entry[key] == fixture else None)


def cings_eval_generation(wildcards):
    """The text generation backend on the checkpoint of `mode`, with cings_lm's dtype and device."""
    model = {**config["models"]["cings_lm"], "path": results("cings", "train", wildcards.mode, "model")}
    return {**config["generation"]["text"], "model": model}


rule cings_eval_fixture:
    output:
        **CINGS_EVAL_FIXTURES,
    params:
        n_retrieved=CINGS_INFERENCE["fixture"]["n_retrieved"],
        include_bad=CINGS_INFERENCE["fixture"]["include_bad"],
    log:
        "logs/cings/eval/fixture.log",
    benchmark:
        "benchmarks/cings/eval/fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_eval_fixture.py"


rule cings_retrieval_fixture:
    output:
        **CINGS_RETRIEVAL_FIXTURES,
    params:
        include_bad=CINGS_INFERENCE["fixture"]["include_bad"],
    log:
        "logs/cings/eval/retrieval_fixture.log",
    benchmark:
        "benchmarks/cings/eval/retrieval_fixture.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_retrieval_fixture.py"


# A set given as questions + corpus: gold passages first, then the corpus's top-k by models.retriever
# (the embedding runs on the job's GPU in a paper preset; passage vectors resume after a kill).
rule cings_build_eval:
    input:
        questions=lambda wildcards: cings_source_file(CINGS_EVAL_SETS[wildcards.dataset], "questions"),
        corpus=lambda wildcards: cings_source_file(CINGS_EVAL_SETS[wildcards.dataset], "corpus"),
    output:
        eval=cings_eval("{dataset}", "built.jsonl"),
        rejects=cings_eval("{dataset}", "built.rejects.parquet"),
        counts=cings_eval("{dataset}", "built.counts.json"),
    params:
        retriever=lambda wildcards: config["models"]["retriever"],
        top_k=config["cings"]["retrieval"]["top_k"],
        batch_size=config["cings"]["retrieval"]["batch_size"],
        vectors_dir=cings_eval(".vectors", "{dataset}"),
    wildcard_constraints:
        dataset=_alternatives(CINGS_BUILT_SETS),
    log:
        "logs/cings/eval/{dataset}/build.log",
    benchmark:
        "benchmarks/cings/eval/{dataset}/build.tsv"
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/cings_build_eval.py"


rule cings_eval_records:
    input:
        eval_file=lambda wildcards: cings_eval_source(wildcards.dataset),
    output:
        kept=cings_eval("{dataset}", "records.parquet"),
        rejects=cings_eval("{dataset}", "records.rejects.parquet"),
        counts=cings_eval("{dataset}", "records.counts.json"),
    params:
        dataset=lambda wildcards: cings_eval_reading(wildcards.dataset),
        # the file to read even when a user's file is missing (then not an input: the job names it)
        path=lambda wildcards: CINGS_EVAL_SETS[wildcards.dataset].get("path") or cings_eval(wildcards.dataset, "built.jsonl"),
    wildcard_constraints:
        dataset=CINGS_EVAL_DATASETS,
    log:
        "logs/cings/eval/{dataset}/records.log",
    benchmark:
        "benchmarks/cings/eval/{dataset}/records.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_eval_records.py"


# One job per dataset x mode answers in each of the dataset's settings: the checkpoint loads once.
# Its unit is a (question, setting) request, so in = out + rejected counts requests.
rule cings_infer:
    input:
        records=cings_eval("{dataset}", "records.parquet"),
        model=results("cings", "train", "{mode}", "model"),
        # a user's prompt file is an input, so editing it re-runs the sets that use it
        prompt=cings_instruction_prompt,
    output:
        kept=cings_eval("{dataset}", "{mode}", "predictions.parquet"),
        rejects=cings_eval("{dataset}", "{mode}", "predictions.rejects.parquet"),
        counts=cings_eval("{dataset}", "{mode}", "predictions.counts.json"),
    params:
        generation=cings_eval_generation,
        opts=CINGS_INFER_OPTS,
        dataset=lambda wildcards: cings_eval_entry(wildcards.dataset),
        system_prompt=config["cings"]["data"]["system_prompt"],
        progress_dir=cings_eval(".progress", "{dataset}", "{mode}"),
        # a managed `vllm serve` (generation.text.serve) writes here
        server_log="logs/cings/eval/{dataset}/{mode}.server.log",
    wildcard_constraints:
        dataset=CINGS_EVAL_DATASETS,
        mode="|".join(CINGS_EVAL_MODES),
    log:
        "logs/cings/eval/{dataset}/{mode}.log",
    benchmark:
        "benchmarks/cings/eval/{dataset}/{mode}.tsv"
    threads: job_threads("infer_job")
    resources:
        **job_resources("infer_job"),
    script:
        "../workflow/scripts/cings_infer.py"


rule cings_eval_table:
    input:
        predictions=[cings_eval(d, m, "predictions.parquet") for d, m in cings_eval_runs()],
        rejects=[cings_eval(d, m, "predictions.rejects.parquet") for d, m in cings_eval_runs()],
        counts=[cings_eval(d, m, "predictions.counts.json") for d, m in cings_eval_runs()],
        record_counts=[cings_eval(d, "records.counts.json") for d in CINGS_EVAL_SETS],
    output:
        tsv=cings_eval("table.tsv"),
        table=cings_eval("table.parquet"),
        scores=cings_eval("scores.parquet"),
    params:
        runs=[list(run) for run in cings_eval_runs()],
        datasets=[cings_eval_entry(d) for d in CINGS_EVAL_SETS],
        scoring=CINGS_SCORING,
    log:
        "logs/cings/eval/table.log",
    benchmark:
        "benchmarks/cings/eval/table.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/cings_eval_table.py"


# POPE (groundflow.evaluate.pope) of every VL checkpoint: one question set, answered by each.
CINGS_POPE = config["cings"]["vl"]["pope"]
CINGS_POPE_MODES = list(config["cings"]["vl"]["modes"])
CINGS_DEMO_SCENES = f"{CINGS_EVAL_FIXTURE_DIR}/vl/scenes.json"
CINGS_DEMO_IMAGES = f"{CINGS_EVAL_FIXTURE_DIR}/vl/images"


def cings_pope(*parts):
    return cings_eval("pope", *parts)


def cings_pope_targets():
    return [cings_pope("table.parquet"), cings_pope("table.tsv")] if CINGS_POPE_MODES else []


def cings_pope_images():
    """The folder the scenes' images are relative to: the configured one or the demo's."""
    return CINGS_POPE["image_folder"] or CINGS_DEMO_IMAGES


def cings_pope_vision_generation(wildcards):
    """The vision generation backend on the VL checkpoint of `mode` (stage 2), cings_lm's dtype."""
    model = {**config["models"]["cings_lm"], "path": results("cings", "vl", wildcards.mode, "stage2", "model")}
    return {**config["generation"]["vision"], "model": model}


rule cings_pope_questions:
    input:
        scenes=user_file_or_fixture(CINGS_POPE["annotations"] or CINGS_DEMO_SCENES, CINGS_DEMO_SCENES),
        # the demo's images are made with its scenes; a user's folder is read as it is
        images=[] if CINGS_POPE["image_folder"] else CINGS_DEMO_IMAGES,
    output:
        questions=cings_pope("questions.parquet"),
        rejects=cings_pope("questions.rejects.parquet"),
        counts=cings_pope("questions.counts.json"),
    params:
        opts=CINGS_POPE,
        seed=config["seed"],
        image_folder=cings_pope_images(),
    log:
        "logs/cings/eval/pope/questions.log",
    benchmark:
        "benchmarks/cings/eval/pope/questions.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/pope_questions.py"


rule cings_pope_answer:
    input:
        records=cings_pope("questions.parquet"),
        model=results("cings", "vl", "{mode}", "stage2", "model"),
    output:
        kept=cings_pope("{mode}", "answers.parquet"),
        rejects=cings_pope("{mode}", "answers.rejects.parquet"),
        counts=cings_pope("{mode}", "answers.counts.json"),
    params:
        generation=cings_pope_vision_generation,
        opts=CINGS_POPE,
        image_folder=cings_pope_images(),
        system_prompt=config["cings"]["vl"]["system_prompt"],
        progress_dir=cings_pope(".progress", "{mode}"),
    wildcard_constraints:
        mode=_alternatives(CINGS_POPE_MODES),
    log:
        "logs/cings/eval/pope/{mode}.log",
    benchmark:
        "benchmarks/cings/eval/pope/{mode}.tsv"
    threads: job_threads("model_job")
    resources:
        **job_resources("model_job"),
    script:
        "../workflow/scripts/pope_answer.py"


rule cings_pope_table:
    input:
        answers=[cings_pope(m, "answers.parquet") for m in CINGS_POPE_MODES],
        counts=[cings_pope(m, "answers.counts.json") for m in CINGS_POPE_MODES],
    output:
        table=cings_pope("table.parquet"),
        tsv=cings_pope("table.tsv"),
    params:
        checkpoints=CINGS_POPE_MODES,  # names of the VL checkpoints (cings.vl.modes), in input order
    log:
        "logs/cings/eval/pope/table.log",
    benchmark:
        "benchmarks/cings/eval/pope/table.tsv"
    threads: job_threads("cpu_job")
    resources:
        **job_resources("cpu_job"),
    script:
        "../workflow/scripts/pope_score.py"
