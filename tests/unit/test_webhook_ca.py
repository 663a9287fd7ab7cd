"""The webhook CA (pure): its Secret data, and each step of its rotation in order."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshless.admission.serving import issue_serving_certificate
from meshless.pki.bundle import fingerprint, parse_pem_certificates
from meshless.pki.ca import CAError, bootstrap_self_signed, ca_to_secret_data
from meshless.pki.keys import key_matches_certificate, load_private_key
from meshless.pki.webhook_ca import (
    CHECKS,
    NEXT_CRT,
    NEXT_KEY,
    ROOT_TTL,
    STATE_KEY,
    Action,
    Observed,
    Phase,
    RotationRecord,
    WebhookCA,
    apply_step,
    bundle_fingerprints,
    chain_pem_issued_by,
    common_fingerprints,
    new_webhook_ca_data,
    next_step,
    record_from_json,
    webhook_ca_from_secret_data,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTLE = timedelta(minutes=2)


def load(data: dict[str, bytes], now: datetime = NOW) -> WebhookCA:
    return webhook_ca_from_secret_data(data, now)


def roots_of(ca: WebhookCA) -> frozenset[bytes]:
    return frozenset(fingerprint(r) for r in ca.authority.roots)


def observed(
    ca: WebhookCA | None,
    *,
    now: datetime = NOW,
    error: CAError | None = None,
    request: str | None = None,
    configured: frozenset[bytes] | None = None,
    configured_since: datetime | None = None,
    serving_chain: bytes | None = None,
) -> Observed:
    return Observed(
        ca=ca,
        error=error,
        request=request,
        configured=configured,
        configured_since=configured_since,
        serving_chain=serving_chain,
        now=now,
        settle=SETTLE,
    )


def serving_chain(ca: WebhookCA, now: datetime = NOW) -> bytes:
    return issue_serving_certificate(ca.authority, ("127.0.0.1",), now).chain_pem


# --- the CA and its Secret data -------------------------------------------------------------
def test_a_new_webhook_ca_is_one_self_signed_p256_root_that_signs_and_is_the_whole_bundle() -> None:
    data = new_webhook_ca_data(NOW)
    ca = load(data)
    root = ca.root
    assert ca.authority.roots == (root,)
    assert ca.authority.intermediates == ()
    assert root.subject == root.issuer
    assert root.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    # Outside every trust domain: no SPIFFE URI, no SAN at all.
    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert root.not_valid_after_utc - root.not_valid_before_utc == ROOT_TTL + timedelta(minutes=1)
    assert ca.record.phase is Phase.IDLE
    assert ca.bundle == data["ca.crt"]
    assert NEXT_CRT not in data and NEXT_KEY not in data


def test_the_key_never_shows_in_repr() -> None:
    data = new_webhook_ca_data(NOW)
    ca = load(data)
    text = repr(ca)
    assert "PRIVATE KEY" not in text
    assert data["tls.key"].decode() not in text


def test_a_serving_certificate_from_it_verifies_with_the_bundle_and_not_with_a_workload_root(
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    ca = load(new_webhook_ca_data(now), now)
    chain = issue_serving_certificate(ca.authority, ("127.0.0.1",), now).chain_pem
    assert len(parse_pem_certificates(chain)) == 1  # the leaf alone: the root signs directly
    (tmp_path / "leaf.pem").write_bytes(chain)
    (tmp_path / "webhook.pem").write_bytes(ca.bundle)
    workload, _ = bootstrap_self_signed("cluster.local", now)
    (tmp_path / "workload.pem").write_bytes(workload.roots[0].public_bytes(Encoding.PEM))

    def verify(anchor: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "verify", "-purpose", "sslserver", "-CAfile", anchor, "leaf.pem"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    assert verify("webhook.pem").returncode == 0
    refused = verify("workload.pem")
    assert (
        refused.returncode != 0 and "unable to get local issuer" in refused.stdout + refused.stderr
    )


def test_a_secret_whose_signer_is_not_a_root_does_not_load() -> None:
    workload, _ = bootstrap_self_signed("cluster.local", NOW)
    with pytest.raises(CAError) as caught:
        load(ca_to_secret_data(workload, None))
    assert caught.value.reason == "CAChainInvalid"


def test_half_a_next_root_does_not_load() -> None:
    data = new_webhook_ca_data(NOW)
    data[NEXT_CRT] = data["tls.crt"]
    with pytest.raises(CAError) as caught:
        load(data)
    assert caught.value.reason == "CASecretIncomplete"
    assert "PRIVATE" not in str(caught.value)


def test_an_expired_root_is_reported_as_expired() -> None:
    data = new_webhook_ca_data(NOW)
    with pytest.raises(CAError) as caught:
        load(data, NOW + ROOT_TTL + timedelta(seconds=1))
    assert caught.value.reason == "CAExpired"


def test_the_record_round_trips_and_garbage_reads_as_idle() -> None:
    record = RotationRecord(Phase.SWITCH, NOW, "r1", NOW - timedelta(days=1))
    assert record_from_json(record.to_json()) == record
    for garbage in (None, b"", b"{", b"[]", b'{"phase": "Sideways", "since": "yesterday"}'):
        assert record_from_json(garbage) == RotationRecord()


def test_bundle_fingerprints_and_the_roots_every_webhook_carries() -> None:
    a, b = load(new_webhook_ca_data(NOW)), load(new_webhook_ca_data(NOW))
    assert bundle_fingerprints(a.bundle) == roots_of(a)
    assert bundle_fingerprints(b"") == frozenset()
    assert common_fingerprints([a.bundle, a.bundle, a.bundle]) == roots_of(a)
    assert common_fingerprints([a.bundle, b.bundle]) is None
    assert common_fingerprints([]) is None


# --- rotation: each step ---------------------------------------------------------------------
def test_idle_with_a_young_root_does_nothing() -> None:
    ca = load(new_webhook_ca_data(NOW))
    assert next_step(observed(ca, configured=roots_of(ca), configured_since=NOW)) is None


def test_a_root_at_two_thirds_of_its_life_starts_a_rotation() -> None:
    ca = load(new_webhook_ca_data(NOW))
    before = ca.renewal_time() - timedelta(seconds=1)
    assert next_step(observed(ca, now=before)) is None
    step = next_step(observed(ca, now=ca.renewal_time()))
    assert step is not None and step.action is Action.PREPARE
    assert "67% of its life" in step.message


def test_a_request_starts_a_rotation_once() -> None:
    ca = load(new_webhook_ca_data(NOW))
    step = next_step(observed(ca, request="now-1"))
    assert step is not None and step.action is Action.PREPARE
    data = apply_step(step, observed(ca, request="now-1"))
    assert data is not None
    assert load(data).record.handled_request == "now-1"


def test_prepare_adds_a_new_root_to_the_bundle_while_the_old_one_signs() -> None:
    old = load(new_webhook_ca_data(NOW))
    step = next_step(observed(old, request="r"))
    assert step is not None
    data = apply_step(step, observed(old, request="r"))
    assert data is not None
    prepared = load(data)
    assert prepared.record.phase is Phase.PREPARE and prepared.record.since == NOW
    assert fingerprint(prepared.root) == fingerprint(old.root)  # the old root still signs
    assert prepared.next_root is not None
    assert roots_of(prepared) == {fingerprint(old.root), fingerprint(prepared.next_root)}
    assert prepared.next_root.subject == old.root.subject


@pytest.fixture
def prepared() -> WebhookCA:
    old = load(new_webhook_ca_data(NOW))
    o = observed(old, request="r")
    step = next_step(o)
    assert step is not None
    data = apply_step(step, o)
    assert data is not None
    return load(data)


def test_prepare_waits_until_the_configurations_carry_both_roots(prepared: WebhookCA) -> None:
    later = NOW + SETTLE * 10
    old_only = frozenset({fingerprint(prepared.root)})
    for configured in (None, old_only):
        step = next_step(observed(prepared, now=later, configured=configured, configured_since=NOW))
        assert step is not None and step.action is Action.WAIT
        assert "do not carry both roots" in step.message


def test_prepare_waits_the_settle_time_after_the_configurations_carry_both(
    prepared: WebhookCA,
) -> None:
    seen = NOW + timedelta(minutes=5)  # the configurations were written late
    both = roots_of(prepared)
    waiting = next_step(
        observed(prepared, now=seen + SETTLE / 2, configured=both, configured_since=seen)
    )
    assert waiting is not None and waiting.action is Action.WAIT
    step = next_step(observed(prepared, now=seen + SETTLE, configured=both, configured_since=seen))
    assert step is not None and step.action is Action.SWITCH


def test_switch_makes_the_new_root_sign_and_keeps_both_in_the_bundle(prepared: WebhookCA) -> None:
    at = NOW + SETTLE
    o = observed(prepared, now=at, configured=roots_of(prepared), configured_since=NOW)
    step = next_step(o)
    assert step is not None and step.action is Action.SWITCH
    data = apply_step(step, o)
    assert data is not None
    switched = load(data, at)
    assert prepared.next_root is not None
    assert fingerprint(switched.root) == fingerprint(prepared.next_root)
    assert roots_of(switched) == roots_of(prepared)
    assert switched.record.phase is Phase.SWITCH and switched.record.since == at
    assert NEXT_CRT not in data and NEXT_KEY not in data  # the old root's key is gone
    assert key_matches_certificate(load_private_key(data["tls.key"]), prepared.next_root)


@pytest.fixture
def switched(prepared: WebhookCA) -> WebhookCA:
    o = observed(prepared, now=NOW + SETTLE, configured=roots_of(prepared), configured_since=NOW)
    step = next_step(o)
    assert step is not None
    data = apply_step(step, o)
    assert data is not None
    return load(data, NOW + SETTLE)


def test_switch_waits_until_this_replica_serves_from_the_new_root(
    switched: WebhookCA, prepared: WebhookCA
) -> None:
    late = NOW + SETTLE * 10
    for chain in (None, serving_chain(prepared)):  # none yet, or still from the old root
        step = next_step(
            observed(switched, now=late, configured=roots_of(switched), serving_chain=chain)
        )
        assert step is not None and step.action is Action.WAIT
        assert "not from the new root" in step.message


def test_switch_waits_the_settle_time_for_other_replicas_then_finishes(
    switched: WebhookCA,
) -> None:
    chain = serving_chain(switched, NOW + SETTLE)
    assert switched.record.since is not None
    early = next_step(
        observed(switched, now=switched.record.since + SETTLE / 2, serving_chain=chain)
    )
    assert early is not None and early.action is Action.WAIT
    o = observed(switched, now=switched.record.since + SETTLE, serving_chain=chain, request="r")
    step = next_step(o)
    assert step is not None and step.action is Action.FINISH
    data = apply_step(step, o)
    assert data is not None
    done = load(data, o.now)
    assert done.authority.roots == (switched.root,)  # the old root left the bundle
    assert done.record == RotationRecord(Phase.IDLE, o.now, "r", o.now)
    assert next_step(observed(done, now=o.now, request="r")) is None  # handled: not again


def test_a_request_made_during_a_rotation_is_satisfied_by_it(switched: WebhookCA) -> None:
    chain = serving_chain(switched, NOW + SETTLE)
    assert switched.record.since is not None
    o = observed(switched, now=switched.record.since + SETTLE, serving_chain=chain, request="r2")
    step = next_step(o)
    assert step is not None and step.action is Action.FINISH
    data = apply_step(step, o)
    assert data is not None
    assert next_step(observed(load(data, o.now), now=o.now, request="r2")) is None


def test_an_unusable_or_expired_secret_is_replaced_by_a_new_root() -> None:
    for error in (
        CAError("CAInvalidPEM", "tls.crt holds no certificate"),
        CAError("CAExpired", "expired"),
    ):
        o = observed(None, error=error, request="r")
        step = next_step(o)
        assert step is not None and step.action is Action.REPLACE
        data = apply_step(step, o)
        assert data is not None
        fresh = load(data)
        assert fresh.record.phase is Phase.IDLE and fresh.record.handled_request == "r"
        assert len(fresh.authority.roots) == 1


def test_prepare_that_lost_its_next_root_starts_again(prepared: WebhookCA) -> None:
    lost = replace(prepared, next_root=None, next_key=None)
    step = next_step(
        observed(lost, now=NOW + SETTLE, configured=roots_of(lost), configured_since=NOW)
    )
    assert step is not None and step.action is Action.REPLACE


def test_no_step_without_a_ca_or_an_error() -> None:
    assert next_step(observed(None)) is None


def test_wait_writes_nothing(prepared: WebhookCA) -> None:
    o = observed(prepared)
    step = next_step(o)
    assert step is not None and step.action is Action.WAIT
    assert apply_step(step, o) is None


def test_the_checks_run_in_the_documented_order() -> None:
    assert [c.__name__ for c in CHECKS] == [
        "unusable",
        "expired",
        "requested",
        "due",
        "prepare_waits_for_configurations",
        "prepare_settles",
        "switch_waits_for_serving",
        "switch_settles",
    ]


def test_a_request_wins_over_age_and_the_record_lives_in_the_secret() -> None:
    ca = load(new_webhook_ca_data(NOW))
    o = observed(ca, now=ca.renewal_time(), request="asked")
    step = next_step(o)
    assert step is not None and step.message == "rotation requested (asked)"
    data = apply_step(step, o)
    assert data is not None and STATE_KEY in data


def test_issued_by_tells_the_signing_root() -> None:
    a, b = load(new_webhook_ca_data(NOW)), load(new_webhook_ca_data(NOW))
    chain = serving_chain(a)
    assert chain_pem_issued_by(chain, a.root)
    assert not chain_pem_issued_by(chain, b.root)
    assert not chain_pem_issued_by(b"garbage", a.root)
