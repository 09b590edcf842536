"""PyIceberg row filters for tests, typed: ``eq("site_id", site)`` for
``EqualTo(term=Reference("site_id"), value=literal(site))``.

PyIceberg's expressions accept ``EqualTo("site_id", site)`` at run time, but their declared
types want the keyword form the project code writes; these helpers keep the tests short and
mypy strict.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.typedef import L

__all__ = ["between", "eq", "isin"]


def eq(column: str, value: L) -> EqualTo:
    """Rows whose ``column`` equals ``value``."""
    return EqualTo(term=Reference(column), value=literal(value))


def isin(column: str, values: Iterable[L]) -> In:
    """Rows whose ``column`` is one of ``values``."""
    return In(term=Reference(column), values={literal(v) for v in values})


def between(column: str, start: L, end: L) -> BooleanExpression:
    """Rows with ``start <= column < end`` (a half-open range, as windows are)."""
    return And(GreaterThanOrEqual(term=Reference(column), value=literal(start)),
               LessThan(term=Reference(column), value=literal(end)))
