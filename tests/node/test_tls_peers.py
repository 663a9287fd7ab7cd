"""The seed's other peers on the node: nginx with `ssl_verify_client on` and a Node.js `tls`
server that requires client certificates, each with a mounted identity; clients in Python and
Node.js with an identity from the same CA get in, a client without one does not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meshless.pki.ca import bootstrap_self_signed
from tests.node.identities import CLIENT, TLS, TRUST_DOMAIN, identity, root_pem
from tests.node.pods import Node, config_map, pod, secret

pytestmark = pytest.mark.node

NGINX_CONF = r"""
daemon off;
error_log stderr;
pid /tmp/nginx.pid;
events {}
http {
    access_log /dev/stdout;
    client_body_temp_path /tmp;
    server {
        listen 8443 ssl;
        ssl_certificate /identity/tls.crt;
        ssl_certificate_key /identity/tls.key;
        ssl_client_certificate /identity/ca.crt;
        ssl_verify_client on;
        ssl_verify_depth 2;
        location / { return 200 "verified $ssl_client_verify\n"; }
    }
}
"""

NODE_SERVER = r"""
const tls = require("tls"), fs = require("fs");
const server = tls.createServer({
  key: fs.readFileSync("/identity/tls.key"),
  cert: fs.readFileSync("/identity/tls.crt"),
  ca: fs.readFileSync("/identity/ca.crt"),
  requestCert: true,
  rejectUnauthorized: true,
}, (socket) => socket.end("hello " + socket.getPeerCertificate().subjectaltname + "\n"));
server.on("tlsClientError", (err) => console.log("refused:", err.code || err.message));
server.listen(8443);
"""

# argv: host; an HTTPS GET with the mounted identity, printing the response
NODE_CLIENT = r"""
const tls = require("tls"), fs = require("fs");
const socket = tls.connect({
  host: process.argv[1], port: 8443, checkServerIdentity: () => undefined,
  key: fs.readFileSync("/identity/tls.key"),
  cert: fs.readFileSync("/identity/tls.crt"),
  ca: fs.readFileSync("/identity/ca.crt"),
}, () => socket.write("GET / HTTP/1.0\r\n\r\n"));
socket.on("data", (data) => process.stdout.write(data));
socket.on("error", (err) => console.log("tls-error", err.code));
"""

# argv: host, CA bundle, identity directory or "-"; an HTTPS GET, printing the response
HTTPS_CLIENT = r"""
import socket, ssl, sys
host, ca, identity = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(ca)
if identity != "-":
    ctx.load_cert_chain(identity + "/tls.crt", identity + "/tls.key")
with socket.create_connection((host, 8443), timeout=10) as raw:
    with ctx.wrap_socket(raw) as tls:
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        print(tls.recv(4096).decode(errors="replace"))
"""


def test_nginx_and_nodejs_servers_require_client_certificates(node: Node, namespace: str) -> None:
    assert "nginx" in node.images and "nodejs" in node.images, node.images
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed(TRUST_DOMAIN, now)
    server_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/server"
    client_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/client"
    python, sleep = node.images["python"], ["sleep", "3600"]
    node.apply(
        namespace,
        secret("server-identity", identity(ca, server_id, now)[0], TLS),
        secret("client-identity", identity(ca, client_id, now)[0], TLS),
        secret("trust-bundle", {"ca.crt": root_pem(ca)}),
        config_map("nginx-conf", {"nginx.conf": NGINX_CONF}),
        pod(
            "nginx",
            node.images["nginx"],
            ["nginx", "-c", "/config/nginx.conf"],
            secrets={"server-identity": "/identity"},
            config_maps={"nginx-conf": "/config"},
            ready_port=8443,
        ),
        pod(
            "node-server",
            node.images["nodejs"],
            ["node", "-e", NODE_SERVER],
            secrets={"server-identity": "/identity"},
            ready_port=8443,
        ),
        pod("client", python, sleep, secrets={"client-identity": "/identity"}),
        pod("node-client", node.images["nodejs"], sleep, secrets={"client-identity": "/identity"}),
        pod("anonymous", python, sleep, secrets={"trust-bundle": "/trust"}),
    )
    node.wait_ready(namespace, "nginx", "node-server", "client", "node-client", "anonymous")
    nginx, node_server = node.pod_ip(namespace, "nginx"), node.pod_ip(namespace, "node-server")

    with_identity = node.python(
        namespace, "client", HTTPS_CLIENT, nginx, "/identity/ca.crt", "/identity"
    )
    assert with_identity.startswith("HTTP/1.1 200")
    assert "verified SUCCESS" in with_identity
    without = node.python(namespace, "anonymous", HTTPS_CLIENT, nginx, "/trust/ca.crt", "-")
    assert without.startswith("HTTP/1.1 400")
    assert "No required SSL certificate was sent" in without
    from_node = node.kubectl(
        "exec", "-n", namespace, "node-client", "--", "node", "-e", NODE_CLIENT, nginx
    ).stdout
    assert from_node.startswith("HTTP/1.1 200") and "verified SUCCESS" in from_node

    accepted = node.python(
        namespace, "client", CLIENT, node_server, "/identity/ca.crt", "/identity"
    )
    assert f"reply hello URI:{client_id}" in accepted
    refused = node.python(namespace, "anonymous", CLIENT, node_server, "/trust/ca.crt", "-")
    assert "tls-error TLSV13_ALERT_CERTIFICATE_REQUIRED" in refused
    assert "reply" not in refused
    assert "refused:" in node.kubectl("logs", "-n", namespace, "node-server").stdout
