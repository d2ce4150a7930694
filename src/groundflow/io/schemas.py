"""Artifact table schemas, declared once in groundflow/schemas/*.schema.yaml (package data)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

_SCALARS = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


def arrow_type(name: str) -> pa.DataType:
    name = name.strip()
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(arrow_type(name[5:-1]))
    try:
        return _SCALARS[name]
    except KeyError:
        raise ValueError(f"unknown column type {name!r}") from None


@lru_cache(maxsize=None)
def table_schema(name: str) -> pa.Schema:
    spec = yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())
    return pa.schema([pa.field(col, arrow_type(c["type"])) for col, c in spec["columns"].items()])
