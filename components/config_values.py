"""Strict values for every setting: one parser for command-line flags, ``--set``, KFP
parameters and the step configs themselves.

A value that is not exactly one of a setting's allowed values stops with the setting's
name and what it accepts, instead of being read as something else: ``"true"`` is not a
``knowledge_distillation`` switch (auto/on/off), ``"FP16"`` is not a precision, ``"yes"``
is not a boolean and ``"1.5"`` is not an integer.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

BOOLEAN_WORDS = {"true": True, "false": False}


class ParameterError(ValueError):
    """A setting given a value it does not accept; names the setting and what it accepts."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}: {value!r} is not allowed; expected {allowed}")


def _optional_inner(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(annotation, False)``."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return inner[0], True
    return annotation, False


def describe_allowed(annotation: Any) -> str:
    """What a setting of this type accepts, in words, for error messages and ``--help``."""
    inner, optional = _optional_inner(annotation)
    suffix = " (or empty for none)" if optional else ""
    if get_origin(inner) is typing.Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(inner)) + suffix
    if inner is bool:
        return "true or false" + suffix
    if inner is int:
        return "an integer" + suffix
    if inner is float:
        return "a finite number" + suffix
    if get_origin(inner) is tuple:
        items = get_args(inner)
        if len(items) == 2 and items[1] is Ellipsis:
            return f"a list of {describe_allowed(items[0])}" + suffix
        return f"{len(items)} values ({', '.join(describe_allowed(item) for item in items)})" + suffix
    return "a string" + suffix


def parse_value(name: str, annotation: Any, raw: Any) -> Any:
    """``raw`` (a string from a command line or UI, or an already typed value) as ``annotation``.

    Booleans are ``true``/``false`` in any case; enums (``Literal``) are exactly one of
    their values; integers are whole numbers; floats are finite. ``X | None`` accepts
    None, and an empty string as None.

    Raises:
        ParameterError: naming ``name`` and the allowed values.
    """
    inner, optional = _optional_inner(annotation)
    if raw is None or (optional and isinstance(raw, str) and raw == ""):
        if optional:
            return None
        raise ParameterError(name, raw, describe_allowed(annotation))
    if not isinstance(raw, str):
        check_value(name, annotation, raw)
        return raw
    text = raw.strip()
    allowed = describe_allowed(annotation)
    origin = get_origin(inner)
    if origin is typing.Literal:
        for choice in get_args(inner):
            if text == str(choice):
                return choice
        raise ParameterError(name, raw, allowed)
    if inner is bool:
        if text.lower() in BOOLEAN_WORDS:
            return BOOLEAN_WORDS[text.lower()]
        raise ParameterError(name, raw, allowed)
    if inner is int:
        try:
            return int(text, 10)
        except ValueError:
            raise ParameterError(name, raw, allowed) from None
    if inner is float:
        try:
            value = float(text)
        except ValueError:
            raise ParameterError(name, raw, allowed) from None
        if not math.isfinite(value):
            raise ParameterError(name, raw, allowed)
        return value
    if origin is tuple:
        items = get_args(inner)
        parts = text.replace(",", " ").split()
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(parse_value(name, items[0], part) for part in parts)
        if len(parts) != len(items):
            raise ParameterError(name, raw, allowed)
        return tuple(parse_value(name, item, part) for item, part in zip(items, parts))
    return raw


def check_value(name: str, annotation: Any, value: Any) -> None:
    """Raise :class:`ParameterError` unless ``value`` (already typed) fits ``annotation``."""
    inner, optional = _optional_inner(annotation)
    if value is None:
        if optional:
            return
        raise ParameterError(name, value, describe_allowed(annotation))
    origin = get_origin(inner)
    ok = True
    if origin is typing.Literal:
        ok = any(value == choice and type(value) is type(choice) for choice in get_args(inner))
    elif inner is bool:
        ok = isinstance(value, bool)
    elif inner is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif inner is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif inner is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        items = get_args(inner)
        ok = isinstance(value, (tuple, list))
        if ok and len(items) == 2 and items[1] is Ellipsis:
            for item in value:
                check_value(name, items[0], item)
        elif ok:
            ok = len(value) == len(items)
            for item_type, item in zip(items, value) if ok else ():
                check_value(name, item_type, item)
    if not ok:
        raise ParameterError(name, value, describe_allowed(annotation))


def check_config(config: Any) -> None:
    """Check every scalar field of a config dataclass against its annotation.

    Nested config dataclasses are left to their own ``__post_init__``.
    """
    hints = get_type_hints(type(config))
    for field in dataclasses.fields(config):
        annotation = hints[field.name]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            continue
        check_value(field.name, annotation, getattr(config, field.name))
