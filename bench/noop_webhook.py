"""A webhook server that decides nothing, for bench/admission_floor.py: `POST /mutate` allows
with a fixed JSONPatch (the one meshless's injector returns for the benchmark's pod), `POST
/validate` allows. The same stack as meshless's (aiohttp on asyncio, Python's ssl), in a
process of its own: what two webhook calls cost a pod creation on this machine when the
webhook itself does no work.

    python bench/noop_webhook.py PORT CERT KEY PATCH_FILE
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
from typing import Any

import aiohttp.web


def answer(review: dict[str, Any], patch: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
    if patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def main() -> None:
    port, cert, key, patch_file = sys.argv[1:5]
    with open(patch_file, encoding="utf-8") as f:
        patch = base64.b64encode(f.read().encode()).decode()

    async def mutate(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(answer(json.loads(await request.read()), patch))

    async def validate(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(answer(json.loads(await request.read()), None))

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    app = aiohttp.web.Application(client_max_size=8 * 1024 * 1024)
    app.add_routes([aiohttp.web.post("/mutate", mutate), aiohttp.web.post("/validate", validate)])
    aiohttp.web.run_app(
        app, host="127.0.0.1", port=int(port), ssl_context=context, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
