"""What the identity plan and checkmark tests share: a fixed clock, an owner UID, the
`payments` identity's spec."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meshless.identity.spec import IdentitySpec, parse_identity
from meshless.settings import Settings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UID = "4f3c2a10-0000-4000-8000-000000000001"


def spec(**fields: Any) -> IdentitySpec:
    return parse_identity(
        "shop", "payments", {"serviceAccountName": "payments", **fields}, Settings()
    )
