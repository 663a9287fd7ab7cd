"""The user commands against the cluster: inspect, status, describe pod, renew.

Each handler reads what it needs through `meshless.kube` (the operator's own async client: the
same credential loading, retries and JSON bodies as the operator, no second client stack),
hands the objects to the pure views, and prints a table or data.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

from meshless.api import Kind
from meshless.commands.certificate import inspect_identity, inspect_lines, secret_name_of
from meshless.commands.connect import namespace_of, run_with_kube
from meshless.commands.output import (
    CommandError,
    fields,
    render_data,
    table,
)
from meshless.commands.views import (
    IDENTITY_HEADERS,
    POLICY_HEADERS,
    describe_lines,
    describe_pod,
    identity_rows,
    identity_table_rows,
    policy_rows,
    policy_table_rows,
    resolve,
)
from meshless.identity.render import is_owned_by
from meshless.kube import IDENTITIES, JSON_PATCH, PODS, POLICIES, SECRETS, ApiError, Json, Kube
from meshless.pki.ca import TLS_KEY
from meshless.podcert.current import current_certificate
from meshless.podcert.discovery import discover
from meshless.podcert.request import SIGNER_NAME

RENEW_POLL_S = 0.5


def _print(data: Any, fmt: str, text: str) -> None:
    print(text if fmt == "table" else render_data(data, fmt))


async def _identity(kube: Kube, namespace: str, name: str) -> Json:
    body = await kube.get(IDENTITIES, namespace, name)
    if body is None:
        raise CommandError(f"{Kind.WORKLOAD_IDENTITY} {namespace}/{name} not found")
    return body


# --- inspect ------------------------------------------------------------------------------


def run_inspect(args: argparse.Namespace) -> int:
    namespace = namespace_of(args)

    async def work(kube: Kube) -> dict[str, Any]:
        identity = await _identity(kube, namespace, args.name)
        try:
            secret = await kube.get(SECRETS, namespace, secret_name_of(identity))
        except ApiError as exc:
            if exc.status != 403:
                raise
            raise CommandError(
                f"cannot read Secret {namespace}/{secret_name_of(identity)}: forbidden"
            ) from None
        return inspect_identity(identity, secret, datetime.now(UTC))

    report = run_with_kube(args.kubeconfig, work)
    _print(report, args.output, fields(inspect_lines(report)))
    return 0 if report.get("certificate") else 1


# --- status -------------------------------------------------------------------------------


async def _list_in(kube: Kube, resource: Any, namespaces: list[str] | None) -> list[Json]:
    if namespaces is None:
        return await kube.list(resource)
    found = await asyncio.gather(*(kube.list(resource, ns) for ns in namespaces))
    return [item for items in found for item in items]


def run_status(args: argparse.Namespace) -> int:
    scoped = None if args.all_namespaces else namespace_of(args)

    async def work(kube: Kube) -> dict[str, Any]:
        # Root-namespace policies reach every namespace, so they are read too.
        policy_namespaces = None if scoped is None else sorted({scoped, args.root_namespace})
        only = None if scoped is None else [scoped]
        policies, identities, pods = await asyncio.gather(
            _list_in(kube, POLICIES, policy_namespaces),
            _list_in(kube, IDENTITIES, only),
            _list_in(kube, PODS, only),
        )
        resolved = resolve(policies, pods, args.root_namespace)
        shown = None if scoped is None else {scoped}
        return {
            "policies": policy_rows(resolved, shown),
            "identities": identity_rows(
                identities, resolved, args.trust_domain, datetime.now(UTC), shown
            ),
        }

    data = run_with_kube(args.kubeconfig, work)
    where = "in any namespace" if scoped is None else f"in namespace {scoped}"
    sections = []
    for title, headers, rows in (
        ("MtlsPolicies", POLICY_HEADERS, policy_table_rows(data["policies"])),
        ("WorkloadIdentities", IDENTITY_HEADERS, identity_table_rows(data["identities"])),
    ):
        body = table(headers, rows) if rows else f"No {title} {where}."
        sections.append(f"{title}:\n{body}")
    _print(data, args.output, "\n\n".join(sections))
    return 0


# --- describe pod -------------------------------------------------------------------------


def run_describe(args: argparse.Namespace) -> int:
    namespace = namespace_of(args)

    async def work(kube: Kube) -> dict[str, Any]:
        pod = await kube.get(PODS, namespace, args.name)
        if pod is None:
            raise CommandError(f"Pod {namespace}/{args.name} not found")
        policies, identities = await asyncio.gather(
            _list_in(kube, POLICIES, sorted({namespace, args.root_namespace})),
            kube.list(IDENTITIES, namespace),
        )
        resolved = resolve(policies, [], args.root_namespace)
        report = describe_pod(pod, resolved, identities, args.trust_domain)
        requests = await _pod_certificate_requests(kube, namespace, args.name)
        if requests is not None:  # the API serves pod certificates
            report["podCertificate"] = current_certificate(requests, pod["metadata"]["uid"])
        return report

    report = run_with_kube(args.kubeconfig, work)
    _print(report, args.output, describe_lines(report))
    return 0


async def _pod_certificate_requests(kube: Kube, namespace: str, pod: str) -> list[Json] | None:
    """The pod's PodCertificateRequests for our signer; None where the API serves none."""
    api = await discover(kube)
    if api.requests is None:
        return None
    selector = f"spec.podName={pod},spec.signerName={SIGNER_NAME}"
    return await kube.list(api.requests, namespace, field_selector=selector)


