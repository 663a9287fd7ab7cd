"""An HTTPS client that speaks mutual TLS with the identity meshless mounts (meshless.tls).

    python client.py https://HOST:PORT/ [--server-id SPIFFE_ID] [--cert-dir DIR] [--every SECONDS]

Presents its own SVID, verifies the server's chain against ca.crt and, with --server-id,
checks that the server is that workload (its SPIFFE ID, not a host name). Prints the answer;
exit 0 when the server answered 200, 1 when it refused us or we refused it. With --every, it
repeats forever (a Deployment's loop) and never exits on a failure.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
import time
from urllib.parse import urlsplit

from meshless import tls


def request_once(url: str, context: ssl.SSLContext, server_ids: list[str]) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 443
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    try:
        connection.connect()
        assert isinstance(connection.sock, ssl.SSLSocket)
        if server_ids:
            tls.check_peer(connection.sock, server_ids)
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        body = response.read().decode(errors="replace").strip()
    except tls.PeerNotAllowed as exc:
        print(f"refused the server: {exc}", flush=True)
        return 1
    except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
        print(f"refused: {type(exc).__name__}: {exc}", flush=True)
        return 1
    finally:
        connection.close()
    print(f"{response.status} {body}", flush=True)
    return 0 if response.status == 200 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--server-id", action="append", default=[], metavar="SPIFFE_ID")
    parser.add_argument("--cert-dir", default=None, help="default /var/run/secrets/meshless")
    parser.add_argument("--every", type=float, default=0, metavar="SECONDS")
    args = parser.parse_args()
    context = tls.client_context(args.cert_dir)
    if not args.every:
        return request_once(args.url, context, args.server_id)
    while True:
        request_once(args.url, context, args.server_id)
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
