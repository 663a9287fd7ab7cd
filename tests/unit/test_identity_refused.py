"""What a refused identity reports: the refusal itself, and what becomes of a certificate
issued before the name policy refused it (reported, never silently revoked)."""

from __future__ import annotations

from typing import Any

import pytest

from meshless.identity.plan import unusable_message
from meshless.identity.spec import SpecError, parse_identity
from meshless.settings import Settings


def _refusal(spec: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_identity("tenant", "api", spec, Settings())
    return info.value


def _body(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "tenant", "name": "api"}, "status": status}


def test_a_never_issued_identity_is_told_only_why() -> None:
    error = _refusal({"serviceAccountName": "api", "dnsNames": ["payments.shop.svc"]})
    assert unusable_message(_body({}), error) == str(error)


def test_a_certificate_issued_before_is_named_with_its_end() -> None:
    error = _refusal({"serviceAccountName": "api", "dnsNames": ["payments.shop.svc"]})
    status = {
        "serialNumber": "1a2b",
        "notAfter": "2026-12-06T09:00:00Z",
        "secretName": "api-mtls",
    }
    message = unusable_message(_body(status), error)
    assert message.startswith(str(error))
    assert "serial 1a2b" in message and "Secret api-mtls" in message
    assert "not renewed" in message and "valid until 2026-12-06T09:00:00Z" in message


def test_other_spec_errors_are_left_as_they_are() -> None:
    error = _refusal({"serviceAccountName": "api", "ttl": "1m"})
    status = {"serialNumber": "1a2b", "notAfter": "2026-12-06T09:00:00Z"}
    assert unusable_message(_body(status), error) == str(error)
