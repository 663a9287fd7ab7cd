"""Thin async access to the Kubernetes API: JSON in, JSON out.

Credentials come from the official client's config loaders (kubeconfig or in-cluster, token
refresh included); requests go through aiohttp, the HTTP client Kopf itself runs on, straight
from the event loop: no model classes and no thread hops, which cost more CPU per call than the
API server's own work.
"""

from __future__ import annotations

import json
import ssl
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
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


def load_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """The current kubeconfig (or `kubeconfig`), else the in-cluster config."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except config.ConfigException:
        config.load_incluster_config(client_configuration=configuration)
    return configuration


def _ssl_context(configuration: client.Configuration) -> ssl.SSLContext | bool:
    if not configuration.verify_ssl:
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _q(part: str) -> str:
    return quote(part, safe="")


class Kube:
    def __init__(self, configuration: client.Configuration, *, connections: int = 32) -> None:
        self._config = configuration
        self._host = str(configuration.host).rstrip("/")
        self._ssl = _ssl_context(configuration)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop: aiohttp binds to it
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=60, connect=10),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Json:
        headers = {"Accept": "application/json"}
        token = self._config.get_api_key_with_prefix(
            "BearerToken"
        ) or self._config.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        async with self._open().request(
            method, self._host + path, params=query, data=data, headers=headers
        ) as response:
            raw = await response.read()
            status, reason = response.status, response.reason or ""
        metrics.API_REQUESTS.labels(method).inc()
        try:
            payload: Json = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        if not 200 <= status < 300:
            raise ApiError(
                status, str(payload.get("reason") or reason), str(payload.get("message") or "")
            )
        return payload

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
