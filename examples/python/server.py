"""An HTTPS server that speaks mutual TLS with the identity meshless mounts (meshless.tls).

    python server.py [--port 8443] [--cert-dir /var/run/secrets/meshless] [--allow SPIFFE_ID ...]

The mode (STRICT, PERMISSIVE, DISABLE) comes from MESHLESS_MTLS_PORTS / MESHLESS_MTLS_MODE,
which the meshless webhook sets from the MtlsPolicy; without them it is STRICT. Renewed
certificates are picked up on the next connection (the context reloads changed files). With
--allow, only clients presenting one of those SPIFFE IDs get an answer (403 otherwise).
"""

from __future__ import annotations

import argparse
import http.server
import socket
import ssl
import sys
from typing import Any

from meshless import tls


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        assert isinstance(self.connection, ssl.SSLSocket)
        peer = tls.peer_spiffe_id(self.connection)
        if self.server.allowed and peer not in self.server.allowed:
            self._answer(403, f"{peer or 'a client without a SPIFFE ID'} is not allowed\n")
            return
        self._answer(200, f"hello {peer or 'anonymous'}\n")

    do_HEAD = do_GET  # probes such as `meshless verify` send HEAD

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.client_address[0]} {format % args}", file=sys.stderr, flush=True)


class Server(http.server.ThreadingHTTPServer):
    """Plain TCP accept; the TLS handshake runs in the connection's own thread, so a slow or
    refused client never holds up the others."""

    daemon_threads = True

    def __init__(self, port: int, context: ssl.SSLContext, allowed: set[str]) -> None:
        self.address_family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
        super().__init__(("::" if socket.has_ipv6 else "0.0.0.0", port), Handler)
        self.context = context
        self.allowed = allowed

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            print(f"{client_address[0]} refused: {exc}", file=sys.stderr, flush=True)
            return
        Handler(connection, client_address, self)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert-dir", default=None, help="default /var/run/secrets/meshless")
    parser.add_argument("--allow", action="append", default=[], metavar="SPIFFE_ID")
    args = parser.parse_args()
    context = tls.server_context(args.cert_dir, port=args.port)
    mode = tls.mode_from_environment(args.port)
    server = Server(args.port, context, set(args.allow))
    print(f"serving {mode} on port {args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
