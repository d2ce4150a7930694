"""Artifact table schemas, declared once in groundflow/schemas/*.schema.yaml (package data).

Column types: string, int64, float64, bool, `list<T>` and `struct<name: T, ...>`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

_SCALARS = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


def _split_top_level(text: str) -> list[str]:
    """`a: x, b: list<y>` -> ["a: x", "b: list<y>"]: commas inside `<...>` belong to the inner type."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def arrow_type(name: str) -> pa.DataType:
    """A column type: a scalar, `list<T>` or `struct<field: T, ...>` (nested freely)."""
    name = name.strip()
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(arrow_type(name[5:-1]))
    if name.startswith("struct<") and name.endswith(">"):
        fields = []
        for part in _split_top_level(name[7:-1]):
            field, colon, inner = part.partition(":")
            if not colon or not field.strip():
                raise ValueError(f"struct field {part!r} is not `name: type` (in {name!r})")
            fields.append(pa.field(field.strip(), arrow_type(inner)))
        if not fields:
            raise ValueError(f"struct without fields: {name!r}")
        return pa.struct(fields)
    try:
        return _SCALARS[name]
    except KeyError:
        raise ValueError(f"unknown column type {name!r}") from None


@lru_cache(maxsize=None)
def table_schema(name: str) -> pa.Schema:
    spec = yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())
    return pa.schema([pa.field(col, arrow_type(c["type"])) for col, c in spec["columns"].items()])
