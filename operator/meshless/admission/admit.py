"""Every admission decision, in one pure function: `admit(request, state) -> response`.

The API server calls one of five webhooks (configurations.py says which requests reach
which); each is a path, and `admit` answers by the path:

- `meshless-inject` (mutating, pods CREATE): the JSON patch that gives a pod under STRICT or
  PERMISSIVE its identity (`inject.injection_patch`), or a refusal naming what stands in the
  way. Opted-out and mirror pods are left alone.
- `meshless-strict` (validating, pods in namespaces a policy reaches; fails closed): the
  binding of the pod to its own identity, the identity label, and STRICT enforcement
  (Enforce denies, Warn warns, Audit records), in that order.
- `meshless-identity-label` (validating, labelled pods elsewhere): only the injector sets
  meshless.dev/identity.
- `meshless-binding` (validating, namespaces holding identities that no policy reaches; fails
  open): a pod may use only its own ServiceAccount's identity Secret.
- `meshless-dns-names` (validating, WorkloadIdentities): the name policy at apply time.

The rules, in the order they are applied (each has a table test in
tests/unit/test_admission_admit.py naming it):

1. A path we do not serve is refused (404); a resource the webhook at that path does not
   review is refused (400), naming what it reviews.
2. Only CREATE and UPDATE are judged (injection: CREATE only); anything else is allowed.
3. An object without a namespace is refused (400).
4. Before every MtlsPolicy has been read once, a pod sent to the injecting or the STRICT
   webhook is refused (503, retry): an empty policy set would admit STRICT pods without
   their identity.
5. Before every WorkloadIdentity has been listed once, a pod that references Secrets is
   refused by the STRICT webhook (503, fails closed) and admitted by the binding webhook
   (fails open).
6. The judgements themselves: `inject.injection_patch`, `validate.judge_binding`,
   `validate.judge_identity_label`, `validate.judge_strict`, `validate.judge_dns_names`.
7. Warn and Audit admissions are recorded for the policy's status, never for a dry run.

`state` is what the operator knows, read and never changed here: the policies (resolved
into a `PolicySet`), the WorkloadIdentities by ServiceAccount and by Secret, the trust domain
and the name policy. The shells keep it current (policy/admission_state.py); the web server
(admission/server.py) turns an AdmissionReview into a request and the response back, and
hands the records to the policy status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshless.admission import pods
from meshless.admission.configurations import (
    BINDING_HANDLER,
    DNS_NAMES_HANDLER,
    EPHEMERAL_CONTAINERS,
    IDENTITY_LABEL_HANDLER,
    INJECT_HANDLER,
    STATUS,
    STRICT_HANDLER,
)
from meshless.admission.inject import (
    InjectionConflict,
    JSONPatchOp,
    injection_patch,
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
from meshless.api import GROUP, VERSION, Plural, Reason
from meshless.delivery import (
    Delivery,
    DeliveryUnavailable,
    PodCertificateMount,
    ServedApis,
    pod_certificate_mount,
)
from meshless.identity.spec import IdentityRef
from meshless.pki.names import DnsNamePolicy
from meshless.pki.spiffe import spiffe_id
from meshless.policy.model import IdentityDefaults, PodResolution
from meshless.policy.provision import IdentityRecord, identity_for
from meshless.policy.resolve import PolicySet

OK_CODE = 200
BAD_REQUEST_CODE = 400
CONFLICT_CODE = 400
NOT_FOUND_CODE = 404
NOT_READY_CODE = 503

# What each webhook reviews: (group, version, resource, subresource).
Resource = tuple[str, str, str, str]
_POD, _POD_STATUS, _POD_EPHEMERAL = (
    ("", "v1", "pods", sub) for sub in ("", STATUS, EPHEMERAL_CONTAINERS)
)
SERVED: dict[str, frozenset[Resource]] = {
    INJECT_HANDLER: frozenset({_POD}),
    STRICT_HANDLER: frozenset({_POD, _POD_STATUS, _POD_EPHEMERAL}),
    IDENTITY_LABEL_HANDLER: frozenset({_POD, _POD_STATUS}),
    BINDING_HANDLER: frozenset({_POD, _POD_EPHEMERAL}),
    DNS_NAMES_HANDLER: frozenset({(GROUP, VERSION, Plural.WORKLOAD_IDENTITIES.value, "")}),
}
WEBHOOKS = tuple(SERVED)


# --- what admit reads ---------------------------------------------------------------------
class Identities(Protocol):
    """The WorkloadIdentities the operator knows of, looked up two ways (read only)."""

    def of_account(self, namespace: str, service_account: str) -> Iterable[IdentityRecord]:
        """The identities of `namespace` whose spec names this ServiceAccount."""

    def naming_secret(self, namespace: str, secret: str) -> Iterable[IdentityRecord]:
        """The identities of `namespace` whose spec names this Secret."""


class _NoIdentities:
    """No WorkloadIdentity known (a state before the first one is read)."""

    def of_account(self, namespace: str, service_account: str) -> Iterable[IdentityRecord]:
        return ()

    def naming_secret(self, namespace: str, secret: str) -> Iterable[IdentityRecord]:
        return ()


NO_IDENTITIES: Identities = _NoIdentities()


@dataclass(frozen=True)
class AdmissionState:
    """What admission knows, as one value: the shells build a new one whenever the policies
    change, and every request reads the current one."""

    trust_domain: str
    dns_names: DnsNamePolicy = field(default_factory=DnsNamePolicy)
    # None until every MtlsPolicy has been read once (rule 4).
    policies: PolicySet | None = None
    identities: Identities = NO_IDENTITIES
    # Every WorkloadIdentity has been listed once (rule 5); `identities` may be partial before.
    identities_listed: bool = False
    # Delivery (meshless.delivery): the default for policies that name none (--identity-delivery,
    # `auto` resolved by discovery), and what the API server serves.
    delivery: Delivery = Delivery.SECRET
    apis: ServedApis = field(default_factory=ServedApis)


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of an AdmissionReview request that admission reads (review.py parses it)."""

    webhook: str  # the path the API server called, without the leading "/"
    uid: str
    operation: str
    resource: Resource  # group, version, resource, subresource ("" for none)
    namespace: str  # request.namespace, else the object's
    obj: Mapping[str, Any] | None  # the object as it would be stored (None on DELETE)
    old: Mapping[str, Any] | None = None  # the stored object, on UPDATE
    dry_run: bool = False


