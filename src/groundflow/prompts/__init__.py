"""Prompt texts as files: ours ship here (`<method>/<name>.txt`); a config may point at others.

A prompt file is plain text with `str.format` fields (`{caption}`, `{label}`, ...); literal braces
are doubled. Each use names the fields it fills, and a file that lacks one of them, or asks for one
that is not given, is refused when it is loaded, naming the file and the field, so a swapped-in
text fails at the start of the job, not on the first record. The version stored with a stage's
outputs is the file's name plus a hash of its text: editing or swapping a prompt makes earlier
outputs recognisably stale.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

PACKAGED = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PromptText:
    text: str
    source: str  # the path it was read from, as given (or the packaged name)
    version: str  # "<file stem>-<first 10 hex of sha256(text)>"

    def format(self, **fields: object) -> str:
        return self.text.format(**fields)


def packaged_prompt_path(name: str) -> Path:
    """The path of one of our prompts, by `<method>/<name>` (e.g. "cvc/entities")."""
    path = PACKAGED / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no packaged prompt {name!r} (looked for {path})")
    return path


def prompt_fields(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def load_prompt(path: str | Path | None, default: str, *, fields: set[str] | frozenset[str]) -> PromptText:
    """Read a prompt file (`path`, or our packaged `default` when path is None/empty) and check that
    its format fields are exactly `fields`."""
    source = Path(path) if path else packaged_prompt_path(default)
    try:
        text = source.read_text(encoding="utf-8-sig")  # a Windows editor's byte-order mark is no prompt text
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file {source} not found (set by config; default {default!r})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {source} is not UTF-8 text: {e}") from None
    try:
        found = prompt_fields(text)
    except ValueError as e:  # an unmatched brace
        raise ValueError(f"prompt file {source}: {e} (write literal braces as {{{{ and }}}})") from None
    missing = set(fields) - found
    unknown = found - set(fields)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"lacks the field(s) {', '.join('{' + f + '}' for f in sorted(missing))}")
        if unknown:
            parts.append(f"asks for unknown field(s) {', '.join('{' + f + '}' for f in sorted(unknown))}")
        raise ValueError(f"prompt file {source} {' and '.join(parts)}; this prompt fills exactly "
                         f"{', '.join('{' + f + '}' for f in sorted(fields))}")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return PromptText(text=text, source=str(path) if path else default, version=f"{source.stem}-{digest}")
