"""Reading config-like files and values: YAML mappings (with ``extends``), ``key=value`` overrides and sizes.

Shared by the model/training configs (``core.config``), the runtime config and the sweep specs, so every such
file fails the same way: a ConfigError naming the file and the key.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationInfo, field_validator


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


def parse_override(text: str, schema: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """'model.gates.order=none' -> (['model', 'gates', 'order'], 'none').

    The value is read as YAML (numbers, true/false, null, [lists], {mappings}), except where ``schema`` says the key
    holds text (a path, a name, one of a few words): there the text is taken as written, so ``20240601``, ``~``,
    ``no`` or ``run #3`` stay that text instead of becoming a number, None, False or ``run``. Quotes still work;
    ``null`` or ``~`` empties a text field that may be empty; for one that may not, ``~`` is that text (a home
    folder) and ``null`` is refused, as is a list (nothing after '=' is null anywhere). Elsewhere, text YAML would drop as a ``#`` comment is refused: the
    value would otherwise be silently cut short."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    path = key.strip().split(".")
    text_field, may_be_none = _text_field(_field_type(schema, path)) if schema is not None else (False, False)
    try:
        value, dropped = _read_yaml_value(raw)
    except yaml.YAMLError as exc:
        if text_field:
            return path, raw.strip()
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    if text_field:
        if not dropped and (isinstance(value, str) or (value is None and (may_be_none or not raw.strip()))):
            return path, value
        if not dropped and (raw.strip().lower() == "null" or isinstance(value, (list, dict))):  # not text meant
            what = "cannot be empty" if value is None else f"takes text, not a {type(value).__name__}"
            raise ConfigError(f"override {text!r}: {key.strip()} {what}; quote the value ('...') if it is meant "
                              "as that text")
        return path, raw.strip()
    if dropped:
        raise ConfigError(f"override {text!r}: YAML would drop {dropped!r} as a comment; quote the value "
                          "('...') or leave the comment out")
    return path, value


def literal_override(key: str, value: str) -> str:
    """An override that sets ``key`` to exactly ``value`` (a path from a command-line flag): double-quoted YAML
    with every special character escaped, which ``parse_override`` reads back unchanged."""
    quoted = yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=False).rstrip("\n")
    return f"{key}={quoted}"


def _read_yaml_value(raw: str) -> tuple[Any, str]:
    """The YAML value of ``raw`` (read as config files are: 1e-3 is a number) and the text after its last token
    (a comment YAML drops; '' when none)."""
    value = load_yaml_strict(raw)
    ignored = (yaml.StreamStartToken, yaml.StreamEndToken, yaml.BlockEndToken)
    end = max((t.end_mark.index for t in yaml.scan(raw) if not isinstance(t, ignored)), default=0)
    return value, raw[end:].strip()


