"""CA rotation (pure): the CA Secret's new data for each step. Each function takes the current
data and returns the data to write; the shell (meshless.ca_rotation) writes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from meshless.pki.bundle import bundle_pem, fingerprint, parse_pem_certificates
from meshless.pki.ca import (
    CA_BACKDATE,
    CA_CRT,
    DEFAULT_DNS_SUBTREES,
    ROOT_KEY,
    TLS_CRT,
    TLS_KEY,
    CertificateAuthority,
    bootstrap_self_signed,
)
from meshless.pki.keys import (
    KeyAlgorithm,
    PrivateKey,
    algorithm_of_public_key,
    generate_private_key,
    load_private_key,
    private_key_to_pem,
    signature_hash_for,
)
from meshless.pki.rotation.decide import published_roots
from meshless.pki.rotation.state import (
    NEXT_CRT,
    NEXT_KEY,
    NEXT_KEYS,
    NEXT_ROOT_KEY,
    ROTATION_KEY,
    Phase,
    RotationRequest,
    RotationState,
)
from meshless.pki.x509 import anchor_of, authority_key_id_for, certificates_pem, issued_by


def _lifetime(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def ca_key_algorithm(cert: x509.Certificate) -> KeyAlgorithm:
    """The key algorithm of a CA certificate (ECDSA P-256 when it is none we issue with)."""
    try:
        return algorithm_of_public_key(cert.public_key()) or KeyAlgorithm.ECDSAP256
    except (ValueError, UnsupportedAlgorithm):
        return KeyAlgorithm.ECDSAP256


def _with_state(data: Mapping[str, bytes], state: RotationState) -> dict[str, bytes]:
    return {**data, ROTATION_KEY: state.to_json()}


def new_self_signed_like(
    ca: CertificateAuthority,
    trust_domain: str,
    now: datetime,
    dns_subtrees: Sequence[str] = DEFAULT_DNS_SUBTREES,
) -> tuple[CertificateAuthority, PrivateKey]:
    """A new root and intermediate with the lifetimes and key algorithm of the current ones;
    the intermediate constrained to the trust domain and `dns_subtrees`."""
    return bootstrap_self_signed(
        trust_domain,
        now,
        root_ttl=_lifetime(next(iter(ca.roots))) - CA_BACKDATE,
        intermediate_ttl=_lifetime(ca.issuer_cert) - CA_BACKDATE,
        algorithm=ca_key_algorithm(ca.issuer_cert),
        dns_subtrees=dns_subtrees,
    )


def incoming_root(new_ca: CertificateAuthority) -> x509.Certificate:
    """The root the new CA's chain ends at (a user's ca.crt may list more than one)."""
    chain = [new_ca.issuer_cert, *new_ca.intermediates[1:]]
    return anchor_of(chain, new_ca.roots) or new_ca.roots[0]


def start_root_rotation(
    data: Mapping[str, bytes],
    ca: CertificateAuthority,
    state: RotationState,
    *,
    new_ca: CertificateAuthority,
    new_root_key: PrivateKey | None,
    reason: str,
    request: RotationRequest | None,
    now: datetime,
) -> dict[str, bytes]:
    """Prepare: the bundle (ca.crt) becomes old + new roots; the new CA waits in next.*; the
    old one keeps issuing. `new_root_key` is None for a user-provided CA."""
    new_root = incoming_root(new_ca)
    started = replace(
        state,
        reason=reason,
        old_roots=tuple(fingerprint(r).hex() for r in ca.roots),
        new_root=fingerprint(new_root).hex(),
        started_at=now,
        bundles_complete_at=None,
        switched_at=None,
        leaves_done_at=None,
        handled_request=request.value if request is not None else state.handled_request,
        history=(),
    ).entering(Phase.PREPARE, now)
    out = _with_state(data, started)
    out[CA_CRT] = bundle_pem(published_roots(Phase.PREPARE, ca.roots, new_ca.roots))
    out[NEXT_CRT] = certificates_pem([new_ca.issuer_cert, *new_ca.intermediates[1:]])
    out[NEXT_KEY] = private_key_to_pem(new_ca.issuer_key)
    if new_root_key is not None:
        out[NEXT_ROOT_KEY] = private_key_to_pem(new_root_key)
    return out


def mark_bundles_complete(
    data: Mapping[str, bytes], state: RotationState, now: datetime
) -> dict[str, bytes]:
    return _with_state(data, replace(state, bundles_complete_at=now))


def mark_leaves_done(
    data: Mapping[str, bytes], state: RotationState, now: datetime
) -> dict[str, bytes]:
    return _with_state(data, replace(state, leaves_done_at=now))


def switch(data: Mapping[str, bytes], state: RotationState, now: datetime) -> dict[str, bytes]:
    """Switch: the new intermediate (and its root's key) become the active issuer."""
    missing = [k for k in (NEXT_CRT, NEXT_KEY) if not data.get(k)]
    if missing:
        raise ValueError(f"the CA Secret lacks {', '.join(missing)} to switch to")
    out = _with_state(data, replace(state, switched_at=now).entering(Phase.SWITCH, now))
    out[TLS_CRT] = data[NEXT_CRT]
    out[TLS_KEY] = data[NEXT_KEY]
    out.pop(ROOT_KEY, None)
    if data.get(NEXT_ROOT_KEY):
        out[ROOT_KEY] = data[NEXT_ROOT_KEY]
    for key in NEXT_KEYS:
        out.pop(key, None)
    return out


def finish(data: Mapping[str, bytes], state: RotationState, now: datetime) -> dict[str, bytes]:
    """Finish: the old roots leave ca.crt."""
    roots = parse_pem_certificates(data[CA_CRT], CA_CRT)
    kept = [r for r in roots if fingerprint(r).hex() not in set(state.old_roots)]
    if not kept:
        raise ValueError("finishing would leave the trust bundle empty")
    out = _with_state(data, state.entering(Phase.FINISH, now))
    out[CA_CRT] = bundle_pem(kept)
    return out


def complete(data: Mapping[str, bytes], state: RotationState, now: datetime) -> dict[str, bytes]:
    done = replace(
        state.entering(Phase.IDLE, now),
        old_roots=(),
        new_root="",
        bundles_complete_at=None,
        switched_at=None,
        leaves_done_at=None,
        last_root_rotation=now,
    )
    return _with_state(data, done)


def refuse_request(
    data: Mapping[str, bytes], state: RotationState, request: RotationRequest
) -> dict[str, bytes]:
    """A request that cannot be acted on is recorded as handled so it is reported once."""
    return _with_state(data, replace(state, handled_request=request.value))


def rotate_intermediate(
    data: Mapping[str, bytes],
    ca: CertificateAuthority,
    root_key: PrivateKey,
    state: RotationState,
    *,
    request: RotationRequest | None,
    now: datetime,
    constraints: x509.NameConstraints | None = None,
) -> dict[str, bytes]:
    """A new intermediate under the same root, same lifetime and algorithm (clipped to the
    root's notAfter), carrying `constraints` (critical) in place of the old one's (None: the
    old one's extensions as they are). ca.crt is untouched."""
    root = next(r for r in ca.roots if issued_by(ca.intermediates[-1], r))
    key = generate_private_key(ca_key_algorithm(ca.issuer_cert))
    issuer = _reissue_intermediate(ca.issuer_cert, key, root, root_key, now, constraints)
    updated = replace(
        state,
        last_intermediate_rotation=now,
        handled_request=request.value if request is not None else state.handled_request,
    )
    out = _with_state(data, updated)
    out[TLS_CRT] = certificates_pem([issuer])
    out[TLS_KEY] = private_key_to_pem(key)
    return out


def adopt_intermediate(
    data: Mapping[str, bytes], candidate: CertificateAuthority
) -> dict[str, bytes]:
    """A user's new intermediate under a root the bundle already has: it issues from now on;
    ca.crt keeps the current roots plus any the user added."""
    out = dict(data)
    current = parse_pem_certificates(data[CA_CRT], CA_CRT)
    out[TLS_CRT] = certificates_pem([candidate.issuer_cert, *candidate.intermediates[1:]])
    out[TLS_KEY] = private_key_to_pem(candidate.issuer_key)
    out[CA_CRT] = bundle_pem([*current, *candidate.roots])
    return out


def _reissue_intermediate(
    template: x509.Certificate,
    key: PrivateKey,
    root: x509.Certificate,
    root_key: PrivateKey,
    now: datetime,
    constraints: x509.NameConstraints | None = None,
) -> x509.Certificate:
    not_after = min(now + _lifetime(template) - CA_BACKDATE, root.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(not_after)
    )
    replaced: tuple[type[x509.ExtensionType], ...] = (
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
    )
    if constraints is not None:
        replaced += (x509.NameConstraints,)
        builder = builder.add_extension(constraints, critical=True)
    for ext in template.extensions:
        if isinstance(ext.value, replaced):
            continue
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    ).add_extension(authority_key_id_for(root), critical=False)
    return builder.sign(root_key, signature_hash_for(root_key))


def next_root_key(data: Mapping[str, bytes]) -> PrivateKey | None:
    pem = data.get(NEXT_ROOT_KEY)
    return load_private_key(pem) if pem else None
