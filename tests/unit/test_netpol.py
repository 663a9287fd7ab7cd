"""NetworkPolicy ingress semantics, one test per rule. Examples marked "docs" are the ones on
https://kubernetes.io/docs/concepts/services-networking/network-policies/ ."""

from __future__ import annotations

from typing import Any

import pytest

from meshless.netpol import ExternalPeer, NetPod, NetworkPolicies, NetworkPolicy

IDENTITY = "meshless.dev/identity"

NAMESPACES = {
    "default": {"kubernetes.io/metadata.name": "default"},
    "myproject": {"kubernetes.io/metadata.name": "myproject", "project": "myproject"},
    "alice": {"kubernetes.io/metadata.name": "alice", "user": "alice"},
    "other": {"kubernetes.io/metadata.name": "other"},
}


def netpol(spec: dict[str, Any], name: str = "np", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def pod(namespace: str = "default", ip: str = "10.0.0.1", **labels: str) -> NetPod:
    return NetPod(namespace, labels, ip)


DB = pod(role="db", ip="10.0.0.10")
FRONTEND = pod(role="frontend", ip="10.0.0.11")
STRANGER = pod(role="stranger", ip="10.0.0.12")


def allows(
    policies: list[dict[str, Any]],
    peer: NetPod | ExternalPeer,
    to: NetPod,
    port: int,
    proto: str = "TCP",
) -> bool:
    return NetworkPolicies(policies, NAMESPACES).allows(peer, to, port, proto)


# --- isolation ------------------------------------------------------------------------------


def test_no_policy_means_not_isolated_and_everything_allowed() -> None:
    ingress = NetworkPolicies([], NAMESPACES)
    assert not ingress.isolated(DB)
    assert ingress.allows(ExternalPeer("1.2.3.4"), DB, 1, "UDP")


def test_docs_default_deny_isolates_every_pod_of_its_namespace_only() -> None:
    deny = netpol({"podSelector": {}, "policyTypes": ["Ingress"]})
    assert not allows([deny], FRONTEND, DB, 6379)
    assert not allows([deny], FRONTEND, FRONTEND, 80, "UDP")
    elsewhere = pod("other", role="db")
    assert allows([deny], FRONTEND, elsewhere, 6379)


def test_pod_selector_limits_isolation_to_matching_pods() -> None:
    only_db = netpol({"podSelector": {"matchLabels": {"role": "db"}}})
    assert not allows([only_db], FRONTEND, DB, 6379)
    assert allows([only_db], DB, FRONTEND, 80)


def test_pod_selector_match_expressions() -> None:
    policy = netpol(
        {
            "podSelector": {
                "matchExpressions": [{"key": "role", "operator": "In", "values": ["db", "x"]}]
            }
        }
    )
    ingress = NetworkPolicies([policy], NAMESPACES)
    assert ingress.isolated(DB)
    assert not ingress.isolated(FRONTEND)


def test_policy_types_default_is_ingress_even_without_ingress_rules() -> None:
    # docs: "all policies (whether or not they contain an ingress section) are assumed to
    # affect ingress"
    assert NetworkPolicies([netpol({"podSelector": {}})], NAMESPACES).isolated(DB)
    with_egress = netpol({"podSelector": {}, "egress": [{}]})
    assert NetworkPolicies([with_egress], NAMESPACES).isolated(DB)
    empty_types = netpol({"podSelector": {}, "policyTypes": []})
    assert NetworkPolicies([empty_types], NAMESPACES).isolated(DB)


def test_egress_only_policy_does_not_isolate_ingress() -> None:
    # docs: default-deny egress
    egress_only = netpol({"podSelector": {}, "policyTypes": ["Egress"]})
    assert not NetworkPolicies([egress_only], NAMESPACES).isolated(DB)
    assert allows([egress_only], STRANGER, DB, 6379)


def test_docs_allow_all_ingress() -> None:
    allow_all = netpol({"podSelector": {}, "ingress": [{}]})
    deny = netpol({"podSelector": {}, "policyTypes": ["Ingress"]}, name="deny")
    assert allows([deny, allow_all], ExternalPeer("8.8.8.8"), DB, 5432)
    assert allows([deny, allow_all], STRANGER, DB, 53, "UDP")


def test_policies_add_up() -> None:
    from_frontend = netpol(
        {
            "podSelector": {"matchLabels": {"role": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}],
        },
        name="a",
    )
    from_stranger = netpol(
        {
            "podSelector": {},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "stranger"}}}]}],
        },
        name="b",
    )
    assert allows([from_frontend, from_stranger], FRONTEND, DB, 1)
    assert allows([from_frontend, from_stranger], STRANGER, DB, 1)
    assert not allows([from_frontend, from_stranger], DB, DB, 1)


# --- peers ----------------------------------------------------------------------------------

DOCS_EXAMPLE = netpol(
    {
        "podSelector": {"matchLabels": {"role": "db"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                    {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                    {"podSelector": {"matchLabels": {"role": "frontend"}}},
                ],
                "ports": [{"protocol": "TCP", "port": 6379}],
            }
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 5978}]}],
    },
    name="test-network-policy",
)


