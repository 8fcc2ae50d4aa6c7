"""Reading YAML layers and checking them against the defaults file, which doubles as the schema.

Kept apart from the layering so that the rules (key spelling, types, where a value came from)
can be tested on their own and reused for site profiles.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "Typed", "load_yaml", "parse_scalar", "normalize", "validate", "TYPES"]


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the key and where it came from."""


class Typed:
    """A default of None that still has a type (written `!int null` in the defaults file)."""

    __slots__ = ("type",)

    def __init__(self, type_: str) -> None:
        self.type = type_

    def __repr__(self) -> str:
        return f"!{self.type} null"


class _Loader(yaml.SafeLoader):
    """YAML 1.2-like scalars: no base-60 numbers, so a walltime of 10:00:00 stays a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (
        "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}  # fmt: skip
_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$")
_FLOAT = re.compile(
    r"^[-+]?([0-9][0-9_]*)?\.?[0-9_]+([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"
)
_BOOL = re.compile(
    r"^(true|True|TRUE|false|False|FALSE|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$"
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfFyYnNoO"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789.") + ["."])

TYPES = ("str", "int", "number", "bool", "list", "dict", "any")
for _t in TYPES:
    _Loader.add_constructor(f"!{_t}", lambda loader, node, t=_t: Typed(t))


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None


def load_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
    data = load_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys at the top, not {type(data).__name__}"
        )
    return data


def parse_scalar(text: str) -> Any:
    """An environment variable's value as YAML would read it ("4" -> 4, "[a, b]" -> list)."""
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError:
        return text
    return text if isinstance(value, Typed) else value


def normalize(key: Any) -> str:
    """Canonical spelling of one key: dashes, lower case (`job_extra_directives` -> `job-extra-...`)."""
    return str(key).replace("_", "-").lower()


def type_of(default: Any) -> str | None:
    """The schema type of a default value; None for an open mapping (`{}`) that takes anything."""
    if isinstance(default, Typed):
        return default.type
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, str):
        return "str"
    if isinstance(default, list):
        return "list"
    if isinstance(default, dict):
        return "dict" if default else None
    return None


def check_type(expected: str | None, value: Any) -> tuple[bool, Any]:
    """(ok, value) with harmless conversions: a number where a string is expected becomes text."""
    if value is None or expected in (None, "any"):
        return True, value
    if expected == "str":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    if expected == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if expected == "bool":
        return isinstance(value, bool), value
    if expected == "list":
        if isinstance(value, tuple):
            value = list(value)
        return isinstance(value, list), value
    return isinstance(value, dict), value


_NAMES = {"str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
          "list": "a list", "dict": "a mapping"}  # fmt: skip


def validate(data: dict, schema: dict, source: str, prefix: str = "") -> dict:
    """A copy of *data* with normalised keys; raises ConfigError naming the key and *source*."""
    out: dict = {}
    for raw_key, value in data.items():
        key = normalize(raw_key)
        path = f"{prefix}{key}"
        if key not in schema:
            near = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.7)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{source}: unknown configuration key {path!r}{hint}")
        default = schema[key]
        if isinstance(default, dict) and default and not isinstance(value, dict):
            if value is None:
                continue
            raise ConfigError(f"{source}: {path!r} must be a mapping of keys, not {value!r}")
        if isinstance(default, dict) and default:
            out[key] = validate(value, default, source, path + ".")
            continue
        expected = type_of(default)
        ok, value = check_type(expected, value)
        if not ok:
            raise ConfigError(
                f"{source}: {path!r} must be {_NAMES[expected]}, not {type(value).__name__} {value!r}"
            )
        out[key] = value
    return out
