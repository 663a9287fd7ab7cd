"""The admission webhooks in the operator (shell): Kopf's handlers and Kopf's webhook server
around the pure decisions in inject.py and validate.py.

- `register_admission_handlers(registry, state_of)` adds the handlers, routed by Kopf by the
  last path segment of the webhook URL: for v1 pods `meshless-inject` (mutating),
  `meshless-strict`, `meshless-identity-label` and `meshless-binding` (validating; the last
  three also see the pods/status or pods/ephemeralcontainers subresources), and for
  WorkloadIdentities `meshless-dns-names` (validating).
- `AdmissionWebhookServer` is a `kopf.WebhookServer` (set it as
  `settings.admission.server`) that serves with a certificate from our CA held in one live
  SSLContext: `load_certificate` swaps it for new handshakes without closing the socket.
  Requests that are not a v1 AdmissionReview of what the webhook serves get a clear error
  answer.
- `apply_configurations` fills in the webhook configurations (configurations.py) with
  server-side apply, by name: the chart creates them (docs/decisions/chart.md); Kopf's
  managed configurations are not used (see docs/decisions/admission.md).
- The policy controller provides an `AdmissionState`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp.web
import kopf

from meshless.admission import pods
from meshless.admission.configurations import (
    BINDING_HANDLER,
    DNS_NAMES_HANDLER,
    EPHEMERAL_CONTAINERS,
    IDENTITY_LABEL_HANDLER,
    INJECT_HANDLER,
    STATUS,
    STRICT_HANDLER,
    Endpoint,
    ServiceRef,
    mutating_configuration,
    validating_configuration,
)
from meshless.admission.inject import (
    IdentityRef,
    InjectionConflict,
    JSONPatchOp,
    default_identity,
    injection_patch,
)
from meshless.admission.serving import (
    ServingCertificate,
    issue_serving_certificate,
    service_dns_names,
)
from meshless.admission.validate import (
    ALLOW,
    CREATE,
    UPDATE,
    AdmissionRecord,
    Decision,
    IdentitySecret,
    identity_secrets_of,
    judge_binding,
    judge_dns_names,
    judge_identity_label,
    judge_strict,
)
from meshless.api import GROUP, VERSION, Plural
from meshless.delivery import DeliveryUnavailable, PodCertificateMount
from meshless.kube import MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS, ApiError, Json, Kube
from meshless.pki.bundle import bundle_pem, fingerprint
from meshless.pki.ca import CertificateAuthority
from meshless.pki.names import DnsNamePolicy
from meshless.policy.model import PodResolution, PolicySpec
from meshless.policy.resolve import PolicySet
from meshless.tls import in_memory_files

log = logging.getLogger(__name__)

ADMISSION_REVIEW_VERSION = "admission.k8s.io/v1"
# What each webhook reviews: (group, version, resource, subresource).
_POD, _POD_STATUS, _POD_EPHEMERAL = (
    ("", "v1", "pods", sub) for sub in ("", STATUS, EPHEMERAL_CONTAINERS)
)
SERVED: dict[str, frozenset[tuple[str, str, str, str]]] = {
    INJECT_HANDLER: frozenset({_POD}),
    STRICT_HANDLER: frozenset({_POD, _POD_STATUS, _POD_EPHEMERAL}),
    IDENTITY_LABEL_HANDLER: frozenset({_POD, _POD_STATUS}),
    BINDING_HANDLER: frozenset({_POD, _POD_EPHEMERAL}),
    DNS_NAMES_HANDLER: frozenset({(GROUP, VERSION, Plural.WORKLOAD_IDENTITIES.value, "")}),
}
HANDLERS = tuple(SERVED)
NOT_READY_CODE = 503
CONFLICT_CODE = 400


# --- what the policy controller provides ----------------------------------------------------
class AdmissionState(Protocol):
    """The policy controller's view, read on every admission request (keep it cheap: no API
    calls)."""

    def policies(self) -> PolicySet | None:
        """The current policies; None until the first complete list has been read (pods in
        labelled namespaces are then refused with 503, fail closed)."""

    def identity_for(self, namespace: str, service_account: str) -> IdentityRef:
        """The identity Secret and SPIFFE ID of a ServiceAccount: its WorkloadIdentity's, or
        `default_identity(...)` (meshless-<sa>, Secret meshless-<sa>-mtls) for one the
        controller has yet to provision. A user-made identity the operator will not issue is
        never the answer (policy/provision.py `identity_for`)."""

    def record_admission(self, record: AdmissionRecord) -> None:
        """A pod admitted under Warn or Audit that Enforce would have denied (never called
        for a dry run): counted in the policy's status."""

    def identity_secrets(
        self, namespace: str, secrets: Sequence[str]
    ) -> Mapping[str, Sequence[IdentitySecret]] | None:
        """Of the Secrets `secrets` of `namespace`, those that hold a meshless identity, with
        the identities they hold (`validate.identity_secrets_of`); None until every
        WorkloadIdentity has been listed once. Every replica answers this from its own
        watch of WorkloadIdentities."""

    def dns_name_policy(self) -> DnsNamePolicy:
        """The name policy of the operator's settings (--allowed-dns-names)."""

    def pod_certificate_for(self, resolution: PodResolution) -> PodCertificateMount | None:
        """The podCertificate volume for a pod so resolved (PodCertificate delivery), None
        for Secret delivery. Raises DeliveryUnavailable when its policy wants pod
        certificates and the API server serves no PodCertificateRequests."""