def test_docs_example_pod_selector_peer_is_own_namespace_only() -> None:
    assert allows([DOCS_EXAMPLE], FRONTEND, DB, 6379)
    assert not allows([DOCS_EXAMPLE], STRANGER, DB, 6379)
    assert not allows([DOCS_EXAMPLE], pod("other", role="frontend"), DB, 6379)


def test_docs_example_namespace_selector_peer_admits_every_pod_there() -> None:
    assert allows([DOCS_EXAMPLE], pod("myproject", anything="x"), DB, 6379)
    assert allows([DOCS_EXAMPLE], pod("myproject"), DB, 6379)
    assert not allows([DOCS_EXAMPLE], pod("alice"), DB, 6379)


def test_docs_example_ip_block_with_except() -> None:
    assert allows([DOCS_EXAMPLE], ExternalPeer("172.17.0.5"), DB, 6379)
    assert allows([DOCS_EXAMPLE], ExternalPeer("172.17.255.255"), DB, 6379)
    assert not allows([DOCS_EXAMPLE], ExternalPeer("172.17.1.9"), DB, 6379)
    assert not allows([DOCS_EXAMPLE], ExternalPeer("172.18.0.1"), DB, 6379)
    assert not allows([DOCS_EXAMPLE], ExternalPeer("::1"), DB, 6379)
    # the block is matched against a pod's IP too
    assert allows([DOCS_EXAMPLE], pod("other", ip="172.17.3.3"), DB, 6379)
    assert not allows([DOCS_EXAMPLE], pod("other", ip=""), DB, 6379)


def test_docs_example_port_and_protocol() -> None:
    assert not allows([DOCS_EXAMPLE], FRONTEND, DB, 6380)
    assert not allows([DOCS_EXAMPLE], FRONTEND, DB, 6379, "UDP")


def test_external_peer_is_only_admitted_by_ip_block_or_open_from() -> None:
    by_pods = netpol(
        {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}, name="pods"
    )
    assert not allows([by_pods], ExternalPeer("10.9.9.9"), DB, 80)
    assert allows([by_pods], pod("other"), DB, 80)


def test_docs_and_versus_or_of_namespace_and_pod_selector() -> None:
    both = netpol(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"user": "alice"}},
                            "podSelector": {"matchLabels": {"role": "client"}},
                        }
                    ]
                }
            ],
        }
    )
    either = netpol(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"user": "alice"}}},
                        {"podSelector": {"matchLabels": {"role": "client"}}},
                    ]
                }
            ],
        }
    )
    alice_client = pod("alice", role="client")
    alice_other = pod("alice", role="server")
    local_client = pod("default", role="client")
    other_client = pod("other", role="client")
    assert allows([both], alice_client, DB, 1)
    assert not allows([both], alice_other, DB, 1)
    assert not allows([both], local_client, DB, 1)
    assert allows([either], alice_client, DB, 1)
    assert allows([either], alice_other, DB, 1)
    assert allows([either], local_client, DB, 1)
    assert not allows([either], other_client, DB, 1)


def test_empty_namespace_selector_means_every_namespace() -> None:
    labelled_anywhere = netpol(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {
                                "matchExpressions": [{"key": IDENTITY, "operator": "Exists"}]
                            },
                        }
                    ]
                }
            ],
        }
    )
    assert allows([labelled_anywhere], NetPod("other", {IDENTITY: "sa"}), DB, 1)
    assert allows([labelled_anywhere], NetPod("not-listed", {IDENTITY: "sa"}), DB, 1)
    assert not allows([labelled_anywhere], NetPod("other", {}), DB, 1)


def test_namespace_selector_on_the_automatic_name_label() -> None:
    by_name = netpol(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "other"}
                            }
                        }
                    ]
                }
            ],
        }
    )
    assert allows([by_name], pod("other"), DB, 1)
    assert not allows([by_name], pod("alice"), DB, 1)


def test_rule_with_empty_from_list_admits_every_source() -> None:
    policy = netpol({"podSelector": {}, "ingress": [{"from": [], "ports": [{"port": 80}]}]})
    assert allows([policy], ExternalPeer("203.0.113.1"), DB, 80)
    assert not allows([policy], ExternalPeer("203.0.113.1"), DB, 81)


# --- ports ----------------------------------------------------------------------------------


def only_ports(*ports: dict[str, Any]) -> dict[str, Any]:
    return netpol({"podSelector": {}, "ingress": [{"ports": list(ports)}]})


def test_protocol_defaults_to_tcp() -> None:
    policy = only_ports({"port": 53})
    assert allows([policy], STRANGER, DB, 53)
    assert not allows([policy], STRANGER, DB, 53, "UDP")


def test_docs_end_port_range_is_inclusive() -> None:
    policy = only_ports({"protocol": "TCP", "port": 32000, "endPort": 32768})
    assert allows([policy], STRANGER, DB, 32000)
    assert allows([policy], STRANGER, DB, 32768)
    assert not allows([policy], STRANGER, DB, 31999)
    assert not allows([policy], STRANGER, DB, 32769)