@dataclass(frozen=True)
class AdmissionResponse:
    allowed: bool
    code: int = OK_CODE
    message: str = ""  # why it is refused (empty when allowed)
    warnings: tuple[str, ...] = ()
    patch: tuple[JSONPatchOp, ...] = ()  # RFC 6902 operations (injection only)
    # Warn and Audit admissions to count in the policy's status (none for a dry run).
    records: tuple[AdmissionRecord, ...] = ()
    note: str = ""  # for the operator's log: what was admitted without being checked


ALLOWED = AdmissionResponse(allowed=True)


def refused(message: str, code: int) -> AdmissionResponse:
    return AdmissionResponse(allowed=False, code=code, message=message)


# --- the one entry point ------------------------------------------------------------------
def admit(request: AdmissionRequest, state: AdmissionState) -> AdmissionResponse:
    """The answer to one admission request (see the module's rules)."""
    served = SERVED.get(request.webhook)
    if served is None:
        return refused(f"meshless serves no webhook at /{request.webhook}", NOT_FOUND_CODE)
    if request.resource not in served:
        return refused(
            f"meshless admission at /{request.webhook} reviews "
            f"{', '.join(sorted(describe(*s) for s in served))} only, "
            f"not {describe(*request.resource)}",
            BAD_REQUEST_CODE,
        )
    if request.operation not in (CREATE, UPDATE) or request.obj is None:
        return ALLOWED
    if request.webhook == INJECT_HANDLER and request.operation != CREATE:
        return ALLOWED  # pod specs are immutable: only a created pod can be injected
    if not request.namespace:
        kind = request.obj.get("kind") or "object"
        return refused(f"the {kind} has no namespace", BAD_REQUEST_CODE)
    return _BY_WEBHOOK[request.webhook](request, state)


