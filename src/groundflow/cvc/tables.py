"""CVC's artifact glue: ingest into shards at the start, gather the shards at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from groundflow.io.artifacts import atomic_write_json, atomic_write_text, concat_tables, write_table
from groundflow.io.schemas import table_schema
from groundflow.io.stage import check_accounting
from groundflow.pipeline import read_counts

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
