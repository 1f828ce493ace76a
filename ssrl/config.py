"""Load and validate a workflow config outside Snakemake (tests, notebooks, the Python API).

The same JSON schema that the Snakefile validates against fills in every default, so
`load_config()` returns exactly the dictionary the workflow's steps receive.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ssrl.files import InputError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    """A jsonschema validator that writes each property's `default` into the instance."""
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def merge(base: dict, update: dict) -> dict:
    """Recursive dict update, as Snakemake merges --configfile over configfile:."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Validate and fill defaults; an error names the offending key and what was expected."""
    schema = yaml.safe_load(SCHEMA.read_text())
    cfg = copy.deepcopy(config)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise InputError(f"config key {where}: {err.message}")
    return cfg


def load_config(*paths: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """config.yaml, then each further file merged over it, then `overrides`; validated."""
    cfg: dict = {}
    for path in paths or (ROOT / "config.yaml",):
        path = Path(path)
        try:
            cfg = merge(cfg, yaml.safe_load(path.read_text()) or {})
        except FileNotFoundError:
            raise InputError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise InputError(f"{path}: invalid YAML ({err})") from None
    return validate(merge(cfg, overrides or {}))
