"""Thin async access to the Kubernetes API: JSON in, JSON out.

Requests go through the official client's ApiClient (its TLS, auth and connection pool) but
skip its model classes: the operator works on plain dicts, which is much cheaper per call.
Blocking calls run on a dedicated thread pool so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from kubernetes import client, config

from meshless import metrics

Json = dict[str, Any]

GROUP = "meshless.dev"
VERSION = "v1alpha1"
IDENTITIES = "workloadidentities"


class ApiError(Exception):
    """A non-2xx answer. `status` is the HTTP code, `reason` the API's Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def load_api_client(kubeconfig: str | None = None, pool_size: int = 32) -> client.ApiClient:
    """The current kubeconfig (or `kubeconfig`), else the in-cluster config."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except config.ConfigException:
        config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def _q(part: str) -> str:
    return quote(part, safe="")


class Kube:
    def __init__(self, api_client: client.ApiClient, *, threads: int = 32) -> None:
        self._api = api_client
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def request_sync(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Json:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*params, _request_timeout=(10, 60))
        metrics.API_REQUESTS.labels(method).inc()
        raw = response.read()
        try:
            payload: Json = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        if not 200 <= response.status < 300:
            raise ApiError(
                response.status,
                str(payload.get("reason") or response.reason),
                str(payload.get("message") or ""),
            )
        return payload

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Json:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.request_sync, method, path, body, content_type, query
        )

    async def get(self, path: str) -> Json | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    # --- core objects by name -------------------------------------------------------------
    @staticmethod
    def namespaced(kind_plural: str, namespace: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{_q(namespace)}/{kind_plural}"
        return f"{path}/{_q(name)}" if name else path

    async def get_secret(self, namespace: str, name: str) -> Json | None:
        return await self.get(self.namespaced("secrets", namespace, name))

    async def create_secret(self, body: Json) -> Json:
        ns = body["metadata"]["namespace"]
        return await self.request("POST", self.namespaced("secrets", ns), body)

    async def replace_secret(self, body: Json) -> Json:
        meta = body["metadata"]
        return await self.request(
            "PUT", self.namespaced("secrets", meta["namespace"], meta["name"]), body
        )

    async def get_configmap(self, namespace: str, name: str) -> Json | None:
        return await self.get(self.namespaced("configmaps", namespace, name))

    async def apply_configmap(self, body: Json) -> Json:
        """Create or replace a ConfigMap we own (server-side apply, our field manager)."""
        meta = body["metadata"]
        return await self.request(
            "PATCH",
            self.namespaced("configmaps", meta["namespace"], meta["name"]),
            body,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", "meshless"), ("force", "true")],
        )

    # --- WorkloadIdentity -------------------------------------------------------------------
    @staticmethod
    def identity_path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{_q(namespace)}/{IDENTITIES}"
        return f"{path}/{_q(name)}" if name else path

    async def patch_identity_status(self, namespace: str, name: str, status: Json) -> Json:
        return await self.request(
            "PATCH",
            self.identity_path(namespace, name) + "/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    # --- Events ---------------------------------------------------------------------------
    async def post_event(
        self, involved: Json, *, type: str, reason: str, message: str, component: str = "meshless"
    ) -> None:
        """A core/v1 Event about `involved` (apiVersion, kind, name, namespace, uid)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ns = involved["namespace"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": involved,
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("POST", self.namespaced("events", ns), event)