def describe(group: str, version: str, resource: str, subresource: str) -> str:
    """e.g. "v1 pods/status", "meshless.dev/v1alpha1 workloadidentities"."""
    return (
        "/".join(p for p in (group, version) if p)
        + f" {resource}"
        + (f"/{subresource}" if subresource else "")
    )


# --- each webhook -------------------------------------------------------------------------
def _inject(request: AdmissionRequest, state: AdmissionState) -> AdmissionResponse:
    pod, namespace = _pod(request)
    if pods.opted_out(pod):
        return ALLOWED
    name = pods.display_name(pod, namespace)
    if state.policies is None:
        return _policies_not_read(name)
    resolution = state.policies.resolve(pods.pod_info(pod, namespace))
    if resolution is None or not resolution.needs_identity():
        return ALLOWED
    try:
        mount = _pod_certificate(state, state.policies, resolution)
    except DeliveryUnavailable as exc:
        return refused(f"meshless cannot give pod {name} its identity: {exc}", CONFLICT_CODE)
    try:
        ops = injection_patch(pod, resolution, _identity(state, namespace, pod), mount)
    except InjectionConflict as exc:
        return refused(f"meshless cannot inject its identity into pod {name}: {exc}", CONFLICT_CODE)
    return AdmissionResponse(allowed=True, patch=tuple(ops))


def _strict(request: AdmissionRequest, state: AdmissionState) -> AdmissionResponse:
    """In namespaces a policy reaches: the binding, the identity label and STRICT, one call
    per pod instead of three. Fails closed."""
    pod, namespace = _pod(request)
    if state.policies is None:
        return _policies_not_read(pods.display_name(pod, namespace))
    binding = _binding_decision(request, state, fail_closed=True)
    if isinstance(binding, AdmissionResponse):
        return binding
    identity = _identity(state, namespace, pod)
    label = judge_identity_label(request.operation, pod, request.old, namespace, identity)
    strict = judge_strict(request.operation, pod, request.old, namespace, state.policies)
    answer = _combined(binding, label, strict)
    if request.dry_run or not answer.allowed:
        return answer
    return AdmissionResponse(allowed=True, warnings=answer.warnings, records=strict.records)


def _identity_label(request: AdmissionRequest, state: AdmissionState) -> AdmissionResponse:
    pod, namespace = _pod(request)
    identity = _identity(state, namespace, pod)
    return _combined(judge_identity_label(request.operation, pod, request.old, namespace, identity))


def _binding(request: AdmissionRequest, state: AdmissionState) -> AdmissionResponse:
    """Where no policy reaches (fails open)."""
    decision = _binding_decision(request, state, fail_closed=False)
    return decision if isinstance(decision, AdmissionResponse) else _combined(decision)


def _dns_names(request: AdmissionRequest, state: AdmissionState) -> AdmissionResponse:
    assert request.obj is not None
    return _combined(
        judge_dns_names(
            request.operation, request.obj, request.old, request.namespace, state.dns_names
        )
    )


_BY_WEBHOOK = {
    INJECT_HANDLER: _inject,
    STRICT_HANDLER: _strict,
    IDENTITY_LABEL_HANDLER: _identity_label,
    BINDING_HANDLER: _binding,
    DNS_NAMES_HANDLER: _dns_names,
}


# --- shared steps -------------------------------------------------------------------------
def _pod(request: AdmissionRequest) -> tuple[Mapping[str, Any], str]:
    assert request.obj is not None  # admit() answers requests without an object itself
    return request.obj, request.namespace