@dataclass
class StaticAdmissionState:
    """An AdmissionState over a fixed set of policies (tests, benchmarks)."""

    specs: Iterable[PolicySpec]
    root_namespace: str
    trust_domain: str = "cluster.local"
    identities: Mapping[tuple[str, str], IdentityRef] = field(default_factory=dict)
    records: list[AdmissionRecord] = field(default_factory=list)
    # (namespace, Secret name) -> the identities WorkloadIdentities give that Secret.
    claimed: Mapping[tuple[str, str], Sequence[IdentitySecret]] = field(default_factory=dict)
    names: DnsNamePolicy = field(default_factory=DnsNamePolicy)
    identities_listed: bool = True
    pod_certificate: PodCertificateMount | None = None  # every pod's, when set

    def __post_init__(self) -> None:
        self._set = PolicySet.build(list(self.specs), self.root_namespace)

    def policies(self) -> PolicySet | None:
        return self._set

    def identity_for(self, namespace: str, service_account: str) -> IdentityRef:
        found = self.identities.get((namespace, service_account))
        return found or default_identity(self.trust_domain, namespace, service_account)

    def record_admission(self, record: AdmissionRecord) -> None:
        self.records.append(record)

    def identity_secrets(
        self, namespace: str, secrets: Sequence[str]
    ) -> Mapping[str, Sequence[IdentitySecret]] | None:
        if not self.identities_listed:
            return None
        claimed = {s: self.claimed[namespace, s] for s in secrets if (namespace, s) in self.claimed}
        return identity_secrets_of(namespace, secrets, claimed, self.trust_domain)

    def dns_name_policy(self) -> DnsNamePolicy:
        return self.names

    def pod_certificate_for(self, resolution: PodResolution) -> PodCertificateMount | None:
        return self.pod_certificate


StateOf = Callable[[kopf.Memo], AdmissionState | None]


def state_from_memo(memo: kopf.Memo) -> AdmissionState | None:
    """The default: `memo.admission_state`, set by the operator once its controller runs."""
    state: AdmissionState | None = getattr(memo, "admission_state", None)
    return state


