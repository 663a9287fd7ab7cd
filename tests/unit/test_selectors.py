"""LabelSelector matching as the API server and CNIs evaluate it, and parse errors that name
the field."""

from __future__ import annotations

from typing import Any

import pytest

from meshless.selectors import Requirement, Selector, SelectorError, parse_selector

POD = {"app": "payments", "tier": "backend", "track": ""}


def matches(raw: dict[str, Any] | None, labels: dict[str, str] = POD) -> bool:
    return parse_selector(raw).matches(labels)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"matchLabels": {"app": "payments"}}, True, id="matchLabels equal"),
        pytest.param({"matchLabels": {"app": "orders"}}, False, id="matchLabels other value"),
        pytest.param({"matchLabels": {"zone": "a"}}, False, id="matchLabels absent key"),
        pytest.param(
            {"matchLabels": {"app": "payments", "tier": "backend"}}, True, id="matchLabels all"
        ),
        pytest.param(
            {"matchLabels": {"app": "payments", "tier": "frontend"}},
            False,
            id="matchLabels one of two differs",
        ),
        pytest.param({"matchLabels": {"track": ""}}, True, id="matchLabels empty value"),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "payments"]}]},
            True,
            id="In value listed",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders"]}]},
            False,
            id="In value not listed",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            False,
            id="In absent key",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["orders"]}]},
            True,
            id="NotIn value not listed",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["payments"]}]},
            False,
            id="NotIn value listed",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]},
            True,
            id="NotIn matches an absent key (apimachinery)",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True, id="Exists"
        ),
        pytest.param(
            {"matchExpressions": [{"key": "track", "operator": "Exists"}]},
            True,
            id="Exists with an empty value",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "Exists"}]},
            False,
            id="Exists absent key",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]},
            True,
            id="DoesNotExist absent key",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]},
            False,
            id="DoesNotExist present key",
        ),
        pytest.param(
            {
                "matchLabels": {"app": "payments"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}],
            },
            True,
            id="matchLabels AND expressions, both hold",
        ),
        pytest.param(
            {
                "matchLabels": {"app": "payments"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend"]}],
            },
            False,
            id="matchLabels AND expressions, expression fails",
        ),
        pytest.param(
            {
                "matchLabels": {"app": "orders"},
                "matchExpressions": [{"key": "tier", "operator": "Exists"}],
            },
            False,
            id="matchLabels AND expressions, labels fail",
        ),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "tier", "operator": "Exists"},
                    {"key": "app", "operator": "NotIn", "values": ["payments"]},
                ]
            },
            False,
            id="expressions are ANDed",
        ),
        pytest.param({}, True, id="empty selector matches all"),
        pytest.param(None, True, id="no selector matches all"),
        pytest.param({"matchLabels": {}, "matchExpressions": []}, True, id="empty parts"),
    ],
)
def test_matching(raw: dict[str, Any] | None, expected: bool) -> None:
    assert matches(raw) is expected


def test_empty_selector_matches_a_pod_without_labels() -> None:
    assert matches({}, {})
    assert parse_selector({}).empty
    assert parse_selector({"matchLabels": {}}).empty
    assert not parse_selector({"matchLabels": {"a": "b"}}).empty
    assert not parse_selector({"matchExpressions": [{"key": "a", "operator": "Exists"}]}).empty


def test_parsed_selector_is_hashable_and_order_independent() -> None:
    a = parse_selector({"matchLabels": {"b": "2", "a": "1"}})
    b = parse_selector({"matchLabels": {"a": "1", "b": "2"}})
    assert a == b
    assert hash(a) == hash(b)


def test_to_json_round_trips() -> None:
    raw = {
        "matchLabels": {"app": "payments"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["b", "a"]},
            {"key": "zone", "operator": "DoesNotExist"},
        ],
    }
    parsed = parse_selector(raw)
    assert parsed.to_json() == {
        "matchLabels": {"app": "payments"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "zone", "operator": "DoesNotExist"},
        ],
    }
    assert parse_selector(parsed.to_json()) == parsed
    assert Selector().to_json() == {}
    assert Requirement("k", "Exists").to_json() == {"key": "k", "operator": "Exists"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            {"matchLabels": ["app=payments"]},
            "spec.selector.matchLabels must be a map",
            id="matchLabels not a map",
        ),
        pytest.param(
            {"matchExpressions": [{"operator": "Exists"}]},
            "spec.selector.matchExpressions[0].key is required",
            id="key missing",
        ),
        pytest.param(
            {"matchExpressions": ["app"]},
            "spec.selector.matchExpressions[0].key is required",
            id="expression not an object",
        ),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "a", "operator": "Exists"},
                    {"key": "app", "operator": "Equals", "values": ["x"]},
                ]
            },
            "spec.selector.matchExpressions[1].operator 'Equals' is not one of "
            "In, NotIn, Exists, DoesNotExist",
            id="unknown operator names its index",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "in", "values": ["x"]}]},
            "spec.selector.matchExpressions[0].operator 'in'",
            id="operator is case-sensitive",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "In"}]},
            "spec.selector.matchExpressions[0]: operator In needs values",
            id="In without values",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": []}]},
            "spec.selector.matchExpressions[0]: operator NotIn needs values",
            id="NotIn with empty values",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
            "spec.selector.matchExpressions[0]: operator Exists takes no values",
            id="Exists with values",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "app", "operator": "DoesNotExist", "values": ["x"]}]},
            "spec.selector.matchExpressions[0]: operator DoesNotExist takes no values",
            id="DoesNotExist with values",
        ),
    ],
)
def test_parse_errors_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(raw, "spec.selector")
    assert message in str(caught.value)


def test_default_field_path() -> None:
    with pytest.raises(SelectorError, match=r"^selector\.matchExpressions\[0\]\.key"):
        parse_selector({"matchExpressions": [{"key": ""}]})
