"""The API's names in one place (pure): group, version, kinds, labels, annotations,
condition types and reasons. Nothing else in the code spells these strings."""

from __future__ import annotations

from enum import StrEnum

GROUP = "meshless.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
LABEL_PREFIX = f"{GROUP}/"


class Kind(StrEnum):
    WORKLOAD_IDENTITY = "WorkloadIdentity"
    MTLS_POLICY = "MtlsPolicy"


class Plural(StrEnum):
    WORKLOAD_IDENTITIES = "workloadidentities"
    MTLS_POLICIES = "mtlspolicies"


# --- labels -------------------------------------------------------------------------------
# On an identity Secret: the WorkloadIdentity's name. On a pod: its ServiceAccount's name, set
# only by the injector; NetworkPolicies trust it.
IDENTITY_LABEL = f"{GROUP}/identity"
# On a WorkloadIdentity the operator made for an MtlsPolicy: "true".
PROVISIONED_LABEL = f"{GROUP}/provisioned"
# On objects the operator owns for a policy (NetworkPolicies): the name (hashed when longer
# than a label value may be) and the namespace of the policy in effect for their pods.
POLICY_LABEL = f"{GROUP}/policy"
POLICY_NAMESPACE_LABEL = f"{GROUP}/policy-namespace"
MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "meshless"
MANAGED_BY = {MANAGED_BY_KEY: MANAGED_BY_VALUE}

# --- annotations --------------------------------------------------------------------------
SPIFFE_ID_ANNOTATION = f"{GROUP}/spiffe-id"
INJECT_ANNOTATION = f"{GROUP}/inject"  # "false" opts a pod out of injection
# On the CA Secret: a root rotation requested by `meshless ca rotate`.
ROTATE_ANNOTATION = f"{GROUP}/rotate"

# --- the trust bundle ---------------------------------------------------------------------
TRUST_BUNDLE_NAME = "meshless-trust-bundle"
TRUST_BUNDLE_KEY = "ca.crt"

# --- what injection puts into a pod -------------------------------------------------------
IDENTITY_MOUNT_PATH = "/var/run/secrets/meshless/"
IDENTITY_VOLUME = "meshless-identity"
ENV_SPIFFE_ID = "MESHLESS_SPIFFE_ID"
ENV_MTLS_MODE = "MESHLESS_MTLS_MODE"
ENV_MTLS_PORTS = "MESHLESS_MTLS_PORTS"
ENV_PREFIX = "MESHLESS_"

# --- admission webhooks -------------------------------------------------------------------
# On a namespace where some MtlsPolicy may need an identity: the injecting and the STRICT
# webhooks select namespaces by it, so with every webhook replica down only these namespaces
# refuse pods (fail closed) and every other namespace keeps creating them.
ADMISSION_NAMESPACE_LABEL = f"{GROUP}/mtls"
ADMISSION_NAMESPACE_VALUE = "enabled"
# The Mutating- and ValidatingWebhookConfiguration (both cluster-scoped) and their webhooks.
WEBHOOK_CONFIGURATION = "meshless"
INJECT_WEBHOOK = f"inject.{GROUP}"
STRICT_WEBHOOK = f"strict.{GROUP}"
IDENTITY_LABEL_WEBHOOK = f"identity-label.{GROUP}"
# Pods bound to their own identity, in namespaces outside the STRICT webhook's scope that hold
# a WorkloadIdentity: the leader labels those namespaces with this (fail open there).
BINDING_WEBHOOK = f"binding.{GROUP}"
BINDING_RESERVED_WEBHOOK = f"binding-reserved.{GROUP}"
IDENTITIES_NAMESPACE_LABEL = f"{GROUP}/identities"
IDENTITIES_NAMESPACE_VALUE = "true"
# A WorkloadIdentity's dnsNames refused at apply time (the name policy).
DNS_NAMES_WEBHOOK = f"dns-names.{GROUP}"


class Mode(StrEnum):
    """PeerAuthentication modes. UNSET never comes out of the resolver."""

    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"
    UNSET = "UNSET"


class AdmissionAction(StrEnum):
    ENFORCE = "Enforce"
    WARN = "Warn"
    AUDIT = "Audit"


