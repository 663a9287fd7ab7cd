"""The sizing figures in docs/operations.md are the ones bench/results/scale.json recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sizing_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    match = re.search(r"^## Sizing\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "no Sizing section in docs/operations.md"
    return " ".join(match.group(1).split())


def test_sizing_figures_come_from_the_scale_benchmark() -> None:
    scale = json.loads((ROOT / "bench" / "results" / "scale.json").read_text())
    assert scale["identities"] == 50000
    section = sizing_section()
    expected = {
        "leader RSS": f"50,000 identities in {scale['rss_mb_50000']:.0f} MB",
        "RSS after the storm": f"{scale['storm_rss_mb']:.0f} MB right after a storm",
        "standby RSS": f"the standby in {scale['standby_rss_mb_50000']:.0f} MB",
        "restart": f"checked every one in {scale['restart_ready_s']:.0f} s",
        "failover": f"takes over {scale['failover_s']:.1f} s after the leader dies",
    }
    missing = {what: text for what, text in expected.items() if text not in section}
    assert not missing, f"docs/operations.md's Sizing does not say {missing}"
