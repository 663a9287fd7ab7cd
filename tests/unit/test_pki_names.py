"""The name policy (pki/names.py): which DNS names an identity in a namespace may carry, each
rule named, and the DNS subtrees the issuing intermediate's NameConstraints permit."""

from __future__ import annotations

import pytest

from meshless.pki.names import DnsNamePolicy, NamePattern, PatternError

DEFAULT = DnsNamePolicy()
WIDENED = DnsNamePolicy(allowed=("*.{namespace}.example.com", "api-{namespace}.corp.internal"))


@pytest.mark.parametrize(
    ("namespace", "name", "allowed", "rule"),
    [
        # built-in: the namespace's own Service names
        ("tenant", "api.tenant.svc", True, "own Service name"),
        ("tenant", "api.tenant.svc.cluster.local", True, "own Service name, cluster domain"),
        ("tenant", "API.tenant.svc.", True, "case and a trailing dot do not matter"),
        # another namespace's names
        ("tenant", "payments.shop.svc", False, "another namespace's Service"),
        ("tenant", "payments.shop.svc.cluster.local", False, "another namespace, cluster domain"),
        ("tenant", "kubernetes.default.svc", False, "the API server's Service"),
        ("tenant", "meshless-webhook.meshless-system.svc", False, "the operator's webhook"),
        # wildcards never
        ("tenant", "*.tenant.svc", False, "wildcard in own namespace"),
        ("tenant", "*.shop.svc", False, "wildcard in another namespace"),
        # more than one label, or none
        ("tenant", "a.b.tenant.svc", False, "two labels before the namespace"),
        ("tenant", "tenant.svc", False, "no Service label"),
        # public names
        ("tenant", "example.com", False, "a public name"),
        ("tenant", "api.tenant.svc.other.domain", False, "another cluster domain"),
        # syntax
        ("tenant", "-bad.tenant.svc", False, "not a DNS label"),
    ],
)
def test_default_policy(namespace: str, name: str, allowed: bool, rule: str) -> None:
    violation = DEFAULT.violation(namespace, name)
    assert (violation is None) == allowed, rule
    if violation is not None:
        assert repr(name) in violation.message
        assert "rule:" in violation.message or "not a valid DNS name" in violation.message


def test_the_refusal_names_the_name_the_namespace_and_what_is_allowed() -> None:
    violation = DEFAULT.violation("tenant", "payments.shop.svc")
    assert violation is not None
    assert violation.name == "payments.shop.svc"
    assert "'tenant'" in violation.message
    assert "<label>.tenant.svc" in violation.message
    assert "<label>.tenant.svc.cluster.local" in violation.message
    assert "--allowed-dns-names" in violation.message


def test_wildcards_are_refused_by_their_own_rule() -> None:
    violation = WIDENED.violation("tenant", "*.tenant.example.com")
    assert violation is not None and "wildcard" in violation.message


@pytest.mark.parametrize(
    ("namespace", "name", "allowed"),
    [
        ("tenant", "www.tenant.example.com", True),
        ("tenant", "www.shop.example.com", False),
        ("tenant", "tenant.example.com", False),
        ("tenant", "api-tenant.corp.internal", True),
        ("tenant", "api-shop.corp.internal", False),
        ("tenant", "api.tenant.svc", True),
    ],
)
def test_patterns_widen_per_namespace(namespace: str, name: str, allowed: bool) -> None:
    assert (WIDENED.violation(namespace, name) is None) == allowed


def test_a_custom_cluster_domain() -> None:
    policy = DnsNamePolicy(cluster_domain="corp.example")
    assert policy.violation("shop", "api.shop.svc.corp.example") is None
    assert policy.violation("shop", "api.shop.svc.cluster.local") is not None


def test_namespace_is_matched_literally_not_as_a_regex() -> None:
    policy = DnsNamePolicy(allowed=("{namespace}.example.com",))
    assert policy.violation("a-b", "a-b.example.com") is None
    assert policy.violation("a-b", "axb.example.com") is not None


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "empty"),
        ("*", "fixed label"),
        ("*.{namespace}", "fixed label"),
        ("{namespace}", "fixed label"),
        ("a.*.example.com", "first label"),
        ("{ns}.example.com", "placeholder"),
        ("bad_label.example.com", "not a DNS label"),
        ("**.example.com", "not a DNS label"),
    ],
)
def test_malformed_patterns_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(PatternError, match=why) as raised:
        NamePattern.parse(pattern)
    assert repr(pattern) in str(raised.value)


def test_permitted_subtrees_default() -> None:
    assert DEFAULT.permitted_dns_subtrees() == ("svc", "svc.cluster.local")


def test_permitted_subtrees_follow_the_patterns_and_drop_covered_ones() -> None:
    policy = DnsNamePolicy(allowed=("*.{namespace}.example.com", "www.example.com", "x.internal"))
    assert policy.permitted_dns_subtrees() == (
        "example.com",
        "svc",
        "svc.cluster.local",
        "x.internal",
    )


def test_every_allowed_name_lies_in_a_permitted_subtree() -> None:
    """The constraints must never refuse what the policy allows."""
    subtrees = WIDENED.permitted_dns_subtrees()
    for name in (
        "api.tenant.svc",
        "api.tenant.svc.cluster.local",
        "www.tenant.example.com",
        "api-tenant.corp.internal",
    ):
        assert WIDENED.violation("tenant", name) is None
        assert any(name == s or name.endswith("." + s) for s in subtrees), name
