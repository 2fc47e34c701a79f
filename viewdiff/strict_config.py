"""Strict dataclass configs: YAML that may set only known keys, typed dotted overrides, --help.

The mechanism behind ``viewdiff.config`` (which holds the schema): a nested frozen dataclass tree
is filled from a (partial) mapping, every key and value checked against the field types
(bool, int, float, str, Literal, X | None, tuple[X, ...], tuple[X, X, X], nested sections), with
errors that name the key and where it came from (the file, or the override). A partial nested
section fills in from its parent's default (``sds.fit`` from ``SdsConfig().fit``), not from its
class's. ``check_ranges`` is what the sections' own ``check()`` methods share.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import re
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that reads 5e-5 as a float (YAML 1.2) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML follows YAML 1.1, where a float needs a dot: without this, `lr: 5e-5` is a string.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The documentation string written under each field of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    class_def = tree.body[0]
    assert isinstance(class_def, ast.ClassDef)  # the source of a class is its class statement
    body = class_def.body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _type_name(tp: Any) -> str:
    """Short readable name of a field type, for messages and --help."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple and ... in get_args(tp):
        return f"tuple[{_type_name(get_args(tp)[0])}, ...]"
    if origin is tuple:
        return f"tuple[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, key: str, source: str, default: Any = None) -> Any:
    """Check ``value`` against the field type ``tp``; return it as the dataclass stores it (a
    nested section filled in from ``default``, the field's default)."""
    origin = get_origin(tp)
    # A field type, never an instance: isinstance narrows is_dataclass to the class.
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} is a section; expected a mapping, got {value!r}")
        return build(tp, value, source, prefix=f"{key}.", base=default)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _check_value(value, inner, key, source)
    if origin is Literal:
        if value in get_args(tp):
            return value
    elif origin is tuple:
        fixed = ... not in get_args(tp)  # tuple[float, float, float]: exactly that many
        if isinstance(value, list | tuple) and (not fixed or len(value) == len(get_args(tp))):
            item_type = get_args(tp)[0]
            return tuple(
                _check_value(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)
            )
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # a NaN learning rate or guidance runs to garbage
                raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{source}: {key} expects {_type_name(tp)}, got {value!r}")


def _unknown_key(cls: type, name: str, prefix: str, source: str) -> ConfigError:
    """Error for a key that is not a field of ``cls``, with the closest known keys (a key of a
    nested section first: ``sds.feature_lr`` is ``sds.fit.feature_lr``)."""
    names = [f.name for f in dataclasses.fields(cls)]
    close = [
        f"{section}.{name}"
        for section, tp in get_type_hints(cls).items()
        if dataclasses.is_dataclass(tp) and name in {f.name for f in dataclasses.fields(tp)}
    ]
    close += difflib.get_close_matches(name, names, n=3 - len(close), cutoff=0.6)
    close += [n for n in names if name.lower() in n and n not in close][: 3 - len(close)]
    if close:
        hint = "did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?"
    else:
        hint = f"known keys here: {', '.join(names)}"
    return ConfigError(f"{source}: unknown key '{prefix}{name}'; {hint}")


def build(
    cls: type, values: Mapping[str, Any], source: str, prefix: str = "", base: Any = None
) -> Any:
    """Instance of the dataclass ``cls`` from a (partial) mapping, checking every key and type;
    keys not in the mapping keep their value in ``base`` (default: ``cls()``)."""
    hints, base = get_type_hints(cls), cls() if base is None else base
    kwargs = {}
    for name, value in values.items():
        if name not in hints:
            raise _unknown_key(cls, str(name), prefix, source)
        kwargs[name] = _check_value(value, hints[name], prefix + name, source, getattr(base, name))
    return dataclasses.replace(base, **kwargs)


