"""Principals with a tenant's real RBAC, for tests that play an attacker: a ServiceAccount
token (what a user of the namespace holds), used through kubectl and the Python client.

A tenant holds the `admin` ClusterRole in its own namespace only (a RoleBinding). `admin` is
an aggregated role: its rules are the union of the roles labelled to aggregate into it, filled
in by the controller-manager, which the local control plane does not run (there `admin` is
empty). So the tenant is bound, in its namespace only, to `admin` and to each role that
aggregates into it: the built-in `system:aggregate-to-{admin,edit,view}`, and the meshless.dev
rights a cluster administrator aggregates into `admin` for WorkloadIdentities and
MtlsPolicies (`tenant_role`).
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.tools import kubectl_path

from .conftest import bound_token

MESHLESS_TENANT_RULES = [
    {
        "apiGroups": ["meshless.dev"],
        "resources": ["workloadidentities", "mtlspolicies"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    }
]


@dataclass
class Principal:
    """A ServiceAccount of `namespace` with a token-file kubeconfig."""

    namespace: str
    account: str
    kubeconfig: Path

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [kubectl_path(), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} as {self.user} failed:\n{proc.stderr}")
        return proc

    def api(self) -> client.ApiClient:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def _token_kubeconfig(admin_kubeconfig: str, token: str, path: Path) -> Path:
    cluster = yaml.safe_load(Path(admin_kubeconfig).read_text())["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "u", "context": {"cluster": "local", "user": "u"}}],
                "current-context": "u",
            }
        )
    )
    return path


def principal(
    admin_kubeconfig: str,
    api: client.ApiClient,
    namespace: str,
    account: str,
    role_refs: list[dict[str, str]],
    directory: Path,
) -> Principal:
    """A ServiceAccount `account` in `namespace`, bound there (RoleBindings only) to each of
    `role_refs` ({"kind": "ClusterRole"|"Role", "name": ...})."""
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    for ref in role_refs:
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"{account}-{ref['name'].replace(':', '-')}"[:63]},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", **ref},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        )
    token = bound_token(core, namespace, account, f"{account}-token-{uuid.uuid4().hex[:6]}")
    path = _token_kubeconfig(admin_kubeconfig, token, directory / f"{namespace}-{account}")
    return Principal(namespace, account, path)


def tenant_role(api: client.ApiClient) -> str:
    """The ClusterRole a cluster administrator aggregates into `admin` for meshless objects."""
    name = "meshless-tenant-test"
    rbac = client.RbacAuthorizationV1Api(api)
    body: dict[str, Any] = {"metadata": {"name": name}, "rules": MESHLESS_TENANT_RULES}
    try:
        rbac.create_cluster_role(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    return name


def tenant(
    admin_kubeconfig: str, api: client.ApiClient, namespace: str, directory: Path
) -> Principal:
    """A user of `namespace`: `admin` there and nothing anywhere else."""
    return principal(
        admin_kubeconfig,
        api,
        namespace,
        "tenant",
        [
            {"kind": "ClusterRole", "name": name}
            for name in (
                "admin",
                "system:aggregate-to-admin",
                "system:aggregate-to-edit",
                "system:aggregate-to-view",
                tenant_role(api),
            )
        ],
        directory,
    )
