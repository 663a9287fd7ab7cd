"""Istio PeerAuthentication precedence, one table row per rule (the row's id names it).

Policies are written as P(name, mode, ...): a name unique in the row, its namespace (default
"shop"), a selector (workload-level when non-empty), portLevelMtls, and its age in minutes
after a fixed start (creationTimestamp). Expectations name policies by those names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshless.api import Mode
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PolicySpec, PortMode, Scope
from meshless.policy.resolve import PolicySet, scope_of
from meshless.selectors import Selector, parse_selector

ROOT = "meshless-system"
SHOP = "shop"
APP = {"app": "payments"}
POD_LABELS = {"app": "payments", "tier": "backend"}


def P(
    name: str,
    mode: str = "UNSET",
    *,
    ns: str = SHOP,
    sel: Mapping[str, str] | None = None,
    ports: Mapping[int, str] | None = None,
    t: int = 0,
) -> PolicySpec:
    """A policy; `t` is its creation time in minutes after 2030-01-01T00:00:00Z."""
    selector = parse_selector({"matchLabels": dict(sel)}) if sel else None
    return PolicySpec(
        namespace=ns,
        name=name,
        uid=f"uid-{name}",
        creation_timestamp=f"2030-01-01T{t // 60:02d}:{t % 60:02d}:00Z",
        selector=selector,
        mode=Mode(mode),
        port_modes={port: Mode(m) for port, m in (ports or {}).items()},
    )


def pod(
    ns: str = SHOP,
    labels: Mapping[str, str] | None = None,
    ports: Sequence[int] = (8080,),
) -> PodInfo:
    return PodInfo(
        namespace=ns,
        name="payments-0",
        labels=dict(POD_LABELS if labels is None else labels),
        service_account="payments",
        ports=frozenset(ports),
    )


POD = pod()


@dataclass(frozen=True)
class Expect:
    mode: str
    by: str | None  # the deciding policy's name; None: the PERMISSIVE default
    applied: tuple[str, ...]
    # Per port (mode, deciding policy); omitted: every declared port has (mode, by).
    ports: Mapping[int, tuple[str, str | None]] | None = None
    ignored: Mapping[str, str] = field(default_factory=dict)  # loser -> winner


def resolve(policies: Sequence[PolicySpec], target: PodInfo) -> PodResolution | None:
    return PolicySet.build(policies, ROOT).resolve(target)


def check(policies: Sequence[PolicySpec], target: PodInfo, expect: Expect) -> None:
    refs = {p.name: p.ref for p in policies}
    assert len(refs) == len(policies), "policy names must be unique in a row"

    def ref(name: str | None) -> PolicyRef | None:
        return None if name is None else refs[name]

    got = resolve(policies, target)
    assert got is not None, "expected a resolution, got None (no policy reaches the pod)"
    assert (got.mode, got.decided_by) == (Mode(expect.mode), ref(expect.by))
    assert got.applied == tuple(refs[n] for n in expect.applied)
    assert dict(got.ignored) == {refs[loser]: refs[win] for loser, win in expect.ignored.items()}
    ports = expect.ports
    if ports is None:
        ports = {p: (expect.mode, expect.by) for p in target.ports}
    assert dict(got.ports) == {p: PortMode(Mode(m), ref(by)) for p, (m, by) in ports.items()}


# --------------------------------------------------------------------------------------------
# Scope: the narrowest policy that matches the pod decides.

SCOPE_ROWS = [
    pytest.param(
        [P("ns", "STRICT"), P("wl", "DISABLE", sel=APP, t=1)],
        POD,
        Expect("DISABLE", "wl", applied=("wl", "ns")),
        id="workload beats namespace",
    ),
    pytest.param(
        [P("wl", "DISABLE", sel=APP), P("ns", "STRICT", t=1)],
        POD,
        Expect("DISABLE", "wl", applied=("wl", "ns")),
        id="workload beats namespace whatever their ages",
    ),
    pytest.param(
        [P("root", "STRICT", ns=ROOT), P("ns", "DISABLE")],
        POD,
        Expect("DISABLE", "ns", applied=("ns", "root")),
        id="namespace beats root",
    ),
    pytest.param(
        [P("root", "DISABLE", ns=ROOT), P("wl", "STRICT", sel=APP)],
        POD,
        Expect("STRICT", "wl", applied=("wl", "root")),
        id="workload beats root",
    ),
    pytest.param(
        [P("root", "STRICT", ns=ROOT), P("ns", "DISABLE"), P("wl", "PERMISSIVE", sel=APP)],
        POD,
        Expect("PERMISSIVE", "wl", applied=("wl", "ns", "root")),
        id="workload beats namespace beats root",
    ),
    pytest.param(
        [P("root", "STRICT", ns=ROOT)],
        POD,
        Expect("STRICT", "root", applied=("root",)),
        id="root policy reaches pods in every namespace",
    ),
    pytest.param(
        [P("ns", "STRICT", sel={})],
        POD,
        Expect("STRICT", "ns", applied=("ns",)),
        id="an empty selector is namespace-wide",
    ),
]

# --------------------------------------------------------------------------------------------
# UNSET inherits from the next wider scope; PERMISSIVE when nothing wider decides.

INHERITANCE_ROWS = [
    pytest.param(
        [P("ns", "STRICT"), P("wl", "UNSET", sel=APP)],
        POD,
        Expect("STRICT", "ns", applied=("wl", "ns")),
        id="UNSET workload inherits from namespace",
    ),
    pytest.param(
        [P("root", "DISABLE", ns=ROOT), P("ns", "UNSET")],
        POD,
        Expect("DISABLE", "root", applied=("ns", "root")),
        id="UNSET namespace inherits from root",
    ),
    pytest.param(
        [P("root", "STRICT", ns=ROOT), P("ns", "UNSET"), P("wl", "UNSET", sel=APP)],
        POD,
        Expect("STRICT", "root", applied=("wl", "ns", "root")),
        id="UNSET workload and namespace inherit from root",
    ),
    pytest.param(
        [P("root", "STRICT", ns=ROOT), P("wl", "UNSET", sel=APP)],
        POD,
        Expect("STRICT", "root", applied=("wl", "root")),
        id="UNSET workload without namespace policy inherits from root",
    ),
    pytest.param(
        [P("root", "UNSET", ns=ROOT), P("ns", "UNSET"), P("wl", "UNSET", sel=APP)],
        POD,
        Expect("PERMISSIVE", None, applied=("wl", "ns", "root")),
        id="UNSET everywhere is PERMISSIVE decided by nobody",
    ),
    pytest.param(
        [P("wl", "UNSET", sel=APP)],
        POD,
        Expect("PERMISSIVE", None, applied=("wl",)),
        id="UNSET with nothing wider is PERMISSIVE",
    ),
    pytest.param(
        [P("root", "UNSET", ns=ROOT)],
        POD,
        Expect("PERMISSIVE", None, applied=("root",)),
        id="UNSET root policy is PERMISSIVE",
    ),
]

# --------------------------------------------------------------------------------------------
# Conflicts: one namespace-wide policy per namespace, one root policy, one workload policy per
# pod take effect; the oldest (creationTimestamp, then name) wins; losers are ignored entirely.

CONFLICT_ROWS = [
    pytest.param(
        [P("ns-new", "STRICT", t=2), P("ns-old", "DISABLE", t=1)],
        POD,
        Expect("DISABLE", "ns-old", applied=("ns-old",), ignored={"ns-new": "ns-old"}),
        id="only the oldest namespace-wide policy counts",
    ),
    pytest.param(
        [P("ns-b", "STRICT", t=1), P("ns-a", "DISABLE", t=1)],
        POD,
        Expect("DISABLE", "ns-a", applied=("ns-a",), ignored={"ns-b": "ns-a"}),
        id="namespace-wide tie on creationTimestamp goes to the first name",
    ),
    pytest.param(
        [P("ns-c", t=3), P("ns-a", "STRICT", t=1), P("ns-b", "DISABLE", t=2)],
        POD,
        Expect("STRICT", "ns-a", applied=("ns-a",), ignored={"ns-b": "ns-a", "ns-c": "ns-a"}),
        id="every newer namespace-wide policy names the oldest as winner",
    ),
    pytest.param(
        [P("root", "DISABLE", ns=ROOT), P("ns-old", "UNSET", t=1), P("ns-new", "STRICT", t=2)],
        POD,
        Expect("DISABLE", "root", applied=("ns-old", "root"), ignored={"ns-new": "ns-old"}),
        id="an ignored namespace-wide policy does not fill in for an UNSET winner",
    ),
    pytest.param(
        [P("root-new", "STRICT", ns=ROOT, t=2), P("root-old", "PERMISSIVE", ns=ROOT, t=1)],
        POD,
        Expect(
            "PERMISSIVE",
            "root-old",
            applied=("root-old",),
            ignored={"root-new": "root-old"},
        ),
        id="only the oldest root policy counts",
    ),
    pytest.param(
        [P("wl-new", "STRICT", sel=APP, t=5), P("wl-old", "DISABLE", sel=APP, t=1)],
        POD,
        Expect("DISABLE", "wl-old", applied=("wl-old",), ignored={"wl-new": "wl-old"}),
        id="oldest workload policy wins among several matching",
    ),
    pytest.param(
        [
            P("wl-b", "STRICT", sel=APP, t=1),
            P("wl-a", "DISABLE", sel={"tier": "backend"}, t=1),
        ],
        POD,
        Expect("DISABLE", "wl-a", applied=("wl-a",), ignored={"wl-b": "wl-a"}),
        id="workload tie on creationTimestamp goes to the first name",
    ),
    pytest.param(
        [P("wl-10h", "STRICT", sel=APP, t=600), P("wl-9h", "DISABLE", sel=APP, t=540)],
        POD,
        Expect("DISABLE", "wl-9h", applied=("wl-9h",), ignored={"wl-10h": "wl-9h"}),
        id="age compares timestamps, not names",
    ),
    pytest.param(
        [P("wl-other", "DISABLE", sel={"app": "orders"}, t=1), P("wl", "STRICT", sel=APP, t=2)],
        POD,
        Expect("STRICT", "wl", applied=("wl",)),
        id="an older workload policy that does not match neither applies nor conflicts",
    ),
    pytest.param(
        [
            P("ns", "DISABLE"),
            P("wl-old", "UNSET", sel=APP, t=1),
            P("wl-new", "STRICT", sel=APP, t=2),
        ],
        POD,
        Expect("DISABLE", "ns", applied=("wl-old", "ns"), ignored={"wl-new": "wl-old"}),
        id="an ignored workload policy does not fill in for an UNSET winner",
    ),
]

# --------------------------------------------------------------------------------------------
# portLevelMtls: the winning workload policy's entries override the pod's mode on those ports.

PORT_ROWS = [
    pytest.param(
        [P("wl", "STRICT", sel=APP, ports={9090: "DISABLE"})],
        pod(ports=(8080, 9090)),
        Expect(
            "STRICT",
            "wl",
            applied=("wl",),
            ports={8080: ("STRICT", "wl"), 9090: ("DISABLE", "wl")},
        ),
        id="portLevelMtls overrides the pod mode on that port",
    ),
    pytest.param(
        [P("ns", "STRICT"), P("wl", "UNSET", sel=APP, ports={9090: "PERMISSIVE"})],
        pod(ports=(8080, 9090)),
        Expect(
            "STRICT",
            "ns",
            applied=("wl", "ns"),
            ports={8080: ("STRICT", "ns"), 9090: ("PERMISSIVE", "wl")},
        ),
        id="portLevelMtls overrides an inherited pod mode",
    ),
    pytest.param(
        [P("wl", "STRICT", sel=APP, ports={9090: "UNSET"})],
        pod(ports=(8080, 9090)),
        Expect(
            "STRICT",
            "wl",
            applied=("wl",),
            ports={8080: ("STRICT", "wl"), 9090: ("STRICT", "wl")},
        ),
        id="UNSET port entry inherits the pod mode",
    ),
    pytest.param(
        [P("ns", "DISABLE"), P("wl", "UNSET", sel=APP, ports={9090: "UNSET"})],
        pod(ports=(9090,)),
        Expect("DISABLE", "ns", applied=("wl", "ns"), ports={9090: ("DISABLE", "ns")}),
        id="UNSET port entry inherits the pod mode from a wider scope",
    ),
    pytest.param(
        [P("wl", "STRICT", sel=APP, ports={9443: "PERMISSIVE"})],
        pod(ports=(8080,)),
        Expect(
            "STRICT",
            "wl",
            applied=("wl",),
            ports={8080: ("STRICT", "wl"), 9443: ("PERMISSIVE", "wl")},
        ),
        id="override of a port the pod does not declare still appears",
    ),
    pytest.param(
        [P("wl", "DISABLE", sel=APP, ports={8443: "STRICT"})],
        pod(ports=()),
        Expect("DISABLE", "wl", applied=("wl",), ports={8443: ("STRICT", "wl")}),
        id="a pod without declared ports gets the override ports",
    ),
    pytest.param(
        [P("ns", "STRICT")],
        pod(ports=()),
        Expect("STRICT", "ns", applied=("ns",), ports={}),
        id="a pod without declared ports has no port entries",
    ),
    pytest.param(
        [
            P("wl-old", "STRICT", sel=APP, t=1),
            P("wl-new", "STRICT", sel=APP, ports={8080: "DISABLE"}, t=2),
        ],
        POD,
        Expect(
            "STRICT",
            "wl-old",
            applied=("wl-old",),
            ports={8080: ("STRICT", "wl-old")},
            ignored={"wl-new": "wl-old"},
        ),
        id="a loser's portLevelMtls is ignored",
    ),
]

# --------------------------------------------------------------------------------------------
# The root namespace and namespace boundaries.

ROOT_POD = pod(ns=ROOT)

NAMESPACE_ROWS = [
    pytest.param(
        [P("root-wl", "STRICT", ns=ROOT, sel=APP)],
        ROOT_POD,
        Expect("STRICT", "root-wl", applied=("root-wl",)),
        id="a root-namespace policy with a selector is workload-level for root pods",
    ),
    pytest.param(
        [P("root", "DISABLE", ns=ROOT), P("root-wl", "STRICT", ns=ROOT, sel=APP, t=1)],
        ROOT_POD,
        Expect("STRICT", "root-wl", applied=("root-wl", "root")),
        id="in the root namespace a workload policy beats the root policy",
    ),
    pytest.param(
        [P("root", "DISABLE", ns=ROOT), P("root-wl", "STRICT", ns=ROOT, sel=APP, t=1)],
        POD,
        Expect("DISABLE", "root", applied=("root",)),
        id="a root-namespace policy with a selector does not reach other namespaces",
    ),
    pytest.param(
        [P("root", "STRICT", ns=ROOT)],
        ROOT_POD,
        Expect("STRICT", "root", applied=("root",)),
        id="pods in the root namespace get the root policy",
    ),
    pytest.param(
        [P("root-old", "DISABLE", ns=ROOT, t=1), P("root-new", "STRICT", ns=ROOT, t=2)],
        ROOT_POD,
        Expect(
            "DISABLE",
            "root-old",
            applied=("root-old",),
            ignored={"root-new": "root-old"},
        ),
        id="the root namespace has no separate namespace-wide level",
    ),
    pytest.param(
        [P("root", "DISABLE", ns=ROOT), P("billing", "STRICT", ns="billing")],
        POD,
        Expect("DISABLE", "root", applied=("root",)),
        id="a namespace-wide policy in another namespace never applies",
    ),
    pytest.param(
        [P("root", "DISABLE", ns=ROOT), P("billing-wl", "STRICT", ns="billing", sel=APP)],
        POD,
        Expect("DISABLE", "root", applied=("root",)),
        id="a workload policy in another namespace never applies",
    ),
    pytest.param(
        [
            P("billing-old", "DISABLE", ns="billing", t=0),
            P("shop", "STRICT", t=5),
        ],
        POD,
        Expect("STRICT", "shop", applied=("shop",)),
        id="namespace-wide age is compared per namespace",
    ),
]


@pytest.mark.parametrize(
    ("policies", "target", "expect"),
    SCOPE_ROWS + INHERITANCE_ROWS + CONFLICT_ROWS + PORT_ROWS + NAMESPACE_ROWS,
)
def test_precedence(policies: list[PolicySpec], target: PodInfo, expect: Expect) -> None:
    check(policies, target, expect)
    # The order policies arrive in never matters.
    check(list(reversed(policies)), target, expect)


# --------------------------------------------------------------------------------------------
# Pods no policy reaches are left alone.


@pytest.mark.parametrize(
    ("policies", "target"),
    [
        pytest.param([], POD, id="no policies at all"),
        pytest.param(
            [P("wl", "STRICT", sel={"app": "orders"})], POD, id="a workload policy that misses"
        ),
        pytest.param(
            [
                P("billing", "STRICT", ns="billing"),
                P("billing-wl", "STRICT", ns="billing", sel=APP),
            ],
            POD,
            id="policies in another namespace never apply",
        ),
        pytest.param(
            [P("root-wl", "STRICT", ns=ROOT, sel=APP)],
            POD,
            id="a root-namespace selector policy does not reach other namespaces",
        ),
        pytest.param(
            [P("shop", "STRICT")],
            ROOT_POD,
            id="a namespace-wide policy does not reach the root namespace",
        ),
    ],
)
def test_a_pod_no_policy_reaches_is_left_alone(policies: list[PolicySpec], target: PodInfo) -> None:
    assert resolve(policies, target) is None


# --------------------------------------------------------------------------------------------
# The PolicySet's own views.


def test_scope_of_each_kind_of_policy() -> None:
    assert scope_of(P("a", sel=APP), ROOT) is Scope.WORKLOAD
    assert scope_of(P("a", ns=ROOT, sel=APP), ROOT) is Scope.WORKLOAD
    assert scope_of(P("a"), ROOT) is Scope.NAMESPACE
    assert scope_of(P("a", sel={}), ROOT) is Scope.NAMESPACE
    present_but_empty = replace(P("a"), selector=Selector())
    assert scope_of(present_but_empty, ROOT) is Scope.NAMESPACE
    assert scope_of(replace(P("a", ns=ROOT), selector=Selector()), ROOT) is Scope.ROOT
    assert scope_of(P("a", ns=ROOT), ROOT) is Scope.ROOT
    assert PolicySet.build([], ROOT).scope(P("a", ns=ROOT)) is Scope.ROOT


def test_shadowed_names_root_and_namespace_wide_losers_only() -> None:
    policies = [
        P("root-old", ns=ROOT, t=1),
        P("root-new", ns=ROOT, t=2),
        P("shop-old", t=1),
        P("shop-new", t=2),
        P("shop-newest", t=3),
        P("billing", ns="billing", t=9),
        P("wl-old", sel=APP, t=1),
        P("wl-new", sel=APP, t=2),
    ]
    refs = {p.name: p.ref for p in policies}
    shadowed = PolicySet.build(policies, ROOT).shadowed()
    assert shadowed == {
        refs["root-new"]: refs["root-old"],
        refs["shop-new"]: refs["shop-old"],
        refs["shop-newest"]: refs["shop-old"],
    }


def test_all_yields_every_policy_once() -> None:
    policies = [P("root", ns=ROOT), P("ns"), P("wl", sel=APP), P("billing", ns="billing")]
    got = list(PolicySet.build(policies, ROOT).all())
    assert sorted(p.name for p in got) == ["billing", "ns", "root", "wl"]


def test_governing_is_the_narrowest_applied_policy() -> None:
    policies = [P("root", "STRICT", ns=ROOT), P("ns"), P("wl", sel=APP)]
    refs = {p.name: p.ref for p in policies}
    got = resolve(policies, POD)
    assert got is not None
    assert got.governing == refs["wl"]
    other = resolve(policies, pod(labels={}))
    assert other is not None
    assert other.governing == refs["ns"]


# --------------------------------------------------------------------------------------------
# What the resolution implies: an identity, STRICT ports.


@pytest.mark.parametrize(
    ("policies", "target", "needs_identity", "strict_ports"),
    [
        pytest.param([P("ns", "DISABLE")], POD, False, set(), id="DISABLE needs no identity"),
        pytest.param([P("ns", "STRICT")], POD, True, {8080}, id="STRICT needs an identity"),
        pytest.param([P("ns", "PERMISSIVE")], POD, True, set(), id="PERMISSIVE needs an identity"),
        pytest.param(
            [P("ns", "UNSET")], POD, True, set(), id="UNSET everywhere is PERMISSIVE: identity"
        ),
        pytest.param(
            [P("wl", "DISABLE", sel=APP, ports={9090: "STRICT"})],
            pod(ports=(8080, 9090)),
            True,
            {9090},
            id="a STRICT port on a DISABLE pod needs an identity",
        ),
        pytest.param(
            [P("wl", "DISABLE", sel=APP, ports={9090: "PERMISSIVE"})],
            pod(ports=(8080,)),
            True,
            set(),
            id="a PERMISSIVE override port needs an identity",
        ),
        pytest.param(
            [P("wl", "STRICT", sel=APP, ports={8080: "DISABLE"})],
            pod(ports=(8080,)),
            True,
            set(),
            id="a STRICT pod mode needs an identity even with every port DISABLE",
        ),
        pytest.param(
            [P("wl", "STRICT", sel=APP, ports={9090: "DISABLE"})],
            pod(ports=(8080, 9090, 9443)),
            True,
            {8080, 9443},
            id="strict_ports leaves out the DISABLE override",
        ),
    ],
)
def test_needs_identity_and_strict_ports(
    policies: list[PolicySpec], target: PodInfo, needs_identity: bool, strict_ports: set[int]
) -> None:
    got = resolve(policies, target)
    assert got is not None
    assert got.needs_identity() is needs_identity
    assert got.strict_ports() == strict_ports


# --------------------------------------------------------------------------------------------
# Against a second, Istio-shaped implementation: for random policy sets and pods, resolve()
# gives what Istio's getConfigsForWorkload + ComposePeerAuthentication would (pilot/pkg/model
# and pilot/pkg/security/authn), with this project's two documented differences: a
# root-namespace policy with a selector is workload-level for pods in the root namespace
# (Istio skips it), and equal creationTimestamps are broken by name.

NAMESPACES = (SHOP, "billing", ROOT)
LABEL_KEYS = ("app", "tier")
LABEL_VALUES = ("a", "b")
PORTS = (8080, 9090)


def istio_compose(policies: Sequence[PolicySpec], target: PodInfo) -> PodResolution | None:
    # getConfigsForWorkload: the pod's namespace and the root namespace, selector matching.
    lookup = {target.namespace, ROOT}
    configs = [
        p
        for p in policies
        if p.namespace in lookup
        and (p.selector is None or p.selector.empty or p.selector.matches(target.labels))
    ]
    mesh = namespace = workload = None

    def older(a: PolicySpec, b: PolicySpec | None) -> bool:
        return b is None or (a.creation_timestamp, a.name) < (b.creation_timestamp, b.name)

    for cfg in configs:
        if cfg.selector is None or cfg.selector.empty:
            if cfg.namespace == ROOT:
                mesh = cfg if older(cfg, mesh) else mesh
            elif cfg.namespace == target.namespace:
                namespace = cfg if older(cfg, namespace) else namespace
        elif cfg.namespace == target.namespace:  # Istio: "and not in the root namespace"
            workload = cfg if older(cfg, workload) else workload
    if mesh is None and namespace is None and workload is None:
        return None

    mode, by = Mode.PERMISSIVE, None
    for level in (mesh, namespace, workload):
        if level is not None and level.mode is not Mode.UNSET:
            mode, by = level.mode, level.ref
    ports = {port: PortMode(mode, by) for port in target.ports}
    if workload is not None:
        for port, port_mode in workload.port_modes.items():
            unset = port_mode is Mode.UNSET
            ports[port] = PortMode(mode, by) if unset else PortMode(port_mode, workload.ref)
    applied = tuple(p.ref for p in (workload, namespace, mesh) if p is not None)
    ignored = {}
    for cfg in configs:
        if cfg.selector is None or cfg.selector.empty:
            level = mesh if cfg.namespace == ROOT else namespace
        elif cfg.namespace == target.namespace:
            level = workload
        else:
            continue  # a root-namespace selector policy never reaches another namespace's pod
        assert level is not None
        if cfg is not level:
            ignored[cfg.ref] = level.ref
    return PodResolution(mode=mode, decided_by=by, ports=ports, applied=applied, ignored=ignored)


label_maps = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES))


@st.composite
def policy_sets(draw: st.DrawFn) -> list[PolicySpec]:
    count = draw(st.integers(min_value=0, max_value=8))
    out = []
    for i in range(count):
        sel = draw(st.none() | label_maps)
        ports = draw(st.dictionaries(st.sampled_from((*PORTS, 9443)), st.sampled_from(list(Mode))))
        out.append(
            P(
                f"p{i}",
                draw(st.sampled_from(list(Mode))),
                ns=draw(st.sampled_from(NAMESPACES)),
                sel=sel,
                ports=ports if sel else None,
                t=draw(st.integers(min_value=0, max_value=3)),  # small: ties happen
            )
        )
    return out


pods = st.builds(
    pod,
    ns=st.sampled_from(NAMESPACES),
    labels=label_maps,
    ports=st.lists(st.sampled_from(PORTS), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(policies=policy_sets(), target=pods)
def test_resolve_agrees_with_istio_composition(policies: list[PolicySpec], target: PodInfo) -> None:
    got = resolve(policies, target)
    want = istio_compose(policies, target)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert (got.mode, got.decided_by, got.applied) == (want.mode, want.decided_by, want.applied)
    assert dict(got.ports) == dict(want.ports)
    # Every policy that reaches the pod but is not applied is ignored, naming its level's winner.
    assert dict(got.ignored) == dict(want.ignored)
