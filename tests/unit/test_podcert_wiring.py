"""The signer's settings from the operator's, and its refresh cap during a root rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from meshless.ca_store import CAStore
from meshless.kube import Kube
from meshless.pki.rotation import Phase, RotationState
from meshless.podcert.wiring import refresh_by_during_rotation, signer_settings
from meshless.settings import Settings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_signer_settings_follow_the_operators() -> None:
    settings = Settings(
        trust_domain="corp.example",
        pod_certificate_max_ttl=timedelta(hours=6),
        allowed_dns_names=("*.{namespace}.example.com",),
    )
    signer = signer_settings(settings)
    assert signer.trust_domain == "corp.example"
    assert signer.max_ttl == timedelta(hours=6)
    assert signer.refresh_after is None  # 0: the 2/3 rule
    assert signer.names == settings.dns_name_policy
    quick = signer_settings(Settings(pod_certificate_refresh_after=timedelta(minutes=12)))
    assert quick.refresh_after == timedelta(minutes=12)


@pytest.mark.parametrize(
    ("phase", "capped"),
    [(Phase.IDLE, False), (Phase.PREPARE, True), (Phase.SWITCH, False), (Phase.FINISH, False)],
)
def test_refresh_is_capped_only_while_the_old_root_still_issues(phase: Phase, capped: bool) -> None:
    ca = CAStore(cast(Kube, None), Settings(), lambda: NOW)
    ca.rotation = RotationState(phase=phase)
    expected: Any = NOW if capped else None
    assert refresh_by_during_rotation(ca, lambda: NOW) == expected
