"""The admission webhook configurations (pure): what the API server sends to meshless, and
what it does when no replica answers.

Availability (docs/admission.md): with every webhook replica down, pods in namespaces where
no policy applies are still created, pods under STRICT are refused, and the exempt namespaces
(api.exempt_namespaces: the system ones and the operator's own) are never intercepted. So:

- The operator labels every namespace some policy reaches `meshless.dev/mtls: enabled`
  (`admission_namespaces` says which). The injecting webhook and the STRICT webhook select
  only those namespaces, with failurePolicy Fail: down means refused there, and only there.
- The identity-label webhook selects only pods that carry (or carried) meshless.dev/identity,
  in every namespace but the excluded ones, failurePolicy Fail: a forged label is refused
  everywhere, and pods without the label never wait for meshless.
- matchConditions (CEL, evaluated by the API server) skip calls that cannot change the answer:
  opted-out pods are not sent to the injector, and updates that leave the labels alone are
  not sent to the validators (pod specs are immutable), so a meshless outage does not block
  the metadata updates (finalizers, owner references) that pods need to be deleted.
- The injector is reinvoked (reinvocationPolicy IfNeeded) when a later mutating webhook
  changed the pod, e.g. added a sidecar container: injection is idempotent and mounts the
  identity into the new container too.
- Pods bound to their own identity (`validate.judge_binding`): in labelled namespaces the
  STRICT webhook judges it (fail closed). Every other namespace that holds a WorkloadIdentity
  carries `meshless.dev/identities: "true"` (`identity_namespaces`), selected by the binding
  webhook with failurePolicy Ignore (fail open). Only pods that reference some Secret are sent,
  on create, and on pods/ephemeralcontainers when an added ephemeral container references one.
- `pods/status` can change labels: the identity label is guarded there too.
- The name policy at apply time: a webhook on WorkloadIdentity CREATE and UPDATE that changes
  spec.dnsNames, failurePolicy Ignore: the operator checks again before it signs, so the
  webhook is the early answer, not the boundary. The operator's own identities carry no
  dnsNames and are never sent.

Kopf's managed configurations cannot express namespaceSelector, matchConditions,
reinvocationPolicy or a short timeout, hence this module (docs/decisions/admission.md).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshless.api import (
    ADMISSION_NAMESPACE_LABEL,
    ADMISSION_NAMESPACE_VALUE,
    BINDING_RESERVED_WEBHOOK,
    BINDING_WEBHOOK,
    DNS_NAMES_WEBHOOK,
    GROUP,
    IDENTITIES_NAMESPACE_LABEL,
    IDENTITIES_NAMESPACE_VALUE,
    IDENTITY_LABEL,
    IDENTITY_LABEL_WEBHOOK,
    INJECT_ANNOTATION,
    INJECT_WEBHOOK,
    MANAGED_BY,
    STRICT_WEBHOOK,
    VERSION,
    WEBHOOK_CONFIGURATION,
    Mode,
    Plural,
    exempt_namespaces,
)
from meshless.identity.spec import PROVISIONED_PREFIX, SECRET_SUFFIX
from meshless.policy.model import PolicySpec
from meshless.policy.resolve import PolicySet

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
ADMISSIONREGISTRATION = "admissionregistration.k8s.io/v1"
DEFAULT_TIMEOUT_SECONDS = 5

# The handler ids Kopf routes by: the last segment of each webhook's URL or service path.
INJECT_HANDLER = "meshless-inject"
STRICT_HANDLER = "meshless-strict"
IDENTITY_LABEL_HANDLER = "meshless-identity-label"
BINDING_HANDLER = "meshless-binding"
DNS_NAMES_HANDLER = "meshless-dns-names"
STATUS = "status"
EPHEMERAL_CONTAINERS = "ephemeralcontainers"


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str
    port: int = 443


@dataclass(frozen=True)
class Endpoint:
    """How the API server reaches the webhook server: a URL (outside a cluster, e.g.
    https://127.0.0.1:9443) or a Service (in a cluster)."""

    url: str | None = None
    service: ServiceRef | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.service is None):
            raise ValueError("an Endpoint needs exactly one of url and service")


def client_config(endpoint: Endpoint, handler: str, ca_bundle: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode("ascii")}
    if endpoint.url is not None:
        out["url"] = f"{endpoint.url.rstrip('/')}/{handler}"
    else:
        assert endpoint.service is not None
        out["service"] = {
            "namespace": endpoint.service.namespace,
            "name": endpoint.service.name,
            "port": endpoint.service.port,
            "path": f"/{handler}",
        }
    return out


