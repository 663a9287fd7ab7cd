"""AdmissionReview in and out (pure): the request guard in front of `admit`.

`parse_review` turns the JSON the API server posts into an `admit.AdmissionRequest`, or
raises `BadReview` naming what is wrong (the server answers HTTP 400 with it): anything that
is not an AdmissionReview `admission.k8s.io/v1` with a uid, a resource, userInfo and an
object. `review_answer` turns an `AdmissionResponse` into the AdmissionReview the API server
expects, with the JSON patch base64-encoded. The bodies are read, never copied or changed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from meshless.admission.admit import AdmissionRequest, AdmissionResponse

ADMISSION_REVIEW_VERSION = "admission.k8s.io/v1"


class BadReview(ValueError):
    """Not an AdmissionReview v1 we can answer; the message says why."""


def review_problem(review: Any) -> str | None:
    """Why `review` is not an AdmissionReview v1 we can answer (None when it is)."""
    if not isinstance(review, Mapping):
        return "the body is not a JSON object"
    if review.get("kind") != "AdmissionReview":
        return f"kind {review.get('kind')!r} is not AdmissionReview"
    if review.get("apiVersion") != ADMISSION_REVIEW_VERSION:
        return (
            f"AdmissionReview version {review.get('apiVersion')!r} is not supported; "
            f"meshless answers {ADMISSION_REVIEW_VERSION} only"
        )
    payload = review.get("request")
    if not isinstance(payload, Mapping):
        return "the AdmissionReview has no request"
    if not isinstance(payload.get("uid"), str) or not payload.get("uid"):
        return "the AdmissionReview request has no uid"
    if not isinstance(payload.get("resource"), Mapping):
        return "the AdmissionReview request names no resource"
    if not isinstance(payload.get("userInfo"), Mapping):
        return "the AdmissionReview request has no userInfo"
    if not isinstance(payload.get("object") or payload.get("oldObject"), Mapping):
        return "the AdmissionReview request carries no object"
    return None


def _mapping_or_none(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def parse_review(review: Any, webhook: str) -> AdmissionRequest:
    """The request `review` makes of the webhook at path `/<webhook>`."""
    problem = review_problem(review)
    if problem is not None:
        raise BadReview(problem)
    payload = review["request"]
    resource = payload["resource"]
    obj = _mapping_or_none(payload.get("object"))
    old = _mapping_or_none(payload.get("oldObject"))
    namespace = payload.get("namespace")
    if not namespace:  # the object's, as a last resort
        meta = (obj or old or {}).get("metadata")
        namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    return AdmissionRequest(
        webhook=webhook,
        uid=payload["uid"],
        operation=str(payload.get("operation") or ""),
        resource=(
            str(resource.get("group") or ""),
            str(resource.get("version") or ""),
            str(resource.get("resource") or ""),
            str(payload.get("subResource") or ""),
        ),
        namespace=str(namespace or ""),
        obj=obj,
        old=old,
        dry_run=payload.get("dryRun") is True,
    )


def review_answer(uid: str, response: AdmissionResponse) -> dict[str, Any]:
    """The AdmissionReview that answers request `uid` with `response`."""
    answer: dict[str, Any] = {"uid": uid, "allowed": response.allowed}
    if not response.allowed:
        answer["status"] = {"code": response.code, "message": response.message}
    if response.warnings:
        answer["warnings"] = list(response.warnings)
    if response.patch:
        ops = json.dumps(list(response.patch), separators=(",", ":")).encode()
        answer["patch"] = base64.b64encode(ops).decode("ascii")
        answer["patchType"] = "JSONPatch"
    return {"apiVersion": ADMISSION_REVIEW_VERSION, "kind": "AdmissionReview", "response": answer}


def refusal(review: Mapping[str, Any], message: str, code: int = 400) -> dict[str, Any]:
    """A well-formed AdmissionReview answer that denies `review` with `message`."""
    return review_answer(
        review["request"]["uid"], AdmissionResponse(allowed=False, code=code, message=message)
    )
