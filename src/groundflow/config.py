"""Config validation against the packaged schema (groundflow/schemas/config.schema.yaml).

Unknown keys and wrong types stop the run with the key's dotted path in the message; defaults
from the schema are filled in so rules never guess.
"""

from __future__ import annotations

from pathlib import Path

import copy

import jsonschema
import yaml
from jsonschema import validators

# Package data, so that an installed (not editable) groundflow validates configs too.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


def _with_defaults(cls):
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path | None = None) -> dict:
    with open(path or SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate `config` in place (filling defaults); raise ConfigError naming every bad key."""
    schema = schema or load_schema()
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(f"  - {_describe(e)}" for e in errors))
    return config


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{where}." if error.absolute_path else ""
        return "; ".join(f"unknown key '{prefix}{k}'" for k in extra)
    if error.validator == "type":
        return f"'{where}': {error.instance!r} is not of type {error.validator_value!r}"
    if "then" in error.schema_path:
        return f"'{where}': {error.message}, because `methods` lists the method that needs it"
    return f"'{where}': {error.message}"
