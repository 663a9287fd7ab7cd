"""Durations as users write them: Go style (`90s`, `10m`, `24h`, `1h30m`) plus days (`30d`)."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)(d|h|m|s)")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m`, `24h`, `30d`, `45s`. Raises ValueError naming the bad text."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    pos = 0
    seconds = 0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"invalid duration {text!r}: use units d, h, m, s, e.g. 24h or 1h30m")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest `XhYmZs` spelling of a whole number of seconds (`0s` for zero)."""
    total = int(delta.total_seconds())
    if total == 0:
        return "0s"
    out = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
