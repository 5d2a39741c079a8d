"""Type-checked values for frozen config dataclasses: where raw TOML/CLI values get typed."""

import ast
import dataclasses
import inspect
import math
import textwrap
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar, get_args, get_origin


class DataclassInstance(Protocol):
    """Any dataclass instance (what `dataclasses.asdict` and `replace` accept)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


D = TypeVar("D", bound=DataclassInstance)


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting allows, as error messages (and the docs) state them:
    `Bound(0, 1, high_open=True)` is [0, 1)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        """`in [1, 10000]`, `in (0, 10]`, `>= -1`."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float | None) -> str:
    if value is not None and float(value).is_integer():
        return str(int(value))
    return f"{value:g}" if value is not None else "-inf"


def check_bounds(section: str, config: Any, bounds: Mapping[str, Bound]) -> None:
    """ValueError naming the first field of `config` outside its bound, and the bound; a list
    field's bound holds for each of its values."""
    for name, bound in bounds.items():
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if not all(bound.holds(v) for v in values):
            shown = list(value) if isinstance(value, tuple) else value
            raise ValueError(f"{section}.{name} must be {bound}, got {shown!r}")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring: the string written on the line below the field in the class
    body (the attribute-docstring convention that Sphinx and mkdocstrings read)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def describe(tp: Any) -> str:
    """A short human name for a field type, for error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        item = get_args(tp)[0]
        return f"a list of {_PLURALS.get(item, describe(item))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ValueError naming `key` and what is expected."""
    origin = get_origin(tp)
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        # inf/nan reach no sensible setting and overflow later (an infinite range, lr = inf).
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ValueError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is Literal:
        ok = isinstance(value, str | int) and value in get_args(tp)
    elif origin is tuple:
        ok = isinstance(value, list | tuple)
        if ok:
            value = tuple(coerce(v, get_args(tp)[0], key) for v in value)
    else:
        raise TypeError(f"unsupported field type {tp} for {key}")
    if not ok:
        raise ValueError(f"{key}: expected {describe(tp)}, got {value!r}")
    return value


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> type of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build(cls: type[D], table: Mapping[str, Any], section: str) -> D:
    """Build dataclass `cls` from a TOML table; unknown keys and wrong types raise ValueError."""
    if not isinstance(table, Mapping):
        raise ValueError(f"[{section}] must be a table, got {table!r}")
    types_ = field_types(cls)
    unknown = sorted(set(table) - set(types_))
    if unknown:
        raise ValueError(
            f"unknown key {section}.{unknown[0]} (known keys: {', '.join(sorted(types_))})"
        )
    values = {k: coerce(v, types_[k], f"{section}.{k}") for k, v in table.items()}
    return cls(**values)


def replace(obj: D, changes: Mapping[str, Any], section: str) -> D:
    """Copy of dataclass `obj` with `changes` applied, type-checked, then validated together."""
    types_ = field_types(type(obj))
    unknown = sorted(set(changes) - set(types_))
    if unknown:
        raise ValueError(
            f"unknown key {section}.{unknown[0]} (known keys: {', '.join(sorted(types_))})"
        )
    typed = {k: coerce(v, types_[k], f"{section}.{k}") for k, v in changes.items()}
    return dataclasses.replace(obj, **typed)


def parse_literal(text: str) -> Any:
    """Parse a `--set` value as TOML (`3e-3`, `true`, `[32, 64]`); bare words are strings."""
    if any(c in text for c in "\r\n"):
        # TOML would read the first line as the value and the rest as more keys, unseen.
        raise ValueError(f"{text!r}: a value must be one line")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ValueError("value nested too deeply") from None
