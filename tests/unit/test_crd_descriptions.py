"""Every field of every CRD has a description, so `kubectl explain` answers for each one.
`metadata` is the exception: the API server refuses anything but name and generateName there,
and `kubectl explain` shows ObjectMeta's own documentation for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "crds").glob("*.yaml"))


def fields(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", sub
        yield from fields(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from fields(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from fields(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", CRDS, ids=lambda p: p.name)
def test_every_field_has_a_description(crd: Path) -> None:
    document = yaml.safe_load(crd.read_text())
    for version in document["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        missing = [
            path
            for path, sub in fields(schema)
            if not sub.get("description") and path != ".metadata"
        ]
        assert not missing, f"{crd.name} {version['name']}: no description for {missing}"


def test_the_walk_sees_a_field_without_one() -> None:
    schema = {"properties": {"spec": {"description": "x", "properties": {"a": {}}}}}
    assert [p for p, sub in fields(schema) if not sub.get("description")] == [".spec.a"]
