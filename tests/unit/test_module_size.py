"""The controllers stay small: each reads its stores, makes one plan with the pure core and
writes it (docs/architecture.md). A controller module that grows past 400 lines has taken on
a second responsibility: a cache, a decision or a write path that belongs in its own module."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "meshless"
LIMIT = 400


def test_every_controller_module_is_under_400_lines() -> None:
    controllers = sorted(PACKAGE.glob("**/controller*.py"))
    assert len(controllers) >= 2  # identity/ and policy/
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in controllers}
    assert all(size < LIMIT for size in sizes.values()), sizes
