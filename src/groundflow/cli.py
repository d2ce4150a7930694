"""The `groundflow` command: set up a run folder, build tiny models, check a plan's GPU memory, inspect results."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

# The workflow checkout (Snakefile, config.yaml, configs/): the source tree of an editable install;
# with a plain `pip install .` the package has no checkout beside it, and `init --workflow` names it.
ROOT = Path(__file__).resolve().parents[2]


def workflow_root(given: str | None) -> Path:
    root = Path(given).resolve() if given else ROOT
    if not (root / "Snakefile").is_file():
        raise FileNotFoundError(
            f"no Snakefile in {root}: pass --workflow <the groundflow checkout> (this groundflow is "
            f"installed as a package, apart from the workflow files)")
    return root


def stage_status(results_dir: str | Path, top: int = 3) -> str:
    """Per method and stage: in / out / rejected and the most frequent reject reasons."""
    results_dir = Path(results_dir)
    blocks = []
    for counts_file in sorted(results_dir.glob("*/*stage_counts.tsv")):
        part = counts_file.name.removesuffix("stage_counts.tsv").rstrip("_")
        method = counts_file.parent.name + (f" ({part})" if part else "")
        counts = pd.read_csv(counts_file, sep="\t")
        rejects_file = counts_file.with_name(f"{part}_rejects.parquet" if part else "rejects.parquet")
        rejects = pd.read_parquet(rejects_file) if rejects_file.exists() else None
        width = max([14, *(len(str(stage)) for stage in counts["stage"])])
        lines = [f"{method}: {'stage':<{width}} {'in':>8} {'out':>8} {'rejected':>9}"]
        for row in counts.to_dict("records"):
            lines.append(f"{'':<{len(method) + 2}}{row['stage']:<{width}} {row['in']:>8} {row['out']:>8} {row['rejected']:>9}")
            if rejects is not None and row["rejected"]:
                reasons = _reason_kinds(rejects.loc[rejects["stage"] == row["stage"], "reason"])
                for reason, n in reasons.head(top).items():
                    lines.append(f"{'':<{len(method) + 4}}{n:>6} x {reason}")
        blocks.append("\n".join(lines))
    if not blocks:
        raise FileNotFoundError(f"no */stage_counts.tsv under {results_dir}: has a method finished?")
    return "\n\n".join(blocks)


def _reason_kinds(reasons: pd.Series) -> pd.Series:
    """Group reasons by their wording with record names and numbers taken out."""
    kinds = (
        reasons.str.replace(r"'[^']*'", "'…'", regex=True)
        .str.replace(r"[\w./-]+\.(?:jpe?g|png|gif|bmp|tiff?|webp|jsonl?)\b", "<file>", regex=True, case=False)
        .str.replace(r"\b[\w./-]*\d[\w./-]*\b", "#", regex=True)
    )
    return kinds.value_counts()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="groundflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="make a run folder holding a config to edit")
    init.add_argument("run_dir")
    init.add_argument("--preset", help="a preset from configs/ (e.g. cvc-paper) instead of the demo config")
    init.add_argument("--workflow", help="the groundflow checkout holding the Snakefile (default: this package's source tree)")
    build = sub.add_parser("build-model", help="build a tiny random model of a real architecture")
    build.add_argument("kind", choices=["llama", "roberta", "grounding-dino", "sam", "llava", "llama3", "clip"])
    build.add_argument("out_dir")
    build.add_argument("--seed", type=int, default=0)
    status = sub.add_parser("status", help="per stage: in / out / rejected and top reject reasons")
    status.add_argument("results_dir", nargs="?", default="results")
    status.add_argument("--top", type=int, default=3)
    trace = sub.add_parser("trace", help="one caption, image or record through every stage: kept (its row) or rejected (why)")
    trace.add_argument("id", help="any record id: caption, image, entity, hybrid record, CINGS record, evaluation question or request ({question id}|{setting}), POPE question")
    trace.add_argument("results_dir", nargs="?", default="results")
    trace.add_argument("--json", action="store_true", help="the trace as JSON instead of a text tree")
    preflight = sub.add_parser("preflight", help="will every model job of a config fit its GPU? (estimates from config.json)")
    preflight.add_argument("config", help="a preset (configs/cvc-paper.yaml) or a run folder's config.yaml")
    preflight.add_argument("--directory", default=".",
                           help="the run folder, where relative model and launch-file paths are read (default: here)")
    args = parser.parse_args(argv)

    if args.command == "init":
        try:
            root = workflow_root(args.workflow)
        except FileNotFoundError as e:
            parser.error(str(e))
        source = root / "configs" / f"{args.preset}.yaml" if args.preset else root / "config.yaml"
        if not source.exists():
            parser.error(f"no preset {source}")
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        target = run_dir / "config.yaml"
        if target.exists():
            parser.error(f"{target} exists; not overwriting it")
        shutil.copyfile(source, target)
        print(f"{target} written; run: snakemake --snakefile {root / 'Snakefile'} --directory {run_dir} --cores N")
    elif args.command == "build-model":
        from groundflow.demo import build_demo_model

        print(build_demo_model(args.kind, args.out_dir, seed=args.seed))
    elif args.command == "status":
        try:
            print(stage_status(args.results_dir, top=args.top))
        except FileNotFoundError as e:
            print(f"groundflow status: {e}", file=sys.stderr)
            return 1
    elif args.command == "trace":
        return trace_command(args.id, args.results_dir, as_json=args.json)
    elif args.command == "preflight":
        return preflight_command(args.config, args.directory)
    return 0


def preflight_command(config_path: str, run_dir: str = ".") -> int:
    from groundflow.preflight import preflight

    table, failures = preflight(config_path, run_dir)
    print(table)
    for failure in failures:
        print(f"groundflow preflight: {failure}", file=sys.stderr)
    return 1 if failures else 0


def trace_command(record_id: str, results_dir: str, *, as_json: bool = False) -> int:
    import os

    from groundflow.trace import UnknownId, render_json, render_text, trace_results

    try:
        result = trace_results(record_id, results_dir)
    except (UnknownId, FileNotFoundError) as e:
        print(f"groundflow trace: {e}", file=sys.stderr)
        return 1
    try:
        print(render_json(result) if as_json else render_text(result))
    except BrokenPipeError:  # `groundflow trace X | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")  # Python's recipe: no second error when stdout is flushed at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