# --- renew --------------------------------------------------------------------------------


def run_renew(args: argparse.Namespace) -> int:
    """Empty tls.key in the identity's Secret: the operator's reissue chain treats missing
    data as a reason to reissue, so it signs a new certificate for a new key at once (through
    the write budget). The leaked key stops being served by the Secret immediately."""
    namespace = namespace_of(args)
    if args.wait < 0:
        print("meshless renew: --wait must be 0 or more seconds", file=sys.stderr)
        return 2

    async def work(kube: Kube) -> dict[str, Any]:
        identity = await _identity(kube, namespace, args.name)
        secret_name = secret_name_of(identity)
        before = str((identity.get("status") or {}).get("serialNumber") or "")
        for _attempt in range(3):
            secret = await kube.get(SECRETS, namespace, secret_name)
            if secret is None:
                raise CommandError(
                    f"Secret {namespace}/{secret_name} does not exist yet: the operator issues "
                    "the first certificate on its own"
                )
            if not is_owned_by(secret["metadata"], args.name):
                raise CommandError(
                    f"Secret {namespace}/{secret_name} is not owned by {Kind.WORKLOAD_IDENTITY} "
                    f"{args.name}; meshless never modifies it"
                )
            if not (secret.get("data") or {}).get(TLS_KEY):
                break  # already emptied: a renewal is under way
            patch = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": secret["metadata"]["resourceVersion"],
                },
                # A kubernetes.io/tls Secret must keep the key name; an empty value is what
                # the operator's reissue chain reads as missing data.
                {"op": "replace", "path": f"/data/{TLS_KEY}", "value": ""},
            ]
            try:
                await kube.patch(SECRETS, namespace, secret_name, patch, content_type=JSON_PATCH)
                break
            except ApiError as exc:
                if exc.status not in (409, 422):  # 422: the test op failed (written since)
                    raise
        else:
            raise CommandError(f"Secret {namespace}/{secret_name} kept changing; try again")
        result: dict[str, Any] = {
            "identity": f"{namespace}/{args.name}",
            "secret": secret_name,
            "previousSerialNumber": before or None,
            "serialNumber": None,
            "notAfter": None,
        }
        if args.wait == 0:
            return result
        deadline = time.monotonic() + args.wait
        while True:
            current = await _identity(kube, namespace, args.name)
            status = current.get("status") or {}
            serial = str(status.get("serialNumber") or "")
            if serial and serial != before:
                result.update(serialNumber=serial, notAfter=status.get("notAfter"))
                return result
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"no new certificate for {namespace}/{args.name} within {args.wait:g}s "
                    f"(is the operator running?); Secret {secret_name} has an empty "
                    f"{TLS_KEY} until the operator reissues it"
                )
            await asyncio.sleep(RENEW_POLL_S)

    result = run_with_kube(args.kubeconfig, work)
    if result["serialNumber"] is None:
        text = (
            f"requested a new key for {result['identity']}: emptied {TLS_KEY} in Secret "
            f"{result['secret']} (not waiting)"
        )
    else:
        text = (
            f"renewed {result['identity']}: serial {result['previousSerialNumber'] or '-'} -> "
            f"{result['serialNumber']}, new key in Secret {result['secret']}, valid until "
            f"{result['notAfter']}"
        )
    _print(result, args.output, text)
    return 0
