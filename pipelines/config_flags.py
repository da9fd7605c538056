"""Command-line flags generated from the steps' config dataclasses.

Each step's config is the one place its settings are defined; the CLI derives
``--flag-name`` options (type, default, help) from the dataclass fields instead of
repeating them. Values are parsed by the same strict parser as ``--set`` and the KFP
parameters (``components.config_values``). A nested config (the encoder settings, the
model-profile overrides) gets its fields as flags too, under the prefix its field's
metadata names (``flag_prefix``; default ``<field>_``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

from components.config_values import ParameterError, parse_value


def _field_help(cls: type, name: str) -> str:
    doc = cls.__doc__ or ""
    match = re.search(rf"^\s+{re.escape(name)}: (.+?)(?=^\s+\w+: |\Z)", doc, re.MULTILINE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else ""


def _strict_type(name: str, annotation: Any):
    def parse(text: str) -> Any:
        try:
            return parse_value(name, annotation, text)
        except ParameterError as error:
            raise argparse.ArgumentTypeError(f"{error.value!r} is not allowed; expected {error.allowed}") from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _flag_keywords(name: str, annotation: Any) -> dict:
    """argparse keywords for a field annotation: a strict ``type`` and, for lists, ``nargs``."""
    inner = annotation
    if get_origin(annotation) in (typing.Union, types.UnionType):
        inner = next(a for a in get_args(annotation) if a is not type(None))
    keywords: dict = {"type": _strict_type(name, inner)}
    if get_origin(inner) is typing.Literal:
        keywords["metavar"] = "{" + ",".join(str(choice) for choice in get_args(inner)) + "}"
    elif inner is bool:
        keywords["metavar"] = "{true,false}"
    elif get_origin(inner) is tuple:
        items = get_args(inner)
        variadic = len(items) == 2 and items[1] is Ellipsis
        keywords.update(type=_strict_type(name, items[0]), nargs="*" if variadic else len(items))
    return keywords


def _nested_prefix(field: dataclasses.Field) -> str:
    return field.metadata.get("flag_prefix", f"{field.name}_")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                     skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of the dataclass ``cls`` (and of its nested configs);
    defaults stay the dataclass's."""
    hints = get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if field.name in skip:
            continue
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            add_config_flags(parser, annotation, prefix=prefix + _nested_prefix(field))
            continue
        group.add_argument(f"--{(prefix + field.name).replace('_', '-')}", dest=f"{prefix}{field.name}",
                           default=None, help=_field_help(cls, field.name), **_flag_keywords(field.name, annotation))


def config_from_flags(cls: type, namespace: argparse.Namespace, prefix: str = "", **fixed: Any) -> Any:
    """Build ``cls`` from the flags that were given, the dataclass defaults for the rest."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if field.name in fixed:
            continue
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            values[field.name] = config_from_flags(annotation, namespace, prefix + _nested_prefix(field))
            continue
        value = getattr(namespace, f"{prefix}{field.name}", None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(fixed)
    return cls(**values)
