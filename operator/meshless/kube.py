"""Thin async access to the Kubernetes API: JSON in, JSON out.

Credentials come from the official client's config loaders (kubeconfig or in-cluster, token
refresh included); requests go through aiohttp, the HTTP client Kopf itself runs on, straight
from the event loop: no model classes and no thread hops, which cost more CPU per call than the
API server's own work.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import client, config

from meshless import api, metrics
from meshless.timestamps import rfc3339

Json = dict[str, Any]
Page = list[Json]  # one page of a list call
log = logging.getLogger(__name__)

FIELD_MANAGER = "meshless"
_AS_US = [("fieldManager", FIELD_MANAGER)]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Resource:
    """A kind of object the API serves: group ("" for core), version, plural."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{_q(namespace)}"
        path = f"{base}/{self.plural}"
        if name is not None:
            path += f"/{_q(name)}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


SECRETS = Resource("", "v1", "secrets")
CONFIGMAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
PODS = Resource("", "v1", "pods")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
MUTATING_WEBHOOKS = Resource(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", namespaced=False
)
VALIDATING_WEBHOOKS = Resource(
    "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", namespaced=False
)
IDENTITIES = Resource(api.GROUP, api.VERSION, api.Plural.WORKLOAD_IDENTITIES)
POLICIES = Resource(api.GROUP, api.VERSION, api.Plural.MTLS_POLICIES)


class ApiError(Exception):
    """A non-2xx answer. `status` is the HTTP code, `reason` the API's Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @classmethod
    def of(cls, status: int, reason: str, status_body: Json) -> ApiError:
        """From the API's Status object (an error answer's body, a watch's ERROR event);
        `reason` stands in for a Status without one (the HTTP reason phrase)."""
        return cls(
            status,
            str(status_body.get("reason") or reason),
            str(status_body.get("message") or ""),
        )


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


@dataclass(frozen=True)
class RetryPolicy:
    """How one request rides out a flaky API: connection errors and 5xx back off with jitter,
    429 waits for Retry-After (capped), 401 re-reads the credentials once. Every attempt has
    a bounded timeout."""

    attempts: int = 4
    base_s: float = 0.2
    max_s: float = 5.0
    max_retry_after_s: float = 10.0
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^attempt)]."""
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))

    def retry_after(self, header: str | None, attempt: int) -> float:
        try:
            wanted = float(header) if header else self.backoff(attempt)
        except ValueError:
            wanted = self.backoff(attempt)
        return min(self.max_retry_after_s, max(0.0, wanted))