# --- the handlers ---------------------------------------------------------------------------
def _namespace(body: Mapping[str, Any]) -> str:
    namespace = pods.metadata(body).get("namespace")
    if not namespace:  # the guard copies request.namespace in; this is a last resort
        raise kopf.AdmissionError(f"the {body.get('kind') or 'object'} has no namespace", code=400)
    return str(namespace)


def _policies(state: AdmissionState | None, pod: str) -> tuple[AdmissionState, PolicySet]:
    policies = state.policies() if state is not None else None
    if state is None or policies is None:
        raise kopf.AdmissionError(
            f"meshless is starting and has not read the MtlsPolicies yet; pod {pod} is "
            "refused until it has (retry shortly)",
            code=NOT_READY_CODE,
        )
    return state, policies


def apply_add_ops(ops: list[JSONPatchOp], document: Any) -> None:
    """Apply the add operations injection_patch makes, in place (Kopf turns the changed body
    back into a JSON patch)."""
    for op in ops:
        if op["op"] != "add":
            raise ValueError(f"unexpected JSON-patch op {op['op']!r}")
        *parents, last = [
            part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]
        ]
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            if last == "-":
                target.append(op["value"])
            else:
                target.insert(int(last), op["value"])
        else:
            target[last] = op["value"]


def _deny_or_allow(decision: Decision, warnings: list[str]) -> None:
    if not decision.allowed:
        log.info("admission refused: %s", decision.message)
        raise kopf.AdmissionError(decision.message, code=decision.code)
    warnings.extend(decision.warnings)


def _binding(
    state: AdmissionState | None,
    operation: str,
    pod: Mapping[str, Any],
    old_pod: Mapping[str, Any] | None,
    namespace: str,
    *,
    fail_closed: bool,
) -> Decision:
    """judge_binding with the identity Secrets the pod references. Before the identities
    are known: refused with 503 where admission fails closed, admitted elsewhere."""
    references = pods.secret_references(pod)
    if operation == UPDATE and old_pod is not None:  # only what the update adds is judged
        before = set(pods.secret_references(old_pod))
        references = [ref for ref in references if ref not in before]
    secrets = sorted({ref.secret for ref in references})
    if not secrets:
        return ALLOW
    known = state.identity_secrets(namespace, secrets) if state is not None else None
    if known is None:
        name = pods.display_name(pod, namespace)
        if fail_closed:
            raise kopf.AdmissionError(
                f"meshless is starting and has not read the WorkloadIdentities yet; pod {name} "
                "uses Secrets and is refused until it has (retry shortly)",
                code=NOT_READY_CODE,
            )
        log.warning("pod %s admitted unchecked: the identities are not read yet", name)
        return ALLOW
    return judge_binding(operation, pod, old_pod, namespace, known)


class QuietAdmissionLogs(logging.Filter):
    """Kopf logs every webhook call at INFO and every denial at ERROR on `kopf.objects`, and
    posts those ERROR records as Events about the pod (on CREATE a pod that will never
    exist). A denial is an answer, not an operator error: the handlers log refusals at INFO
    themselves, and this filter drops Kopf's records about our webhooks."""

    PREFIXES = tuple(f"Webhook {handler!r}" for handler in HANDLERS)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.PREFIXES)


def quiet_kopf_admission_logs() -> None:
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietAdmissionLogs) for f in objects.filters):
        objects.addFilter(QuietAdmissionLogs())


