"""`meshless run`, `version`, `verify` and `ca`; the user commands come from meshless.commands."""

from __future__ import annotations

import argparse
import sys

from meshless import __version__
from meshless.logs import configure_logging
from meshless.settings import SettingsError, add_arguments, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshless", description="mTLS without a service mesh")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the operator")
    add_arguments(run_parser)
    commands.add_parser("version", help="print the version")
    _add_ca(commands)
    verify_parser = commands.add_parser(
        "verify",
        help="probe one endpoint and print the mode it enforces",
        description="Handshake with HOST:PORT without a client certificate, with the identity "
        "in --cert-dir, and in plaintext; print what was observed and the verdict (STRICT, "
        "PERMISSIVE, DISABLE, PLAINTEXT, WRONG_IDENTITY, UNTRUSTED, UNREACHABLE, "
        "IDENTITY_REFUSED, INCONCLUSIVE) alone on the last line.",
    )
    from meshless.probe.command import add_verify_arguments, run_verify  # no Kopf

    add_verify_arguments(verify_parser)
    from meshless.commands import register_user_commands  # inspect, status, describe, renew

    register_user_commands(commands)
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return int(args.handler(args))

    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "ca":
        from meshless.ca_cli import run_ca_command

        return run_ca_command(args)
    if args.command == "verify":
        return run_verify(args)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"meshless: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.runtime.log_format)
    from meshless.operator import run  # imports Kopf; keep `version` light

    try:
        run(settings)
    except SettingsError as exc:  # a busy port, unreadable credentials: one line
        print(f"meshless: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_ca(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`meshless ca status` / `meshless ca rotate` (meshless.ca_cli; light to import)."""
    from meshless.ca_cli import add_ca_command

    add_ca_command(commands)


if __name__ == "__main__":
    sys.exit(main())