def test_protocol_without_port_is_every_port_of_that_protocol() -> None:
    policy = only_ports({"protocol": "UDP"})
    assert allows([policy], STRANGER, DB, 1, "UDP")
    assert allows([policy], STRANGER, DB, 65535, "UDP")
    assert not allows([policy], STRANGER, DB, 1, "TCP")
    assert not allows([policy], STRANGER, DB, 1, "SCTP")


def test_empty_ports_list_is_every_port() -> None:
    policy = netpol({"podSelector": {}, "ingress": [{"ports": []}]})
    assert allows([policy], STRANGER, DB, 9, "SCTP")


def test_named_port_resolves_against_the_destination_pods_port_names() -> None:
    policy = only_ports({"port": "metrics"})
    web = NetPod("default", {"role": "web"}, "10.0.0.20", {"metrics": (9090, "TCP")})
    dns = NetPod("default", {"role": "dns"}, "10.0.0.21", {"metrics": (9153, "UDP")})
    assert allows([policy], STRANGER, web, 9090)
    assert not allows([policy], STRANGER, web, 9091)
    assert not allows([policy], STRANGER, dns, 9153)  # the name's protocol is UDP
    assert not allows([policy], STRANGER, DB, 9090)  # DB names no port


def test_pod_without_ingress_rules_but_selected_admits_nothing() -> None:
    policy = netpol({"podSelector": {}, "ingress": []})
    assert not allows([policy], FRONTEND, DB, 80)


# --- some peer without a label ----------------------------------------------------------------


def ingress_rule(rule: dict[str, Any]) -> dict[str, Any]:
    return netpol({"podSelector": {}, "ingress": [rule]})


@pytest.mark.parametrize(
    ("rule", "opens"),
    [
        pytest.param({}, True, id="from absent"),
        pytest.param({"from": []}, True, id="from empty"),
        pytest.param({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}, True, id="ipBlock"),
        pytest.param({"from": [{"namespaceSelector": {}}]}, True, id="namespaceSelector only"),
        pytest.param(
            {"from": [{"podSelector": {"matchLabels": {"app": "x"}}}]},
            True,
            id="podSelector without the label",
        ),
        pytest.param(
            {
                "from": [
                    {
                        "podSelector": {
                            "matchExpressions": [
                                {"key": IDENTITY, "operator": "NotIn", "values": ["a"]}
                            ]
                        }
                    }
                ]
            },
            True,
            id="NotIn on the label",
        ),
        pytest.param(
            {"from": [{"podSelector": {"matchLabels": {IDENTITY: "sa"}}}]},
            False,
            id="matchLabels on the label",
        ),
        pytest.param(
            {
                "from": [
                    {
                        "namespaceSelector": {},
                        "podSelector": {
                            "matchExpressions": [{"key": IDENTITY, "operator": "Exists"}]
                        },
                    }
                ]
            },
            False,
            id="Exists on the label, any namespace",
        ),
        pytest.param(
            {
                "from": [
                    {
                        "podSelector": {
                            "matchExpressions": [
                                {"key": IDENTITY, "operator": "In", "values": ["a", "b"]}
                            ]
                        }
                    }
                ]
            },
            False,
            id="In on the label",
        ),
        pytest.param({"ports": [{"port": 81}]}, False, id="another port"),
        pytest.param({"ports": [{"port": 80}]}, True, id="this port"),
        pytest.param({"ports": [{"port": 80, "protocol": "UDP"}]}, False, id="other protocol"),
    ],
)
def test_open_to_some_peer_without_the_label(rule: dict[str, Any], opens: bool) -> None:
    ingress = NetworkPolicies([ingress_rule(rule)], NAMESPACES)
    assert ingress.open_to_peer_without(IDENTITY, DB, 80) is opens
    assert bool(ingress.openers_without(IDENTITY, DB, 80)) is opens


def test_open_to_peer_without_label_when_nothing_isolates() -> None:
    ingress = NetworkPolicies([], NAMESPACES)
    assert ingress.open_to_peer_without(IDENTITY, DB, 80)
    assert ingress.openers_without(IDENTITY, DB, 80) == []


def test_unknown_port_names_count_as_possibly_open() -> None:
    ingress = NetworkPolicies([ingress_rule({"ports": [{"port": "https"}]})], NAMESPACES)
    unknown = NetPod("default", {}, named_ports=None)
    known = NetPod("default", {}, named_ports={"https": (8443, "TCP")})
    assert ingress.open_to_peer_without(IDENTITY, unknown, 80)
    assert not ingress.open_to_peer_without(IDENTITY, known, 80)
    assert ingress.open_to_peer_without(IDENTITY, known, 8443)


def test_parse_keeps_namespace_and_name() -> None:
    parsed = NetworkPolicy.parse(DOCS_EXAMPLE)
    assert parsed.key == "default/test-network-policy"
    assert parsed.isolates_ingress
    assert len(parsed.ingress) == 1
    assert len(parsed.ingress[0].peers) == 3
