"""Reading config-like files and values: YAML mappings (with ``extends``), ``key=value`` overrides and sizes.

Shared by the model/training configs (``core.config``), the runtime config and the sweep specs, so every such
file fails the same way: a ConfigError naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.gates.order=none' -> (['model', 'gates', 'order'], 'none'); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader, but a key given twice in one mapping is an error: YAML would keep the last silently, dropping a
    whole section written earlier."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise yaml.constructor.ConstructorError(None, None, "a key must be a plain name, not a list or a "
                                                        "mapping", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); ConfigError naming the file otherwise.
    Every config-like file (model/training configs, runtime configs, sweep specs) is read here."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path} (configs/ holds the shipped ones)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def read_config_mapping(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping with ``extends: other.yaml`` resolved (relative to the file; the file's own keys
    win, section by section), so a named default can point at a recipe without copying it."""
    path = Path(path)
    data = read_yaml_mapping(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: must name one config file, got {parent!r}")
    target = (path.parent / parent).resolve()
    if target in _seen or target == path.resolve():
        raise ConfigError(f"{path}: extends {parent} forms a loop")
    return _deep_merge(read_config_mapping(target, (*_seen, path.resolve())), data)


def parse_size(text: str | int) -> int:
    """'100MB', '1GB', '64KB' or a byte count -> bytes (the operations manual writes sizes this way)."""
    if isinstance(text, int):
        return text
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "B": 1}
    upper = str(text).strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit) and upper[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(upper[: -len(unit)]) * factor)
    if upper.isdigit():
        return int(upper)
    raise ValueError(f"cannot read size {text!r}: write e.g. 100MB, 1GB or a number of bytes")
