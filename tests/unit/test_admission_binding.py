"""Pods bound to their own identity (validate.judge_binding): whose identity a Secret holds,
every way a pod can reference one, and each rule named in the refusal."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshless.admission import pods
from meshless.admission.validate import (
    RULE_NO_ITEMS,
    RULE_NOT_OPTIONAL,
    RULE_OWN_IDENTITY,
    SHORTENED_ACCOUNT,
    IdentitySecret,
    identity_secrets_of,
    judge_binding,
    provisioned_secret,
)
from meshless.identity.spec import MAX_NAME, provisioned_name
from tests.unit.admission_helpers import pod

NS = "shop"
TD = "cluster.local"


def held(secret: str, account: str, identity: str | None = None) -> IdentitySecret:
    return IdentitySecret(
        secret, account, identity or f"{account}-id", f"spiffe://{TD}/ns/{NS}/sa/{account}"
    )


# WorkloadIdentities of the namespace: payments (the pod's own), admin, and a Secret two
# identities name (a conflict: whoever wins, one of them is not the pod's).
CLAIMED: dict[str, list[IdentitySecret]] = {
    "payments-tls": [held("payments-tls", "payments")],
    "admin-tls": [held("admin-tls", "admin")],
    "shared-tls": [held("shared-tls", "payments"), held("shared-tls", "admin", "grab")],
}


def judge(body: dict[str, Any], old: dict[str, Any] | None = None) -> Any:
    secrets = sorted({r.secret for r in pods.secret_references(body)})
    known = identity_secrets_of(NS, secrets, CLAIMED, TD, pods.service_account(body))
    return judge_binding("UPDATE" if old else "CREATE", body, old, NS, known)


def secret_volume(secret: str, **extra: Any) -> dict[str, Any]:
    return {"name": "certs", "secret": {"secretName": secret, **extra}}


def projected_volume(secret: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "bundle",
        "projected": {
            "sources": [{"configMap": {"name": "ca"}}, {"secret": {"name": secret, **extra}}]
        },
    }


def with_volume(volume: dict[str, Any]) -> dict[str, Any]:
    body = pod()
    body["spec"]["volumes"] = [volume]
    return body


def with_env(secret: str, containers: str = "containers", **extra: Any) -> dict[str, Any]:
    body = pod()
    env = {
        "name": "KEY",
        "valueFrom": {"secretKeyRef": {"name": secret, "key": "tls.key", **extra}},
    }
    body["spec"].setdefault(containers, [{"name": "extra", "image": "busybox"}])[0]["env"] = [env]
    return body


def with_env_from(secret: str, **extra: Any) -> dict[str, Any]:
    body = pod()
    body["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": secret, **extra}}]
    return body


REFUSED = [
    # (case, pod, the rule, what the message must name)
    (
        "secret volume of another ServiceAccount",
        with_volume(secret_volume("admin-tls")),
        RULE_OWN_IDENTITY,
        ["volume 'certs'", "Secret 'admin-tls'", "ServiceAccount 'admin'"],
    ),
    (
        "projected secret source of another ServiceAccount",
        with_volume(projected_volume("admin-tls")),
        RULE_OWN_IDENTITY,
        ["projected volume 'bundle' (source 1)", "Secret 'admin-tls'", "ServiceAccount 'admin'"],
    ),
    (
        "env secretKeyRef of another ServiceAccount",
        with_env("admin-tls"),
        RULE_OWN_IDENTITY,
        ["env 'KEY' of container 'app'", "Secret 'admin-tls'", "ServiceAccount 'admin'"],
    ),
    (
        "envFrom secretRef of another ServiceAccount",
        with_env_from("admin-tls"),
        RULE_OWN_IDENTITY,
        ["envFrom (entry 0) of container 'app'", "Secret 'admin-tls'"],
    ),
    (
        "env of an init container",
        with_env("admin-tls", "initContainers"),
        RULE_OWN_IDENTITY,
        ["env 'KEY' of init container 'setup'"],
    ),
    (
        "env of an ephemeral container",
        with_env("admin-tls", "ephemeralContainers"),
        RULE_OWN_IDENTITY,
        ["env 'KEY' of ephemeral container 'extra'"],
    ),
    (
        "the name of another ServiceAccount's provisioned identity, not made yet",
        with_volume(secret_volume("meshless-admin-mtls")),
        RULE_OWN_IDENTITY,
        ["Secret 'meshless-admin-mtls'", "ServiceAccount 'admin'", "/sa/admin"],
    ),
    (
        "a Secret two identities name, one of another ServiceAccount",
        with_volume(secret_volume("shared-tls")),
        RULE_OWN_IDENTITY,
        ["Secret 'shared-tls'", "ServiceAccount 'admin'", "WorkloadIdentity 'grab'"],
    ),
    (
        "own identity mounted optional",
        with_volume(secret_volume("payments-tls", optional=True)),
        RULE_NOT_OPTIONAL,
        ["volume 'certs'", "identity Secret 'payments-tls' with optional: true"],
    ),
    (
        "own identity as an optional projected source",
        with_volume(projected_volume("payments-tls", optional=True)),
        RULE_NOT_OPTIONAL,
        ["projected volume 'bundle'", "'payments-tls'"],
    ),
    (
        "own identity as an optional env",
        with_env("payments-tls", optional=True),
        RULE_NOT_OPTIONAL,
        ["env 'KEY'", "'payments-tls'"],
    ),
    (
        "own identity mounted with items",
        with_volume(secret_volume("payments-tls", items=[{"key": "tls.crt", "path": "c"}])),
        RULE_NO_ITEMS,
        ["volume 'certs'", "some items of identity Secret 'payments-tls'"],
    ),
    (
        "own identity as a projected source with items",
        with_volume(projected_volume("payments-tls", items=[{"key": "tls.crt", "path": "c"}])),
        RULE_NO_ITEMS,
        ["projected volume 'bundle'", "'payments-tls'"],
    ),
]


@pytest.mark.parametrize(
    ("body", "rule", "named"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_naming_the_secret_the_service_account_and_the_rule(
    body: dict[str, Any], rule: str, named: list[str]
) -> None:
    decision = judge(body)
    assert not decision.allowed
    assert decision.code == 403
    assert decision.message.startswith("pod shop/web runs as ServiceAccount 'payments': ")
    assert f"(rule: {rule})" in decision.message
    for text in named:
        assert text in decision.message


ADMITTED = [
    ("own identity mounted whole and required", with_volume(secret_volume("payments-tls"))),
    ("own identity as a projected source", with_volume(projected_volume("payments-tls"))),
    ("own identity in env", with_env("payments-tls")),
    (
        "own provisioned identity, not made yet",
        with_volume(secret_volume("meshless-payments-mtls")),
    ),
    (
        "a Secret that holds no identity, optional and with items",
        with_volume(secret_volume("db-password", optional=True, items=[{"key": "p", "path": "p"}])),
    ),
    ("no Secret at all", pod()),
]


@pytest.mark.parametrize("body", [c[1] for c in ADMITTED], ids=[c[0] for c in ADMITTED])
def test_admitted(body: dict[str, Any]) -> None:
    assert judge(body).allowed


def test_every_problem_is_listed_in_one_refusal() -> None:
    body = with_volume(secret_volume("payments-tls", optional=True))
    body["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "admin-tls"}}]
    message = judge(body).message
    assert f"(rule: {RULE_NOT_OPTIONAL})" in message
    assert f"(rule: {RULE_OWN_IDENTITY})" in message


def test_the_default_service_account_is_the_pods_account() -> None:
    body = pod(sa=None)
    body["spec"]["volumes"] = [secret_volume("meshless-default-mtls")]
    assert judge(body).allowed
    body["spec"]["volumes"] = [secret_volume("payments-tls")]
    decision = judge(body)
    assert "runs as ServiceAccount 'default'" in decision.message
    assert "ServiceAccount 'payments'" in decision.message


def test_an_update_is_judged_on_the_references_it_adds() -> None:
    # Created before an identity claimed "admin-tls": later metadata updates still pass.
    old = with_volume(secret_volume("admin-tls"))
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"tier": "web"}
    assert judge(new, old).allowed
    # An ephemeral container added through pods/ephemeralcontainers is judged.
    debug = copy.deepcopy(old)
    debug["spec"]["ephemeralContainers"] = [
        {"name": "debug", "image": "busybox", "envFrom": [{"secretRef": {"name": "admin-tls"}}]}
    ]
    decision = judge(debug, old)
    assert not decision.allowed
    assert "envFrom (entry 0) of ephemeral container 'debug'" in decision.message


def test_mirror_pods_are_not_judged() -> None:
    body = with_volume(secret_volume("admin-tls"))
    body["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "x"}
    assert judge(body).allowed


def test_whose_identity_a_secret_name_is_reserved_for() -> None:
    assert provisioned_secret(NS, "meshless-web-mtls", TD) == IdentitySecret(
        "meshless-web-mtls", "web", "meshless-web", "spiffe://cluster.local/ns/shop/sa/web"
    )
    assert provisioned_secret(NS, "web-mtls", TD) is None
    assert provisioned_secret(NS, "meshless-web", TD) is None
    # A reserved name stays web's even when another ServiceAccount's identity claimed it
    # first: neither batch's pods nor web's get it while both claims stand.
    claimed = {"meshless-web-mtls": [held("meshless-web-mtls", "batch")]}
    holders = identity_secrets_of(NS, ["meshless-web-mtls"], claimed, TD, "batch")[
        "meshless-web-mtls"
    ]
    assert [h.service_account for h in holders] == ["batch", "web"]
    # An unreserved name is whatever its WorkloadIdentities say.
    claimed = {"certs": [held("certs", "batch")]}
    [holder] = identity_secrets_of(NS, ["certs"], claimed, TD, "batch")["certs"]
    assert holder.service_account == "batch"


# ServiceAccount names long enough that their provisioned identity's name is at the length
# limit: one shortened with a digest (250 characters), one that fits exactly (239).
SHORTENED = "a" * 250
AT_LIMIT = "b" * (MAX_NAME - len("meshless-"))
SHORTENED_SECRET = f"{provisioned_name(SHORTENED)}-mtls"
AT_LIMIT_SECRET = f"{provisioned_name(AT_LIMIT)}-mtls"


def test_long_service_account_names_are_at_the_limit() -> None:
    assert len(SHORTENED_SECRET) == len(AT_LIMIT_SECRET) == 253
    assert not SHORTENED_SECRET.startswith(f"meshless-{SHORTENED}")  # shortened: a digest
    assert f"meshless-{AT_LIMIT}-mtls" == AT_LIMIT_SECRET  # fits: it reads as it is


@pytest.mark.parametrize(
    ("secret", "account", "owner"),
    [
        # The pod's own: the one reading that can be checked.
        (SHORTENED_SECRET, SHORTENED, SHORTENED),
        (AT_LIMIT_SECRET, AT_LIMIT, AT_LIMIT),
        # Another ServiceAccount's: not read back, but not the pod's either.
        (SHORTENED_SECRET, "payments", SHORTENED_ACCOUNT),
        (AT_LIMIT_SECRET, "payments", SHORTENED_ACCOUNT),
        (SHORTENED_SECRET, AT_LIMIT, SHORTENED_ACCOUNT),
        (AT_LIMIT_SECRET, SHORTENED, SHORTENED_ACCOUNT),
    ],
)
def test_a_name_at_the_length_limit_is_reserved_for_whom_it_can_be(
    secret: str, account: str, owner: str
) -> None:
    reserved = provisioned_secret(NS, secret, TD, account)
    assert reserved is not None
    assert reserved.service_account == owner


def test_a_long_service_accounts_reserved_secret_is_refused_to_other_pods() -> None:
    """Before any identity exists, a pod of another ServiceAccount mounting the Secret a long
    ServiceAccount's identity will be provisioned into is refused; the long one's own pod is
    not; and once its identity claims the name, the refusal names it."""
    for secret in (SHORTENED_SECRET, AT_LIMIT_SECRET):
        body = with_volume(secret_volume(secret))
        decision = judge(body)
        assert not decision.allowed
        assert decision.message == (
            f"pod shop/web runs as ServiceAccount 'payments': volume 'certs' uses Secret "
            f"{secret!r}, reserved for the identity meshless provisions for another "
            f"ServiceAccount (one whose name is too long to read from the Secret's) "
            f"(rule: {RULE_OWN_IDENTITY})"
        )
    for account, secret in ((SHORTENED, SHORTENED_SECRET), (AT_LIMIT, AT_LIMIT_SECRET)):
        body = with_volume(secret_volume(secret))
        body["spec"]["serviceAccountName"] = account
        assert judge(body).allowed, account
    claimed = {SHORTENED_SECRET: [held(SHORTENED_SECRET, SHORTENED, "meshless-long")]}
    [holder] = identity_secrets_of(NS, [SHORTENED_SECRET], claimed, TD, "payments")[
        SHORTENED_SECRET
    ]
    assert holder.service_account == SHORTENED  # the claim says whose it is: no placeholder


def test_secret_references_cover_every_kind_and_container_list() -> None:
    body = pod()
    body["spec"]["volumes"] = [secret_volume("a"), projected_volume("b"), {"name": "empty"}]
    body["spec"]["initContainers"][0]["envFrom"] = [{"secretRef": {"name": "c"}}]
    body["spec"]["containers"][0]["env"] = [
        {"name": "X", "value": "plain"},
        {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "d", "key": "k"}}},
        {"name": "Z", "valueFrom": {"configMapKeyRef": {"name": "e", "key": "k"}}},
    ]
    body["spec"]["ephemeralContainers"] = [
        {"name": "dbg", "envFrom": [{"configMapRef": {"name": "f"}}, {"secretRef": {"name": "g"}}]}
    ]
    assert [(r.secret, r.where) for r in pods.secret_references(body)] == [
        ("a", "volume 'certs'"),
        ("b", "projected volume 'bundle' (source 1)"),
        ("c", "envFrom (entry 0) of init container 'setup'"),
        ("d", "env 'Y' of container 'app'"),
        ("g", "envFrom (entry 1) of ephemeral container 'dbg'"),
    ]
