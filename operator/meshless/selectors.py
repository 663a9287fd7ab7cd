"""Kubernetes LabelSelector matching (pure), as the API server and CNIs evaluate it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector the API would refuse; the message names the field."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        # NotIn: absent keys match, as in apimachinery's labels.Selector
        return not present or labels[self.key] not in self.values

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.operator in ("In", "NotIn"):
            out["values"] = sorted(self.values)
        return out


@dataclass(frozen=True)
class Selector:
    """matchLabels and matchExpressions ANDed. An empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.expressions
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.expressions:
            out["matchExpressions"] = [r.to_json() for r in self.expressions]
        return out


def parse_selector(raw: Mapping[str, Any] | None, field_path: str = "selector") -> Selector:
    """A LabelSelector from its JSON form. Raises SelectorError naming the field."""
    if not raw:
        return Selector()
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        raise SelectorError(f"{field_path}.matchLabels must be a map")
    requirements: list[Requirement] = []
    for i, expr in enumerate(raw.get("matchExpressions") or ()):
        where = f"{field_path}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping) or not expr.get("key"):
            raise SelectorError(f"{where}.key is required")
        op = expr.get("operator")
        if op not in OPERATORS:
            raise SelectorError(f"{where}.operator {op!r} is not one of {', '.join(OPERATORS)}")
        values = frozenset(str(v) for v in expr.get("values") or ())
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"{where}: operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{where}: operator {op} takes no values")
        requirements.append(Requirement(str(expr["key"]), op, values))
    return Selector(
        match_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        expressions=tuple(requirements),
    )
