"""The user commands: `meshless inspect`, `status`, `describe pod`, `renew`.

`register_user_commands(subparsers)` adds them to the `meshless` parser; each sets a
`handler` (argparse.Namespace -> exit code) that the dispatcher in cli.py calls. Exit codes:
0 done, 1 a failure printed as one line on stderr, 2 a usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _guarded(command: str, handler_path: str) -> Handler:
    """Import the handler when it runs (keeps `meshless version` light) and turn a
    CommandError into one line on stderr and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        from importlib import import_module

        from meshless.commands.output import CommandError

        module, _, name = handler_path.rpartition(".")
        handler: Handler = getattr(import_module(module), name)
        try:
            return handler(args)
        except CommandError as exc:
            print(f"meshless {command}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def register_user_commands(commands: Any) -> None:
    """Add inspect, status, describe and renew to `commands` (an argparse subparsers action)."""
    from meshless.commands.connect import (
        add_connection_arguments,
        add_output_argument,
        add_policy_arguments,
    )

    inspect = commands.add_parser(
        "inspect",
        help="a WorkloadIdentity's certificate: SPIFFE ID, SANs, validity, chain",
        description="Read the identity's Secret and report its certificate: SPIFFE ID, SANs, "
        "serial, validity and time left, issuer, whether tls.crt chains to ca.crt, and the "
        "renewal time from status. Exit 1 when there is no certificate to report.",
    )
    inspect.add_argument("name", help="WorkloadIdentity name")
    add_connection_arguments(inspect, all_namespaces=False)
    add_output_argument(inspect)
    inspect.set_defaults(handler=_guarded("inspect", "meshless.commands.handlers.run_inspect"))

    status = commands.add_parser(
        "status",
        help="policies and identities in one view",
        description="MtlsPolicies (mode, scope, conflicts, selected/injected pods, STRICT "
        "ports proven) and WorkloadIdentities (ready, serial, expiry, the policies whose pods "
        "use them). Conflicts are resolved live with the operator's rules.",
    )
    add_connection_arguments(status, all_namespaces=True)
    add_policy_arguments(status)
    add_output_argument(status)
    status.set_defaults(handler=_guarded("status", "meshless.commands.handlers.run_status"))

    describe = commands.add_parser(
        "describe",
        help="why a pod has the mTLS mode it has",
        description="The effective mode of each port of a pod, the policy that decided it and "
        "the ones ignored, its identity, whether it was injected, and its last probe result.",
    )
    describe.add_argument("kind", choices=("pod", "pods", "po"), help="what to describe")
    describe.add_argument("name", help="pod name")
    add_connection_arguments(describe, all_namespaces=False)
    add_policy_arguments(describe)
    add_output_argument(describe)
    describe.set_defaults(handler=_guarded("describe", "meshless.commands.handlers.run_describe"))

    renew = commands.add_parser(
        "renew",
        help="a new key and certificate now (a key that may have leaked)",
        description="Empty tls.key in the identity's Secret, so the operator reissues at "
        "once with a new private key, and wait until status.serialNumber changes. The old "
        "certificate stays valid until it expires (X.509 has no revocation here): see "
        "docs/revocation.md.",
    )
    renew.add_argument("name", help="WorkloadIdentity name")
    add_connection_arguments(renew, all_namespaces=False)
    renew.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the new certificate (default 60; 0: do not wait)",
    )
    add_output_argument(renew)
    renew.set_defaults(handler=_guarded("renew", "meshless.commands.handlers.run_renew"))
