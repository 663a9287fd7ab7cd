"""Logging: JSON lines carry time, level, logger and message; one object per line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from meshless.logs import JsonFormatter, configure_logging

QUIETED = ("kubernetes", "urllib3", "kopf.objects")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def parse_lines(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def test_json_lines_have_time_level_logger_message() -> None:
    logger, stream = json_logger("meshless.test.json")
    before = datetime.now(UTC)
    logger.info("issued %s for %s", "serial 1a2b", "shop/payments")
    logger.warning("renewal is late")
    after = datetime.now(UTC)

    entries = parse_lines(stream.getvalue())
    assert len(entries) == 2
    first, second = entries
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "info"
    assert first["logger"] == "meshless.test.json"
    assert first["message"] == "issued serial 1a2b for shop/payments"
    assert second["level"] == "warning"
    assert second["message"] == "renewal is late"
    assert isinstance(first["time"], str)
    moment = datetime.fromisoformat(first["time"])
    assert moment.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= moment <= after + timedelta(seconds=1)


def test_multi_line_message_stays_one_json_line() -> None:
    logger, stream = json_logger("meshless.test.multiline")
    logger.error("first line\nsecond line")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["message"] == "first line\nsecond line"


def test_exception_is_included_in_the_same_object() -> None:
    logger, stream = json_logger("meshless.test.exc")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logger.exception("reconcile failed")
    (entry,) = parse_lines(stream.getvalue())
    assert entry["level"] == "error"
    assert entry["message"] == "reconcile failed"
    assert isinstance(entry["exception"], str)
    assert "RuntimeError: kaput" in entry["exception"]


def test_configure_logging_json_writes_json_lines_to_stderr(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json")
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.level == logging.INFO
    logging.getLogger("meshless.test.configured").info("hello %d", 42)
    logging.getLogger("meshless.test.configured").debug("not at INFO")

    captured = capsys.readouterr()
    assert captured.out == ""
    (entry,) = parse_lines(captured.err)
    assert entry["logger"] == "meshless.test.configured"
    assert entry["message"] == "hello 42"
    assert entry["level"] == "info"


def test_configure_logging_text_is_not_json(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("text")
    logging.getLogger("meshless.test.text").warning("plain words")
    err = capsys.readouterr().err
    assert "WARNING meshless.test.text: plain words" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])


def test_configure_logging_quiets_loggers_that_carry_secrets(restore_logging: None) -> None:
    configure_logging("json", level=logging.DEBUG)
    assert logging.getLogger().level == logging.DEBUG
    for name in QUIETED:
        assert logging.getLogger(name).level == logging.WARNING
