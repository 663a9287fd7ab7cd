"""Identities for node tests, as a WorkloadIdentity Secret holds them (tls.crt with the chain,
tls.key, ca.crt), issued with the project's own PKI; and a Python mTLS client program."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization

from meshless.pki.ca import CertificateAuthority
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.svid import SvidRequest, issue_svid

TRUST_DOMAIN = "node.test"
TLS = "kubernetes.io/tls"

# argv: server IP, CA bundle, identity directory or "-" for none, and optionally a line to send
# before reading the reply (for servers that answer what they are sent)
CLIENT = r"""
import socket, ssl, sys
host, ca, identity = sys.argv[1:4]
greeting = sys.argv[4] if len(sys.argv) > 4 else ""
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False  # a SPIFFE peer is named by its URI SAN, printed below
ctx.load_verify_locations(ca)
if identity != "-":
    ctx.load_cert_chain(identity + "/tls.crt", identity + "/tls.key")
try:
    with socket.create_connection((host, 8443), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            uris = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
            print("server", ",".join(uris))
            if greeting:
                tls.sendall(greeting.encode() + b"\n")
            print("reply", tls.recv(1024).decode().strip())
except ssl.SSLError as err:
    print("tls-error", err.reason)
"""


def root_pem(ca: CertificateAuthority) -> bytes:
    return b"".join(r.public_bytes(serialization.Encoding.PEM) for r in ca.roots)


def identity(
    ca: CertificateAuthority, spiffe_id: str, now: datetime
) -> tuple[dict[str, bytes], int]:
    issued = issue_svid(
        ca, SvidRequest(spiffe_id, (), timedelta(minutes=10), KeyAlgorithm.ECDSAP256), now
    )
    data = {"tls.crt": issued.chain_pem, "tls.key": issued.private_key_pem, "ca.crt": root_pem(ca)}
    return data, issued.certificate.serial_number