class Kube:
    def __init__(
        self,
        configuration: client.Configuration,
        *,
        connections: int = 32,
        kubeconfig: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self._config = configuration
        self._kubeconfig = kubeconfig
        self._host = str(configuration.host).rstrip("/")
        self._ssl = _ssl_context(configuration)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.retry = retry

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop: aiohttp binds to it
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
                timeout=aiohttp.ClientTimeout(
                    total=self.retry.timeout_s, connect=self.retry.connect_timeout_s
                ),
            )
        return self._session

    async def _reload_credentials(self) -> None:
        """Re-read the kubeconfig or the in-cluster token and certificates (rotated files)."""
        try:
            fresh = await asyncio.to_thread(load_configuration, self._kubeconfig)
        except Exception as exc:  # keep what we have; the 401 is reported to the caller
            log.warning("could not re-read the API credentials: %s", exc)
            return
        self._config = fresh
        self._host = str(fresh.host).rstrip("/")
        self._ssl = _ssl_context(fresh)
        # Swapped out before the close is awaited: a request or watch starting meanwhile
        # opens a new session rather than meeting a closed one.
        stale, self._session = self._session, None
        if stale is not None:
            await stale.close()
        log.info("re-read the API credentials after a 401")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
        accept: str = "application/json",
    ) -> Json:
        data = json.dumps(body).encode() if body is not None else None
        reloaded = False
        attempt = 0
        while True:
            try:
                status, reason, raw, retry_after = await self._once(
                    method, path, data, content_type, query, accept
                )
            except (aiohttp.ClientError, TimeoutError):
                if attempt + 1 >= self.retry.attempts:
                    raise
                await asyncio.sleep(self.retry.backoff(attempt))
                attempt += 1
                continue
            if status == 401 and not reloaded:
                reloaded = True
                await self._reload_credentials()
                continue
            if (status == 429 or status >= 500) and attempt + 1 < self.retry.attempts:
                delay = (
                    self.retry.retry_after(retry_after, attempt)
                    if status == 429
                    else self.retry.backoff(attempt)
                )
                await asyncio.sleep(delay)
                attempt += 1
                continue
            payload = _json_or_empty(raw)
            if not 200 <= status < 300:
                raise ApiError.of(status, reason, payload)
            return payload

    async def _once(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: str,
        query: list[tuple[str, str]] | None,
        accept: str,
    ) -> tuple[int, str, bytes, str | None]:
        headers = self._headers(accept)
        if data is not None:
            headers["Content-Type"] = content_type
        async with self._open().request(
            method, self._host + path, params=query, data=data, headers=headers
        ) as response:
            raw = await response.read()
            metrics.API_REQUESTS.labels(method).inc()
            metrics.API_RESPONSES.labels(str(response.status)).inc()
            return (
                response.status,
                response.reason or "",
                raw,
                response.headers.get("Retry-After"),
            )

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        token = self._config.get_api_key_with_prefix(
            "BearerToken"
        ) or self._config.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        return headers

    async def watch_stream(
        self, path: str, query: list[tuple[str, str]], *, accept: str, read_timeout_s: float
    ) -> AsyncGenerator[Json, None]:
        """One watch request: its events, parsed, until the server ends the stream. A
        refusal raises ApiError (after a 401 the credentials are re-read first, so the
        caller's next attempt uses them). No retries here: a watch resumes from its last
        resourceVersion, which only the caller knows (see meshless.watch)."""
        query = [*query, ("watch", "true")]
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.retry.connect_timeout_s, sock_read=read_timeout_s
        )
        # A session of its own: closing a session does not wake a reader blocked on one of
        # its streams (aiohttp 3.14), so the shared one, closed when credentials are re-read,
        # would leave every watch hanging until its read timeout.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=1), timeout=timeout
        ) as session:
            async for event in self._watch_events(session, path, query, accept):
                yield event

    async def _watch_events(
        self,
        session: aiohttp.ClientSession,
        path: str,
        query: list[tuple[str, str]],
        accept: str,
    ) -> AsyncGenerator[Json, None]:
        async with session.get(
            self._host + path, params=query, headers=self._headers(accept)
        ) as response:
            metrics.API_REQUESTS.labels("WATCH").inc()
            metrics.API_RESPONSES.labels(str(response.status)).inc()
            if response.status == 401:
                await self._reload_credentials()
            if response.status != 200:
                raw = await response.read()
                raise ApiError.of(response.status, response.reason or "", _json_or_empty(raw))
            # Lines split here, not by aiohttp's readline: it refuses a line over 128 KiB,
            # and one object (a Secret) may be up to 1 MiB.
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                if b"\n" not in chunk:
                    continue
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)

    # --- generic verbs on any resource ---------------------------------------------------
    async def get(self, resource: Resource, namespace: str | None, name: str) -> Json | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", resource.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> list[Json]:
        """Every object (all pages), across namespaces when `namespace` is None."""
        items: list[Json] = []
        async for page in self.pages(
            resource,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            page_size=page_size,
        ):
            items.extend(page)
        return items

    async def pages(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        accept: str = "application/json",
    ) -> AsyncIterator[Page]:
        """Every object, a page at a time: what is kept of 50,000 objects need not be held
        whole at once. `accept`: a PartialObjectMetadataList type lists metadata only."""
        token = ""
        while True:
            query = [("limit", str(page_size))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            page = await self.request("GET", resource.path(namespace), query=query, accept=accept)
            yield list(page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    async def create(self, resource: Resource, body: Json) -> Json:
        """POST, as our field manager (managedFields then says who wrote what)."""
        return await self.request(
            "POST", resource.path(_namespace_of(resource, body)), body, query=_AS_US
        )

    async def replace(self, resource: Resource, body: Json) -> Json:
        """PUT: with metadata.resourceVersion set, fails with 409 when the object changed."""
        name = body["metadata"]["name"]
        return await self.request(
            "PUT", resource.path(_namespace_of(resource, body), name), body, query=_AS_US
        )

    async def replace_secret_data(self, secret: Json, data: Mapping[str, bytes]) -> bool:
        """Replace a Secret's data, keeping its identity, labels and annotations, at the
        resourceVersion it was read with: False when somebody changed it since (409)."""
        meta = secret["metadata"]
        keep = ("name", "namespace", "labels", "annotations", "resourceVersion", "uid")
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {k: meta[k] for k in keep if k in meta},
            "type": secret.get("type", "Opaque"),
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        try:
            await self.replace(SECRETS, body)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = MERGE_PATCH,
        subresource: str | None = None,
    ) -> Json:
        return await self.request(
            "PATCH", resource.path(namespace, name, subresource), patch, content_type=content_type
        )

    async def apply(self, resource: Resource, body: Json, *, force: bool = True) -> Json:
        """Server-side apply with our field manager: we own exactly the fields we send."""
        meta = body["metadata"]
        return await self.request(
            "PATCH",
            resource.path(_namespace_of(resource, body), meta["name"]),
            body,
            content_type=APPLY_PATCH,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")],
        )

    async def delete(
        self, resource: Resource, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool:
        """True when deleted, False when it was already gone. With `uid`, only that object
        (a precondition: a newer object of the same name is left alone)."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self.request("DELETE", resource.path(namespace, name), body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def patch_status(
        self, resource: Resource, namespace: str | None, name: str, status: Json
    ) -> Json:
        """Merge-patch the status subresource."""
        return await self.patch(resource, namespace, name, {"status": status}, subresource="status")

    # --- Events ---------------------------------------------------------------------------
    async def post_event(
        self,
        involved: Json,
        *,
        type: str,
        reason: str,
        message: str,
        component: str = "meshless",
        name: str | None = None,
    ) -> None:
        """A core/v1 Event about `involved` (apiVersion, kind, name, namespace, uid). `name`
        (default: a new unique one) lets a retry be recognised: 409 means it was posted."""
        now = rfc3339(datetime.now(UTC))
        ns = involved["namespace"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name or event_name(involved), "namespace": ns},
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
        await self.request("POST", EVENTS.path(ns), event)


def event_name(involved: Json) -> str:
    return f"{involved['name']}.{uuid.uuid4().hex[:16]}"


def transient(exc: BaseException) -> bool:
    """Errors worth a quiet retry rather than a report: the API away or overloaded."""
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError)


def _json_or_empty(raw: bytes) -> Json:
    try:
        payload = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _namespace_of(resource: Resource, body: Json) -> str | None:
    return body["metadata"].get("namespace") if resource.namespaced else None
