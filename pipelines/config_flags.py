"""Command-line flags generated from the steps' config dataclasses.

Each step's config is the one place its settings are defined; the CLI derives
``--flag-name`` options (type, default, help) from the dataclass fields instead of
repeating them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints


def _field_help(cls: type, name: str) -> str:
    doc = cls.__doc__ or ""
    match = re.search(rf"^\s+{re.escape(name)}: (.+?)(?=^\s+\w+: |\Z)", doc, re.MULTILINE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else ""


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(annotation: Any) -> tuple[Any, dict]:
    """argparse ``type`` and extra keywords for a field annotation."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _converter(inner[0])
    if origin is typing.Literal:
        return type(args[0]), {"choices": list(args)}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0], {"nargs": "*"}
        return args[0], {"nargs": len(args)}
    if annotation is bool:
        return _parse_bool, {"metavar": "BOOL"}
    return annotation, {}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                     skip: tuple[str, ...] = ()) -> None:
    """Add one option per scalar field of the dataclass ``cls``; defaults stay the dataclass's."""
    hints = get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if field.name in skip or (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
            continue
        kind, extra = _converter(annotation)
        group.add_argument(f"--{(prefix + field.name).replace('_', '-')}", dest=f"{prefix}{field.name}",
                           type=kind, default=None, help=_field_help(cls, field.name), **extra)


def config_from_flags(cls: type, namespace: argparse.Namespace, prefix: str = "", **fixed: Any) -> Any:
    """Build ``cls`` from the flags that were given, the dataclass defaults for the rest."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        value = getattr(namespace, f"{prefix}{field.name}", None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(fixed)
    return cls(**values)
