"""The name policy at apply time (validate.judge_dns_names): the same DnsNamePolicy the
operator checks before it signs, each refused name named with its rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshless.admission.validate import judge_dns_names
from meshless.pki.names import DnsNamePolicy

NS = "tenant"
DEFAULT = DnsNamePolicy()
NOT_OURS = "rule: the namespace's own names"
WILDCARD = "rule: one DNS label per name"


def identity(*names: str, name: str = "api") -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": "api"}
    if names:
        spec["dnsNames"] = list(names)
    return {
        "apiVersion": "meshless.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


REFUSED = [
    ("*.shop.svc", WILDCARD),
    ("payments.shop.svc", NOT_OURS),
    ("kubernetes.default.svc", NOT_OURS),
    ("meshless-webhook.meshless-system.svc", NOT_OURS),
    ("example.com", NOT_OURS),
    ("*.tenant.svc", WILDCARD),
    ("api.tenant.svc.other.domain", NOT_OURS),
    ("a.b.tenant.svc", NOT_OURS),
]


@pytest.mark.parametrize(("name", "rule"), REFUSED)
def test_a_name_outside_the_policy_is_refused_with_the_name_and_the_rule(
    name: str, rule: str
) -> None:
    decision = judge_dns_names("CREATE", identity("api.tenant.svc", name), None, NS, DEFAULT)
    assert not decision.allowed
    assert decision.code == 403
    assert decision.message.startswith("WorkloadIdentity tenant/api: ")
    assert f"DNS name {name!r}" in decision.message
    assert rule in decision.message
    assert "'api.tenant.svc'" not in decision.message  # only the refused names are named
    assert decision.message.endswith("nothing is issued for it")


@pytest.mark.parametrize(
    "names", [(), ("api.tenant.svc",), ("api.tenant.svc", "api.tenant.svc.cluster.local")]
)
def test_the_namespaces_service_names_are_admitted(names: tuple[str, ...]) -> None:
    assert judge_dns_names("CREATE", identity(*names), None, NS, DEFAULT).allowed


def test_every_refused_name_is_named() -> None:
    decision = judge_dns_names(
        "CREATE", identity("example.com", "kubernetes.default.svc"), None, NS, DEFAULT
    )
    assert "'example.com'" in decision.message
    assert "'kubernetes.default.svc'" in decision.message


def test_the_operator_setting_widens_what_is_admitted() -> None:
    body = identity("api.tenant.example.com")
    assert not judge_dns_names("CREATE", body, None, NS, DEFAULT).allowed
    wider = DnsNamePolicy(allowed=("*.{namespace}.example.com",))
    assert judge_dns_names("CREATE", body, None, NS, wider).allowed
    # The placeholder is the identity's own namespace, not any.
    other = identity("api.shop.example.com")
    assert not judge_dns_names("CREATE", other, None, NS, wider).allowed


def test_a_custom_cluster_domain_is_the_one_admitted() -> None:
    policy = DnsNamePolicy(cluster_domain="corp.internal")
    admitted = judge_dns_names("CREATE", identity("api.tenant.svc.corp.internal"), None, NS, policy)
    assert admitted.allowed
    refused = judge_dns_names("CREATE", identity("api.tenant.svc.cluster.local"), None, NS, policy)
    assert not refused.allowed


def test_an_update_is_judged_only_when_it_changes_the_names() -> None:
    # An identity admitted before the policy narrowed: its labels can still be edited ...
    old = identity("example.com")
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert judge_dns_names("UPDATE", relabelled, old, NS, DEFAULT).allowed
    # ... a change that keeps a refused name is refused ...
    added = identity("example.com", "api.tenant.svc")
    assert not judge_dns_names("UPDATE", added, old, NS, DEFAULT).allowed
    # ... and removing the refused name (the migration) is admitted.
    fixed = identity("api.tenant.svc")
    assert judge_dns_names("UPDATE", fixed, old, NS, DEFAULT).allowed