def register_admission_handlers(
    registry: kopf.OperatorRegistry, state_of: StateOf = state_from_memo
) -> None:
    """Add the three pod handlers to `registry` (and keep Kopf from logging each call)."""
    quiet_kopf_admission_logs()

    @kopf.on.mutate("v1", "pods", id=INJECT_HANDLER, operations=["CREATE"], registry=registry)
    async def inject(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        raw = dict(body)
        namespace = _namespace(raw)
        name = pods.display_name(raw, namespace)
        if pods.opted_out(raw):
            return
        state, policies = _policies(state_of(memo), name)
        resolution = policies.resolve(pods.admission_pod_info(raw, namespace))
        if resolution is None or not resolution.needs_identity():
            return
        identity = state.identity_for(namespace, pods.service_account(raw))
        try:
            mount = state.pod_certificate_for(resolution)
        except DeliveryUnavailable as exc:
            raise kopf.AdmissionError(
                f"meshless cannot give pod {name} its identity: {exc}", code=CONFLICT_CODE
            ) from None
        if mount is not None:
            identity = replace(identity, pod_certificate=mount)
        try:
            ops = injection_patch(raw, resolution, identity)
        except InjectionConflict as exc:
            raise kopf.AdmissionError(
                f"meshless cannot inject its identity into pod {name}: {exc}", code=CONFLICT_CODE
            ) from None
        if ops:
            patch.fns.append(lambda document: apply_add_ops(ops, document))

    @kopf.on.validate(
        "v1",
        "pods",
        id=STRICT_HANDLER,
        operations=["CREATE", "UPDATE"],
        subresource="*",  # pods/status and pods/ephemeralcontainers too
        registry=registry,
    )
    async def strict(
        body: kopf.Body, dryrun: bool, warnings: list[str], memo: kopf.Memo, **kwargs: Any
    ) -> None:
        """STRICT enforcement, and in labelled namespaces the identity label and the binding
        of pods to their own identity too (the label and binding webhooks skip those
        namespaces: one call per pod instead of three). Fails closed."""
        operation, old = kwargs.get("operation"), kwargs.get("old")
        if operation not in (CREATE, UPDATE):
            return
        raw = dict(body)
        old_raw = dict(old) if old is not None else None
        namespace = _namespace(raw)
        state, policies = _policies(state_of(memo), pods.display_name(raw, namespace))
        identity = state.identity_for(namespace, pods.service_account(raw))
        binding = _binding(state, operation, raw, old_raw, namespace, fail_closed=True)
        _deny_or_allow(binding, warnings)
        _deny_or_allow(judge_identity_label(operation, raw, old_raw, namespace, identity), warnings)
        decision = judge_strict(operation, raw, old_raw, namespace, policies)
        _deny_or_allow(decision, warnings)
        if not dryrun:
            for record in decision.records:
                state.record_admission(record)

    @kopf.on.validate(
        "v1",
        "pods",
        id=IDENTITY_LABEL_HANDLER,
        operations=["CREATE", "UPDATE"],
        subresource="*",  # pods/status can change labels
        registry=registry,
    )
    async def identity_label(
        body: kopf.Body, warnings: list[str], memo: kopf.Memo, **kwargs: Any
    ) -> None:
        operation, old = kwargs.get("operation"), kwargs.get("old")
        if operation not in (CREATE, UPDATE):
            return
        raw = dict(body)
        namespace = _namespace(raw)
        state = state_of(memo)
        identity = (
            state.identity_for(namespace, pods.service_account(raw)) if state is not None else None
        )
        decision = judge_identity_label(
            operation, raw, dict(old) if old is not None else None, namespace, identity
        )
        _deny_or_allow(decision, warnings)

    @kopf.on.validate(
        "v1",
        "pods",
        id=BINDING_HANDLER,
        operations=["CREATE", "UPDATE"],
        subresource="*",  # pods/ephemeralcontainers
        registry=registry,
    )
    async def binding(body: kopf.Body, warnings: list[str], memo: kopf.Memo, **kwargs: Any) -> None:
        """Pods bound to their own identity in namespaces no policy reaches (fails open)."""
        operation, old = kwargs.get("operation"), kwargs.get("old")
        if operation not in (CREATE, UPDATE):
            return
        raw = dict(body)
        old_raw = dict(old) if old is not None else None
        namespace = _namespace(raw)
        decision = _binding(state_of(memo), operation, raw, old_raw, namespace, fail_closed=False)
        _deny_or_allow(decision, warnings)

    @kopf.on.validate(
        GROUP,
        VERSION,
        Plural.WORKLOAD_IDENTITIES.value,
        id=DNS_NAMES_HANDLER,
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    async def dns_names(
        body: kopf.Body, warnings: list[str], memo: kopf.Memo, **kwargs: Any
    ) -> None:
        """The name policy at apply time; the operator checks again before it signs."""
        operation, old = kwargs.get("operation"), kwargs.get("old")
        state = state_of(memo)
        if operation not in (CREATE, UPDATE) or state is None:
            return
        raw = dict(body)
        decision = judge_dns_names(
            operation,
            raw,
            dict(old) if old is not None else None,
            _namespace(raw),
            state.dns_name_policy(),
        )
        _deny_or_allow(decision, warnings)


# --- bad input ----------------------------------------------------------------------------
def review_problem(request: Any) -> str | None:
    """Why `request` is not an AdmissionReview v1 we can answer (None when it is)."""
    if not isinstance(request, Mapping):
        return "the body is not a JSON object"
    if request.get("kind") != "AdmissionReview":
        return f"kind {request.get('kind')!r} is not AdmissionReview"
    if request.get("apiVersion") != ADMISSION_REVIEW_VERSION:
        return (
            f"AdmissionReview version {request.get('apiVersion')!r} is not supported; "
            f"meshless answers {ADMISSION_REVIEW_VERSION} only"
        )
    payload = request.get("request")
    if not isinstance(payload, Mapping):
        return "the AdmissionReview has no request"
    if not isinstance(payload.get("uid"), str) or not payload.get("uid"):
        return "the AdmissionReview request has no uid"
    if not isinstance(payload.get("resource"), Mapping):
        return "the AdmissionReview request names no resource"
    if not isinstance(payload.get("userInfo"), Mapping):
        return "the AdmissionReview request has no userInfo"
    if not isinstance(payload.get("object") or payload.get("oldObject"), Mapping):
        return "the AdmissionReview request carries no object"
    return None


def refusal(request: Mapping[str, Any], message: str, code: int = 400) -> dict[str, Any]:
    """A well-formed AdmissionReview answer that denies with `message`."""
    return {
        "apiVersion": ADMISSION_REVIEW_VERSION,
        "kind": "AdmissionReview",
        "response": {
            "uid": request["request"]["uid"],
            "allowed": False,
            "status": {"code": code, "message": message},
        },
    }


def _describe(group: str, version: str, resource: str, subresource: str) -> str:
    return (
        "/".join(p for p in (group, version) if p)
        + f" {resource}"
        + (f"/{subresource}" if subresource else "")
    )


def guarded(fn: kopf.WebhookFn) -> kopf.WebhookFn:
    """Kopf's request function behind checks: a body that is no v1 AdmissionReview gets
    HTTP 400 with the reason; a review for a path we do not serve or for a resource the
    webhook at that path does not review is refused in a proper answer. Never raises
    anything else."""

    async def serve(
        request: Any,
        *,
        webhook: str | None = None,
        headers: dict[str, str] | None = None,
        sslpeer: dict[str, Any] | None = None,
    ) -> Any:
        problem = review_problem(request)
        if problem is not None:
            log.warning("bad admission request: %s", problem)
            raise aiohttp.web.HTTPBadRequest(text=f"meshless admission: {problem}\n")
        payload = request["request"]
        resource = payload["resource"]
        if webhook not in HANDLERS:
            return refusal(request, f"meshless serves no webhook at /{webhook or ''}", 404)
        asked = tuple(
            str(x or "")
            for x in (
                resource.get("group"),
                resource.get("version"),
                resource.get("resource"),
                payload.get("subResource"),
            )
        )
        served = SERVED[webhook]
        if asked not in served:
            return refusal(
                request,
                f"meshless admission at /{webhook} reviews "
                f"{', '.join(sorted(_describe(*s) for s in served))} only, "
                f"not {_describe(*asked)}",
            )
        for key in ("object", "oldObject"):
            obj = payload.get(key)
            meta = obj.setdefault("metadata", {}) if isinstance(obj, dict) else None
            if isinstance(meta, dict):
                # Kopf deep-copies and diffs the whole body on every request; managedFields
                # are often most of it and never ours to judge or patch.
                meta.pop("managedFields", None)
                if payload.get("namespace") and not meta.get("namespace"):
                    meta["namespace"] = payload["namespace"]
        return await fn(request, webhook=webhook, headers=headers, sslpeer=sslpeer)

    return serve


# --- the server -----------------------------------------------------------------------------
def _load_chain(context: ssl.SSLContext, certificate: ServingCertificate) -> None:
    """ssl loads keys from paths only: anonymous memory (memfd), never a filesystem."""
    with in_memory_files(certificate.chain_pem, certificate.private_key_pem) as (chain, key):
        context.load_cert_chain(chain, key)


class AdmissionWebhookServer(kopf.WebhookServer):
    """Kopf's aiohttp webhook server with our certificate in one live SSLContext.

    Kopf's own rotation re-reads certificate files and restarts the listener, refusing
    connections meanwhile; here a new certificate is loaded into the same context, which
    OpenSSL uses for every new handshake, and the socket stays open.
    """

    def __init__(
        self,
        *,
        certificate: ServingCertificate,
        ca_bundle: bytes,
        addr: str = "127.0.0.1",
        port: int = 9443,
        host: str | None = None,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(addr=addr, port=port, host=host, cadata=ca_bundle, context=context)
        self.certificate = certificate
        _load_chain(context, certificate)

    def load_certificate(self, certificate: ServingCertificate, ca_bundle: bytes) -> None:
        """Serve `certificate` from the next handshake on."""
        assert self.context is not None
        _load_chain(self.context, certificate)
        self.certificate = certificate
        self.cadata = ca_bundle
        log.info("webhook serving certificate loaded (valid until %s)", certificate.not_after)

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        # Kopf's hook for building the context: ours is built and loaded already.
        return self.cadata, self.context

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for client_config in super().__call__(guarded(fn)):
            yield client_config


# --- certificate rotation -------------------------------------------------------------------
@dataclass
class ServingCertificateKeeper:
    """Issues the serving certificate and renews it at 2/3 of its lifetime or when the
    issuing CA changes. `ca` returns the current CA (None while there is none)."""

    ca: Callable[[], CertificateAuthority | None]
    hosts: tuple[str, ...]
    clock: Callable[[], datetime]
    ttl: timedelta = timedelta(hours=24)
    _issuer: bytes = b""

    def issue(self) -> tuple[ServingCertificate, bytes]:
        """A fresh certificate and the CA bundle that verifies it."""
        ca = self.ca()
        if ca is None:
            raise RuntimeError("no issuing CA is loaded")
        self._issuer = fingerprint(ca.issuer_cert)
        certificate = issue_serving_certificate(ca, self.hosts, self.clock(), self.ttl)
        return certificate, bundle_pem(ca.roots)

    def due(self, current: ServingCertificate) -> bool:
        ca = self.ca()
        if ca is not None and fingerprint(ca.issuer_cert) != self._issuer:
            return True
        return self.clock() >= current.renewal_time()

    async def run(
        self, server: AdmissionWebhookServer, check_every: float = 10.0
    ) -> None:  # pragma: no cover - a loop around issue() and due()
        while True:
            await asyncio.sleep(check_every)
            try:
                if self.due(server.certificate):
                    certificate, bundle = self.issue()
                    server.load_certificate(certificate, bundle)
            except Exception:
                log.exception("renewing the webhook serving certificate failed; retrying")


# --- configurations -------------------------------------------------------------------------
HELM_RELEASE_ANNOTATION = "meta.helm.sh/release-name"


class ConfigurationMissing(Exception):
    """A webhook configuration does not exist and these credentials may not create it (the
    chart's RBAC grants get and patch by name, not create): the chart creates it."""


def applied_configuration(configuration: Json, existing: Json | None) -> Json:
    """What the operator applies: the webhooks (everything configurations.py says about them)
    and, on an object it creates or created, its labels. On the chart's object the metadata
    is Helm's: applying our labels there would fight `helm upgrade` over them."""
    metadata: Json = {"name": configuration["metadata"]["name"]}
    annotations = ((existing or {}).get("metadata") or {}).get("annotations") or {}
    if HELM_RELEASE_ANNOTATION not in annotations:
        metadata["labels"] = configuration["metadata"]["labels"]
    return {
        "apiVersion": configuration["apiVersion"],
        "kind": configuration["kind"],
        "metadata": metadata,
        "webhooks": configuration["webhooks"],
    }


async def apply_configurations(
    kube: Kube,
    endpoint: Endpoint,
    ca_bundle: bytes,
    operator_namespace: str,
    timeout_seconds: int = 5,
) -> None:
    """Fill in both webhook configurations (server-side apply, field manager meshless: the
    webhooks list, whatever it holds, pointing at `endpoint`); call again whenever the CA
    bundle changes. Each is read by name first. The chart creates them; with credentials that
    may create them (`make run`, an admin's kubeconfig) a missing one is created by the same
    apply, and without (the chart's RBAC) that is a `ConfigurationMissing` naming it."""
    for resource, configuration in (
        (
            MUTATING_WEBHOOKS,
            mutating_configuration(endpoint, ca_bundle, operator_namespace, timeout_seconds),
        ),
        (
            VALIDATING_WEBHOOKS,
            validating_configuration(endpoint, ca_bundle, operator_namespace, timeout_seconds),
        ),
    ):
        name = configuration["metadata"]["name"]
        existing = await kube.get(resource, None, name)
        try:
            await kube.apply(resource, applied_configuration(configuration, existing))
        except ApiError as exc:
            if existing is None and exc.status == 403:
                raise ConfigurationMissing(
                    f"{configuration['kind']}/{name} does not exist and the operator may not "
                    "create it (its RBAC grants get and patch by name): the Helm chart creates "
                    "it, `helm upgrade` puts back a deleted one"
                ) from None
            raise


# --- wiring for the operator ----------------------------------------------------------------
def webhook_endpoint(
    url: str | None, service: str, namespace: str, service_port: int = 443
) -> tuple[Endpoint, tuple[str, ...]]:
    """Where the API server calls us and the hosts the serving certificate must name: the
    URL's host when registered by URL (outside a cluster: https://127.0.0.1:<port>), else
    the Service's DNS names."""
    if url:
        host = urlsplit(url).hostname
        if not host or urlsplit(url).scheme != "https":
            raise ValueError(f"webhook URL {url!r} must be https://<host>[:port]")
        return Endpoint(url=url), (host,)
    return (
        Endpoint(service=ServiceRef(namespace, service, service_port)),
        service_dns_names(service, namespace),
    )


def serve_admission(
    kopf_settings: kopf.OperatorSettings,
    *,
    ca: Callable[[], CertificateAuthority | None],
    hosts: tuple[str, ...],
    clock: Callable[[], datetime],
    addr: str,
    port: int,
) -> tuple[AdmissionWebhookServer, ServingCertificateKeeper]:
    """Issue the first serving certificate and make Kopf serve the webhooks with it (call in
    a startup handler, once the CA is loaded). Run `keeper.run(server)` as a task to renew."""
    keeper = ServingCertificateKeeper(ca=ca, hosts=hosts, clock=clock)
    certificate, bundle = keeper.issue()
    server = AdmissionWebhookServer(certificate=certificate, ca_bundle=bundle, addr=addr, port=port)
    kopf_settings.admission.server = server
    return server, keeper