def _without_none(annotation: Any) -> Any:
    """``X | None`` -> ``X``; any other type as it is."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    rest = [a for a in args if a is not type(None)]
    return rest[0] if len(rest) == 1 else annotation


def _field_type(schema: Any, path: list[str]) -> Any:
    """The type ``path`` leads to through ``schema``'s sections and mappings (routes.medical); None where unknown."""
    node = schema
    for part in path:
        node = _without_none(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                return None
            node = node.model_fields[part].annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return None
    return node


def _text_field(annotation: Any) -> tuple[bool, bool]:
    """(holds text only: str or a Literal of words, may be None)."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    kinds = [a for a in args if a is not type(None)]
    text = bool(kinds) and all(a is str or (get_origin(a) is Literal and all(isinstance(v, str) for v in get_args(a)))
                               for a in kinds)
    return text, len(kinds) < len(args)


def _default_section(schema: Any, path: list[str]) -> dict[str, Any]:
    """What a section missing from the file stands for: its field's default as plain data, so an override of one
    entry (escalation.routes.medical.email) keeps the other entries the default has; {} where there is none."""
    parent = _without_none(_field_type(schema, path[:-1])) if schema is not None else None
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)) or path[-1] not in parent.model_fields:
        return {}
    default = parent.model_fields[path[-1]].get_default(call_default_factory=True)
    if isinstance(default, dict):
        return {key: _plain(value) for key, value in default.items()}
    return section_default(parent, path[-1]) or {}


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json", exclude_defaults=True) if isinstance(value, BaseModel) else value


def section_default(model: type[BaseModel], name: str) -> dict[str, Any] | None:
    """The keys where field ``name``'s default section differs from its class's defaults (``task_optimizer``:
    ``{'lr': 0.0003}``), as plain data; None where the field holds no section."""
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True) if field.default_factory is not None else field.default
    return _plain(default) if isinstance(default, BaseModel) else None


class NumbersNotFlags(BaseModel):
    """A base for config sections: true or false where a number belongs is refused (pydantic's lax mode reads
    true as 1, so ``max_steps: yes`` trained one step without a word)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if _holds_a_flag(value) and info.field_name in cls.model_fields:
            kinds = _types_in(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:  # read_layers: [true] was [1]
                raise ValueError("a number is needed here, not true or false")
        return value


def _holds_a_flag(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        return any(map(_holds_a_flag, value.values()))
    return isinstance(value, list | tuple) and any(map(_holds_a_flag, value))


def _types_in(annotation: Any) -> set:
    """Every type an annotation names, through unions, lists and mappings (``list[int] | None``: list, int, None)."""
    return {annotation, *(kind for arg in get_args(annotation) for kind in _types_in(arg))}


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...],
                    schema: type[BaseModel] | None = None) -> dict[str, Any]:
    """``data`` with the overrides set (read as ``parse_override`` says). Each section on an override's path is
    copied before it changes, so neither the caller's dict nor a section YAML shares under two keys (an alias,
    ``safety_optimizer: *opt``) changes with it; a section the file leaves out starts from its default."""
    data = dict(data)
    for text in overrides:
        path, value = parse_override(text, schema)
        node = data
        for depth, part in enumerate(path[:-1], 1):
            child = node[part] if part in node else _default_section(schema, path[:depth])
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is a value, not a section")
            node[part] = dict(child)
            node = node[part]
        current = node[path[-1]] if path[-1] in node else _default_section(schema, path)
        # a mapping given for a section changes the keys it names, as a dotted override would: the file's other
        # keys in that section stay (they used to fall back to the code's defaults without a word)
        node[path[-1]] = deep_merge(current, value) if isinstance(value, dict) and isinstance(current, dict) else value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader, but a key given twice in one mapping is an error: YAML would keep the last silently, dropping a
    whole section written earlier. Merge keys (``<<: *opt``) work as in SafeLoader (the keys written beside one
    win over the merged ones): each mapping's own keys are checked before SafeLoader merges others into it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()  # mappings checked already: merging rewrites their keys in place

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen = set()
            for key_node, _ in node.value:
                merge = key_node.tag == "tag:yaml.org,2002:merge"
                key = "<<" if merge else self.construct_object(key_node)
                if not isinstance(key, (str, int, float, bool, type(None))):
                    raise yaml.constructor.ConstructorError(None, None, "a key must be a plain name, not a list or "
                                                            "a mapping", key_node.start_mark)
                if (merge, key) in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add((merge, key))
        super().flatten_mapping(node)


# PyYAML follows YAML 1.1, where a float needs a dot: ``lr: 1e-3`` came back as the text "1e-3" (a config
# coerced it, a sweep spec passed the text on to its notebook). YAML 1.2 reads it as a number, as people expect.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))

# YAML 1.1's other number forms changed numbers silently: ``seed: 010`` was octal 8, ``max_steps: 1:30`` base-60
# 90, ``eval_every: 0b11`` 3. Numbers are YAML 1.2's here: decimal, 0o octal, 0x hex; 1:30 and 0b11 stay text
# (which a number's field refuses), and a decimal with a leading zero is refused, since 010 may mean 10 or 8.
_INT_TAG, _LEADING_ZERO_TAG = "tag:yaml.org,2002:int", "tag:so8t,2024:leading-zero"
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0o[0-7][0-7_]*|[-+]?0x[0-9a-fA-F][0-9a-fA-F_]*)$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
_FLOAT_NOT_BASE_60 = re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")  # YAML 1.1's, less 1:30.5
_UniqueKeyLoader.yaml_implicit_resolvers = {  # the class's own copy (add_implicit_resolver made it): SafeLoader's stay
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, "tag:yaml.org,2002:float")]
    for first, resolvers in _UniqueKeyLoader.yaml_implicit_resolvers.items()}
