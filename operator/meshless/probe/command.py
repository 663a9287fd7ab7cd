"""`meshless verify HOST:PORT --cert-dir DIR [--spiffe-id ID] [--expect MODE] [--timeout S]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path

from meshless.probe.classify import Verdict
from meshless.probe.endpoint import Expectation, probe_endpoint
from meshless.probe.handshake import DEFAULT_TIMEOUT, ProbeContexts, ProberIdentity
from meshless.probe.report import report_lines, result_to_dict

EXIT_MET = 0
EXIT_NOT_MET = 1
EXIT_USAGE = 2
CERT_DIR_FILES = ("tls.crt", "tls.key", "ca.crt")


class UsageError(Exception):
    """One line for stderr, naming the flag."""


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", metavar="HOST:PORT", help="address to probe ([v6]:port too)")
    parser.add_argument(
        "--cert-dir",
        required=True,
        help="directory with tls.crt, tls.key and ca.crt (an identity Secret's layout): "
        "the prober's identity and the trust bundle",
    )
    parser.add_argument("--spiffe-id", help="the SPIFFE ID the server must present")
    parser.add_argument(
        "--expect",
        type=str.upper,
        choices=[v.value for v in Verdict],
        metavar="MODE",
        help="exit 1 unless the verdict is MODE (STRICT, PERMISSIVE, DISABLE, PLAINTEXT, ...)",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="text (the verdict alone on the last line) or json",
    )
    parser.add_argument(
        "--timeout",
        default=str(DEFAULT_TIMEOUT),
        help=f"seconds per probe step (default {DEFAULT_TIMEOUT:g})",
    )


def parse_endpoint(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"HOST:PORT: {value!r} is not HOST:PORT with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def parse_timeout(value: str) -> float:
    try:
        timeout = float(value)
    except ValueError:
        raise UsageError(f"--timeout: {value!r} is not a number of seconds") from None
    if not 0 < timeout <= 600:
        raise UsageError(f"--timeout: {value!r} must be > 0 and at most 600 seconds")
    return timeout


def load_cert_dir(directory: str) -> tuple[ProberIdentity, bytes, ProbeContexts]:
    path = Path(directory)
    if not path.is_dir():
        raise UsageError(f"--cert-dir: {directory} is not a directory")
    contents: dict[str, bytes] = {}
    for name in CERT_DIR_FILES:
        try:
            contents[name] = (path / name).read_bytes()
        except OSError as exc:
            raise UsageError(f"--cert-dir: cannot read {path / name}: {exc.strerror}") from None
    identity = ProberIdentity(contents["tls.crt"], contents["tls.key"])
    try:
        contexts = ProbeContexts.build(identity, contents["ca.crt"])
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        # ssl's messages name no key material, only what failed to parse or match
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else type(exc).__name__
        raise UsageError(
            f"--cert-dir: {directory}: tls.crt, tls.key and ca.crt do not load as a "
            f"certificate chain, its key and a trust bundle ({reason})"
        ) from None
    return identity, contents["ca.crt"], contexts


def run_verify(args: argparse.Namespace) -> int:
    try:
        host, port = parse_endpoint(args.endpoint)
        timeout = parse_timeout(args.timeout)
        if args.spiffe_id is not None and not args.spiffe_id.startswith("spiffe://"):
            raise UsageError(f"--spiffe-id: {args.spiffe_id!r} is not a spiffe:// ID")
        identity, bundle, contexts = load_cert_dir(args.cert_dir)
    except UsageError as exc:
        print(f"meshless verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    expected = Expectation(mode=args.expect, spiffe_id=args.spiffe_id)
    result = asyncio.run(
        probe_endpoint(host, port, expected, identity, bundle, timeout, contexts=contexts)
    )
    if args.output == "json":
        print(json.dumps(result_to_dict(result), indent=2))
    else:
        print("\n".join(report_lines(result)))
    return EXIT_MET if result.meets_expectation else EXIT_NOT_MET
