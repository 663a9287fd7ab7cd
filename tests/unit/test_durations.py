"""Durations as users write them (`90s`, `1h30m`, `30d`) and their shortest spelling."""

from __future__ import annotations

from datetime import timedelta

import pytest

from meshless.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("24h", timedelta(hours=24)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("30d", timedelta(days=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1h2m3s", timedelta(hours=1, minutes=2, seconds=3)),
        ("0s", timedelta(0)),
        (" 10m ", timedelta(minutes=10)),
    ],
)
def test_parse_duration_accepts_go_style_and_days(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["5", "1x", "h1", "1h 2m", "1.5h", "-5m", "10 minutes", "1h30", "m", "500ms", "1H"],
)
def test_parse_duration_rejects_bad_text_and_names_it(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "   "])
def test_parse_duration_rejects_empty_text(text: str) -> None:
    with pytest.raises(ValueError, match="empty duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(minutes=10), "10m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(hours=1, seconds=5), "1h5s"),
        (timedelta(hours=24), "24h"),
        (timedelta(days=30), "720h"),
        (timedelta(seconds=59, milliseconds=900), "59s"),  # whole seconds only
    ],
)
def test_format_duration_is_the_shortest_spelling(delta: timedelta, expected: str) -> None:
    assert format_duration(delta) == expected


@pytest.mark.parametrize(
    "delta",
    [
        timedelta(0),
        timedelta(seconds=1),
        timedelta(seconds=90),
        timedelta(minutes=10),
        timedelta(hours=8),
        timedelta(hours=25, minutes=1, seconds=1),
        timedelta(days=30),
    ],
)
def test_format_then_parse_round_trips(delta: timedelta) -> None:
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize("text", ["90s", "1h30m", "24h", "2d", "10m", "1h0m5s"])
def test_parse_then_format_then_parse_is_stable(text: str) -> None:
    parsed = parse_duration(text)
    assert parse_duration(format_duration(parsed)) == parsed