for _tag, _regexp, _first in ((_INT_TAG, _INT, "-+0123456789"), (_LEADING_ZERO_TAG, _LEADING_ZERO, "-+0"),
                              ("tag:yaml.org,2002:float", _FLOAT_NOT_BASE_60, "-+.0123456789"),
                              ("tag:yaml.org,2002:float", _EXPONENT_FLOAT, "-+0123456789")):
    _UniqueKeyLoader.add_implicit_resolver(_tag, _regexp, list(_first))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    try:
        return int(text.replace("_", ""), 0)  # Python's literals are YAML 1.2's: 0o17, 0x1F, no 010
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not an integer", node.start_mark) from None


def _refuse_leading_zero(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    sign, digits = "-" if text.startswith("-") else "", text.lstrip("+-").replace("_", "").lstrip("0") or "0"
    raise yaml.constructor.ConstructorError(
        None, None, f"{text} has a leading zero, which YAML 1.1 reads as octal: write {sign}{digits} (decimal), "
        f"{sign}0o{digits} (octal) or quote it ('{text}') if it is text", node.start_mark)


_UniqueKeyLoader.add_constructor(_INT_TAG, _construct_int)
_UniqueKeyLoader.add_constructor(_LEADING_ZERO_TAG, _refuse_leading_zero)


def load_yaml_strict(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping (``yaml.YAMLError`` naming its line) and
    reads numbers as YAML 1.2 does: every hand-written YAML the project reads (configs, sweep specs, corpus seeds)
    goes through it. Nesting deeper than PyYAML's recursion allows is a ``yaml.YAMLError`` too, not a crash."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise yaml.YAMLError("nested too deep (lists or mappings inside one another, hundreds of levels): "
                             "flatten it") from None
    _check_expanded_size(data)
    return data


_SHOWN = reprlib.Repr()  # keyword arguments need Python 3.12
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 3, 6, 6, 6, 120, 120


def shown_value(value: Any) -> str:
    """A bad value as an error message shows it: its repr, cut short (a list of a million items, or one
    alias-expanded from a few lines, must not become a message of megabytes)."""
    return _SHOWN.repr(value)


MAX_YAML_VALUES = 1_000_000  # far above any config or seed file; aliases of aliases expand past it in a few lines


def _check_expanded_size(data: Any) -> None:
    """``yaml.YAMLError`` when the document, with every alias expanded as its readers walk it, holds more than
    MAX_YAML_VALUES values: a few hundred bytes of aliases nested in aliases otherwise take gigabytes to
    validate or to print in an error message."""
    pending, seen = [data], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise yaml.YAMLError(f"more than {MAX_YAML_VALUES:,} values, counting each alias (*name) as the values "
                                 "it stands for: aliases nested in aliases, or a file far larger than a config")
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); ConfigError naming the file otherwise.
    Every config-like file (model/training configs, runtime configs, sweep specs) is read here."""
    path = Path(path)
    shipped = " (experiments/ holds the shipped ones)" if what == "sweep spec" else " (configs/ holds the shipped ones)"
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; name the {what} in it{shipped}")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}{shipped}")
    try:
        data = load_yaml_strict(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s keys over it, section by section (neither changes)."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
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
    return deep_merge(read_config_mapping(target, (*_seen, path.resolve())), data)


def parse_size(text: str | int) -> int:
    """'100MB', '1GB', '64KB' or a whole number of bytes (1048576 or '1048576') -> bytes, as the operations manual
    writes sizes. Always more than 0: a size of 0 would rotate a log on every record or refuse every body."""
    if isinstance(text, bool):
        raise ValueError(f"cannot read size {text!r}: write e.g. 100MB, 1GB or a number of bytes")
    size = text if isinstance(text, int) else _size_from_text(str(text))
    if size <= 0:
        raise ValueError(f"size {text!r} must be more than 0 bytes: write e.g. 100MB, 1GB or a number of bytes")
    return size


def _size_from_text(text: str) -> int:
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit) and upper[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(upper[: -len(unit)]) * factor)
    if upper.isdigit():
        return int(upper)
    raise ValueError(f"cannot read size {text!r}: write e.g. 100MB, 1GB or a number of bytes")


def config_differences(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts (``to_dict``)."""
    keys = sorted(set(before) | set(after))
    out = []
    for key in keys:
        a, b, name = before.get(key), after.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{name}.")
        elif a != b:
            out.append(name)
    return out
