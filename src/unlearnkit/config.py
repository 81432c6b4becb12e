"""Typed, validated configuration dataclasses.

A config is a keyword-only dataclass whose ``constraints`` class variable maps
each field to the values it accepts (an ``Interval``, ``Options``, a type or
``None``); a value passes if any one constraint accepts it. Violations raise
``InvalidConfigError`` in the form
"The 'lr' parameter of FinetuneConfig must be a float in the range (0.0, inf). Got -0.1 instead."
Rules that span several fields go in ``_check_consistency``. A renamed field keeps
its old name working through ``deprecated_names`` ({old: new}): ``from_dict``,
``replace`` and attribute reads accept the old name with a ``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

from .errors import InvalidConfigError


class Constraint:
    def accepts(self, value: Any) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A number of ``kind`` (int or float) between ``low`` and ``high``; None = unbounded."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, Integral):
            return False
        if self.kind is float and not isinstance(value, Real):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        left_closed = self.closed in ("both", "left")
        right_closed = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left_closed)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not right_closed)):
            return False
        return True

    def __str__(self) -> str:
        name = "an int" if self.kind is int else "a float"
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else repr(float(self.low) if self.kind is float else self.low)
        high = "inf" if self.high is None else repr(float(self.high) if self.kind is float else self.high)
        return f"{name} in the range {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options(Constraint):
    values: frozenset

    def __init__(self, *values):
        object.__setattr__(self, "values", frozenset(values))

    def accepts(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:
            return False

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in sorted(self.values, key=str))


@dataclass(frozen=True)
class InstanceOf(Constraint):
    kind: type | tuple
    description: str = ""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.kind) and not (isinstance(value, bool) and self.kind is not bool)

    def __str__(self) -> str:
        if self.description:
            return self.description
        return f"an instance of {getattr(self.kind, '__name__', self.kind)}"


@dataclass(frozen=True)
class NameList(Constraint):
    """A non-empty list of non-empty names; a comma-separated string or a list is stored as a tuple."""

    what: str = "names"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, tuple) and bool(value) and all(isinstance(n, str) and n for n in value)

    @staticmethod
    def normalize(value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return tuple(value) if isinstance(value, list) else value

    def __str__(self) -> str:
        return f"a non-empty list of {self.what}"


def _as_constraint(c: Any) -> Constraint:
    if isinstance(c, Constraint):
        return c
    if c is None:
        return _NoneConstraint()
    if c is bool or c == "boolean":
        return InstanceOf(bool, "a bool")
    if isinstance(c, type):
        return InstanceOf(c, f"an instance of {c.__name__}")
    raise TypeError(f"not a constraint: {c!r}")


class _NoneConstraint(Constraint):
    def accepts(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def check_value(owner: str, name: str, value: Any, constraints: list) -> None:
    cs = [_as_constraint(c) for c in constraints]
    if any(c.accepts(value) for c in cs):
        return
    raise InvalidConfigError(
        f"The {name!r} parameter of {owner} must be {_join([str(c) for c in cs])}. Got {value!r} instead."
    )


@dataclass(kw_only=True)
class Config:
    """Base of every unlearnkit config: validation, ``to_dict`` and ``replace``."""

    constraints: ClassVar[dict[str, list]] = {}
    deprecated_names: ClassVar[dict[str, str]] = {}  # old field name -> current name
    # fields added after caches were keyed on ``to_dict()`` -> the values that reproduce what runs did before the
    # field existed: left out of ``key_dict()`` at those values, so results cached before it keep their keys
    added_fields: ClassVar[dict[str, tuple]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def __getattr__(self, name: str):  # only called for names that are not attributes
        new = type(self).all_deprecated_names().get(name)
        if new is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        _warn_renamed(type(self).__name__, name, new, stacklevel=3)
        return getattr(self, new)

    @classmethod
    def _merged_over_bases(cls, attribute: str) -> dict:
        """A class-level dict ``attribute`` merged over the MRO (subclasses override their bases)."""
        merged: dict = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, attribute, {}) or {})
        return merged

    @classmethod
    def all_deprecated_names(cls) -> dict[str, str]:
        return cls._merged_over_bases("deprecated_names")

    @classmethod
    def rename_deprecated(cls, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """``values`` with deprecated names replaced by current ones (warning once each), and {new: old} used."""
        renamed = cls.all_deprecated_names()
        out, used = dict(values), {}
        for old, new in renamed.items():
            if old not in out:
                continue
            if new in out:
                raise InvalidConfigError(f"{cls.__name__} got both {old!r} and {new!r}; {old!r} is the deprecated "
                                         f"name of {new!r}: give only {new!r}.")
            _warn_renamed(cls.__name__, old, new, stacklevel=4)
            out[new] = out.pop(old)
            used[new] = old
        return out, used

    @classmethod
    def _build(cls, values: dict[str, Any], used: dict[str, str], build):
        try:
            return build(values)
        except InvalidConfigError as e:
            named = [f"{old!r} is now {new!r}" for new, old in used.items() if repr(new) in str(e)]
            if not named:
                raise
            raise InvalidConfigError(f"{e} (deprecated name given: {'; '.join(named)})") from None

    def validate(self) -> None:
        owner = type(self).__name__
        constraints = self.all_constraints()
        for name, allowed in constraints.items():
            if any(isinstance(c, NameList) for c in allowed):
                setattr(self, name, NameList.normalize(getattr(self, name)))
        for f in dataclasses.fields(self):
            allowed = constraints.get(f.name)
            if allowed is not None:
                check_value(owner, f.name, getattr(self, f.name), allowed)
        self._check_consistency()

    @classmethod
    def all_constraints(cls) -> dict[str, list]:
        return cls._merged_over_bases("constraints")

    def _check_consistency(self) -> None:
        """Override for rules that involve several fields."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        values, used = cls.rename_deprecated(values)
        cls._reject_unknown(values)
        return cls._build(values, used, lambda v: cls(**v))

    @classmethod
    def _reject_unknown(cls, values: dict[str, Any]) -> None:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise InvalidConfigError(
                f"Unknown parameter(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                f"allowed: {', '.join(cls.field_names())}."
            )

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def key_dict(self) -> dict[str, Any]:
        """``to_dict()`` for cache keys: ``added_fields`` at a value from before the field existed are left out."""
        return {k: v for k, v in self.to_dict().items() if v not in self.added_fields.get(k, ())}

    def replace(self, **changes):
        changes, used = self.rename_deprecated(changes)
        self._reject_unknown(changes)
        return self._build(changes, used, lambda v: dataclasses.replace(self, **v))

    @classmethod
    def describe(cls) -> list[dict[str, str]]:
        """Each field's name, default, allowed values and help text (for `unlearnkit methods NAME`)."""
        constraints = cls.all_constraints()
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            allowed = _join([str(_as_constraint(c)) for c in constraints[f.name]]) if f.name in constraints else ""
            rows.append({"name": f.name, "default": repr(default), "allowed": allowed,
                         "help": f.metadata.get("help", "")})
        return rows

    @classmethod
    def help_for(cls, name: str) -> str:
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.metadata.get("help", "")
        return ""


def _warn_renamed(owner: str, old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"The {old!r} parameter of {owner} is deprecated since unlearnkit 0.2 and will be removed in 0.4; "
                  f"use {new!r}.", DeprecationWarning, stacklevel=stacklevel)


def field(default: Any, help: str, **kwargs):
    """A dataclass field with its help text (used by the CLI and docs)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)
