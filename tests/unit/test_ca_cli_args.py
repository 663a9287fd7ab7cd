"""`meshless ca status|rotate` take -n, --ca-source and --kubeconfig before or after the
subcommand, as every other command takes its flags after it."""

from __future__ import annotations

import argparse

import pytest

from meshless.ca_cli import add_ca_command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshless")
    add_ca_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["ca", *argv])


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "-n", "ops", "--ca-source", "corp-ca", "--kubeconfig", "/k"),
        ("-n", "ops", "--ca-source", "corp-ca", "--kubeconfig", "/k", "status"),
        ("-n", "elsewhere", "status", "-n", "ops", "--ca-source", "corp-ca", "--kubeconfig", "/k"),
    ],
)
def test_flags_after_or_before_the_subcommand(argv: tuple[str, ...]) -> None:
    args = parse(*argv)
    assert (args.ca_command, args.namespace, args.ca_source, args.kubeconfig) == (
        "status",
        "ops",
        "corp-ca",
        "/k",
    )


def test_rotate_takes_them_after_too_and_defaults_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHLESS_NAMESPACE", raising=False)
    args = parse("rotate", "--intermediate", "-n", "ops")
    assert (args.ca_command, args.namespace, args.intermediate) == ("rotate", "ops", True)
    defaults = parse("status")
    assert (defaults.namespace, defaults.ca_source, defaults.kubeconfig) == (
        "meshless-system",
        "self-signed",
        None,
    )
