"""Reaching the cluster from the CLI: the kubeconfig (or in-cluster config), the namespace a
command defaults to, and API failures turned into one readable line."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
from kubernetes import config

from meshless.commands.output import CommandError
from meshless.kube import ApiError, Kube, load_configuration

T = TypeVar("T")
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_ROOT_NAMESPACE = "meshless-system"
DEFAULT_TRUST_DOMAIN = "cluster.local"


def add_connection_arguments(parser: argparse.ArgumentParser, *, all_namespaces: bool) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)"
    )
    if all_namespaces:
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """What the operator was started with and the resolver needs."""
    parser.add_argument(
        "--root-namespace",
        default=os.environ.get("MESHLESS_ROOT_NAMESPACE") or DEFAULT_ROOT_NAMESPACE,
        help="the operator's root namespace, where a policy without selector is cluster-wide "
        f"[MESHLESS_ROOT_NAMESPACE, default {DEFAULT_ROOT_NAMESPACE}]",
    )
    parser.add_argument(
        "--trust-domain",
        default=os.environ.get("MESHLESS_TRUST_DOMAIN") or DEFAULT_TRUST_DOMAIN,
        help=f"SPIFFE trust domain [MESHLESS_TRUST_DOMAIN, default {DEFAULT_TRUST_DOMAIN}]",
    )


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table (default) for people, json or yaml for tools",
    )


def current_namespace(kubeconfig: str | None) -> str:
    """The namespace of the kubeconfig's current context, the pod's own namespace in a
    cluster, else "default" (kubectl's rule)."""
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError):
        active = None
    if active:
        namespace = (active.get("context") or {}).get("namespace")
        if namespace:
            return str(namespace)
        return "default"
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def namespace_of(args: argparse.Namespace) -> str:
    return str(args.namespace or current_namespace(args.kubeconfig))


def connect(kubeconfig: str | None) -> Kube:
    try:
        configuration = load_configuration(kubeconfig)
    except (config.ConfigException, OSError):
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise CommandError(
            f"no cluster to talk to: no usable kubeconfig at {where}, and not inside a cluster"
        ) from None
    return Kube(configuration, connections=4, kubeconfig=kubeconfig)


def run_with_kube(kubeconfig: str | None, work: Callable[[Kube], Awaitable[T]]) -> T:
    """Run `work` against the cluster; API and connection failures become a CommandError."""
    kube = connect(kubeconfig)

    async def main() -> T:
        try:
            return await work(kube)
        except ApiError as exc:
            raise CommandError(api_error_text(exc)) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CommandError(
                f"cannot reach the API server ({type(exc).__name__}: {exc})"
            ) from None
        finally:
            await kube.close()

    return asyncio.run(main())


def api_error_text(exc: ApiError) -> str:
    if exc.status == 403:
        return f"forbidden: {exc.message or exc.reason}"
    if exc.status == 404 and "the server could not find the requested resource" in (
        exc.message or ""
    ):
        return "the meshless CRDs are not installed in this cluster"
    return f"the API server answered {exc.status} {exc.reason}: {exc.message}"
