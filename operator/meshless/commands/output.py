"""How commands print (pure): tables for people, JSON or YAML for tools, and times."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")
NONE = "-"  # what a table shows where a value is absent


class CommandError(Exception):
    """A failure to report as one line on stderr, exit code 1."""


def render_data(data: Any, fmt: str) -> str:
    """`data` as JSON (2-space indent) or YAML (keys in the order given)."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "yaml":
        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).rstrip("\n")
    raise ValueError(f"not a data format: {fmt}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl; None shows as "-"."""
    cells = [[NONE if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *cells]:
        line = "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
        lines.append(line.rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """`Label:  value` lines with the values aligned, like `kubectl describe`."""
    width = max((len(label) for label, _ in pairs), default=0) + 1
    return "\n".join(
        f"{(label + ':').ljust(width)}  {NONE if value is None or value == '' else value}"
        for label, value in pairs
    )


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 timestamp as the API writes it ("...Z" or an offset), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_duration(delta: timedelta) -> str:
    """Two units at most, like kubectl's ages: 23h59m, 6d4h, 42s; negative as "-5m"."""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [(v, u) for v, u in parts if v]
    if not shown:
        return "0s"
    first = parts.index(shown[0])
    picked = [(v, u) for v, u in parts[first : first + 2] if v]
    return sign + "".join(f"{v}{u}" for v, u in picked)


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def condition_summary(obj: Mapping[str, Any], type_: str) -> str | None:
    """ "True", or "False (Reason)"; None when the condition is absent."""
    cond = condition(obj, type_)
    if cond is None:
        return None
    status = str(cond.get("status") or "Unknown")
    reason = cond.get("reason")
    return status if status == "True" or not reason else f"{status} ({reason})"
