"""Identity delivery (meshless.delivery and the parts that follow it): the default from the
setting and discovery, a policy's own choice, the podCertificate volume the injector mounts,
the pods that need no WorkloadIdentity, and the pods reported for a request that never came."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meshless.admission import pods
from meshless.admission.inject import InjectionConflict, injection_patch
from meshless.admission.validate import judge_identity_label, judge_strict
from meshless.api import Mode
from meshless.delivery import (
    Delivery,
    DeliverySetting,
    DeliveryUnavailable,
    PodCertificateMount,
    ServedApis,
    default_delivery,
    delivery_for,
    pod_certificate_mount,
    pod_key_type,
)
from meshless.identity.spec import IdentityRef
from meshless.podcert.request import SIGNER_NAME
from meshless.policy.model import IdentityDefaults, PolicyRef
from meshless.policy.pod_certificates import pod_certificate_waits
from meshless.policy.provision import plan_identities, uses_pod_certificate
from meshless.policy.report import PolicyTally, policy_conditions
from meshless.policy.resolve import PolicySet
from meshless.policy.spec import PolicySpecError, parse_policy, pod_info
from meshless.settings import SettingsError, load_settings
from tests.policyfixtures import ROOT_NS
from tests.policyfixtures import pod as pod_record
from tests.policyfixtures import policy as policy_spec
from tests.unit.admission_helpers import apply_patch, pod, policy_set
from tests.unit.admission_helpers import policy as admission_policy

BETA = "certificates.k8s.io/v1beta1"
SERVED = ServedApis(pod_certificate_requests=BETA, cluster_trust_bundles=BETA)
PCR_ONLY = ServedApis(pod_certificate_requests=BETA)
NOTHING = ServedApis()
IDENTITY = IdentityRef(
    "shop",
    "meshless-payments",
    "meshless-payments-mtls",
    "spiffe://cluster.local/ns/shop/sa/payments",
    True,
)


# --- the default ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "apis", "expected"),
    [
        (DeliverySetting.AUTO, PCR_ONLY, Delivery.POD_CERTIFICATE),
        (DeliverySetting.AUTO, NOTHING, Delivery.SECRET),
        (DeliverySetting.SECRET, SERVED, Delivery.SECRET),
        (DeliverySetting.POD_CERTIFICATE, NOTHING, Delivery.POD_CERTIFICATE),
    ],
)
def test_the_default_delivery(
    setting: DeliverySetting, apis: ServedApis, expected: Delivery
) -> None:
    assert default_delivery(setting, apis) is expected


def test_the_setting_is_checked_at_start() -> None:
    assert load_settings(env={}).identity.delivery == "auto"
    assert load_settings(env={"MESHLESS_IDENTITY_DELIVERY": "PodCertificate"}).identity.delivery
    with pytest.raises(SettingsError, match=r"--identity-delivery.*'pods'"):
        load_settings(env={"MESHLESS_IDENTITY_DELIVERY": "pods"})


def test_a_policy_says_or_takes_the_default() -> None:
    assert delivery_for("Secret", None, Delivery.POD_CERTIFICATE) is Delivery.SECRET
    assert delivery_for("PodCertificate", None, Delivery.SECRET) is Delivery.POD_CERTIFICATE
    assert delivery_for(None, "ECDSAP384", Delivery.POD_CERTIFICATE) is Delivery.POD_CERTIFICATE
    # RSA2048 is no kubelet key type: a policy that did not ask for pod certificates keeps
    # its Secrets when the default turns to PodCertificate.
    assert delivery_for(None, "RSA2048", Delivery.POD_CERTIFICATE) is Delivery.SECRET


@pytest.mark.parametrize(
    ("algorithm", "key_type"),
    [
        (None, "ECDSAP256"),
        ("ECDSAP256", "ECDSAP256"),
        ("ECDSAP384", "ECDSAP384"),
        ("Ed25519", "ED25519"),
        ("RSA3072", "RSA3072"),
        ("RSA4096", "RSA4096"),
    ],
)
def test_key_types_map_to_the_kubelets(algorithm: str | None, key_type: str) -> None:
    assert pod_key_type(algorithm) == key_type


def test_rsa2048_with_pod_certificates_is_refused_naming_the_fields() -> None:
    body = {
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {
            "mode": "STRICT",
            "identity": {"delivery": "PodCertificate", "privateKey": {"algorithm": "RSA2048"}},
        },
    }
    with pytest.raises(PolicySpecError, match=r"spec.identity.privateKey.algorithm RSA2048"):
        parse_policy(body)
    body["spec"]["identity"]["delivery"] = "Pods"
    with pytest.raises(PolicySpecError, match=r"spec\.identity\.delivery 'Pods'"):
        parse_policy(body)
    body["spec"]["identity"] = {
        "delivery": "PodCertificate",
        "privateKey": {"algorithm": "RSA4096"},
    }
    assert parse_policy(body).identity.delivery == "PodCertificate"


def test_forced_pod_certificates_without_the_api_name_it() -> None:
    with pytest.raises(DeliveryUnavailable, match=r"podcertificaterequests\.certificates\.k8s\.io"):
        pod_certificate_mount(
            IdentityDefaults(delivery="PodCertificate"), Delivery.SECRET, NOTHING, "shop/p"
        )
    assert pod_certificate_mount(IdentityDefaults(), Delivery.SECRET, SERVED, "shop/p") is None
    assert pod_certificate_mount(
        IdentityDefaults(algorithm="Ed25519"), Delivery.POD_CERTIFICATE, PCR_ONLY, "shop/p"
    ) == PodCertificateMount(key_type="ED25519", cluster_trust_bundle=False)


# --- injection ------------------------------------------------------------------------------
def inject(body: dict[str, Any], mount: PodCertificateMount) -> dict[str, Any]:
    policies = policy_set(admission_policy("shop", "strict"))
    resolution = policies.resolve(pods.pod_info(body, "shop"))
    return apply_patch(body, injection_patch(body, resolution, IDENTITY, mount))


def test_pod_certificate_volume_with_a_cluster_trust_bundle() -> None:
    out = inject(pod(), PodCertificateMount("ECDSAP384", cluster_trust_bundle=True))
    assert out["spec"]["volumes"] == [
        {
            "name": "meshless-identity",
            "projected": {
                "sources": [
                    {
                        "podCertificate": {
                            "signerName": SIGNER_NAME,
                            "keyType": "ECDSAP384",
                            "keyPath": "tls.key",
                            "certificateChainPath": "tls.crt",
                        }
                    },
                    {
                        "clusterTrustBundle": {
                            "signerName": SIGNER_NAME,
                            "labelSelector": {},
                            "path": "ca.crt",
                        }
                    },
                ]
            },
        }
    ]
    # The same mount, env and label as with a Secret: applications see no difference.
    for container in (*out["spec"]["initContainers"], *out["spec"]["containers"]):
        assert container["volumeMounts"] == [
            {
                "name": "meshless-identity",
                "mountPath": "/var/run/secrets/meshless/",
                "readOnly": True,
            }
        ]
        assert {e["name"] for e in container["env"]} == {
            "MESHLESS_SPIFFE_ID",
            "MESHLESS_MTLS_MODE",
            "MESHLESS_MTLS_PORTS",
        }
    assert out["metadata"]["labels"] == {"meshless.dev/identity": "payments"}
    assert pods.identity_mounted(out, "meshless-payments-mtls")
    assert pods.mounts_pod_certificate(out)
    info = pod_info({**out, "metadata": {**out["metadata"], "namespace": "shop"}})
    assert info.identity_mounted and info.pod_certificate


def test_pod_certificate_volume_with_the_config_map_bundle() -> None:
    out = inject(pod(), PodCertificateMount())
    bundle = out["spec"]["volumes"][0]["projected"]["sources"][1]
    assert bundle == {
        "configMap": {
            "name": "meshless-trust-bundle",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
    }


def test_a_second_invocation_changes_nothing_and_defaults_are_not_a_conflict() -> None:
    mount = PodCertificateMount(cluster_trust_bundle=True)
    out = inject(pod(), mount)
    out["spec"]["volumes"][0]["projected"]["defaultMode"] = 420  # the API server's default
    policies = policy_set(admission_policy("shop", "strict"))
    resolution = policies.resolve(pods.pod_info(out, "shop"))
    assert injection_patch(out, resolution, IDENTITY, mount) == []


def test_a_secret_identity_where_a_pod_certificate_goes_is_a_conflict() -> None:
    body = pod()
    body["spec"]["volumes"] = [
        {"name": "meshless-identity", "secret": {"secretName": "meshless-payments-mtls"}}
    ]
    policies = policy_set(admission_policy("shop", "strict"))
    resolution = policies.resolve(pods.pod_info(body, "shop"))
    mount = PodCertificateMount()
    with pytest.raises(InjectionConflict, match=r"pod certificate of signer meshless\.dev/spiffe"):
        injection_patch(body, resolution, IDENTITY, mount)


def test_admission_counts_a_pod_certificate_as_the_identity() -> None:
    out = inject(pod(), PodCertificateMount())
    out["metadata"]["namespace"] = "shop"
    policies = policy_set(admission_policy("shop", "strict"))
    assert judge_strict("CREATE", out, None, "shop", policies).allowed
    assert judge_identity_label("CREATE", out, None, "shop", IDENTITY).allowed


def test_another_signers_pod_certificate_is_no_identity() -> None:
    out = inject(pod(), PodCertificateMount())
    out["metadata"]["namespace"] = "shop"
    source = out["spec"]["volumes"][0]["projected"]["sources"][0]["podCertificate"]
    source["signerName"] = "example.com/other"
    assert not pods.identity_mounted(out)
    policies = policy_set(admission_policy("shop", "strict"))
    assert not judge_strict("CREATE", out, None, "shop", policies).allowed
    assert not judge_identity_label("CREATE", out, None, "shop", IDENTITY).allowed


# --- provisioning -----------------------------------------------------------------------------
NS = "shop"


def _plan(pods_: list[Any], delivery: Delivery, policy_delivery: str | None = None) -> list[str]:
    spec = policy_spec(NS, "strict", Mode.STRICT)
    spec = replace(spec, identity=IdentityDefaults(delivery=policy_delivery))
    ps = PolicySet.build([spec], ROOT_NS)
    resolved = [(p, r) for p in pods_ if (r := ps.resolve(p)) is not None]

    def delivery_of(ref: PolicyRef) -> Delivery:
        return delivery_for(policy_delivery, None, delivery)

    plan = plan_identities(NS, resolved, {spec.ref: spec}, [], delivery_of)
    return [m["metadata"]["name"] for m in plan.create_or_update]


def test_no_workload_identity_for_pods_with_pod_certificates() -> None:
    with_certificate = replace(
        pod_record(NS, "a", service_account="a", mounted=True), pod_certificate=True
    )
    not_yet_injected = pod_record(NS, "b", service_account="b")
    assert _plan([with_certificate, not_yet_injected], Delivery.POD_CERTIFICATE) == []
    # Forced by the policy, whatever the default:
    assert _plan([not_yet_injected], Delivery.SECRET, "PodCertificate") == []
    assert _plan([not_yet_injected], Delivery.SECRET) == ["meshless-b"]


def test_a_provisioned_identity_stays_while_a_pod_still_mounts_its_secret() -> None:
    """The policy moved to PodCertificate: old pods keep their Secret until re-created."""
    old = pod_record(NS, "old", service_account="a", mounted=True)
    new = replace(pod_record(NS, "new", service_account="a", mounted=True), pod_certificate=True)
    assert _plan([old, new], Delivery.SECRET, "PodCertificate") == ["meshless-a"]
    assert _plan([new], Delivery.SECRET, "PodCertificate") == []
    ps = PolicySet.build([policy_spec(NS, "strict", Mode.STRICT)], ROOT_NS)
    resolution = ps.resolve(old)
    assert resolution is not None and not uses_pod_certificate(old, resolution)


# --- status -----------------------------------------------------------------------------------
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _waiting(name: str, age: timedelta, **kw: Any) -> Any:
    created = (NOW - age).isoformat().replace("+00:00", "Z")
    base = replace(
        pod_record(NS, name, running=False, mounted=True),
        pod_certificate=True,
        node="node-a",
        created=created,
        uid=f"uid-{name}",
    )
    return replace(base, **kw)


def test_pods_without_a_request_after_a_minute_are_reported() -> None:
    old = _waiting("old", timedelta(seconds=90))
    asked = _waiting("asked", timedelta(seconds=90))
    young = _waiting("young", timedelta(seconds=20))
    unscheduled = _waiting("unscheduled", timedelta(minutes=5), node="")
    running = _waiting("running", timedelta(minutes=5), running=True)
    waits = pod_certificate_waits([old, asked, young, unscheduled, running], None, NOW)
    assert [p.name for p in waits.candidates] == ["old", "asked"]
    assert waits.unrequested == ()
    assert waits.recheck_after == pytest.approx(40)
    waits = pod_certificate_waits(waits.candidates, frozenset({"uid-asked"}), NOW)
    assert [p.name for p in waits.unrequested] == ["old"]


def test_the_policy_condition_names_pod_and_node_or_the_missing_api() -> None:
    tally = PolicyTally(selected=1, unrequested=["pod shop/old on node node-a"])
    ready, _ = policy_conditions(None, tally)
    assert (ready.status, ready.reason) == (False, "PodCertificateNotRequested")
    assert "pod shop/old on node node-a" in ready.message
    assert "spec.identity.delivery: Secret" in ready.message
    tally = PolicyTally(delivery_unavailable="no API")
    ready, _ = policy_conditions(None, tally)
    assert (ready.status, ready.reason, ready.message) == (
        False,
        "PodCertificateAPIUnavailable",
        "no API",
    )