_RANGES = {
    "at least 1": lambda v: v >= 1,
    ">= 0": lambda v: v >= 0,
    "positive": lambda v: v > 0,
    "finite": math.isfinite,
    "finite and positive": lambda v: math.isfinite(v) and v > 0,
    "finite and >= 0": lambda v: math.isfinite(v) and v >= 0,
    "finite and non-negative": lambda v: math.isfinite(v) and v >= 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "finite and in [0, 1)": lambda v: 0 <= v < 1,
}
"""The ranges ``check_ranges`` knows, by the words of its messages (NaN fails every one)."""


def check_ranges(section: Any, prefix: str, ranges: Mapping[str, str]) -> None:
    """Raise a ConfigError "<prefix><key> must be <range>, got <value>" for the first key of
    ``section`` outside its range (``ranges``: key -> a range of ``_RANGES``)."""
    for key, wanted in ranges.items():
        value = getattr(section, key)
        if not _RANGES[wanted](value):
            raise ConfigError(f"{prefix}{key} must be {wanted}, got {value}")


def _parse_override(text: str, tp: Any, key: str) -> Any:
    """The value of ``key=text`` read as the field's type (strings stay verbatim)."""
    if get_origin(tp) in (Union, types.UnionType):
        if text in ("null", "None", "~"):
            return None
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
    if tp is str or (get_origin(tp) is Literal and all(isinstance(a, str) for a in get_args(tp))):
        return text
    if get_origin(tp) is tuple and not text.startswith("["):
        # `data.categories=teddybear,hydrant` reads as a list; an empty value as ().
        items = [item.strip() for item in text.split(",") if item.strip()]
        return [_parse_override(item, get_args(tp)[0], key) for item in items]
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {key}={text}: not a valid value ({error})") from None


def apply_override(root: type, values: dict[str, Any], override: str) -> None:
    """Set one ``section.key=value`` in the nested dict ``values`` of the dataclass ``root``."""
    source = f"override '{override}'"
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"{source}: expected key=value, e.g. train.learning_rate=1e-4")
    cls, node, parts = root, values, key.strip().split(".")
    for depth, name in enumerate(parts):
        hints = get_type_hints(cls)
        if name not in hints:
            raise _unknown_key(cls, name, ".".join(parts[:depth]) + "." if depth else "", source)
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hints[name]):
                raise ConfigError(f"{source}: '{key}' is a section; set one of its keys")
            value = _parse_override(text.strip(), hints[name], key)
            node[name] = _check_value(value, hints[name], key, source)
        elif not dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"{source}: '{'.'.join(parts[: depth + 1])}' has no sub-keys")
        else:
            cls, node = hints[name], node[name]


PACKAGED_PRESETS = Path(__file__).resolve().parent / "configs"
"""The presets shipped in the package (the repository's configs/ links here)."""


def preset_path(path: str | Path) -> Path:
    """``path`` if it is a file, else the packaged preset of that name (``co3d_sd21.yaml`` or
    ``configs/co3d_sd21.yaml`` from any folder, as an installed viewdiff-train needs)."""
    path = Path(path)
    packaged = PACKAGED_PRESETS / path.name
    if not path.is_file() and path.parent in (Path(), Path("configs")) and packaged.is_file():
        return packaged
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A preset's contents as a mapping (a path, or a packaged preset's name); errors name the
    file."""
    path = preset_path(path)
    if not path.is_file():
        presets = sorted(p.name for p in PACKAGED_PRESETS.glob("*.yaml"))
        known = f" (packaged presets: {', '.join(presets)})" if presets else ""
        raise ConfigError(f"config file not found: {path}{known}")
    try:
        with path.open() as stream:  # a stream, so that YAML errors name the file
            values = yaml.load(stream, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML in {path}: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {values!r}")
    return values


def describe_fields(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """Lines of ``--help`` text: every key with its type, default and documentation."""
    lines, docs, hints = [], field_docs(cls), get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a nested section
            lines += [f"{key}: {docs.get(f.name, '')}"]
            lines += describe_fields(tp, f"{key}.", getattr(defaults, f.name))
            continue
        default = getattr(defaults, f.name)
        lines += [
            f"  {key} ({_type_name(tp)}, default {default!r})",
            f"      {docs.get(f.name, '')}",
        ]
    return lines
