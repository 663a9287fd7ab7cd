"""A policy's conditions and counts from what the resolver decided."""

from __future__ import annotations

from meshless.api import ConditionType, Reason
from meshless.policy.model import PolicyRef, Scope
from meshless.policy.report import PolicyTally, policy_conditions, policy_status_fields


def _by_type(changes):  # type: ignore[no-untyped-def]
    return {c.type: c for c in changes}


def test_in_effect_without_conflicts() -> None:
    got = _by_type(policy_conditions(Scope.NAMESPACE, PolicyTally(selected=3)))
    assert (got[ConditionType.READY].status, got[ConditionType.READY].reason) == (
        True,
        Reason.IN_EFFECT,
    )
    assert "3 pods" in got[ConditionType.READY].message
    assert got[ConditionType.CONFLICTED].status is False


def test_a_shadowed_namespace_policy_names_the_winner_and_is_not_ready() -> None:
    tally = PolicyTally(beaten_by={PolicyRef("shop", "first")})
    got = _by_type(policy_conditions(Scope.NAMESPACE, tally))
    conflicted = got[ConditionType.CONFLICTED]
    assert conflicted.status is True and conflicted.reason == Reason.CONFLICT
    assert "shop/first" in conflicted.message and "oldest namespace-wide" in conflicted.message
    assert (got[ConditionType.READY].status, got[ConditionType.READY].reason) == (
        False,
        Reason.CONFLICT,
    )


def test_a_workload_policy_that_loses_some_pods_stays_ready_and_conflicted() -> None:
    tally = PolicyTally(selected=2, beaten_by={PolicyRef("shop", "older")})
    got = _by_type(policy_conditions(Scope.WORKLOAD, tally))
    assert got[ConditionType.READY].status is True
    assert got[ConditionType.CONFLICTED].status is True
    assert "still governs 2 pods" in got[ConditionType.CONFLICTED].message


def test_invalid_spec_and_network_open_win_over_in_effect() -> None:
    bad = _by_type(policy_conditions(None, PolicyTally(), spec_error="spec.mode is wrong"))
    assert bad[ConditionType.READY].reason == Reason.INVALID_SPEC
    assert bad[ConditionType.READY].message == "spec.mode is wrong"
    tally = PolicyTally(selected=1, network_open=["NetworkPolicy shop/allow-all opens port 8443"])
    got = _by_type(policy_conditions(Scope.NAMESPACE, tally))
    assert got[ConditionType.READY].reason == Reason.NETWORK_OPEN
    assert "shop/allow-all" in got[ConditionType.READY].message


def test_status_fields() -> None:
    tally = PolicyTally(selected=4, injected=3, identities={("shop", "a")}, network_policies=2)
    assert policy_status_fields(Scope.WORKLOAD, tally) == {
        "selectedPods": 4,
        "injectedPods": 3,
        "identities": 1,
        "networkPolicies": 2,
        "unusableIdentities": None,  # absent: a merge patch removes the field
        "scope": "Workload",
    }


def test_unusable_identities_are_named_in_the_status_and_the_ready_message() -> None:
    tally = PolicyTally(
        selected=1,
        unusable={("shop", "mine"): ("DNSNameNotAllowed", "meshless-web")},
    )
    fields = policy_status_fields(Scope.NAMESPACE, tally)
    assert fields["unusableIdentities"] == [
        {
            "namespace": "shop",
            "name": "mine",
            "reason": "DNSNameNotAllowed",
            "usedInstead": "meshless-web",
        }
    ]
    ready = _by_type(policy_conditions(Scope.NAMESPACE, tally))[ConditionType.READY]
    assert ready.status is True and ready.reason == Reason.IN_EFFECT
    assert "shop/mine (DNSNameNotAllowed; its pods get meshless-web)" in ready.message


def test_the_unusable_list_is_bounded() -> None:
    tally = PolicyTally(unusable={("shop", f"id-{i:02}"): ("InvalidSpec", "x") for i in range(30)})
    listed = policy_status_fields(None, tally)["unusableIdentities"]
    assert isinstance(listed, list) and len(listed) == 20
    message = _by_type(policy_conditions(None, tally))[ConditionType.READY].message
    assert "and 25 more" in message
