"""How a trust-bundle ConfigMap differs from the CA's bundle, and what the repair says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshless.api import MANAGED_BY, TRUST_BUNDLE_KEY, TRUST_BUNDLE_NAME
from meshless.identity.bundle_drift import Root, bundle_drift
from meshless.identity.render import trust_bundle_configmap
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import bootstrap_self_signed

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def roots() -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """old, new (a rotation's two roots), and a stranger's root."""
    old = bootstrap_self_signed("cluster.local", NOW)[0].roots[0]
    new = bootstrap_self_signed("cluster.local", NOW + timedelta(days=1))[0].roots[0]
    stranger = bootstrap_self_signed("evil.example", NOW)[0].roots[0]
    return old, new, stranger


def configmap(text: str, **extra_data: str) -> dict[str, Any]:
    body = trust_bundle_configmap("shop", text.encode())
    body["data"].update(extra_data)
    return body


def sha(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def test_what_we_wrote_is_no_drift(roots: Any) -> None:
    old, new, _ = roots
    desired = bundle_pem([old, new])
    assert bundle_drift(trust_bundle_configmap("shop", desired), desired) is None


def test_an_appended_root_is_named_by_fingerprint_and_subject(roots: Any) -> None:
    old, _, stranger = roots
    desired = bundle_pem([old])
    drift = bundle_drift(configmap((desired + bundle_pem([stranger])).decode()), desired)
    assert drift is not None and drift.content_changed
    assert [r.fingerprint for r in drift.extra] == [sha(stranger)]
    assert not drift.missing
    message = drift.describe()
    assert sha(stranger) in message and stranger.subject.rfc4514_string() in message
    assert sha(old) not in message
    assert "PRIVATE" not in message and "BEGIN" not in message


def test_a_removed_root_is_restored(roots: Any) -> None:
    old, new, _ = roots
    desired = bundle_pem([old, new])
    drift = bundle_drift(configmap(bundle_pem([new]).decode()), desired)
    assert drift is not None
    assert [r.fingerprint for r in drift.missing] == [sha(old)]
    assert not drift.extra
    assert "missing roots restored (1)" in drift.describe()


def test_a_rotation_is_measured_against_the_ca_state_now(roots: Any) -> None:
    """During a rotation the CA trusts old and new: a bundle with both is right, and one with
    the old root alone lacks the new one (it is not "repaired" back to the old set). After
    the rotation finishes, the old root is what is extra."""
    old, new, _ = roots
    during = bundle_pem([old, new])
    assert bundle_drift(configmap(during.decode()), during) is None
    behind = bundle_drift(configmap(bundle_pem([old]).decode()), during)
    assert behind is not None and not behind.extra
    assert [r.fingerprint for r in behind.missing] == [sha(new)]
    after = bundle_drift(configmap(during.decode()), bundle_pem([new]))
    assert after is not None and [r.fingerprint for r in after.extra] == [sha(old)]


def test_garbage_extra_keys_labels_and_deletion(roots: Any) -> None:
    old, _, stranger = roots
    desired = bundle_pem([old])
    garbled = bundle_drift(configmap(desired.decode() + "not a certificate\n"), desired)
    assert garbled is not None and garbled.unparseable and not garbled.extra
    assert "not a certificate" in garbled.describe()
    broken_block = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    broken = bundle_drift(configmap(desired.decode() + broken_block), desired)
    assert broken is not None and broken.unparseable
    extra = bundle_drift(
        configmap(desired.decode(), **{"extra.pem": bundle_pem([stranger]).decode()}), desired
    )
    assert extra is not None and extra.extra_keys == ("extra.pem",)
    assert "removed keys extra.pem" in extra.describe()
    unlabelled = trust_bundle_configmap("shop", desired)
    unlabelled["metadata"]["labels"] = {}
    labels = bundle_drift(unlabelled, desired)
    assert labels is not None and labels.labels_missing and not labels.content_changed
    deleted = bundle_drift(None, desired)
    assert deleted is not None and deleted.deleted and "recreated" in deleted.describe()


def test_many_extra_roots_are_counted_not_all_listed(roots: Any) -> None:
    old, _, _ = roots
    strangers = [bootstrap_self_signed("x.example", NOW)[0].roots[0] for _ in range(7)]
    desired = bundle_pem([old])
    drift = bundle_drift(configmap((desired + bundle_pem(strangers)).decode()), desired)
    assert drift is not None and len(drift.extra) == 7
    assert "removed 7 root(s)" in drift.describe() and "and 2 more" in drift.describe()


def test_the_configmap_we_render(roots: Any) -> None:
    body = trust_bundle_configmap("shop", bundle_pem([roots[0]]))
    assert body["metadata"]["name"] == TRUST_BUNDLE_NAME
    assert body["metadata"]["labels"] == MANAGED_BY
    assert list(body["data"]) == [TRUST_BUNDLE_KEY]


def test_a_long_subject_and_many_keys_keep_the_message_short(roots: Any) -> None:
    old, _, _ = roots
    desired = bundle_pem([old])
    keys = {f"key-{i}-" + "x" * 200: "y" for i in range(20)}
    drift = bundle_drift(configmap(desired.decode() + "garbage", **keys), desired)
    assert drift is not None
    assert len(drift.describe()) <= 1000
    long = str(Root("sha256:ab", "CN=" + "a" * 500))
    assert long.startswith("sha256:ab (CN=aaa") and len(long) < 100
