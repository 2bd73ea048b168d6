"""Dataclasses <-> plain JSON values, with the conversion compiled once per type.

The controller decodes every relayed token event and every load report (each llumlet
reports up to 20 times a second, with a row per request), so the conversion is on the hot
path: each dataclass type gets a decoder built once from its resolved field types, and
the encoder caches each type's field names. `protocol.py` re-exports both functions.

Unknown keys are ignored (forward compatibility); a missing required key or a wrong type
raises ValueError naming the class and field.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Decoder = Callable[[Any], Any]

_SCALARS = frozenset({str, int, bool, type(None)})


def to_json_dict(obj: Any) -> Any:
    """Dataclasses, enums, tuples -> plain JSON values (infinite floats become strings)."""
    kind = type(obj)
    if kind in _SCALARS:
        return obj
    if kind is float:
        return obj if math.isfinite(obj) else str(obj)
    names = _field_names(kind)  # type: ignore[arg-type]  # types are hashable
    if names is not None:
        return {name: to_json_dict(getattr(obj, name)) for name in names}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_json_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_json_dict(v) for k, v in obj.items()}
    return obj


def to_compact_json_dict(obj: Any) -> dict[str, Any]:
    """`to_json_dict` of a dataclass without the fields that hold their default value: the
    decoder fills those back in. Token events shrink from 13 keys to 4."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            out[f.name] = to_json_dict(value)
    return out


def from_json_dict(cls: type[T], data: Any) -> T:
    """Inverse of `to_json_dict` for the dataclasses of llumctl.protocol and llumctl.policy."""
    result: T = _decoder(cls)(data)  # type: ignore[arg-type]  # types are hashable
    return result


@functools.cache
def _field_names(kind: type) -> tuple[str, ...] | None:
    if not dataclasses.is_dataclass(kind):
        return None
    return tuple(f.name for f in dataclasses.fields(kind))


@functools.cache
def _decoder(hint: Any) -> Decoder:
    """The function that converts a JSON value to `hint` (built once per type)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _optional(_decoder(inner[0])) if len(inner) == 1 else _identity
    if origin is tuple:
        return _tuple_of(_decoder(args[0]) if args else _identity)
    if origin is dict or hint is Any:
        return _identity
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_decoder(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _optional(hint)
    return _SCALAR_DECODERS.get(hint, _identity)


def _identity(value: Any) -> Any:
    return value


def _optional(decode: Decoder) -> Decoder:
    def convert(value: Any) -> Any:
        return None if value is None else decode(value)

    return convert


def _tuple_of(item: Decoder) -> Decoder:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return tuple(item(v) for v in value)

    return convert


def _dataclass_decoder(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = tuple((f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls))

    def convert(data: Any) -> Any:
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for name, decode in fields:
            if name in data:
                try:
                    kwargs[name] = decode(data[name])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{cls.__name__}.{name}: {exc}") from None
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"{cls.__name__}: {exc}") from None

    return convert


def _float(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int or kind is str:
        return float(value)  # a str is "inf"/"-inf"/"nan" from `to_json_dict`
    if value is None:
        return None
    raise ValueError(f"expected a number, got {value!r}")


def _exact(kind: type, what: str) -> Decoder:
    # `type(...) is`: True must not pass as an int, nor 1 as a bool.
    def convert(value: Any) -> Any:
        if type(value) is kind or value is None:
            return value
        raise ValueError(f"expected {what}, got {value!r}")

    return convert


_SCALAR_DECODERS: dict[Any, Decoder] = {
    float: _float,
    int: _exact(int, "an integer"),
    bool: _exact(bool, "true/false"),
    str: _exact(str, "a string"),
}
