"""Ports at start: two options on one port, or a port another process listens on, stop the
operator with one line naming the flag and its variable."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from meshless.settings import (
    EndpointSettings,
    Settings,
    SettingsError,
    WebhookSettings,
    check_listen_ports,
    load_settings,
)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def test_two_options_on_one_port_are_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(env={"MESHLESS_METRICS_PORT": "9443"})
    assert str(refused.value) == (
        "invalid --metrics-port / MESHLESS_METRICS_PORT: 9443 is also --webhook-port"
    )


def test_a_busy_port_is_one_line_naming_its_flag(busy_port: int) -> None:
    settings = Settings(
        endpoints=EndpointSettings(metrics_port=busy_port, health_port=free_port()),
        webhook=WebhookSettings(port=free_port()),
    )
    with pytest.raises(SettingsError) as refused:
        check_listen_ports(settings)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        f"invalid --metrics-port / MESHLESS_METRICS_PORT: cannot listen on 0.0.0.0:{busy_port}: "
    )
    assert "in use" in message


def test_the_webhook_port_is_checked_on_its_host(busy_port: int) -> None:
    settings = Settings(
        webhook=WebhookSettings(host="127.0.0.1", port=busy_port),
        endpoints=EndpointSettings(metrics_port=free_port(), health_port=free_port()),
    )
    with pytest.raises(SettingsError) as refused:
        check_listen_ports(settings)
    assert f"--webhook-port / MESHLESS_WEBHOOK_PORT: cannot listen on 127.0.0.1:{busy_port}" in str(
        refused.value
    )


def test_free_ports_pass_and_stay_free() -> None:
    ports = (free_port(), free_port(), free_port())
    settings = Settings(
        webhook=WebhookSettings(port=ports[0]),
        endpoints=EndpointSettings(metrics_port=ports[1], health_port=ports[2]),
    )
    check_listen_ports(settings)
    for port in ports:  # the probe sockets are closed again
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
