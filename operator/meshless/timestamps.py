"""Time formatting (pure): the one way meshless writes a moment into status, Events and the
CLI's output."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    """`2026-03-04T05:06:07Z`: whole seconds in UTC, as Kubernetes writes metav1.Time. An aware
    moment in another zone is converted to UTC; a naive one is taken as UTC already (the
    Kubernetes and `cryptography` convention), never as the machine's local time."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
