"""`meshless ca status` and `meshless ca rotate`: read the CA Secret (and count bundles and
certificates), or ask the operator for a rotation through an annotation on the CA Secret.

A rotation requested while one runs is refused here with a clear message (and by the operator,
with a Warning Event, if the annotation is written some other way): never queued.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from meshless.api import ROTATE_ANNOTATION
from meshless.settings import CA_SECRET_NAME, CA_SELF_SIGNED

if TYPE_CHECKING:
    from meshless.kube import Kube

EXIT_REFUSED = 1
EXIT_ERROR = 2


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """-n, --ca-source and --kubeconfig: accepted before the subcommand (`meshless ca -n X
    status`) and after it (`meshless ca status -n X`), as every other command takes them.
    The subcommand's copies default to SUPPRESS, so they only override what was given."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "-n",
        "--namespace",
        default=default(os.environ.get("MESHLESS_NAMESPACE", "meshless-system")),
        help="the operator's namespace [MESHLESS_NAMESPACE]",
    )
    parser.add_argument(
        "--ca-source",
        default=default(os.environ.get("MESHLESS_CA_SOURCE", CA_SELF_SIGNED)),
        help="'self-signed' or the name of the user's CA Secret [MESHLESS_CA_SOURCE]",
    )
    parser.add_argument(
        "--kubeconfig", default=default(None), help="default: $KUBECONFIG or ~/.kube/config"
    )


def add_ca_command(commands: Any) -> None:
    """Register `ca status` and `ca rotate` on the top-level subparsers."""
    ca = commands.add_parser("ca", help="the issuing CA: status and rotation")
    _connection_options(ca, defaults=True)
    sub = ca.add_subparsers(dest="ca_command", required=True)
    status = sub.add_parser("status", help="rotation phase, progress counts, CA expiry")
    _connection_options(status, defaults=False)
    status.add_argument(
        "-o",
        "--output",
        choices=("table", "text", "json", "yaml"),
        default="table",
        help="table (default) for people, json or yaml for tools",
    )
    rotate = sub.add_parser(
        "rotate", help="request a root rotation (Prepare, Switch, Finish) from the operator"
    )
    _connection_options(rotate, defaults=False)
    rotate.add_argument(
        "--intermediate",
        action="store_true",
        help="only a new intermediate under the same root (no trust-bundle change)",
    )
    rotate.add_argument(
        "--webhook",
        action="store_true",
        help="rotate the admission webhooks' own CA (meshless-webhook-ca) instead",
    )