def _policies_not_read(pod: str) -> AdmissionResponse:
    return refused(
        f"meshless is starting and has not read the MtlsPolicies yet; pod {pod} is "
        "refused until it has (retry shortly)",
        NOT_READY_CODE,
    )


def _pod_certificate(
    state: AdmissionState, policies: PolicySet, resolution: PodResolution
) -> PodCertificateMount | None:
    """The podCertificate volume of a pod so resolved (its governing policy's delivery, else
    the default), None for Secret delivery; DeliveryUnavailable when the policy wants pod
    certificates and the API server serves none."""
    ref = resolution.governing
    spec = policies.get(ref)
    identity = spec.identity if spec is not None else IdentityDefaults()
    return pod_certificate_mount(identity, state.delivery, state.apis, str(ref))


def _identity(state: AdmissionState, namespace: str, pod: Mapping[str, Any]) -> IdentityRef:
    """The identity the pod's ServiceAccount gets (policy/provision.py decides which)."""
    account = pods.service_account(pod)
    return identity_for(
        namespace, account, state.identities.of_account(namespace, account), state.trust_domain
    )


def identity_secrets(
    state: AdmissionState, namespace: str, secrets: Sequence[str], account: str
) -> dict[str, tuple[IdentitySecret, ...]]:
    """Of the Secrets `secrets` of `namespace`, those that hold (or will hold) a meshless
    identity, with the identities they hold: those of the WorkloadIdentities that name them
    (not one with an invalid spec, nor one whose Secret another object holds) and the
    provisioned identity a reserved name is for (`validate.identity_secrets_of`), read for a
    pod of ServiceAccount `account`."""
    claimed: dict[str, list[IdentitySecret]] = {}
    for secret in secrets:
        for record in state.identities.naming_secret(namespace, secret):
            if not record.service_account:
                continue  # an invalid spec: nothing is ever issued for it
            if record.unusable == Reason.SECRET_CONFLICT:
                continue  # the Secret is not its: it never holds that identity
            try:
                sid = spiffe_id(state.trust_domain, namespace, record.service_account)
            except ValueError:
                sid = f"(ServiceAccount {record.service_account!r})"
            claimed.setdefault(secret, []).append(
                IdentitySecret(secret, record.service_account, record.name, sid)
            )
    return identity_secrets_of(namespace, secrets, claimed, state.trust_domain, account)


def _binding_decision(
    request: AdmissionRequest, state: AdmissionState, *, fail_closed: bool
) -> Decision | AdmissionResponse:
    """judge_binding over the identity Secrets the pod references (on UPDATE, those the
    update adds). Before the identities are listed: refused (503) where admission fails
    closed, admitted where it fails open."""
    pod, namespace = _pod(request)
    references = pods.secret_references(pod)
    if request.operation == UPDATE and request.old is not None:
        before = set(pods.secret_references(request.old))
        references = [ref for ref in references if ref not in before]
    secrets = sorted({ref.secret for ref in references})
    if not secrets:
        return ALLOW
    if not state.identities_listed:
        if not fail_closed:
            return AdmissionResponse(
                allowed=True,
                note=f"pod {pods.display_name(pod, namespace)} admitted unchecked: the "
                "identities are not read yet",
            )
        return refused(
            "meshless is starting and has not read the WorkloadIdentities yet; pod "
            f"{pods.display_name(pod, namespace)} uses Secrets and is refused until it has "
            "(retry shortly)",
            NOT_READY_CODE,
        )
    known = identity_secrets(state, namespace, secrets, pods.service_account(pod))
    return judge_binding(request.operation, pod, request.old, namespace, known)


def _combined(*decisions: Decision) -> AdmissionResponse:
    """The first refusal, or admitted with every warning (in order)."""
    warnings: list[str] = []
    for decision in decisions:
        if not decision.allowed:
            return refused(decision.message, decision.code)
        warnings.extend(decision.warnings)
    return AdmissionResponse(allowed=True, warnings=tuple(warnings))
