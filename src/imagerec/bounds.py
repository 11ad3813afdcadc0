"""The valid values of a numeric setting or flag, declared once beside it and checked one way (and the
:class:`Settings` base every settings class of ``imagerec.settings`` validates through).

A settings field declares its bound where it is defined (``epochs: int | None = integer(None, ge=1)``, see
``imagerec.settings``); ``Settings.validate`` checks it, and errors name the flag the user typed: "--epochs must be
>= 1, got 0". The few CLI flags that are no setting (``data inspect --workers``) declare a :class:`Bound` beside
their command and check it with :func:`require`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Self

from imagerec.errors import ImagerecError, did_you_mean


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting or flag accepts, written once and checked by ``validate`` and the CLI.

    ``ge``/``gt`` bound it below, ``le``/``lt`` above (None: unbounded); ``choices`` lists the only values allowed;
    ``integer`` refuses fractions. NaN and infinities are never accepted. ``note`` says what special values mean
    ("0 = off") and may name the field's ``{default}``.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[int, ...] = ()
    integer: bool = False
    note: str = ""

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if not isinstance(value, numbers.Integral) and (self.integer or not math.isfinite(value)):
            return False
        if self.choices:
            return value in self.choices
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def expected(self) -> str:
        """What the bound asks for, in words: ``>= 1``, ``in [0, 1)``, ``1 or 3``."""
        if self.choices:
            return " or ".join(str(c) for c in self.choices)
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        high = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return "a finite number"

    def message(self, label: str, value: object, default: object = None) -> str:
        """``--epochs must be >= 1, got 0``: one line that names the flag, the range and the value received."""
        kind = ""
        if not self.choices and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            if self.integer or not isinstance(value, numbers.Real):
                kind = "an integer " if self.integer else "a number "
        note = f" ({self.note.format(default=default)})" if self.note else ""
        got = repr(value) if isinstance(value, str) else value
        return f"{label} must be {kind}{self.expected()}{note}, got {got}"


def integer(default: int | None, *, flag: str | bool = True, **limits: Any) -> Any:
    """A dataclass field holding an integer within ``limits`` (the keywords of :class:`Bound`).

    ``flag``: True = the CLI flag is the field's name (``max_batch`` -> ``--max-batch``); a string names another
    flag (``"--lr"``); False = no flag (errors then name the field).
    """
    return field(default=default, metadata={"bound": Bound(integer=True, **limits), "flag": flag})


def number(default: float | None, *, flag: str | bool = True, **limits: Any) -> Any:
    """A dataclass field holding a real number within ``limits`` (see :func:`integer`)."""
    return field(default=default, metadata={"bound": Bound(**limits), "flag": flag})


def label_of(f: Field) -> str:
    """How errors name field ``f``: its flag (``--max-batch``), ``--lr (learning_rate)``, or its name."""
    flag = f.metadata.get("flag", True)
    if flag is True:
        return "--" + f.name.replace("_", "-")
    if not flag:
        return f.name
    return flag if flag.lstrip("-").replace("-", "_") == f.name else f"{flag} ({f.name})"


def require(label: str, value: object, bound: Bound, error: type[ImagerecError] = ImagerecError) -> Any:
    """Return ``value`` when it is within ``bound``; raise ``error`` naming ``label`` otherwise.

    For the few CLI flags that are no setting (``data inspect --workers``); settings fields declare their bound.
    """
    if value not in bound:
        raise error(bound.message(label, value))
    return value


# --- what every settings class of imagerec.settings shares -----------------------------------------------------
def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of settings class ``cls`` (where the CLI reads its option defaults).

    Raises:
        ImagerecError: ``cls`` has no field ``name`` (with a did-you-mean).
    """
    by_name = {f.name: f for f in fields(cls)}
    if name not in by_name:
        raise ImagerecError(f"{cls.__name__} has no setting {name!r}{did_you_mean(name, by_name)}")
    f = by_name[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def check_names(names: Iterable[str], valid: Iterable[str], what: str, error: type[ImagerecError]) -> None:
    """Raise ``error`` for the first of ``names`` not in ``valid``, with a did-you-mean (else the valid names)."""
    valid = sorted(valid)
    for name in names:
        if name not in valid:
            hint = did_you_mean(name, valid) or f"; expected one of {', '.join(valid)}"
            raise error(f"unknown {what} {name!r}{hint}")


class Settings:
    """What every settings dataclass shares: ``validate`` (the checks, in order) and a checked ``replace``."""

    #: How an unknown name is called in errors ("unknown video setting 'evry'; did you mean 'every'?").
    _what: ClassVar[str] = "setting"

    @classmethod
    def _error(cls) -> type[ImagerecError]:
        return ImagerecError

    def _checks(self) -> Iterator[tuple[bool, str]]:
        """``(ok, message)`` pairs, lazily: each field within its :class:`Bound`, then :meth:`_rules`."""
        for f in fields(self):  # type: ignore[arg-type]
            bound, value = f.metadata.get("bound"), getattr(self, f.name)
            if bound is not None and value is not None:
                yield value in bound, bound.message(label_of(f), value, f.default)
        yield from self._rules()

    def _rules(self) -> Iterator[tuple[bool, str]]:
        """Checks across fields (``val + test < 1``), after every field passed its own bound."""
        return iter(())

    def validate(self) -> Self:
        """Return ``self`` when every check passes; raise the first failing check's message otherwise."""
        for ok, message in self._checks():
            if not ok:
                raise self._error()(message)
        return self

    def replace(self, **values: Any) -> Self:
        """A validated copy with ``values`` set (``None`` values keep the current setting)."""
        check_names(values, [f.name for f in fields(self)], self._what, self._error())  # type: ignore[arg-type]
        clean = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **clean).validate()  # type: ignore[type-var]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Build from a dict (a config file's section), refusing unknown keys with a did-you-mean."""
        check_names(raw, [f.name for f in fields(cls)], cls._what, cls._error())  # type: ignore[arg-type]
        return cls(**raw).validate()
