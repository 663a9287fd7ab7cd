"""CA rotation, pure: the phase order, every decision, and the Secret data of each step."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshless.pki import rotation as r
from meshless.pki.bundle import bundle_pem, fingerprint, parse_pem_certificates
from meshless.pki.ca import (
    CertificateAuthority,
    bootstrap_self_signed,
    ca_from_secret_data,
    ca_to_secret_data,
    root_key_from_secret_data,
)
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.rotation import Action, Phase, Progress, RotationPolicy, RotationState
from meshless.pki.svid import SvidRequest, issue_svid
from tests.x509peers import openssl_verify, write_identity

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TD = "cluster.local"
POLICY = RotationPolicy(
    renewal_fraction=2 / 3, settle_time=timedelta(minutes=2), window=timedelta(hours=1)
)
NEW_CA, NEW_ROOT_KEY = bootstrap_self_signed(TD, NOW)
REQUEST = SvidRequest(
    f"spiffe://{TD}/ns/shop/sa/a", (), timedelta(hours=24), KeyAlgorithm.ECDSAP256
)


def self_signed(now: datetime = NOW) -> tuple[CertificateAuthority, dict[str, bytes]]:
    ca, root_key = bootstrap_self_signed(TD, now)
    return ca, ca_to_secret_data(ca, root_key)


def load(data: dict[str, bytes], now: datetime = NOW) -> CertificateAuthority:
    return ca_from_secret_data(data, now)


def fp(cert: x509.Certificate) -> str:
    return fingerprint(cert).hex()


def verifies(chain_pem: bytes, bundle: bytes, now: datetime = NOW) -> bool:
    """A real path validation (`openssl verify` at `now`) of a client leaf against a bundle.
    (Not cryptography's verifier: it refuses the URI name constraints our intermediates carry,
    docs/decisions/name-constraints.md.)"""
    with tempfile.TemporaryDirectory() as directory:
        identity = write_identity(Path(directory), chain_pem, b"", bundle)
        return openssl_verify(identity, purpose="sslclient", at=now).returncode == 0


# --- phases -----------------------------------------------------------------------------
def test_the_phase_order_is_idle_prepare_switch_finish_and_back() -> None:
    assert [p.value for p in r.PHASE_ORDER] == ["Idle", "Prepare", "Switch", "Finish"]
    assert r.next_phase(Phase.IDLE) is Phase.PREPARE
    assert r.next_phase(Phase.PREPARE) is Phase.SWITCH
    assert r.next_phase(Phase.SWITCH) is Phase.FINISH
    assert r.next_phase(Phase.FINISH) is Phase.IDLE


def test_state_round_trips_and_garbage_reads_as_idle() -> None:
    state = RotationState(
        phase=Phase.SWITCH,
        reason="Requested",
        old_roots=("aa",),
        new_root="bb",
        started_at=NOW,
        phase_since=NOW,
        bundles_complete_at=NOW,
        switched_at=NOW + timedelta(minutes=3),
        leaves_done_at=NOW + timedelta(minutes=4),
        handled_request="root:1",
        history=("Prepare@x",),
    )
    assert RotationState.from_json(state.to_json()) == state
    assert RotationState.from_json(None) == RotationState()
    assert RotationState.from_json(b"{not json") == RotationState()
    assert RotationState.from_json(b'{"phase": "Sideways"}') == RotationState()
    assert b"PRIVATE" not in state.to_json()


def test_requests_parse_and_unknown_ones_are_ignored() -> None:
    assert r.parse_request("root:abc") == r.RotationRequest(r.RequestKind.ROOT, "abc")
    assert r.parse_request("intermediate:1").kind is r.RequestKind.INTERMEDIATE  # type: ignore[union-attr]
    assert r.parse_request("root:abc").value == "root:abc"  # type: ignore[union-attr]
    assert r.parse_request("everything:1") is None
    assert r.parse_request("") is None
    assert r.parse_request(None) is None


# --- when CA certificates are due --------------------------------------------------------
def test_the_intermediate_is_due_at_two_thirds_of_its_life() -> None:
    ca, _ = self_signed()
    issuer = ca.issuer_cert
    due = r.due_time(issuer, 2 / 3)
    life = issuer.not_valid_after_utc - issuer.not_valid_before_utc
    assert abs(due - (issuer.not_valid_before_utc + life * 2 / 3)) < timedelta(seconds=1)
    assert not r.intermediate_due(issuer, due - timedelta(seconds=1), 2 / 3)
    assert r.intermediate_due(issuer, due, 2 / 3)
    assert not r.intermediate_due(issuer, NOW, 2 / 3)


def test_the_root_is_due_before_it_expires() -> None:
    ca, _ = self_signed()
    root = ca.roots[0]
    due = r.due_time(root, 2 / 3)
    assert due < root.not_valid_after_utc - timedelta(days=365)  # years ahead for a 10y root
    assert not r.root_due(root, due - timedelta(seconds=1), 2 / 3)
    assert r.root_due(root, due, 2 / 3)


# --- decide: Idle -------------------------------------------------------------------------
def decide(state: RotationState, ca: CertificateAuthority, **kw: object) -> r.Decision:
    args: dict[str, object] = {
        "issuer": ca.issuer_cert,
        "roots": ca.roots,
        "can_sign_roots": True,
        "request": None,
        "progress": None,
        "now": NOW,
        "policy": POLICY,
    }
    args.update(kw)
    return r.decide(state, **args)  # type: ignore[arg-type]


def test_idle_does_nothing_with_a_young_ca() -> None:
    ca, _ = self_signed()
    assert decide(RotationState(), ca).action is Action.NONE


def test_idle_starts_a_root_rotation_on_request_and_only_once_per_request() -> None:
    ca, _ = self_signed()
    request = r.RotationRequest(r.RequestKind.ROOT, "1")
    assert decide(RotationState(), ca, request=request) == r.Decision(
        Action.START_ROOT_ROTATION, "Requested"
    )
    handled = RotationState(handled_request="root:1")
    assert decide(handled, ca, request=request).action is Action.NONE
    intermediate = r.RotationRequest(r.RequestKind.INTERMEDIATE, "2")
    assert decide(handled, ca, request=intermediate).action is Action.ROTATE_INTERMEDIATE


def test_idle_rotates_automatically_root_first() -> None:
    ca, _ = self_signed()
    later = r.due_time(ca.issuer_cert, 2 / 3)
    assert decide(RotationState(), ca, now=later) == r.Decision(
        Action.ROTATE_INTERMEDIATE, "IntermediateDue"
    )
    root_time = r.due_time(ca.roots[0], 2 / 3)
    assert decide(RotationState(), ca, now=root_time) == r.Decision(
        Action.START_ROOT_ROTATION, "RootDue"
    )


def test_without_a_root_key_a_request_is_refused_and_nothing_starts() -> None:
    ca, _ = self_signed()
    request = r.RotationRequest(r.RequestKind.ROOT, "1")
    assert decide(RotationState(), ca, can_sign_roots=False, request=request) == r.Decision(
        Action.REFUSE_REQUEST, "NoRootKey"
    )
    late = r.due_time(ca.roots[0], 0.9)
    assert decide(RotationState(), ca, can_sign_roots=False, now=late).action is Action.NONE


def test_a_request_during_a_rotation_is_refused_not_queued() -> None:
    ca, _ = self_signed()
    state = RotationState(phase=Phase.SWITCH, handled_request="root:1")
    decision = decide(
        state, ca, request=r.RotationRequest(r.RequestKind.ROOT, "2"), progress=Progress()
    )
    assert decision == r.Decision(Action.REFUSE_REQUEST, "RotationInProgress")


# --- decide: Prepare, Switch, Finish ------------------------------------------------------
def test_prepare_waits_for_every_bundle_then_the_settle_time() -> None:
    ca, _ = self_signed()
    state = RotationState(phase=Phase.PREPARE, new_root="n", old_roots=("o",))
    partial = Progress(bundles_total=10, bundles_with_new_root=9)
    full = Progress(bundles_total=10, bundles_with_new_root=10)
    assert decide(state, ca, progress=None).action is Action.NONE
    assert decide(state, ca, progress=partial).action is Action.NONE
    assert decide(state, ca, progress=full).action is Action.MARK_BUNDLES_COMPLETE
    marked = RotationState(
        phase=Phase.PREPARE, new_root="n", old_roots=("o",), bundles_complete_at=NOW
    )
    settle = POLICY.settle_time
    assert decide(marked, ca, progress=full, now=NOW + settle / 2).action is Action.NONE
    assert decide(marked, ca, progress=full, now=NOW + settle).action is Action.SWITCH
    # A bundle that lost the new root after it was counted holds the switch back.
    assert decide(marked, ca, progress=partial, now=NOW + 2 * settle).action is Action.NONE


def test_prepare_may_end_only_with_both_conditions() -> None:
    marked = RotationState(phase=Phase.PREPARE, bundles_complete_at=NOW)
    full = Progress(bundles_total=3, bundles_with_new_root=3)
    assert r.prepare_may_end(marked, full, NOW + timedelta(minutes=2), timedelta(minutes=2))
    assert not r.prepare_may_end(marked, full, NOW + timedelta(minutes=1), timedelta(minutes=2))
    unmarked = RotationState(phase=Phase.PREPARE)
    assert not r.prepare_may_end(unmarked, full, NOW + timedelta(days=1), timedelta(0))


def test_switch_ends_when_no_leaf_remains_on_the_old_root_plus_the_settle_time() -> None:
    ca, _ = self_signed()
    state = RotationState(phase=Phase.SWITCH, switched_at=NOW)
    busy = Progress(leaves_total=5, leaves_on_old_root=1)
    done = Progress(leaves_total=5, leaves_on_old_root=0)
    assert decide(state, ca, progress=busy).action is Action.NONE
    assert decide(state, ca, progress=done).action is Action.MARK_LEAVES_DONE
    assert done.leaves_reissued == 5
    marked = RotationState(phase=Phase.SWITCH, switched_at=NOW, leaves_done_at=NOW)
    settle = POLICY.settle_time
    assert decide(marked, ca, progress=done, now=NOW + settle / 2).action is Action.NONE
    assert decide(marked, ca, progress=done, now=NOW + settle).action is Action.FINISH
    # A leaf under the old root that shows up again (restored from a backup) holds it back.
    assert decide(marked, ca, progress=busy, now=NOW + 2 * settle).action is Action.NONE


def test_finish_ends_when_no_bundle_carries_the_old_root() -> None:
    ca, _ = self_signed()
    state = RotationState(phase=Phase.FINISH)
    assert decide(state, ca, progress=Progress(bundles_with_old_root=2)).action is Action.NONE
    assert decide(state, ca, progress=Progress(bundles_total=4)).action is Action.COMPLETE


# --- what each phase publishes ------------------------------------------------------------
def test_published_bundle_per_phase() -> None:
    old, _ = self_signed()
    new, _ = self_signed()
    o, n = old.roots, new.roots
    assert r.published_roots(Phase.IDLE, o, n) == o
    assert r.published_roots(Phase.PREPARE, o, n) == (*o, *n)
    assert r.published_roots(Phase.SWITCH, o, n) == (*o, *n)
    assert r.published_roots(Phase.FINISH, o, n) == n


# --- the Secret data of each step, end to end ---------------------------------------------
def test_a_root_rotation_end_to_end_keeps_every_pair_of_leaves_verifying() -> None:
    ca0, data0 = self_signed()
    old_leaf = issue_svid(ca0, REQUEST, NOW)
    request = r.RotationRequest(r.RequestKind.ROOT, "1")

    # Prepare: the bundle has both roots; the old intermediate still issues.
    data1 = r.start_root_rotation(
        data0,
        ca0,
        RotationState(),
        new_ca=NEW_CA,
        new_root_key=NEW_ROOT_KEY,
        reason="Requested",
        request=request,
        now=NOW,
    )
    state1 = r.state_from_secret_data(data1)
    ca1 = load(data1)
    assert state1.phase is Phase.PREPARE and state1.handled_request == "root:1"
    assert state1.old_roots == (fp(ca0.roots[0]),)
    assert len(ca1.roots) == 2 and fp(ca1.issuer_cert) == fp(ca0.issuer_cert)
    assert all(k in data1 for k in r.NEXT_KEYS)
    prepare_bundle = bundle_pem(ca1.roots)
    assert verifies(old_leaf.chain_pem, prepare_bundle)

    # Switch: the new intermediate issues; old and new leaves both verify with the bundle.
    t2 = NOW + timedelta(minutes=5)
    marked = r.mark_bundles_complete(data1, state1, NOW)
    assert r.state_from_secret_data(marked).bundles_complete_at == NOW
    data2 = r.switch(data1, state1, t2)
    ca2 = load(data2, t2)
    state2 = r.state_from_secret_data(data2)
    assert state2.phase is Phase.SWITCH and state2.switched_at == t2
    assert not any(k in data2 for k in r.NEXT_KEYS)
    assert fp(ca2.issuer_cert) != fp(ca0.issuer_cert)
    assert root_key_from_secret_data(data2) is not None
    new_leaf = issue_svid(ca2, REQUEST, t2)
    assert verifies(new_leaf.chain_pem, bundle_pem(ca2.roots), t2)
    assert verifies(old_leaf.chain_pem, bundle_pem(ca2.roots), t2)
    # ...and the new leaf against a peer that only has the old root would fail (why Prepare).
    assert not verifies(new_leaf.chain_pem, bundle_pem(ca0.roots), t2)

    # Finish: the old root leaves ca.crt.
    t3 = t2 + timedelta(hours=1)
    data3 = r.finish(data2, state2, t3)
    ca3 = load(data3, t3)
    assert [fp(c) for c in ca3.roots] == [state1.new_root]
    assert verifies(new_leaf.chain_pem, bundle_pem(ca3.roots), t3)
    assert not verifies(old_leaf.chain_pem, bundle_pem(ca3.roots), t3)

    data4 = r.complete(data3, r.state_from_secret_data(data3), t3)
    state4 = r.state_from_secret_data(data4)
    assert state4.phase is Phase.IDLE and state4.last_root_rotation == t3
    assert [h.split("@")[0] for h in state4.history] == ["Prepare", "Switch", "Finish", "Idle"]


def test_switch_without_the_next_ca_fails_loudly() -> None:
    _, data = self_signed()
    with pytest.raises(ValueError, match=r"next\.crt"):
        r.switch(data, RotationState(phase=Phase.PREPARE), NOW)


def test_an_intermediate_rotation_leaves_the_bundle_alone() -> None:
    ca0, data0 = self_signed()
    old_leaf = issue_svid(ca0, REQUEST, NOW)
    root_key = root_key_from_secret_data(data0)
    assert root_key is not None
    data1 = r.rotate_intermediate(data0, ca0, root_key, RotationState(), request=None, now=NOW)
    ca1 = load(data1)
    assert data1["ca.crt"] == data0["ca.crt"]
    assert fp(ca1.issuer_cert) != fp(ca0.issuer_cert)
    life0 = ca0.issuer_cert.not_valid_after_utc - ca0.issuer_cert.not_valid_before_utc
    life1 = ca1.issuer_cert.not_valid_after_utc - ca1.issuer_cert.not_valid_before_utc
    assert abs(life1 - life0) < timedelta(minutes=2)
    assert ca1.issuer_cert.subject == ca0.issuer_cert.subject
    assert r.state_from_secret_data(data1).last_intermediate_rotation == NOW
    new_leaf = issue_svid(ca1, REQUEST, NOW)
    assert verifies(new_leaf.chain_pem, data1["ca.crt"])
    assert verifies(old_leaf.chain_pem, data1["ca.crt"])


# --- progress -----------------------------------------------------------------------------
def test_progress_counts_bundles_and_leaves_on_the_old_root() -> None:
    ca0, data0 = self_signed()
    data1 = r.start_root_rotation(
        data0,
        ca0,
        RotationState(),
        new_ca=NEW_CA,
        new_root_key=NEW_ROOT_KEY,
        reason="RootDue",
        request=None,
        now=NOW,
    )
    state = r.state_from_secret_data(data1)
    data2 = r.switch(data1, state, NOW)
    state2 = r.state_from_secret_data(data2)
    ca2 = load(data2)
    old_root = [c for c in ca2.roots if fp(c) in state.old_roots]
    old_leaf = issue_svid(ca0, REQUEST, NOW).chain_pem
    new_leaf = issue_svid(ca2, REQUEST, NOW).chain_pem
    expired = issue_svid(
        ca0, SvidRequest(REQUEST.spiffe_id, (), timedelta(minutes=5), REQUEST.algorithm), NOW
    ).chain_pem
    both, only_old = data2["ca.crt"], data0["ca.crt"]
    progress = r.count_progress(
        [both, only_old, None, b"garbage"],
        [old_leaf, new_leaf, expired, None],
        state2,
        old_root,
        NOW + timedelta(minutes=10),
    )
    assert progress == Progress(
        bundles_total=4,
        bundles_with_new_root=1,
        bundles_with_old_root=2,
        leaves_total=4,
        leaves_on_old_root=1,
    )
    # Counted a page at a time (as the operator lists 50,000 Secrets), the sums are the same.
    pages = [
        r.count_progress(bundles, chains, state2, old_root, NOW + timedelta(minutes=10))
        for bundles, chains in (
            ([both, only_old], [old_leaf]),
            ([None, b"garbage"], [new_leaf, expired, None]),
        )
    ]
    assert pages[0] + pages[1] == progress


# --- spreading reissues -------------------------------------------------------------------
def test_spread_units_are_stable_and_spread() -> None:
    units = [r.spread_unit("ns", f"id-{i}") for i in range(1000)]
    assert units[0] == r.spread_unit("ns", "id-0")
    assert all(0 <= u < 1 for u in units)
    buckets = [sum(1 for u in units if i / 10 <= u < (i + 1) / 10) for i in range(10)]
    assert min(buckets) > 60  # roughly uniform: no bucket empty or flooded


def test_old_root_leaves_are_reissued_at_their_place_in_the_window() -> None:
    ca0, data0 = self_signed()
    leaf = issue_svid(ca0, REQUEST, NOW)
    chain = parse_pem_certificates(leaf.chain_pem)
    data1 = r.start_root_rotation(
        data0,
        ca0,
        RotationState(),
        new_ca=NEW_CA,
        new_root_key=NEW_ROOT_KEY,
        reason="Requested",
        request=None,
        now=NOW,
    )
    switched = NOW + timedelta(minutes=3)
    data2 = r.switch(data1, r.state_from_secret_data(data1), switched)
    state, ca2 = r.state_from_secret_data(data2), load(data2, switched)
    window = timedelta(hours=1)
    far_renewal = switched + timedelta(days=1)
    deadline = r.retired_issuer_deadline(
        chain,
        trusted_roots=ca2.roots,
        renewal_at=far_renewal,
        namespace="shop",
        name="a",
        state=state,
        window=window,
        now=switched,
    )
    assert deadline == switched + window * r.spread_unit("shop", "a")
    # Its own renewal, when earlier, wins.
    early = switched + timedelta(seconds=1)
    assert (
        r.retired_issuer_deadline(
            chain,
            trusted_roots=ca2.roots,
            renewal_at=early,
            namespace="shop",
            name="a",
            state=state,
            window=window,
            now=switched,
        )
        == early
    )


def test_a_leaf_no_longer_trusted_or_expired_is_reissued_at_once() -> None:
    ca0, _ = self_signed()
    other, _ = self_signed()
    chain = parse_pem_certificates(issue_svid(ca0, REQUEST, NOW).chain_pem)
    common = {
        "renewal_at": NOW + timedelta(days=1),
        "namespace": "shop",
        "name": "a",
        "state": RotationState(),
        "window": timedelta(hours=1),
    }
    # The CA was replaced outright: the bundle no longer has the leaf's root.
    assert r.retired_issuer_deadline(chain, trusted_roots=other.roots, now=NOW, **common) is None  # type: ignore[arg-type]
    later = NOW + timedelta(days=2)
    assert r.retired_issuer_deadline(chain, trusted_roots=ca0.roots, now=later, **common) is None  # type: ignore[arg-type]


def test_same_root_leaves_move_at_renewal_or_before_the_old_intermediate_expires() -> None:
    ca0, _ = self_signed()
    chain = parse_pem_certificates(issue_svid(ca0, REQUEST, NOW).chain_pem)
    window = timedelta(hours=1)
    common = {
        "trusted_roots": ca0.roots,
        "namespace": "shop",
        "name": "a",
        "state": RotationState(),
        "window": window,
        "now": NOW,
    }
    renewal = NOW + timedelta(hours=16)
    assert r.retired_issuer_deadline(chain, renewal_at=renewal, **common) == renewal  # type: ignore[arg-type]
    # An intermediate close to expiry: the window ending one window before its notAfter.
    end = ca0.issuer_cert.not_valid_after_utc
    deadline = r.retired_issuer_deadline(chain, renewal_at=end, **common)  # type: ignore[arg-type]
    assert deadline is not None
    assert end - 2 * window <= deadline < end - window


# --- a user-provided CA replaced ----------------------------------------------------------
def test_replacements_are_classified_by_their_root() -> None:
    ca0, data0 = self_signed()
    root_key = root_key_from_secret_data(data0)
    assert root_key is not None
    same_root = load(
        r.rotate_intermediate(data0, ca0, root_key, RotationState(), request=None, now=NOW)
    )
    other, _ = self_signed()
    assert r.classify_replacement(ca0, ca0) is r.Replacement.SAME
    assert r.classify_replacement(ca0, same_root) is r.Replacement.INTERMEDIATE
    assert r.classify_replacement(ca0, other) is r.Replacement.NEW_ROOT


def test_bundle_contains_and_root_expiry() -> None:
    ca0, data0 = self_signed()
    other, _ = self_signed()
    assert r.bundle_contains(data0["ca.crt"], ca0.roots[0])
    assert not r.bundle_contains(data0["ca.crt"], other.roots[0])
    assert not r.bundle_contains(None, other.roots[0])
    assert r.root_expiry(ca0.roots) == ca0.roots[0].not_valid_after_utc


def test_a_new_self_signed_ca_keeps_the_lifetimes_and_algorithm() -> None:
    ca0, _ = bootstrap_self_signed(
        TD,
        NOW,
        root_ttl=timedelta(days=100),
        intermediate_ttl=timedelta(days=10),
        algorithm=KeyAlgorithm.ECDSAP384,
    )
    new, root_key = r.new_self_signed_like(ca0, TD, NOW)
    assert root_key is not None
    life = new.issuer_cert.not_valid_after_utc - new.issuer_cert.not_valid_before_utc
    root_life = new.roots[0].not_valid_after_utc - new.roots[0].not_valid_before_utc
    # The same lifetimes (counting the one-minute back-dating once, so they do not grow).
    assert life == ca0.issuer_cert.not_valid_after_utc - ca0.issuer_cert.not_valid_before_utc
    assert root_life == ca0.roots[0].not_valid_after_utc - ca0.roots[0].not_valid_before_utc
    assert r.ca_key_algorithm(new.issuer_cert) is KeyAlgorithm.ECDSAP384
    assert r.incoming_root(new) == new.roots[0]
    assert fp(new.roots[0]) != fp(ca0.roots[0])


def test_a_user_ca_rotation_switches_without_a_root_key() -> None:
    ca0 = load(ca_to_secret_data(NEW_CA, None))
    data0 = ca_to_secret_data(ca0, None)
    user, _ = bootstrap_self_signed(TD, NOW)
    data1 = r.start_root_rotation(
        data0,
        ca0,
        RotationState(),
        new_ca=user,
        new_root_key=None,
        reason="CASourceReplaced",
        request=None,
        now=NOW,
    )
    assert r.NEXT_ROOT_KEY not in data1
    data2 = r.switch(data1, r.state_from_secret_data(data1), NOW)
    assert "root.key" not in data2
    ca2 = load(data2)
    assert fp(ca2.issuer_cert) == fp(user.issuer_cert)
    assert {fp(c) for c in ca2.roots} == {fp(ca0.roots[0]), fp(user.roots[0])}


def test_a_user_intermediate_under_the_same_root_is_adopted_as_is() -> None:
    ca0, data0 = self_signed()
    root_key = root_key_from_secret_data(data0)
    assert root_key is not None
    rotated = load(
        r.rotate_intermediate(data0, ca0, root_key, RotationState(), request=None, now=NOW)
    )
    adopted = r.adopt_intermediate(data0, rotated)
    assert adopted["ca.crt"] == data0["ca.crt"]
    assert fp(load(adopted).issuer_cert) == fp(rotated.issuer_cert)