class ConditionType(StrEnum):
    READY = "Ready"
    ISSUING = "Issuing"
    CONFLICTED = "Conflicted"
    ENFORCED = "Enforced"


class Reason(StrEnum):
    """Condition and Event reasons (CamelCase, metav1.Condition)."""

    # WorkloadIdentity
    READY = "Ready"
    UP_TO_DATE = "UpToDate"
    INVALID_SPEC = "InvalidSpec"
    SECRET_CONFLICT = "SecretConflict"
    DNS_NAME_NOT_ALLOWED = "DNSNameNotAllowed"  # spec.dnsNames outside the name policy
    ISSUING_FAILED = "IssuingFailed"
    CA_UNAVAILABLE = "CAUnavailable"
    RENEWED = "Renewed"
    REISSUED = "Reissued"
    BUNDLE_REPAIRED = "BundleRepaired"  # on a trust-bundle ConfigMap someone else changed
    # Why a certificate is (re)issued (pki/reissue.py's checks, in their order): the Issuing
    # condition's reason and meshless_certificates_issued_total's label
    SECRET_MISSING = "SecretMissing"
    MISSING_DATA = "MissingData"
    INVALID_CERTIFICATE = "InvalidCertificate"
    INVALID_KEY = "InvalidKey"
    KEY_MISMATCH = "KeyMismatch"
    SPEC_CHANGED = "SpecChanged"
    ISSUER_RETIRED = "IssuerRetired"
    BUNDLE_STALE = "BundleStale"
    EXPIRED = "Expired"
    RENEWAL_DUE = "RenewalDue"
    # MtlsPolicy
    IN_EFFECT = "InEffect"
    NETWORK_OPEN = "NetworkOpen"
    NAMESPACE_TERMINATING = "NamespaceTerminating"
    RECONCILE_FAILED = "ReconcileFailed"
    CONFLICT = "Conflict"  # Conflicted=True: ignored in favour of another policy
    NO_CONFLICT = "NoConflict"
    ADMISSION_WARNED = "AdmissionWarned"
    ADMISSION_AUDITED = "AdmissionAudited"
    POD_CERTIFICATE_API_UNAVAILABLE = "PodCertificateAPIUnavailable"
    POD_CERTIFICATE_NOT_REQUESTED = "PodCertificateNotRequested"
    # The CA Secret (rotation; Events)
    CA_ROTATION_PREPARE = "CARotationPrepare"
    CA_ROTATION_BUNDLES_COMPLETE = "CARotationBundlesComplete"
    CA_ROTATION_SWITCH = "CARotationSwitch"
    CA_ROTATION_LEAVES_REISSUED = "CARotationLeavesReissued"
    CA_ROTATION_FINISH = "CARotationFinish"
    CA_ROTATION_COMPLETE = "CARotationComplete"
    CA_ROTATION_REFUSED = "CARotationRefused"
    CA_INTERMEDIATE_ROTATED = "CAIntermediateRotated"
    CA_ROTATION_FAILED = "CARotationFailed"
    # The webhook CA Secret (Events): one per rotation step
    WEBHOOK_CA_PREPARE = "WebhookCARotationPrepare"
    WEBHOOK_CA_SWITCH = "WebhookCARotationSwitch"
    WEBHOOK_CA_FINISH = "WebhookCARotationFinish"
    WEBHOOK_CA_REPLACED = "WebhookCAReplaced"
    # Enforced (probes)
    PROVEN = "Proven"
    PROBING = "Probing"
    NOT_ENFORCED = "NotEnforced"
    NOTHING_TO_PROVE = "NothingToProve"
    # Warning Events on pods whose STRICT port lets a client in without a certificate
    STRICT_NOT_ENFORCED = "StrictNotEnforced"


# Namespaces never enforced: the control plane's, and (see exempt_namespaces) the operator's
# own. Admission never intercepts them, the policy controller renders nothing there, so a
# cluster-wide STRICT policy cannot cut off CoreDNS or the operator.
SYSTEM_NAMESPACES = ("kube-node-lease", "kube-public", "kube-system")


def exempt_namespaces(operator_namespace: str) -> tuple[str, ...]:
    """The one definition of the namespaces exempt from enforcement, sorted."""
    return tuple(sorted({*SYSTEM_NAMESPACES, operator_namespace}))