def run_ca_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    return asyncio.run(_run(args, out))


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    from meshless.kube import SECRETS, ApiError, Kube, load_configuration

    secret_name = CA_SECRET_NAME if args.ca_source == CA_SELF_SIGNED else args.ca_source
    kube = Kube(load_configuration(args.kubeconfig), connections=4)
    try:
        if args.ca_command == "rotate" and getattr(args, "webhook", False):
            return await _rotate_webhook(kube, args, out)
        secret = await kube.get(SECRETS, args.namespace, secret_name)
        if secret is None:
            print(
                f"meshless: CA Secret {args.namespace}/{secret_name} does not exist (is the "
                "operator running in that namespace?)",
                file=sys.stderr,
            )
            return EXIT_ERROR
        if args.ca_command == "status":
            return await _status(kube, args, secret, out)
        return await _rotate(kube, args, secret, out)
    except ApiError as exc:
        print(f"meshless: {exc.status} {exc.reason}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        await kube.close()


async def _status(kube: Kube, args: argparse.Namespace, secret: Any, out: TextIO) -> int:
    from meshless.ca_rotation import observe_progress, status_document
    from meshless.identity.render import decode_secret_data
    from meshless.pki.ca import CAError, ca_from_secret_data
    from meshless.pki.constraints import report as constraints_report
    from meshless.pki.rotation import Phase, state_from_secret_data

    now = datetime.now(UTC)
    data = decode_secret_data(secret.get("data"))
    try:
        ca = ca_from_secret_data(data, now)
    except CAError as exc:
        print(f"meshless: the CA Secret does not load: {exc.reason}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    state = state_from_secret_data(data)
    progress = None
    if state.phase is not Phase.IDLE:
        progress = await observe_progress(kube, state, ca.roots, now)
        progress += await _pod_certificate_progress(kube, state, ca.roots, now)
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    # Whether the issuer is name-constrained, and to what. The operator compares the subtrees
    # with its settings (a Warning Event NameConstraintsDiffer on a user's Secret).
    doc = status_document(
        ca, state, progress, annotations, constraints_report(ca.issuer_cert, None)
    )
    doc["secret"] = f"{args.namespace}/{secret['metadata']['name']}"
    doc["webhookCA"] = await _webhook_ca_status(kube, args.namespace, now)
    if args.output == "json":
        json.dump(doc, out, indent=2)
        out.write("\n")
        return 0
    if args.output == "yaml":
        import yaml

        out.write(yaml.safe_dump(doc, sort_keys=False))
        return 0
    out.write(render_status(doc))
    return 0


async def _pod_certificate_progress(kube: Kube, state: Any, roots: Any, now: datetime) -> Any:
    """Where the API serves pod certificates: each pod's newest issued certificate as a leaf
    and the ClusterTrustBundle as a bundle, as the operator counts them (it also leaves out
    pods that are gone, and counts pods whose last request was already cleaned up)."""
    from meshless.ca_rotation import leaving_roots
    from meshless.pki.rotation import Progress, count_progress
    from meshless.podcert.current import newest_issued_chains
    from meshless.podcert.discovery import discover
    from meshless.podcert.request import SIGNER_NAME
    from meshless.podcert.trust_bundle import TRUST_BUNDLE_NAME

    api = await discover(kube)
    progress = Progress()
    if api.requests is not None:
        requests = await kube.list(
            api.requests, None, field_selector=f"spec.signerName={SIGNER_NAME}"
        )
        chains: list[bytes | None] = list(newest_issued_chains(requests))
        progress += count_progress([], chains, state, leaving_roots(state, roots), now)
    if api.trust_bundles is not None:
        bundle = await kube.get(api.trust_bundles, None, TRUST_BUNDLE_NAME)
        text = ((bundle or {}).get("spec") or {}).get("trustBundle")
        progress += count_progress([text.encode() if text else None], [], state, [], now)
    return progress


def render_status(doc: dict[str, Any]) -> str:
    from meshless.pki.rotation import Phase

    lines = [f"CA Secret:  {doc['secret']}", f"phase:      {doc['phase']}"]
    if doc["phase"] != Phase.IDLE.value:
        lines[-1] += f" since {doc['phaseSince']} (rotation started {doc['startedAt']}, "
        lines[-1] += f"reason {doc['reason']})"
    if doc.get("pendingRequest"):
        lines.append(f"requested:  {doc['pendingRequest']} (not acted on yet)")
    issuer = doc["issuer"]
    lines.append(f"issuer:     {issuer['subject']}, expires {issuer['notAfter']}")
    for root in doc["roots"]:
        lines.append(
            f"root:       {root['sha256'][:16]} {root['subject']}, expires {root['notAfter']} "
            f"({root['role']})"
        )
    constraints = doc.get("nameConstraints")
    if constraints is not None:
        if constraints["constrained"]:
            lines.append(f"constraints: permitted {', '.join(constraints['permitted'])}")
            lines.append(f"             excluded {', '.join(constraints['excluded']) or '-'}")
        else:
            lines.append(f"constraints: NONE ({constraints['reason']}): {constraints['message']}")
    progress = doc.get("progress")
    if progress:
        lines.append(
            f"bundles:    {progress['bundlesWithNewRoot']}/{progress['bundlesTotal']} carry the "
            f"new root, {progress['bundlesWithOldRoot']} still carry the old root"
        )
        lines.append(
            f"leaves:     {progress['leavesOnOldRoot']} on the old chain, "
            f"{progress['leavesReissued']}/{progress['leavesTotal']} reissued"
        )
    lines.append(f"last root rotation:         {doc['lastRootRotation'] or 'never'}")
    lines.append(f"last intermediate rotation: {doc['lastIntermediateRotation'] or 'never'}")
    webhook = doc.get("webhookCA")
    if webhook:
        lines.extend(_render_webhook_ca(webhook))
    return "\n".join(lines) + "\n"


async def _webhook_ca_status(kube: Kube, namespace: str, now: datetime) -> dict[str, Any] | None:
    from meshless.identity.render import decode_secret_data
    from meshless.kube import SECRETS
    from meshless.pki.webhook_ca import WEBHOOK_CA_SECRET_NAME, status_summary

    secret = await kube.get(SECRETS, namespace, WEBHOOK_CA_SECRET_NAME)
    if secret is None:
        return None
    summary = status_summary(decode_secret_data(secret.get("data")), now)
    return {"secret": f"{namespace}/{WEBHOOK_CA_SECRET_NAME}", **summary}


def _render_webhook_ca(webhook: dict[str, Any]) -> list[str]:
    lines = [f"webhook CA: {webhook['secret']}"]
    if webhook.get("error"):
        return [*lines, f"  unusable: {webhook['error']}"]
    lines.append(
        f"  phase {webhook['phase']} since {webhook['phaseSince']}, rotates at "
        f"{webhook['rotatesAt']}, last rotation {webhook['lastRotation'] or 'never'}"
    )
    for root in webhook["roots"]:
        role = "signs" if root["signs"] else "trusted only"
        lines.append(f"  root {root['sha256'][:16]} expires {root['notAfter']} ({role})")
    return lines


async def _rotate(kube: Kube, args: argparse.Namespace, secret: Any, out: TextIO) -> int:
    from meshless.identity.render import decode_secret_data
    from meshless.pki.ca import root_key_from_secret_data
    from meshless.pki.rotation import Phase, RequestKind, RotationRequest, state_from_secret_data

    data = decode_secret_data(secret.get("data"))
    state = state_from_secret_data(data)
    meta = secret["metadata"]
    kind = RequestKind.INTERMEDIATE if args.intermediate else RequestKind.ROOT
    if args.ca_source != CA_SELF_SIGNED or root_key_from_secret_data(data) is None:
        print(
            "meshless: refused: this CA is user-provided (no root key in the CA Secret); rotate "
            "it by replacing the Secret's tls.crt/tls.key and ca.crt",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if state.phase is not Phase.IDLE:
        since = state.phase_since.isoformat() if state.phase_since else "?"
        print(
            f"meshless: refused: a root rotation is already in progress (phase "
            f"{state.phase.value} since {since}); wait for it to finish (`meshless ca "
            "status`), requests are not queued",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    request = RotationRequest(kind, datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ"))
    if not await _annotate_request(kube, meta, request.value, state.handled_request):
        return EXIT_REFUSED
    what = "a new intermediate" if args.intermediate else "a root rotation"
    out.write(
        f"requested {what} ({request.value}); the operator acts on it within its CA poll "
        "interval. Follow it with `meshless ca status`.\n"
    )
    return 0


async def _rotate_webhook(kube: Kube, args: argparse.Namespace, out: TextIO) -> int:
    """Annotate the webhook CA Secret: the leader starts a rotation on its next poll."""
    from meshless.kube import SECRETS
    from meshless.pki.webhook_ca import STATE_KEY, WEBHOOK_CA_SECRET_NAME, Phase, record_from_json

    if args.intermediate:
        print("meshless: the webhook CA has no intermediate (drop --intermediate)", file=sys.stderr)
        return EXIT_ERROR
    secret = await kube.get(SECRETS, args.namespace, WEBHOOK_CA_SECRET_NAME)
    if secret is None:
        print(
            f"meshless: the webhook CA Secret {args.namespace}/{WEBHOOK_CA_SECRET_NAME} does "
            "not exist (is the operator running in that namespace?)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    meta = secret["metadata"]
    raw = (secret.get("data") or {}).get(STATE_KEY)
    record = record_from_json(base64.b64decode(raw) if raw else None)
    if record.phase is not Phase.IDLE:
        print(
            f"meshless: refused: a webhook CA rotation is in progress (phase "
            f"{record.phase.value}); it ends within about twice the settle time",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    request = f"webhook:{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
    if not await _annotate_request(kube, meta, request, record.handled_request):
        return EXIT_REFUSED
    out.write(
        f"requested a webhook CA rotation ({request}); caBundle goes old -> old + new -> new "
        "over about twice the settle time\n"
    )
    return 0


async def _annotate_request(kube: Kube, meta: dict[str, Any], request: str, handled: str) -> bool:
    """Put a rotation request on a CA Secret (root CA or webhook CA) at the resourceVersion
    read; False, with the reason on stderr, when an earlier request is still pending or the
    Secret changed meanwhile."""
    from meshless.kube import SECRETS, ApiError

    pending = (meta.get("annotations") or {}).get(ROTATE_ANNOTATION) or ""
    if pending and pending != handled:
        print(
            f"meshless: refused: the request {pending!r} has not been acted on yet (is the "
            "operator running?)",
            file=sys.stderr,
        )
        return False
    patch = {
        "metadata": {
            "resourceVersion": meta["resourceVersion"],  # refused if it changed meanwhile
            "annotations": {ROTATE_ANNOTATION: request},
        }
    }
    try:
        await kube.patch(SECRETS, meta["namespace"], meta["name"], patch)
    except ApiError as exc:
        if exc.status == 409:
            print(
                f"meshless: refused: the Secret {meta['namespace']}/{meta['name']} changed "
                "meanwhile; run `meshless ca status` and try again",
                file=sys.stderr,
            )
            return False
        raise
    return True
