"""Component options checked against their declared types and ranges before anything is built.

A component declares its options in its signature; the annotations say what each
accepts, and ``Range`` (inside ``typing.Annotated``) bounds a number::

    def __init__(self, image_dim, text_dim, embed_dim, *,
                 hash_size: Annotated[int, Range(1, 10_000_000)] = 40000,
                 similarity: Literal["dot", "l2"] = "dot"): ...

``check_value`` is what the registry calls for every option a user (or a checkpoint)
gives: a bool is not a number, a string is not a bool, nan is not a learning rate, and
each refusal is one line that says what was given and what is accepted.
"""

from __future__ import annotations

import collections.abc as abc
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from .errors import OptionError

__all__ = ["Range", "check_value", "annotations_of", "describe_type"]


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a numeric option (None: unbounded on that side)."""

    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {_number(self.min)} and {_number(self.max)}"
        return f"at least {_number(self.min)}" if self.min is not None else f"at most {_number(self.max)}"


def _number(value: float) -> str:
    """A bound as a person writes it: whole numbers in full (16777216, not 1.67772e+07), others short (1e-06)."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if origin in (list, tuple, abc.Sequence) and args:
        return f"a list of {_type_name(args[0])}"
    if origin in (list, tuple, abc.Sequence):
        return "a list"
    if origin in (dict, abc.Mapping):
        return "a mapping"
    return getattr(origin or annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (a JSON value) has the type ``annotation`` names; unknown annotations accept anything."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    container = origin or annotation
    if container in (list, tuple, abc.Sequence):
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(v, items[0]) for v in value if items)
    if container in (dict, abc.Mapping):
        return isinstance(value, dict)
    return True  # an annotation this checker does not know (Any, a class): the component checks it itself


def _ranges(annotation: Any) -> list[Range]:
    """The Range bounds declared on ``annotation`` (in an Annotated, also inside an Optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return [m for m in annotation.__metadata__ if isinstance(m, Range)]
    if origin in (Union, types.UnionType):
        return [r for a in typing.get_args(annotation) for r in _ranges(a)]
    return []


def check_value(owner: str, key: str, value: Any, annotation: Any) -> None:
    """Raise OptionError when ``value`` does not fit the option ``key`` of ``owner`` as annotated."""
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"{owner}: option {key}={value} is not a finite number")
    if annotation is None:
        return
    if not _matches(value, annotation):
        origin = typing.get_origin(annotation)
        hint = ""
        if origin is Literal and isinstance(value, str):
            close = difflib.get_close_matches(value, [str(a) for a in typing.get_args(annotation)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"{owner}: option {key}={value!r} is not {_type_name(annotation)}{hint}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for bound in _ranges(annotation):
            if (bound.min is not None and value < bound.min) or (bound.max is not None and value > bound.max):
                raise OptionError(f"{owner}: option {key}={value!r} must be {bound.describe()}")


def annotations_of(factory: Any) -> dict[str, Any]:
    """The option annotations of a component factory (a class's __init__ or a function), resolved; {} if unknown."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # an annotation naming something its module does not import: no checks, as before
        return {}


def describe_type(annotation: Any) -> str:
    """What an option accepts, in words: "int, between 1 and 64", "one of 'dot', 'l2'", "any" when undeclared."""
    if annotation is None:
        return "any"
    ranges = "; ".join(r.describe() for r in _ranges(annotation))
    return _type_name(annotation) + (f", {ranges}" if ranges else "")
