"""A root rotation's count from an identity Secret's annotations is the count from its data.

Every combination of bundle (old root, new root, both, a stranger's, none, garbage), chain
(leaves under the old and the new issuer, expired, garbage, a broken chain, a stranger's
leaf, none) and refused or not, at each rotation state (Prepare, Switch, after the old root
left the CA), counted by count_progress from the data and by count_marked from the
annotations written for that data: the same Progress, Secret by Secret and in sum.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshless.identity import rotation_marks as m
from meshless.pki import rotation as r
from meshless.pki.bundle import bundle_pem, fingerprint
from meshless.pki.ca import (
    CertificateAuthority,
    bootstrap_self_signed,
    ca_from_secret_data,
    ca_to_secret_data,
)
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.rotation import Progress, RotationState
from meshless.pki.svid import SvidRequest, issue_svid

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TD = "cluster.local"
REQUEST = SvidRequest(
    f"spiffe://{TD}/ns/shop/sa/a", (), timedelta(hours=24), KeyAlgorithm.ECDSAP256
)
SHORT = SvidRequest(REQUEST.spiffe_id, (), timedelta(minutes=5), KeyAlgorithm.ECDSAP256)
MANAGER = "meshless"


def _rotation() -> dict[str, Any]:
    ca0, root_key = bootstrap_self_signed(TD, NOW)
    data0 = ca_to_secret_data(ca0, root_key)
    new_ca, new_root_key = bootstrap_self_signed(TD, NOW)
    data1 = r.start_root_rotation(
        data0,
        ca0,
        RotationState(),
        new_ca=new_ca,
        new_root_key=new_root_key,
        reason="Requested",
        request=None,
        now=NOW,
    )
    state1 = r.state_from_secret_data(data1)
    data2 = r.switch(data1, state1, NOW)
    state2 = r.state_from_secret_data(data2)
    data3 = r.finish(data2, state2, NOW)
    state3 = r.state_from_secret_data(data3)
    ca1, ca2, ca3 = (ca_from_secret_data(d, NOW) for d in (data1, data2, data3))
    stranger, _ = bootstrap_self_signed(TD, NOW)
    old_leaf = issue_svid(ca0, REQUEST, NOW)
    new_leaf = issue_svid(ca2, REQUEST, NOW)
    # The old leaf with the new intermediate: a chain whose first link does not hold.
    old_leaf_pem = old_leaf.certificate.public_bytes(Encoding.PEM)
    broken = old_leaf_pem + ca2.issuer_cert.public_bytes(Encoding.PEM)
    return {
        "states": {
            "Prepare": (state1, ca1),
            "Switch": (state2, ca2),
            "Finish": (state3, ca3),
        },
        "bundles": {
            "old": data0["ca.crt"],
            "both": data1["ca.crt"],
            "new": bundle_pem(new_ca.roots),
            "stranger": bundle_pem(stranger.roots),
            "old+stranger": bundle_pem([*ca0.roots, *stranger.roots]),
            "none": None,
            "empty": b"",
            "garbage": b"-----BEGIN CERTIFICATE-----\nnot\n-----END CERTIFICATE-----\n",
        },
        "chains": {
            "old": old_leaf.chain_pem,
            "new": new_leaf.chain_pem,
            "old-expired": issue_svid(ca0, SHORT, NOW).chain_pem,
            "new-expired": issue_svid(ca2, SHORT, NOW).chain_pem,
            "old-leaf-only": old_leaf_pem,
            "broken": broken,
            "stranger": issue_svid(stranger, REQUEST, NOW).chain_pem,
            "none": None,
            "garbage": b"garbage",
        },
    }


WORLD = _rotation()
TIMES = (NOW + timedelta(minutes=1), NOW + timedelta(minutes=10))  # before, after SHORT's end


def meta_for(annotations: dict[str, str], *entries: dict[str, Any]) -> dict[str, Any]:
    """Secret metadata as a metadata-only list returns it, written by `entries`."""
    return {"name": "a-mtls", "annotations": annotations, "managedFields": list(entries)}


def ours(*annotation_keys: str) -> dict[str, Any]:
    return {
        "manager": MANAGER,
        "operation": "Update",
        "fieldsV1": {
            "f:data": {"f:ca.crt": {}, "f:tls.crt": {}, "f:tls.key": {}},
            "f:metadata": {"f:annotations": {f"f:{k}": {} for k in annotation_keys}},
        },
    }


OURS = ours(*m.ROTATION_ANNOTATIONS)


def leaving_of(state: RotationState, ca: CertificateAuthority) -> list[x509.Certificate]:
    return [c for c in ca.roots if fingerprint(c).hex() in state.old_roots]


def test_the_count_from_annotations_is_the_count_from_data() -> None:
    answered = 0
    for phase, bundle, chain, refused, now in itertools.product(
        WORLD["states"], WORLD["bundles"], WORLD["chains"], (False, True), TIMES
    ):
        case = f"{phase}, bundle {bundle}, chain {chain}, refused {refused}, at {now}"
        state, ca = WORLD["states"][phase]
        leaving = leaving_of(state, ca)
        bundle_bytes, chain_bytes = WORLD["bundles"][bundle], WORLD["chains"][chain]
        from_data = r.count_progress(
            [bundle_bytes], [None if refused else chain_bytes], state, leaving, now
        )
        annotations = m.rotation_annotations(chain_bytes, bundle_bytes)
        marks = m.vouched_marks(meta_for(annotations, OURS), MANAGER)
        assert marks is not None, case
        if not refused and not m.marks_answer(marks, leaving):
            # A leaving root the anchor was not checked against: the shell reads the data.
            assert any(fingerprint(c).hex() not in marks.bundle_roots for c in leaving), case
            continue
        answered += 1
        assert m.count_marked([(marks, refused)], state, leaving, now) == from_data, case
    assert answered > 600, answered  # most combinations are answered by the annotations


def test_the_marks_answer_for_every_secret_the_operator_writes_during_a_rotation() -> None:
    """The bundle the operator writes is the CA's, which holds every leaving root: the
    annotations answer, no Secret is read by name, and the sums are those from the data."""
    for phase, (state, ca) in WORLD["states"].items():
        leaving = leaving_of(state, ca)
        bundle = bundle_pem(ca.roots)
        chains = [c for c in WORLD["chains"].values()]
        marked = []
        for chain in chains:
            marks = m.vouched_marks(meta_for(m.rotation_annotations(chain, bundle), OURS), MANAGER)
            assert marks is not None and m.marks_answer(marks, leaving), phase
            marked.append((marks, False))
        for now in TIMES:
            expected = r.count_progress([bundle] * len(chains), chains, state, leaving, now)
            assert m.count_marked(marked, state, leaving, now) == expected
    state, ca = WORLD["states"]["Switch"]
    both = bundle_pem(ca.roots)
    progress = m.count_marked(
        [
            (
                m.vouched_marks(meta_for(m.rotation_annotations(c, both), OURS), MANAGER),
                False,
            )
            for c in (WORLD["chains"]["old"], WORLD["chains"]["new"])
        ],  # type: ignore[misc]
        state,
        leaving_of(state, ca),
        TIMES[0],
    )
    assert progress == Progress(2, 2, 2, 2, 1)  # the test is not blind: one on the old root


def test_the_annotations_name_the_bundle_roots_and_the_root_the_leaf_ends_at() -> None:
    state, ca = WORLD["states"]["Switch"]
    [old] = leaving_of(state, ca)
    [new] = [c for c in ca.roots if c is not old and fingerprint(c).hex() == state.new_root]
    annotations = m.rotation_annotations(WORLD["chains"]["old"], bundle_pem(ca.roots))
    assert annotations[m.BUNDLE_ROOTS_ANNOTATION] == ",".join(
        sorted(fingerprint(c).hex() for c in (old, new))
    )
    assert annotations[m.LEAF_ROOTS_ANNOTATION] == fingerprint(old).hex()
    leaf = x509.load_pem_x509_certificates(WORLD["chains"]["old"])[0]
    assert annotations[m.LEAF_NOT_AFTER_ANNOTATION] == leaf.not_valid_after_utc.isoformat()
    assert m.rotation_annotations(b"garbage", None) == dict.fromkeys(m.ROTATION_ANNOTATIONS, "")


def test_annotations_vouched_for_only_when_we_alone_wrote_them_and_the_data() -> None:
    good = m.rotation_annotations(WORLD["chains"]["old"], WORLD["bundles"]["both"])
    assert m.vouched_marks(meta_for(good, OURS), MANAGER) is not None
    # The data edited by someone else (kubectl edit, a tenant's patch).
    tenant_data = {"manager": "kubectl-patch", "operation": "Update", "fieldsV1": {"f:data": {}}}
    assert m.vouched_marks(meta_for(good, OURS, tenant_data), MANAGER) is None
    # An annotation overwritten by someone else: its entry owns it now.
    for key in m.ROTATION_ANNOTATIONS:
        theirs = {
            "manager": "kubectl-annotate",
            "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{key}": {}}}},
        }
        kept = ours(*(k for k in m.ROTATION_ANNOTATIONS if k != key))
        assert m.vouched_marks(meta_for(good, kept, theirs), MANAGER) is None, key
    # Another manager's annotation of its own is no concern.
    other = {
        "manager": "kubectl-annotate",
        "operation": "Update",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:team": {}}}},
    }
    assert m.vouched_marks(meta_for({**good, "team": "x"}, OURS, other), MANAGER) is not None
    # Written before the annotations existed, or with one missing or garbled.
    assert m.vouched_marks(meta_for({}, OURS), MANAGER) is None
    for key in m.ROTATION_ANNOTATIONS:
        missing = {k: v for k, v in good.items() if k != key}
        assert m.vouched_marks(meta_for(missing, OURS), MANAGER) is None, key
    for key, garbled in (
        (m.BUNDLE_ROOTS_ANNOTATION, "zz"),
        (m.LEAF_ROOTS_ANNOTATION, "a" * 64),  # not among the bundle's roots
        (m.LEAF_NOT_AFTER_ANNOTATION, "tomorrow"),
        (m.LEAF_NOT_AFTER_ANNOTATION, "2026-01-01T00:00:00"),  # no time zone
    ):
        assert m.vouched_marks(meta_for({**good, key: garbled}, OURS), MANAGER) is None, key
    # No data written by us at all.
    assert m.vouched_marks(meta_for(good), MANAGER) is None


def test_a_chain_longer_than_ours_is_not_verified_and_anchors_nowhere() -> None:
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed("cluster.local", now)
    request = SvidRequest(
        "spiffe://cluster.local/ns/a/sa/b", (), timedelta(hours=1), KeyAlgorithm.ECDSAP256
    )
    svid = issue_svid(ca, request, now)
    bundle = bundle_pem(ca.roots)
    assert m.rotation_annotations(svid.chain_pem, bundle)[m.LEAF_ROOTS_ANNOTATION]
    padded = svid.chain_pem + ca.intermediates_pem * m.MAX_CHAIN
    assert m.rotation_annotations(padded, bundle)[m.LEAF_ROOTS_ANNOTATION] == ""
