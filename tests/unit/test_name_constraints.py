"""The issuing intermediate's NameConstraints and the root's path length, tried with real
verifiers: `openssl verify`, Python ssl, Node.js tls and go-spiffe (tests/gospiffe).

The attacker holds the issuing key (a stolen key): certificates signed with it directly, outside
every permitted subtree, must be refused by every verifier; the leaves meshless issues under the
policy must be accepted by all of them. Each refusal has a control: the same certificate under
an intermediate without constraints (or a root without a path length) is accepted, so what
refuses it is the constraint and nothing else."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshless.pki import rotation as r
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import (
    CertificateAuthority,
    authority_key_id_for,
    bootstrap_self_signed,
    ca_from_secret_data,
    ca_to_secret_data,
)
from meshless.pki.constraints import (
    ConstraintsState,
    constraints_of,
    intermediate_constraints_stale,
    name_constraints,
    names_outside_constraints,
    report,
)
from meshless.pki.keys import KeyAlgorithm, PrivateKey, private_key_to_pem
from meshless.pki.names import DnsNamePolicy
from meshless.pki.svid import SvidRequest, issue_svid
from tests.x509peers import (
    Identity,
    PythonTlsServer,
    ca_cert,
    gospiffe_dial,
    gospiffe_verify,
    node_client,
    openssl_verify,
    pem,
    python_client,
    unconstrained_ca,
    write_identity,
)

TD = "cluster.local"
SERVER_ID = f"spiffe://{TD}/ns/ns/sa/api"
CLIENT_ID = f"spiffe://{TD}/ns/ns/sa/client"
IN_POLICY_DNS = ("api.ns.svc", "api.ns.svc.cluster.local")
EXAMPLE_PATTERN = "*.{namespace}.example.com"


def now() -> datetime:
    return datetime.now(UTC)  # real peers check validity against the real clock


@pytest.fixture(scope="module")
def constrained() -> tuple[CertificateAuthority, PrivateKey]:
    return bootstrap_self_signed(TD, now())


# --- certificates built by hand: what an attacker with a CA key would sign -----------------
def forged_leaf(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    names: list[x509.GeneralName],
    common_name: str | None = None,
) -> tuple[x509.Certificate, bytes]:
    """A leaf signed directly with `issuer_key`, carrying `names` (and a subject CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshless")]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - timedelta(minutes=1))
        .not_valid_after(now() + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(authority_key_id_for(issuer), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), private_key_to_pem(key)  # type: ignore[arg-type]


def forged_identity(
    directory: Path, ca: CertificateAuthority, names: list[x509.GeneralName], cn: str | None
) -> Identity:
    leaf, key_pem = forged_leaf(ca.issuer_cert, ca.issuer_key, names, cn)
    return write_identity(directory, pem(leaf, *ca.intermediates), key_pem, bundle_pem(ca.roots))


def issued_identity(
    directory: Path, ca: CertificateAuthority, spiffe_id: str, dns: tuple[str, ...]
) -> Identity:
    svid = issue_svid(
        ca, SvidRequest(spiffe_id, dns, timedelta(hours=1), KeyAlgorithm.ECDSAP256), now()
    )
    return write_identity(directory, svid.chain_pem, svid.private_key_pem, bundle_pem(ca.roots))


URI = x509.UniformResourceIdentifier
SPIFFE_URI = URI(SERVER_ID)
FORGERIES: dict[str, tuple[list[x509.GeneralName], str | None, str]] = {
    # case: (SANs, subject CN, the violation OpenSSL reports)
    "dns-example.com": ([SPIFFE_URI, x509.DNSName("example.com")], None, "permitted"),
    "dns-under-example.com": ([SPIFFE_URI, x509.DNSName("api.ns.example.com")], None, "permitted"),
    "uri-other-trust-domain": ([URI("spiffe://evil.example/ns/ns/sa/api")], None, "permitted"),
    "ip-v4": ([SPIFFE_URI, x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], None, "excluded"),
    "ip-v6": ([SPIFFE_URI, x509.IPAddress(ipaddress.ip_address("::1"))], None, "excluded"),
    "cn-example.com-without-dns-san": ([SPIFFE_URI], "example.com", "permitted"),
}


# --- what the CA certificates carry --------------------------------------------------------
def test_the_intermediate_carries_critical_name_constraints_and_the_root_a_path_length(
    constrained: tuple[CertificateAuthority, PrivateKey],
) -> None:
    ca, _ = constrained
    ext = constraints_of(ca.issuer_cert)
    assert ext is not None and ext.critical
    assert ext.value.permitted_subtrees == [
        URI(TD),
        x509.DNSName("svc"),
        x509.DNSName("svc.cluster.local"),
    ]
    assert ext.value.excluded_subtrees == [
        x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
        x509.IPAddress(ipaddress.ip_network("::/0")),
    ]
    (root,) = ca.roots
    assert constraints_of(root) is None
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    issuer_bc = ca.issuer_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (root_bc.value.path_length, issuer_bc.value.path_length) == (1, 0)


def test_an_allowed_pattern_adds_its_fixed_suffix_as_a_subtree() -> None:
    policy = DnsNamePolicy(cluster_domain="corp.internal", allowed=(EXAMPLE_PATTERN,))
    ca, _ = bootstrap_self_signed(
        "prod.example", now(), dns_subtrees=policy.permitted_dns_subtrees()
    )
    ext = constraints_of(ca.issuer_cert)
    assert ext is not None
    assert ext.value.permitted_subtrees == [
        URI("prod.example"),
        x509.DNSName("example.com"),
        x509.DNSName("svc"),
        x509.DNSName("svc.corp.internal"),
    ]


def test_leaves_carry_no_subject_common_name_for_openssl_to_check(
    constrained: tuple[CertificateAuthority, PrivateKey],
) -> None:
    """OpenSSL checks a hostname-like subject CN against DNS constraints when a leaf has no DNS
    SAN (the forged `cn-example.com` case shows it); meshless's leaves have no CN at all."""
    ca, _ = constrained
    request = SvidRequest(SERVER_ID, ("api.ns.svc",), timedelta(hours=1), KeyAlgorithm.ECDSAP256)
    leaf = issue_svid(ca, request, now()).certificate
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


# --- a stolen issuing key cannot mint names outside the subtrees ---------------------------
@pytest.mark.parametrize("case", FORGERIES)
def test_openssl_refuses_a_forged_leaf_outside_the_subtrees(
    case: str, constrained: tuple[CertificateAuthority, PrivateKey], tmp_path: Path
) -> None:
    names, cn, violation = FORGERIES[case]
    forged = forged_identity(tmp_path / "forged", constrained[0], names, cn)
    # The pure check agrees with OpenSSL on the SANs (a CN is not a SAN: OpenSSL's own rule).
    chain = x509.load_pem_x509_certificates(forged.cert.read_bytes())
    assert bool(names_outside_constraints(chain)) is (cn is None)
    for purpose in ("sslserver", "sslclient"):
        proc = openssl_verify(forged, purpose=purpose)
        assert proc.returncode != 0, proc.stdout
        assert f"{violation} subtree violation" in proc.stdout + proc.stderr
    control = forged_identity(tmp_path / "control", unconstrained_ca(), names, cn)
    proc = openssl_verify(control, purpose="sslserver")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", FORGERIES)
def test_python_ssl_refuses_a_forged_leaf_in_the_handshake(
    case: str, constrained: tuple[CertificateAuthority, PrivateKey], tmp_path: Path
) -> None:
    names, cn, violation = FORGERIES[case]
    forged = forged_identity(tmp_path / "forged", constrained[0], names, cn)
    with PythonTlsServer(forged, require_client=False) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as refused:
            python_client(server.port, forged.ca)
        assert f"{violation} subtree violation" in str(refused.value)
    control = forged_identity(tmp_path / "control", unconstrained_ca(), names, cn)
    with PythonTlsServer(control, require_client=False) as server:
        assert python_client(server.port, control.ca) == "hello\n"


@pytest.mark.parametrize("case", ["dns-example.com", "ip-v4", "uri-other-trust-domain"])
def test_node_and_go_spiffe_refuse_a_forged_leaf(
    case: str, constrained: tuple[CertificateAuthority, PrivateKey], tmp_path: Path
) -> None:
    """For the other trust domain, go-spiffe is given our roots as that domain's bundle (a
    peer federating with it): the URI constraint is what refuses, not a missing bundle."""
    names, cn, violation = FORGERIES[case]
    ca = constrained[0]
    forged = forged_identity(tmp_path / "forged", ca, names, cn)
    with PythonTlsServer(forged, require_client=False) as server:
        node = node_client(server.port, forged.ca)
    assert node.returncode == 1 and "tls-error" in node.stdout, node.stdout + node.stderr
    assert f"{violation} subtree violation" in node.stdout, node.stdout
    spiffe_id = next(str(n.value) for n in names if isinstance(n, URI))
    trust_domain = spiffe_id.split("/")[2]
    go = gospiffe_verify(forged, trust_domain)
    assert go.returncode == 1, go.stdout
    assert "not authorized to sign for this name" in go.stderr, go.stderr
    control = forged_identity(tmp_path / "control", unconstrained_ca(), names, cn)
    assert gospiffe_verify(control, trust_domain).stdout.strip() == spiffe_id


# --- what meshless issues under the policy is accepted everywhere ---------------------------
@pytest.fixture(scope="module")
def in_policy(
    constrained: tuple[CertificateAuthority, PrivateKey], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Identity, Identity]:
    root = tmp_path_factory.mktemp("in-policy")
    ca = constrained[0]
    return (
        issued_identity(root / "server", ca, SERVER_ID, IN_POLICY_DNS),
        issued_identity(root / "client", ca, CLIENT_ID, ()),
    )


def test_openssl_accepts_in_policy_leaves(in_policy: tuple[Identity, Identity]) -> None:
    server, client = in_policy
    for identity in (server, client):
        for purpose in ("sslserver", "sslclient"):
            proc = openssl_verify(identity, purpose=purpose)
            assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_ssl_accepts_in_policy_leaves_in_mutual_tls(
    in_policy: tuple[Identity, Identity],
) -> None:
    server, client = in_policy
    with PythonTlsServer(server) as peer:
        assert python_client(peer.port, client.ca, client) == "hello\n"
        assert peer.wait_outcomes(1) == ["ok"]


def test_node_tls_accepts_in_policy_leaves_in_mutual_tls(
    in_policy: tuple[Identity, Identity],
) -> None:
    server, client = in_policy
    with PythonTlsServer(server) as peer:
        proc = node_client(peer.port, client.ca, client)
        assert peer.wait_outcomes(1) == ["ok"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("ok ") and line.endswith(" hello"), line
    for name in (f"URI:{SERVER_ID}", *(f"DNS:{d}" for d in IN_POLICY_DNS)):
        assert name in line


def test_go_spiffe_verifies_in_policy_leaves_and_dials_mutual_tls(
    in_policy: tuple[Identity, Identity],
) -> None:
    server, client = in_policy
    for identity, spiffe_id in ((server, SERVER_ID), (client, CLIENT_ID)):
        proc = gospiffe_verify(identity, TD)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == spiffe_id
    with PythonTlsServer(server) as peer:
        proc = gospiffe_dial(peer.port, client, TD, SERVER_ID)
        assert peer.wait_outcomes(1) == ["ok"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f'{SERVER_ID} "hello\\n"'


def test_a_name_an_allowed_pattern_admits_verifies_and_one_outside_does_not(
    tmp_path: Path,
) -> None:
    policy = DnsNamePolicy(allowed=(EXAMPLE_PATTERN,))
    ca, _ = bootstrap_self_signed(TD, now(), dns_subtrees=policy.permitted_dns_subtrees())
    ok = issued_identity(tmp_path / "ok", ca, SERVER_ID, ("api.ns.example.com", "api.ns.svc"))
    assert openssl_verify(ok, purpose="sslserver").returncode == 0
    assert gospiffe_verify(ok, TD).stdout.strip() == SERVER_ID
    outside = forged_identity(
        tmp_path / "outside", ca, [SPIFFE_URI, x509.DNSName("evil.com")], None
    )
    proc = openssl_verify(outside)
    assert proc.returncode != 0 and "permitted subtree violation" in proc.stderr


# --- path length: one CA below the root ----------------------------------------------------
def test_a_second_intermediate_under_the_issuing_one_is_refused(
    constrained: tuple[CertificateAuthority, PrivateKey], tmp_path: Path
) -> None:
    ca = constrained[0]
    key = ec.generate_private_key(ec.SECP256R1())
    second = ca_cert("rogue intermediate", key, ca.issuer_cert, ca.issuer_key, None)
    leaf, key_pem = forged_leaf(second, key, [SPIFFE_URI, x509.DNSName("api.ns.svc")])
    identity = write_identity(
        tmp_path / "rogue", pem(leaf, second, ca.issuer_cert), key_pem, bundle_pem(ca.roots)
    )
    proc = openssl_verify(identity, purpose="sslserver")
    assert proc.returncode != 0
    assert "path length constraint exceeded" in proc.stdout + proc.stderr


@pytest.mark.parametrize("root_path_length", [1, None])
def test_the_root_admits_one_ca_below_it(root_path_length: int | None, tmp_path: Path) -> None:
    """The root's own limit, apart from the intermediate's: two CAs below a root with
    pathlen 1 are refused (the upper one has no limit of its own); the control, a root
    without one, accepts the same chain."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    upper_key, lower_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = ca_cert("root", root_key, None, root_key, root_path_length)
    upper = ca_cert("upper", upper_key, root, root_key, None)
    lower = ca_cert("lower", lower_key, upper, upper_key, 0)
    leaf, key_pem = forged_leaf(lower, lower_key, [SPIFFE_URI])
    identity = write_identity(tmp_path / "chain", pem(leaf, lower, upper), key_pem, pem(root))
    proc = openssl_verify(identity)
    if root_path_length is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode != 0
        assert "path length constraint exceeded" in proc.stdout + proc.stderr


# --- the pure decisions: stale constraints, the report -------------------------------------
def test_constraints_are_stale_when_missing_or_when_a_subtree_or_the_trust_domain_changes(
    constrained: tuple[CertificateAuthority, PrivateKey],
) -> None:
    issuer = constrained[0].issuer_cert
    default = DnsNamePolicy().permitted_dns_subtrees()
    assert not intermediate_constraints_stale(issuer, name_constraints(TD, default))
    assert not intermediate_constraints_stale(issuer, name_constraints(TD, reversed(default)))
    wider = DnsNamePolicy(allowed=(EXAMPLE_PATTERN,)).permitted_dns_subtrees()
    assert intermediate_constraints_stale(issuer, name_constraints(TD, wider))
    assert intermediate_constraints_stale(issuer, name_constraints("other.example", default))
    assert intermediate_constraints_stale(
        unconstrained_ca().issuer_cert, name_constraints(TD, default)
    )


def test_the_report_says_whether_and_how_the_issuer_is_constrained(
    constrained: tuple[CertificateAuthority, PrivateKey],
) -> None:
    issuer = constrained[0].issuer_cert
    default = name_constraints(TD, DnsNamePolicy().permitted_dns_subtrees())
    matches = report(issuer, default)
    assert matches.state is ConstraintsState.MATCHES and matches.constrained
    assert matches.permitted == (f"URI:{TD}", "DNS:svc", "DNS:svc.cluster.local")
    assert matches.excluded == ("IP:0.0.0.0/0", "IP:::/0")
    assert report(issuer, None).state is ConstraintsState.MATCHES  # nothing to compare with
    wider = name_constraints(TD, DnsNamePolicy(allowed=(EXAMPLE_PATTERN,)).permitted_dns_subtrees())
    differs = report(issuer, wider)
    assert differs.state is ConstraintsState.DIFFERENT and differs.constrained
    assert "does not permit DNS:example.com" in differs.message
    none = report(unconstrained_ca().issuer_cert, default)
    assert none.state is ConstraintsState.NONE and not none.constrained
    assert "carries no NameConstraints" in none.message and "keeps issuing" in none.message


# --- rotation: a policy change replaces the intermediate under the same root ---------------
POLICY = r.RotationPolicy(
    renewal_fraction=2 / 3, settle_time=timedelta(seconds=5), window=timedelta(minutes=1)
)


def decide(state: r.RotationState, ca: CertificateAuthority, **kw: object) -> r.Decision:
    args: dict[str, object] = {
        "issuer": ca.issuer_cert,
        "roots": ca.roots,
        "can_sign_roots": True,
        "request": None,
        "progress": None,
        "now": now(),
        "policy": POLICY,
        "constraints_stale": True,
    }
    args.update(kw)
    return r.decide(state, **args)  # type: ignore[arg-type]


def test_stale_constraints_rotate_the_intermediate_when_idle_and_only_then(
    constrained: tuple[CertificateAuthority, PrivateKey],
) -> None:
    ca = constrained[0]
    idle = r.RotationState()
    assert decide(idle, ca) == r.Decision(r.Action.ROTATE_INTERMEDIATE, "NameConstraintsChanged")
    assert decide(idle, ca, constraints_stale=False).action is r.Action.NONE
    # A user's CA (no root key) is never rotated for it, only reported.
    assert decide(idle, ca, can_sign_roots=False).action is r.Action.NONE
    # A request is acted on first (and its new intermediate gets the constraints anyway).
    root_request = r.RotationRequest(r.RequestKind.ROOT, "1")
    assert decide(idle, ca, request=root_request).action is r.Action.START_ROOT_ROTATION
    # Outside Idle it waits: the intermediate that comes with the new root is made then.
    prepare = replace(idle, phase=r.Phase.PREPARE)
    assert decide(prepare, ca, progress=r.Progress()).action is not r.Action.ROTATE_INTERMEDIATE
    # It comes before a due root: one quick step, the root rotation starts on the next poll.
    late = now() + timedelta(days=3650)
    assert decide(idle, ca, now=late).reason == "NameConstraintsChanged"
    assert decide(idle, ca, now=late, constraints_stale=False).reason == "RootDue"


def test_the_rotated_intermediate_carries_the_new_constraints_under_the_same_root(
    tmp_path: Path,
) -> None:
    ca, root_key = bootstrap_self_signed(TD, now())
    data = ca_to_secret_data(ca, root_key)
    old_leaf = issued_identity(tmp_path / "old", ca, CLIENT_ID, ("api.ns.svc",))
    wider = name_constraints(TD, DnsNamePolicy(allowed=(EXAMPLE_PATTERN,)).permitted_dns_subtrees())
    assert intermediate_constraints_stale(ca.issuer_cert, wider)

    new_data = r.rotate_intermediate(
        data, ca, root_key, r.RotationState(), request=None, now=now(), constraints=wider
    )
    new_ca = ca_from_secret_data(new_data, now())
    assert new_data["ca.crt"] == data["ca.crt"] and new_data["root.key"] == data["root.key"]
    assert new_ca.issuer_cert != ca.issuer_cert
    assert not intermediate_constraints_stale(new_ca.issuer_cert, wider)
    basic = new_ca.issuer_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.path_length == 0
    # A name of the new pattern verifies under the new intermediate, and a leaf of the old one
    # still verifies against the unchanged bundle: both peers handshake.
    new_leaf = issued_identity(tmp_path / "new", new_ca, SERVER_ID, ("api.ns.example.com",))
    for identity in (new_leaf, old_leaf):
        proc = openssl_verify(identity, purpose="sslserver")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    with PythonTlsServer(new_leaf) as peer:
        assert python_client(peer.port, old_leaf.ca, old_leaf) == "hello\n"
    # The same name signed by the old intermediate would have been refused.
    stale = forged_identity(
        tmp_path / "stale", ca, [SPIFFE_URI, x509.DNSName("api.ns.example.com")], None
    )
    proc = openssl_verify(stale)
    assert proc.returncode != 0 and "permitted subtree violation" in proc.stderr


def test_names_outside_constraints_names_each_offending_san(
    constrained: tuple[CertificateAuthority, PrivateKey], tmp_path: Path
) -> None:
    ca = constrained[0]

    def outside(
        names: list[x509.GeneralName], issuer: CertificateAuthority = ca
    ) -> tuple[str, ...]:
        leaf, _ = forged_leaf(issuer.issuer_cert, issuer.issuer_key, names)
        return names_outside_constraints([leaf, *issuer.intermediates])

    assert outside([SPIFFE_URI, *(x509.DNSName(d) for d in IN_POLICY_DNS)]) == ()
    assert outside([SPIFFE_URI, x509.DNSName("API.NS.SVC.")]) == ()  # case, trailing dot
    assert outside([SPIFFE_URI, x509.DNSName("example.com"), x509.DNSName("a.svc")]) == (
        "DNS:example.com",
    )
    assert outside([SPIFFE_URI, x509.DNSName("notsvc")]) == ("DNS:notsvc",)
    assert outside([URI("spiffe://cluster.local.evil/ns/a/sa/b")]) == (
        "URI:spiffe://cluster.local.evil/ns/a/sa/b",
    )
    assert outside([SPIFFE_URI, x509.IPAddress(ipaddress.ip_address("::1"))]) == ("IP:::1",)
    assert outside([SPIFFE_URI, x509.DNSName("example.com")], unconstrained_ca()) == ()


def test_a_leaf_its_own_intermediate_does_not_permit_is_reissued_at_once(
    tmp_path: Path,
) -> None:
    """After the intermediate rotated for a policy change, a leaf still under the old one is
    normally kept until its place in the window; one whose names the old intermediate does not
    permit (it fails every handshake) is reissued at once."""
    ca, root_key = bootstrap_self_signed(TD, now())
    wider = name_constraints(TD, DnsNamePolicy(allowed=(EXAMPLE_PATTERN,)).permitted_dns_subtrees())
    new_ca = ca_from_secret_data(
        r.rotate_intermediate(
            ca_to_secret_data(ca, root_key),
            ca,
            root_key,
            r.RotationState(),
            request=None,
            now=now(),
            constraints=wider,
        ),
        now(),
    )

    def deadline(names: list[x509.GeneralName]) -> datetime | None:
        leaf, _ = forged_leaf(ca.issuer_cert, ca.issuer_key, names)
        return r.retired_issuer_deadline(
            [leaf, ca.issuer_cert],
            trusted_roots=new_ca.roots,
            renewal_at=now() + timedelta(hours=20),
            namespace="ns",
            name="api",
            state=r.RotationState(),
            window=timedelta(hours=1),
            now=now(),
        )

    assert deadline([SPIFFE_URI, x509.DNSName("api.ns.svc")]) is not None
    assert deadline([SPIFFE_URI, x509.DNSName("api.ns.example.com")]) is None
