"""The operator's NetworkPolicies, judged by what a CNI would let through (meshless.netpol)."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshless import api
from meshless.api import Mode
from meshless.netpol import ExternalPeer, NetPod, NetworkPolicies
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PolicySpec
from meshless.policy.render import (
    complement_ranges,
    foreign_open_ports,
    label_value,
    needs_write,
    network_policy_name,
    port_ranges,
    render_network_policies,
)
from meshless.policy.resolve import PolicySet
from meshless.selectors import Requirement, Selector

ROOT = "meshless-system"
ID = api.IDENTITY_LABEL


def policy(
    namespace: str,
    name: str,
    mode: Mode = Mode.UNSET,
    selector: Mapping[str, str] | Selector | None = None,
    ports: Mapping[int, Mode] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    network_policy: bool = True,
) -> PolicySpec:
    if isinstance(selector, Mapping):
        selector = Selector(match_labels=tuple(sorted(selector.items())))
    return PolicySpec(
        namespace=namespace,
        name=name,
        uid=f"uid-{namespace}-{name}",
        creation_timestamp=created,
        selector=selector,
        mode=mode,
        port_modes=dict(ports or {}),
        network_policy=network_policy,
    )


def pod(namespace: str, name: str, ports: Iterable[int] = (), /, **labels: str) -> PodInfo:
    return PodInfo(
        namespace=namespace,
        name=name,
        labels=labels,
        service_account="default",
        ports=frozenset(ports),
        ip="10.1.0.1",
    )


def as_netpod(pod: PodInfo) -> NetPod:
    return NetPod(pod.namespace, pod.labels, pod.ip)


def as_peer(peer: PodInfo | ExternalPeer) -> NetPod | ExternalPeer:
    return peer if isinstance(peer, ExternalPeer) else as_netpod(peer)


@dataclass
class World:
    """Policies, pods and what meshless renders for them."""

    policies: list[PolicySpec]
    pods: list[PodInfo]
    namespaces: dict[str, dict[str, str]]
    foreign: Sequence[Mapping[str, Any]] = ()

    def __post_init__(self) -> None:
        resolver = PolicySet.build(self.policies, ROOT)
        self.by_ref = {p.ref: p for p in self.policies}
        self.resolved: list[tuple[PodInfo, PodResolution | None]] = [
            (p, resolver.resolve(p)) for p in self.pods
        ]
        self.rendered = render_network_policies(self.resolved, self.by_ref, self.foreign)
        self.ingress = NetworkPolicies([*self.rendered, *self.foreign], self.namespaces)

    def can_reach(self, peer: PodInfo | ExternalPeer, target: PodInfo, port: int) -> bool:
        return self.ingress.allows(as_peer(peer), as_netpod(target), port)


def namespaces(*names: str) -> dict[str, dict[str, str]]:
    return {n: {"kubernetes.io/metadata.name": n} for n in names}


# --- the "Must show" scenario ---------------------------------------------------------


def must_show() -> World:
    return World(
        policies=[
            policy("shop", "shop-strict", Mode.STRICT),
            policy("shop", "legacy-disable", Mode.DISABLE, {"app": "legacy"}),
            policy("shop", "api-metrics", Mode.UNSET, {"app": "api"}, {9090: Mode.DISABLE}),
        ],
        pods=[
            pod("shop", "web-1", [8443], app="web"),
            pod("shop", "legacy-1", [8080], app="legacy"),
            pod("shop", "api-1", [8443, 9090], app="api"),
            pod("free", "free-1", [8443], app="web"),
            pod("clients", "plain", app="client"),
            pod("clients", "labelled", app="client", **{ID: "client"}),
        ],
        namespaces=namespaces("shop", "free", "clients"),
    )


def test_must_show_unlabelled_peer_reaches_disable_ports_only() -> None:
    world = must_show()
    plain = world.pods[4]
    web, legacy, api_pod, free = world.pods[:4]
    assert not world.can_reach(plain, web, 8443)
    assert world.can_reach(plain, legacy, 8080)  # a narrower DISABLE beats a wider STRICT
    assert not world.can_reach(plain, api_pod, 8443)
    assert world.can_reach(plain, api_pod, 9090)  # the DISABLE port override
    assert world.can_reach(plain, free, 8443)  # no policy reaches it
    assert not world.can_reach(ExternalPeer("203.0.113.9"), web, 8443)


def test_must_show_labelled_peer_reaches_everything() -> None:
    world = must_show()
    labelled = world.pods[5]
    for target in world.pods[:4]:
        for port in (*target.ports, 22):
            assert world.can_reach(labelled, target, port), (target.name, port)


def test_must_show_undeclared_ports_and_udp_stay_open() -> None:
    world = must_show()
    plain, web = world.pods[4], world.pods[0]
    assert world.can_reach(plain, web, 8444)
    assert world.can_reach(plain, web, 1)
    assert world.can_reach(plain, web, 65535)
    assert world.ingress.allows(NetPod("clients", {}), NetPod("shop", {"app": "web"}), 8443, "UDP")


def test_must_show_renders_one_network_policy_per_label_set_with_strict_ports() -> None:
    world = must_show()
    names = [np["metadata"]["name"] for np in world.rendered]
    # web and api have STRICT ports; legacy is all DISABLE; free and clients have no policy
    assert names == sorted(
        [network_policy_name((("app", "api"),)), network_policy_name((("app", "web"),))]
    )
    api_name = network_policy_name((("app", "api"),))
    api_np = next(np for np in world.rendered if np["metadata"]["name"] == api_name)
    assert api_np["metadata"]["namespace"] == "shop"
    assert api_np["spec"]["podSelector"] == {"matchLabels": {"app": "api"}}
    assert api_np["spec"]["policyTypes"] == ["Ingress"]
    open_rule, identified_rule = api_np["spec"]["ingress"]
    assert open_rule == {
        "ports": [
            {"protocol": "TCP", "port": 1, "endPort": 8442},
            {"protocol": "TCP", "port": 8444, "endPort": 65535},
            {"protocol": "UDP"},
            {"protocol": "SCTP"},
        ]
    }
    assert identified_rule == {
        "from": [
            {
                "namespaceSelector": {},
                "podSelector": {"matchExpressions": [{"key": ID, "operator": "Exists"}]},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8443}],
    }
    # governed by the workload policy, in its own namespace: owned by it
    assert api_np["metadata"]["labels"] == {
        api.MANAGED_BY_KEY: api.MANAGED_BY_VALUE,
        api.POLICY_LABEL: "api-metrics",
        api.POLICY_NAMESPACE_LABEL: "shop",
    }
    assert api_np["metadata"]["ownerReferences"] == [
        {
            "apiVersion": api.API_VERSION,
            "kind": "MtlsPolicy",
            "name": "api-metrics",
            "uid": "uid-shop-api-metrics",
            "controller": True,
        }
    ]


# --- selection must be exact ------------------------------------------------------------------


def test_does_not_exist_keeps_a_group_selector_off_pods_with_more_labels() -> None:
    # Only a workload policy: {app: a} without a tier is STRICT, {app: a, tier: x} has no policy.
    no_tier = Selector(
        match_labels=(("app", "a"),), expressions=(Requirement("tier", "DoesNotExist"),)
    )
    world = World(
        policies=[policy("ns", "strict-a", Mode.STRICT, no_tier)],
        pods=[
            pod("ns", "strict", [8080], app="a"),
            pod("ns", "free", [8080], app="a", tier="x"),
            pod("ns", "client", app="client"),
        ],
        namespaces=namespaces("ns"),
    )
    strict, free, client = world.pods
    assert world.resolved[1][1] is None
    assert not world.can_reach(client, strict, 8080)
    assert world.can_reach(client, free, 8080)
    (np,) = world.rendered
    assert np["spec"]["podSelector"] == {
        "matchLabels": {"app": "a"},
        "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}],
    }
    # Without the DoesNotExist clause the free pod would be closed too.
    del np["spec"]["podSelector"]["matchExpressions"]
    assert not NetworkPolicies(world.rendered, world.namespaces).allows(
        NetPod("ns", {"app": "client"}), NetPod("ns", free.labels), 8080
    )


def test_wider_strict_does_not_close_what_a_narrower_disable_opens_on_overlapping_selectors() -> (
    None
):
    world = World(
        policies=[
            policy("ns", "all-strict", Mode.STRICT, {"app": "a"}, created="2026-01-01T00:00:00Z"),
            policy("ns", "b-disable", Mode.DISABLE, {"tier": "b"}, created="2026-01-02T00:00:00Z"),
            policy("ns", "c-disable", Mode.DISABLE, {"tier": "c"}, created="2025-12-01T00:00:00Z"),
        ],
        pods=[
            pod("ns", "ab", [80], app="a", tier="b"),  # oldest match: all-strict -> STRICT
            pod("ns", "ac", [80], app="a", tier="c"),  # oldest match: c-disable -> DISABLE
            pod("ns", "client", app="client"),
        ],
        namespaces=namespaces("ns"),
    )
    ab, ac, client = world.pods
    assert not world.can_reach(client, ab, 80)
    assert world.can_reach(client, ac, 80)


def test_same_labels_different_ports_close_the_union() -> None:
    world = World(
        policies=[policy("ns", "strict", Mode.STRICT)],
        pods=[
            pod("ns", "one", [8080], app="a"),
            pod("ns", "two", [9090], app="a"),
            pod("ns", "client", app="client"),
        ],
        namespaces=namespaces("ns"),
    )
    one, two, client = world.pods
    assert not world.can_reach(client, one, 8080)
    assert not world.can_reach(client, one, 9090)  # undeclared on one, STRICT on two
    assert not world.can_reach(client, two, 8080)


def test_network_policy_enforcement_off_leaves_strict_ports_open() -> None:
    world = World(
        policies=[policy("ns", "strict", Mode.STRICT, network_policy=False)],
        pods=[pod("ns", "one", [8080], app="a"), pod("ns", "client", app="client")],
        namespaces=namespaces("ns"),
    )
    assert world.rendered == []
    assert world.can_reach(world.pods[1], world.pods[0], 8080)


def test_enforcement_follows_the_policy_that_decided_each_port() -> None:
    world = World(
        policies=[
            policy("ns", "strict", Mode.STRICT, network_policy=False),
            policy("ns", "override", Mode.UNSET, {"app": "a"}, {9090: Mode.STRICT}),
        ],
        pods=[pod("ns", "one", [8080, 9090], app="a"), pod("ns", "client", app="client")],
        namespaces=namespaces("ns"),
    )
    one, client = world.pods
    assert world.can_reach(client, one, 8080)  # decided by "strict": networkPolicy false
    assert not world.can_reach(client, one, 9090)  # decided by "override"


def test_root_policy_elsewhere_is_labelled_not_owned() -> None:
    world = World(
        policies=[policy(ROOT, "cluster-strict", Mode.STRICT)],
        pods=[pod("shop", "one", [8080], app="a")],
        namespaces=namespaces(ROOT, "shop"),
    )
    (np,) = world.rendered
    assert "ownerReferences" not in np["metadata"]
    assert np["metadata"]["labels"][api.POLICY_LABEL] == "cluster-strict"
    assert np["metadata"]["labels"][api.POLICY_NAMESPACE_LABEL] == ROOT


def test_pod_with_no_labels_gets_an_empty_selector_with_does_not_exist() -> None:
    world = World(
        policies=[policy("ns", "strict", Mode.STRICT)],
        pods=[pod("ns", "bare", [80]), pod("ns", "other", [80], app="x")],
        namespaces=namespaces("ns"),
    )
    bare_np = next(np for np in world.rendered if np["metadata"]["name"] == network_policy_name(()))
    assert bare_np["spec"]["podSelector"] == {
        "matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]
    }


def test_output_is_deterministic_and_independent_of_pod_order() -> None:
    world = must_show()
    shuffled = list(world.resolved)
    random.Random(7).shuffle(shuffled)
    assert render_network_policies(shuffled, world.by_ref) == world.rendered
    assert render_network_policies(world.resolved, world.by_ref) == world.rendered


def test_needs_write_only_when_what_meshless_sets_differs() -> None:
    desired = must_show().rendered[0]
    stored = copy.deepcopy(desired)
    stored["metadata"].update(resourceVersion="7", uid="u", managedFields=[])
    stored["metadata"]["labels"]["argocd.argoproj.io/instance"] = "shop"
    assert not needs_write(desired, stored)
    assert needs_write(desired, None)
    changed_port = copy.deepcopy(stored)
    changed_port["spec"]["ingress"][1]["ports"][0]["port"] = 1
    assert needs_write(desired, changed_port)
    relabelled = copy.deepcopy(stored)
    relabelled["metadata"]["labels"][api.POLICY_LABEL] = "other"
    assert needs_write(desired, relabelled)
    orphaned = copy.deepcopy(stored)
    orphaned["metadata"].pop("ownerReferences", None)
    assert needs_write(desired, orphaned) == ("ownerReferences" in desired["metadata"])


# --- other people's NetworkPolicies ----------------------------------------------------------

ALLOW_ALL: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-all", "namespace": "shop"},
    "spec": {"podSelector": {}, "ingress": [{}]},
}
IDENTIFIED_ONLY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "identified-only", "namespace": "shop"},
    "spec": {
        "podSelector": {},
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {},
                        "podSelector": {"matchExpressions": [{"key": ID, "operator": "Exists"}]},
                    }
                ]
            }
        ],
    },
}
DENY_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny-all", "namespace": "shop"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
}


def test_foreign_allow_all_is_reported_on_strict_ports() -> None:
    world = must_show()
    reported = foreign_open_ports([ALLOW_ALL], world.resolved, world.by_ref)
    assert [(r.network_policy, r.pod, r.port) for r in reported] == [
        ("shop/allow-all", "shop/api-1", 8443),
        ("shop/allow-all", "shop/web-1", 8443),
    ]
    assert {r.policy for r in reported} == {PolicyRef("shop", "shop-strict")}


def test_foreign_policy_elsewhere_or_on_open_ports_is_not_reported() -> None:
    world = must_show()
    elsewhere = copy.deepcopy(ALLOW_ALL)
    elsewhere["metadata"]["namespace"] = "free"
    legacy_only = copy.deepcopy(ALLOW_ALL)
    legacy_only["spec"]["podSelector"] = {"matchLabels": {"app": "legacy"}}
    api_metrics = copy.deepcopy(ALLOW_ALL)
    api_metrics["spec"]["ingress"] = [{"ports": [{"port": 9090}]}]
    found = foreign_open_ports([elsewhere, legacy_only, api_metrics], world.resolved, world.by_ref)
    assert found == []


def test_foreign_policy_admitting_only_identified_pods_is_not_reported() -> None:
    world = must_show()
    assert foreign_open_ports([IDENTIFIED_ONLY, DENY_ALL], world.resolved, world.by_ref) == []


def test_managed_network_policies_are_never_foreign() -> None:
    world = must_show()
    mine = {
        **ALLOW_ALL,
        "metadata": {"name": "allow-all", "namespace": "shop", "labels": dict(api.MANAGED_BY)},
    }
    assert foreign_open_ports([mine], world.resolved, world.by_ref) == []


def test_foreign_isolation_is_never_widened() -> None:
    # A user's default deny: meshless adds nothing that would open a port behind it.
    world = must_show()
    world = World(world.policies, world.pods, world.namespaces, foreign=[DENY_ALL])
    assert world.rendered == []
    plain, labelled = world.pods[4], world.pods[5]
    for target in world.pods[:3]:
        for port in (*target.ports, 22):
            assert not world.can_reach(plain, target, port)
            assert not world.can_reach(labelled, target, port)


# --- port arithmetic and names ----------------------------------------------------------------


def test_port_ranges_and_complement() -> None:
    assert port_ranges([]) == []
    assert port_ranges([5, 3, 4, 9, 65535]) == [(3, 5), (9, 9), (65535, 65535)]
    assert complement_ranges([]) == [(1, 65535)]
    assert complement_ranges([1, 65535]) == [(2, 65534)]
    assert complement_ranges([80, 81, 443]) == [(1, 79), (82, 442), (444, 65535)]
    assert complement_ranges(range(1, 65536)) == []


def test_names_are_stable_and_label_values_fit() -> None:
    assert network_policy_name((("app", "a"),)) == network_policy_name((("app", "a"),))
    assert network_policy_name((("app", "a"),)) != network_policy_name((("app", "b"),))
    assert len(network_policy_name((("app", "a"),))) == len("meshless-") + 10
    assert label_value("short") == "short"
    long = "p" * 200
    assert len(label_value(long)) == 63
    assert label_value(long) != label_value("p" * 199)


# --- property: the CNI's answer is the resolver's answer ----------------------------------------

NAMESPACES = ("a", "b", ROOT)
PEER_ONLY_NAMESPACE = "c"
KEYS = ("app", "tier", "v")
VALUES = ("x", "y")
PORTS = (80, 443, 8080, 8081, 9090)
EXTRA_PORTS = (1, 8443, 65535)
MODES = tuple(Mode)
TIMES = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z")

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)


@st.composite
def selector_st(draw: st.DrawFn) -> Selector:
    match = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2))
    expressions = draw(
        st.lists(
            st.one_of(
                st.builds(
                    Requirement,
                    st.sampled_from(KEYS),
                    st.sampled_from(("In", "NotIn")),
                    st.frozensets(st.sampled_from(VALUES), min_size=1),
                ),
                st.builds(
                    Requirement,
                    st.sampled_from(KEYS),
                    st.sampled_from(("Exists", "DoesNotExist")),
                ),
            ),
            max_size=2,
        )
    )
    selector = Selector(tuple(sorted(match.items())), tuple(expressions))
    if selector.empty:
        return Selector((("app", draw(st.sampled_from(VALUES))),))
    return selector


@st.composite
def policies_st(draw: st.DrawFn) -> list[PolicySpec]:
    out: list[PolicySpec] = []
    for i in range(draw(st.integers(0, 2))):
        out.append(
            policy(
                ROOT,
                f"root-{i}",
                draw(st.sampled_from(MODES)),
                created=draw(st.sampled_from(TIMES)),
                network_policy=draw(st.booleans()),
            )
        )
    for ns in NAMESPACES[:2]:
        for i in range(draw(st.integers(0, 2))):
            out.append(
                policy(
                    ns,
                    f"ns-{i}",
                    draw(st.sampled_from(MODES)),
                    created=draw(st.sampled_from(TIMES)),
                    network_policy=draw(st.booleans()),
                )
            )
    for i in range(draw(st.integers(0, 5))):
        out.append(
            policy(
                draw(st.sampled_from(NAMESPACES)),
                f"wl-{i}",
                draw(st.sampled_from(MODES)),
                draw(selector_st()),
                draw(st.dictionaries(st.sampled_from(PORTS), st.sampled_from(MODES), max_size=2)),
                created=draw(st.sampled_from(TIMES)),
                network_policy=draw(st.booleans()),
            )
        )
    return out


# Pods crowd into namespace "a" so that label sets collide and nest.
POD_NAMESPACES = ("a", "a", "a", "b", ROOT, PEER_ONLY_NAMESPACE)


@st.composite
def pods_st(draw: st.DrawFn) -> list[PodInfo]:
    """Random pods; some copy an earlier pod's namespace and labels (replicas) or add one
    label to them (a nested label set, which only the DoesNotExist clauses tell apart)."""
    out: list[PodInfo] = []
    for i in range(draw(st.integers(1, 8))):
        how = draw(st.sampled_from(("fresh", "replica", "nested"))) if out else "fresh"
        if how == "fresh":
            namespace = draw(st.sampled_from(POD_NAMESPACES))
            labels = draw(labels_st)
            if draw(st.booleans()):
                labels[ID] = "sa"
        else:
            model = draw(st.sampled_from(out))
            namespace, labels = model.namespace, dict(model.labels)
            if how == "nested":
                labels[draw(st.sampled_from((*KEYS, ID)))] = draw(st.sampled_from(VALUES))
        out.append(
            PodInfo(
                namespace=namespace,
                name=f"pod-{i}",
                labels=labels,
                service_account="sa",
                ports=draw(st.frozensets(st.sampled_from(PORTS), max_size=3)),
                ip=f"10.0.0.{i + 1}",
            )
        )
    return out


@st.composite
def foreign_st(draw: st.DrawFn) -> list[dict[str, Any]]:
    rules = {
        "allow-all": [{}],
        "deny": [],
        "identified": [
            {
                "from": [
                    {
                        "namespaceSelector": {},
                        "podSelector": {"matchExpressions": [{"key": ID, "operator": "Exists"}]},
                    }
                ]
            }
        ],
        "app-x-port-80": [
            {"from": [{"podSelector": {"matchLabels": {"app": "x"}}}], "ports": [{"port": 80}]}
        ],
    }
    out = []
    for i in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(sorted(rules)))
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": f"user-{i}-{kind}",
                    "namespace": draw(st.sampled_from(POD_NAMESPACES)),
                },
                "spec": {
                    "podSelector": draw(st.one_of(st.just(Selector()), selector_st())).to_json(),
                    "ingress": rules[kind],
                },
            }
        )
    return out


def closed(
    resolution: PodResolution | None, port: int, by_ref: Mapping[PolicyRef, PolicySpec]
) -> bool:
    if resolution is None or port not in resolution.ports:
        return False
    decided = resolution.ports[port]
    return decided.mode is Mode.STRICT and (
        decided.decided_by is None or by_ref[decided.decided_by].network_policy
    )


def check_world(world: World) -> None:
    foreign = NetworkPolicies(world.foreign, world.namespaces)
    reported = {
        (r.pod, r.port) for r in foreign_open_ports(world.foreign, world.resolved, world.by_ref)
    }
    peers: list[PodInfo | ExternalPeer] = [p for p, _ in world.resolved]
    peers.append(ExternalPeer("198.51.100.7"))
    for target, resolution in world.resolved:
        target_np = as_netpod(target)
        siblings = [
            r
            for p, r in world.resolved
            if p.namespace == target.namespace and dict(p.labels) == dict(target.labels)
        ]
        for port in sorted({*target.ports, *PORTS, *EXTRA_PORTS}):
            if resolution is not None and port in resolution.ports:
                is_closed = closed(resolution, port, world.by_ref)
            else:  # undeclared here: closed only if a same-labels sibling closes it (union)
                is_closed = any(closed(r, port, world.by_ref) for r in siblings)
            for peer in peers:
                labelled = not isinstance(peer, ExternalPeer) and ID in peer.labels
                got = world.can_reach(peer, target, port)
                if foreign.isolated(target_np):
                    # The user's policies isolate the pod: meshless adds nothing, and reports
                    # every closed port they leave open to unlabelled peers.
                    assert got == foreign.allows(as_peer(peer), target_np, port)
                    own = resolution is not None and port in resolution.ports
                    if got and is_closed and own and not labelled:
                        assert (f"{target.namespace}/{target.name}", port) in reported
                else:
                    assert got == (not is_closed or labelled), (peer, target, port)
            # UDP is never meshless's business: only the user's policies decide it.
            udp_peer = NetPod(PEER_ONLY_NAMESPACE, {})
            assert world.ingress.allows(udp_peer, target_np, port, "UDP") == foreign.allows(
                udp_peer, target_np, port, "UDP"
            )


@settings(max_examples=200, deadline=None)
@given(policies=policies_st(), pods=pods_st())
def test_property_cni_answer_equals_resolver_answer(
    policies: list[PolicySpec], pods: list[PodInfo]
) -> None:
    check_world(World(policies, pods, namespaces(*NAMESPACES, PEER_ONLY_NAMESPACE)))


@settings(max_examples=100, deadline=None)
@given(policies=policies_st(), pods=pods_st(), foreign=foreign_st())
def test_property_with_user_network_policies(
    policies: list[PolicySpec], pods: list[PodInfo], foreign: list[dict[str, Any]]
) -> None:
    check_world(World(policies, pods, namespaces(*NAMESPACES, PEER_ONLY_NAMESPACE), foreign))
