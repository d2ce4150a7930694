"""Reject reasons that name the field of a user's record that is wrong, in one wording for every
reader: "missing field 'question'" (absent or null), "field 'answers' is a str, not a list",
"field 'instruction' is empty" (blank text or an empty list)."""

from __future__ import annotations

from typing import Any, Mapping

_KINDS = {str: "a string", list: "a list", dict: "an object"}


def field_problem(record: Mapping, key: str, kind: type = str, *, empty_ok: bool = False) -> str | None:
    """Why `record[key]` cannot be used as a `kind` (str, list or dict), or None when it can."""
    value: Any = record.get(key)
    if value is None:
        return f"missing field {key!r}"
    if not isinstance(value, kind):
        return f"field {key!r} is a {type(value).__name__}, not {_KINDS[kind]}"
    if not empty_ok and not (value.strip() if isinstance(value, str) else value):
        return f"field {key!r} is empty"
    return None
