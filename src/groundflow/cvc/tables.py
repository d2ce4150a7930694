"""CVC's artifact glue: ingest into shards at the start, gather the shards at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from groundflow.io.artifacts import atomic_write_json, atomic_write_text, concat_tables, write_table
from groundflow.io.schemas import table_schema
from groundflow.io.stage import check_accounting, read_counts

log = logging.getLogger(__name__)


def ingest_to_shards(captions: str, image_root: str, *, shard_paths: list[str], rejects_path: str,
                     counts_path: str) -> dict:
    from groundflow.cvc.ingest import assign_shards, ingest_captions

    if not Path(captions).exists():
        raise FileNotFoundError(
            f"captions file {captions} (config cvc.captions) does not exist; for the paper preset,"
            " download COCO's captions_train2014.json there or point cvc.captions at your file"
        )
    result, input_ids = ingest_captions(captions, image_root)
    counts = check_accounting("ingest", input_ids, result)
    kept = result.kept
    shard = assign_shards(kept["image_id"], len(shard_paths)) if len(kept) else pd.Series([], dtype=int)
    for index, path in enumerate(shard_paths):
        write_table(kept[shard.to_numpy() == index].reset_index(drop=True), path)
    write_table(result.rejects, rejects_path)
    atomic_write_json(counts_path, counts)
    log.info("ingest: in %d = out %d + rejected %d, over %d shards",
             counts["in"], counts["out"], counts["rejected"], len(shard_paths))
    return counts


def gather(*, instance_paths: list[str], reject_paths: list[str], count_paths: list[str],
           instances_out: str, rejects_out: str, counts_out: str) -> pd.DataFrame:
    instances = concat_tables(instance_paths)
    schema = table_schema("cvc_instances")
    write_table(instances, instances_out, schema=schema)
    rejects = concat_tables(reject_paths)
    write_table(rejects, rejects_out, schema=table_schema("rejects"))
    counts = read_counts(count_paths)
    bad = counts[counts["in"] != counts["out"] + counts["rejected"]]
    if len(bad):
        raise RuntimeError(f"stage counts do not add up:\n{bad.to_string(index=False)}")
    atomic_write_text(counts_out, counts.to_csv(sep="\t", index=False))
    log.info("cvc: %d instances; per stage:\n%s", len(instances), counts.to_string(index=False))
    return counts


def build_hybrid(*, checked_paths: list[str], instruction_data: dict, occluded_prefix: str,
                 cot_range: tuple[int, int], shuffle_seed: int | None, reject_paths: list[str],
                 count_paths: list[str], llava_json_out: str, parquet_out: str, counts_out: str,
                 rejects_out: str) -> dict:
    """Select CoT / answer samples from the checked trials, mix them into the instruction data,
    write LLaVA JSON + Parquet, and the trial stages' counts and rejects (selection included).

    Image paths in the output are relative to the run folder: the instruction data's own paths
    get `instruction_data.image_folder` in front, occluded images `occluded_prefix`.
    """
    from groundflow.cvc.hybrid import (format_counts, hybrid_mix, read_llava_json, record_sources,
                                       select_samples, to_parquet_frame, write_llava_json)

    checked = concat_tables(checked_paths)
    cot, answers, selection = select_samples(checked, cot_range=cot_range, image_prefix=occluded_prefix)
    selection_counts = check_accounting("selection", checked["id"], selection)
    folder = instruction_data["image_folder"].rstrip("/")
    base = [
        {**r, "image": f"{folder}/{r['image']}"} if r.get("image") else r
        for r in read_llava_json(instruction_data["path"])
    ]
    mix = hybrid_mix(base, cot, answers, shuffle_seed=shuffle_seed)
    write_llava_json(mix, llava_json_out)
    write_table(to_parquet_frame(mix, record_sources(mix, cot, answers)), parquet_out)

    counts = read_counts(count_paths)
    counts = pd.concat([counts, pd.DataFrame([{k: selection_counts[k] for k in ("stage", "in", "out", "rejected")}])],
                       ignore_index=True)
    bad = counts[counts["in"] != counts["out"] + counts["rejected"]]
    if len(bad):
        raise RuntimeError(f"trial stage counts do not add up:\n{bad.to_string(index=False)}")
    atomic_write_text(counts_out, counts.to_csv(sep="\t", index=False))
    rejects = pd.concat([concat_tables(reject_paths), selection.rejects], ignore_index=True)
    write_table(rejects, rejects_out, schema=table_schema("rejects"))
    formats = format_counts(base, cot, answers, selection)
    log.info("hybrid data: %s", json.dumps(formats))
    log.info("trial stages:\n%s", counts.to_string(index=False))
    return formats