def _not_excluded(excluded: Iterable[str]) -> dict[str, Any]:
    return {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": sorted(set(excluded))}


def _not_labelled(key: str, value: str) -> dict[str, Any]:
    """A namespace selector term: namespaces whose label `key` is not `value`."""
    return {"key": key, "operator": "NotIn", "values": [value]}


def _labelled_namespaces(excluded: Iterable[str]) -> dict[str, Any]:
    return {
        "matchLabels": {ADMISSION_NAMESPACE_LABEL: ADMISSION_NAMESPACE_VALUE},
        "matchExpressions": [_not_excluded(excluded)],
    }


def _pod_rule(*operations: str, subresource: str | None = None) -> dict[str, Any]:
    return {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": [f"pods/{subresource}" if subresource else "pods"],
        "operations": list(operations),
        "scope": "Namespaced",
    }


# CEL: the API server evaluates these before calling; `false` skips the call.
NOT_OPTED_OUT = (
    f"!has(object.metadata.annotations) || !('{INJECT_ANNOTATION}' in object.metadata.annotations)"
    f" || object.metadata.annotations['{INJECT_ANNOTATION}'].trim().lowerAscii() != 'false'"
)
LABELS_CHANGED_OR_CREATE = (
    "request.operation == 'CREATE' || "
    "has(object.metadata.labels) != has(oldObject.metadata.labels) || "
    "(has(object.metadata.labels) && object.metadata.labels != oldObject.metadata.labels)"
)
NOT_DELETING = "!has(object.metadata.deletionTimestamp)"
IDENTITY_LABEL_SET_OR_CHANGED = (
    f"has(object.metadata.labels) && '{IDENTITY_LABEL}' in object.metadata.labels && "
    "(request.operation == 'CREATE' || !has(oldObject.metadata.labels) || "
    f"!('{IDENTITY_LABEL}' in oldObject.metadata.labels) || "
    f"oldObject.metadata.labels['{IDENTITY_LABEL}'] != object.metadata.labels['{IDENTITY_LABEL}'])"
)


# The pod references some Secret (`named`: only a Secret whose name satisfies this CEL
# predicate on `n`): a secret volume, a projected secret source, env or envFrom.
def _named(field: str, named: Callable[[str], str] | None) -> str:
    return f" && has({field}.name) && {named(f'{field}.name')}" if named else ""


def _secret_volume(named: Callable[[str], str] | None) -> str:
    volume = f"has(v.secret.secretName) && {named('v.secret.secretName')}" if named else "true"
    return (
        "has(object.spec.volumes) && object.spec.volumes.exists(v, "
        + ("has(v.secret)" if not named else f"(has(v.secret) && {volume})")
        + " || (has(v.projected) && has(v.projected.sources) && "
        f"v.projected.sources.exists(s, has(s.secret){_named('s.secret', named)})))"
    )


def _env_secret(containers: str, named: Callable[[str], str] | None = None) -> str:
    return (
        f"(has(object.spec.{containers}) && object.spec.{containers}.exists(c, "
        "(has(c.env) && c.env.exists(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef)"
        f"{_named('e.valueFrom.secretKeyRef', named)})) || "
        f"(has(c.envFrom) && c.envFrom.exists(r, has(r.secretRef){_named('r.secretRef', named)}))))"
    )


def _references_a_secret(named: Callable[[str], str] | None = None) -> str:
    return " || ".join(
        [f"({_secret_volume(named)})"]
        + [_env_secret(c, named) for c in ("initContainers", "containers", "ephemeralContainers")]
    )


def _ephemeral_secret_added(named: Callable[[str], str] | None = None) -> str:
    # Ephemeral containers are only ever added (pods/ephemeralcontainers), never changed.
    return (
        "has(object.spec.ephemeralContainers) && size(object.spec.ephemeralContainers) > "
        "(has(oldObject.spec.ephemeralContainers) ? size(oldObject.spec.ephemeralContainers) : 0)"
        f" && {_env_secret('ephemeralContainers', named)}"
    )


def _secret_reference_added(named: Callable[[str], str] | None = None) -> str:
    return (
        f"(request.operation == 'CREATE' && ({_references_a_secret(named)})) || "
        f"(request.operation == 'UPDATE' && {_ephemeral_secret_added(named)})"
    )


def _reserved_name(name: str) -> str:
    """CEL: `name` has the shape of a Secret the operator provisions (meshless-<sa>-mtls)."""
    return f"{name}.startsWith('{PROVISIONED_PREFIX}') && {name}.endsWith('{SECRET_SUFFIX}')"


# What the binding check must see: a created pod that references a Secret, or an added
# ephemeral container that does (other updates cannot add a reference: pod specs are
# immutable).
SECRET_REFERENCE_ADDED = _secret_reference_added()
# The same, for a Secret named as the operator provisions them only.
RESERVED_SECRET_REFERENCE_ADDED = _secret_reference_added(_reserved_name)
# A WorkloadIdentity with dnsNames, created or with its dnsNames changed. The operator's own
# (provisioned) identities carry none, so its writes are never sent.
DNS_NAMES_SET_OR_CHANGED = (
    "has(object.spec) && has(object.spec.dnsNames) && size(object.spec.dnsNames) > 0 && "
    "(request.operation == 'CREATE' || !has(oldObject.spec) || "
    "!has(oldObject.spec.dnsNames) || object.spec.dnsNames != oldObject.spec.dnsNames)"
)


def _common(timeout_seconds: int) -> dict[str, Any]:
    return {
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": timeout_seconds,
    }


def _metadata() -> dict[str, Any]:
    return {"name": WEBHOOK_CONFIGURATION, "labels": dict(MANAGED_BY)}


def mutating_configuration(
    endpoint: Endpoint,
    ca_bundle: bytes,
    operator_namespace: str,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    excluded = exempt_namespaces(operator_namespace)
    return {
        "apiVersion": ADMISSIONREGISTRATION,
        "kind": "MutatingWebhookConfiguration",
        "metadata": _metadata(),
        "webhooks": [
            {
                "name": INJECT_WEBHOOK,
                "clientConfig": client_config(endpoint, INJECT_HANDLER, ca_bundle),
                "rules": [_pod_rule("CREATE")],
                "namespaceSelector": _labelled_namespaces(excluded),
                "matchConditions": [{"name": "not-opted-out", "expression": NOT_OPTED_OUT}],
                "sideEffects": "None",
                "reinvocationPolicy": "IfNeeded",
                **_common(timeout_seconds),
            }
        ],
    }


def validating_configuration(
    endpoint: Endpoint,
    ca_bundle: bytes,
    operator_namespace: str,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    excluded = exempt_namespaces(operator_namespace)
    return {
        "apiVersion": ADMISSIONREGISTRATION,
        "kind": "ValidatingWebhookConfiguration",
        "metadata": _metadata(),
        "webhooks": [
            {
                "name": STRICT_WEBHOOK,
                "clientConfig": client_config(endpoint, STRICT_HANDLER, ca_bundle),
                "rules": [
                    _pod_rule("CREATE", "UPDATE"),
                    _pod_rule("UPDATE", subresource=STATUS),
                    _pod_rule("UPDATE", subresource=EPHEMERAL_CONTAINERS),
                ],
                "namespaceSelector": _labelled_namespaces(excluded),
                # In labelled namespaces this webhook also guards the identity label and the
                # binding of pods to their own identity (one call per pod instead of three):
                # STRICT on a create or a label change of a pod not being deleted, the label
                # whenever it is set or changed (pods/status too), the binding whenever a
                # Secret reference may be added.
                "matchConditions": [
                    {
                        "name": "strict-identity-label-or-binding",
                        "expression": f"({NOT_DELETING} && ({LABELS_CHANGED_OR_CREATE})) || "
                        f"({IDENTITY_LABEL_SET_OR_CHANGED}) || ({SECRET_REFERENCE_ADDED})",
                    }
                ],
                # Audit and Warn are counted in the policy's status; never for a dry run.
                "sideEffects": "NoneOnDryRun",
                **_common(timeout_seconds),
            },
            {
                "name": IDENTITY_LABEL_WEBHOOK,
                "clientConfig": client_config(endpoint, IDENTITY_LABEL_HANDLER, ca_bundle),
                # pods/status can change labels as well as pods can.
                "rules": [_pod_rule("CREATE", "UPDATE"), _pod_rule("UPDATE", subresource=STATUS)],
                # Namespaces labelled for admission are served by the webhook above.
                "namespaceSelector": {
                    "matchExpressions": [
                        _not_excluded(excluded),
                        _not_labelled(ADMISSION_NAMESPACE_LABEL, ADMISSION_NAMESPACE_VALUE),
                    ]
                },
                # Evaluated against the old and the new object: an update adding it is seen.
                "objectSelector": {
                    "matchExpressions": [{"key": IDENTITY_LABEL, "operator": "Exists"}]
                },
                "matchConditions": [
                    {"name": "identity-label-set", "expression": IDENTITY_LABEL_SET_OR_CHANGED}
                ],
                "sideEffects": "None",
                **_common(timeout_seconds),
            },
            binding_webhook(endpoint, ca_bundle, excluded, timeout_seconds),
            reserved_binding_webhook(endpoint, ca_bundle, excluded, timeout_seconds),
            dns_names_webhook(endpoint, ca_bundle, timeout_seconds),
        ],
    }


def binding_webhook(
    endpoint: Endpoint, ca_bundle: bytes, excluded: Iterable[str], timeout_seconds: int
) -> dict[str, Any]:
    """Pods bound to their own identity where no policy reaches: the namespaces that hold a
    WorkloadIdentity (labelled by the operator) minus those the STRICT webhook serves. Fails
    open: with meshless down, pods there are admitted unchecked."""
    return {
        "name": BINDING_WEBHOOK,
        "clientConfig": client_config(endpoint, BINDING_HANDLER, ca_bundle),
        "rules": [
            _pod_rule("CREATE"),
            _pod_rule("UPDATE", subresource=EPHEMERAL_CONTAINERS),
        ],
        "namespaceSelector": {
            "matchLabels": {IDENTITIES_NAMESPACE_LABEL: IDENTITIES_NAMESPACE_VALUE},
            "matchExpressions": [
                _not_excluded(excluded),
                _not_labelled(ADMISSION_NAMESPACE_LABEL, ADMISSION_NAMESPACE_VALUE),
            ],
        },
        "matchConditions": [
            {"name": "secret-reference-added", "expression": SECRET_REFERENCE_ADDED}
        ],
        "sideEffects": "None",
        **_common(timeout_seconds),
        "failurePolicy": "Ignore",
    }


def reserved_binding_webhook(
    endpoint: Endpoint, ca_bundle: bytes, excluded: Iterable[str], timeout_seconds: int
) -> dict[str, Any]:
    """Pods bound to their own identity in the namespaces neither webhook above serves (no
    policy reaches them, no WorkloadIdentity there yet), for the Secrets the operator would
    provision only (`meshless-<sa>-mtls`): the kubelet waits for a missing Secret, so a pod
    of another ServiceAccount mounting one now would start with <sa>'s key once a policy
    comes and the operator provisions it. Only pods referencing such a name are sent; fails
    open like the binding webhook."""
    return {
        "name": BINDING_RESERVED_WEBHOOK,
        "clientConfig": client_config(endpoint, BINDING_HANDLER, ca_bundle),
        "rules": [
            _pod_rule("CREATE"),
            _pod_rule("UPDATE", subresource=EPHEMERAL_CONTAINERS),
        ],
        "namespaceSelector": {
            "matchExpressions": [
                _not_excluded(excluded),
                _not_labelled(ADMISSION_NAMESPACE_LABEL, ADMISSION_NAMESPACE_VALUE),
                _not_labelled(IDENTITIES_NAMESPACE_LABEL, IDENTITIES_NAMESPACE_VALUE),
            ],
        },
        "matchConditions": [
            {
                "name": "reserved-secret-reference-added",
                "expression": RESERVED_SECRET_REFERENCE_ADDED,
            }
        ],
        "sideEffects": "None",
        **_common(timeout_seconds),
        "failurePolicy": "Ignore",
    }


def dns_names_webhook(endpoint: Endpoint, ca_bundle: bytes, timeout_seconds: int) -> dict[str, Any]:
    """The name policy at `kubectl apply` (every namespace): fails open, because the operator
    checks again before it signs (docs/decisions/admission.md)."""
    return {
        "name": DNS_NAMES_WEBHOOK,
        "clientConfig": client_config(endpoint, DNS_NAMES_HANDLER, ca_bundle),
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "resources": [Plural.WORKLOAD_IDENTITIES.value],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ],
        "matchConditions": [
            {"name": "dns-names-set-or-changed", "expression": DNS_NAMES_SET_OR_CHANGED}
        ],
        "sideEffects": "None",
        **_common(timeout_seconds),
        "failurePolicy": "Ignore",
    }


def _may_need_identity(policy: PolicySpec) -> bool:
    """False only when every mode the policy sets is DISABLE (UNSET may inherit STRICT)."""
    modes = {policy.mode, *policy.port_modes.values()}
    return modes != {Mode.DISABLE}


def admission_namespaces(
    policies: PolicySet, namespaces: Iterable[str], operator_namespace: str
) -> frozenset[str]:
    """The namespaces to label meshless.dev/mtls=enabled: those some policy that may ask for
    an identity reaches (a cluster-wide one reaches them all), minus the excluded ones. Errs
    towards labelling: a labelled namespace only costs availability while meshless is down,
    a missing label lets pods under STRICT in without their identity."""
    excluded = set(exempt_namespaces(operator_namespace))
    all_namespaces = set(namespaces)
    if any(_may_need_identity(p) for p in policies.root):
        reached = all_namespaces
    else:
        reached = {
            p.namespace
            for group in (*policies.namespace_wide.values(), *policies.workload.values())
            for p in group
            if _may_need_identity(p)
        }
    return frozenset((reached & all_namespaces) - excluded)


def identity_namespaces(
    holding: Iterable[str], namespaces: Iterable[str], operator_namespace: str
) -> frozenset[str]:
    """The namespaces to label meshless.dev/identities=true: those that hold at least one
    WorkloadIdentity, minus the excluded ones (never intercepted)."""
    excluded = set(exempt_namespaces(operator_namespace))
    return frozenset((set(holding) & set(namespaces)) - excluded)
