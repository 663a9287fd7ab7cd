"""Settings in one place: every `meshless run` option (settings.OPTIONS) is a chart value under
`settings` (or derived by the chart) with its MESHLESS_* variable in the Deployment, and is in
the README's settings table and the chart README; nothing in the chart maps to no option.

The chart is rendered by the real helm (`make helm`) and the rendered variables are parsed by
the operator's own `load_settings`, so a value wired to the wrong variable fails too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshless.settings import OPTIONS, Settings, load_settings
from tests.helmtool import CHART, ROOT, find, render

# Options the chart sets itself rather than exposing as values, and why (the chart README
# says the same).
DERIVED = {
    "--namespace": "the release namespace (downward API metadata.namespace)",
    "--webhook-service": "the chart's webhook Service",
    "--webhook-url": "empty: in a cluster the webhooks are registered through the Service",
    "--service-account": "the chart's ServiceAccount (the prober's identity is issued for it)",
}
# Variables in the Deployment that are not options but are read by the operator.
NOT_OPTIONS = {"POD_NAME": "leader-election identity (downward API metadata.name)"}
# Chart defaults that deliberately differ from `meshless run`'s.
CHART_DEFAULTS = {
    "--log-format": "json",
    "--renewal-fraction": 0.3333,
    "--ca-renewal-fraction": 0.6667,
}


def camel(flag: str) -> str:
    """`--write-budget-qps` -> `writeBudgetQps`: the chart value of a flag."""
    first, *rest = flag.removeprefix("--").split("-")
    return first + "".join(part.capitalize() for part in rest)


def container_env(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    deployment = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: list[dict[str, Any]] = container["env"]
    return env


def section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    pattern = rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,{len(level)}}} |\Z)"
    match = re.search(pattern, markdown, re.M | re.S)
    assert match, f"no {heading!r} section"
    return match.group(1)


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def sync_problems(
    options: Sequence[Any],
    env: Iterable[Mapping[str, Any]],
    values: Mapping[str, Any],
    readme_rows: Sequence[str],
    chart_readme_rows: Sequence[str],
) -> list[str]:
    """Everything that disagrees between the options and the chart and docs."""
    problems: list[str] = []
    env_names = [e["name"] for e in env]
    option_envs = {o.env for o in options}
    for name in env_names:
        if name not in option_envs and name not in NOT_OPTIONS:
            problems.append(f"Deployment env {name} maps to no `meshless run` option")
    if len(env_names) != len(set(env_names)):
        problems.append(f"Deployment env has duplicates: {sorted(env_names)}")
    wanted_values = {camel(o.flag) for o in options if o.flag not in DERIVED}
    for key in sorted(set(values) - wanted_values):
        problems.append(f"chart value settings.{key} maps to no `meshless run` option")
    for o in options:
        if o.env not in env_names:
            problems.append(f"{o.flag}: no {o.env} in the Deployment")
        if o.flag not in DERIVED and camel(o.flag) not in values:
            problems.append(f"{o.flag}: no chart value settings.{camel(o.flag)}")
        if o.flag in DERIVED and camel(o.flag) in values:
            problems.append(f"{o.flag}: derived by the chart but also a value")
        if not any(f"`{o.flag}`" in row and f"`{o.env}`" in row for row in readme_rows):
            problems.append(f"{o.flag}: no row with `{o.flag}` and `{o.env}` in README.md")
        chart_key = f"`{o.env}`" if o.flag in DERIVED else f"`settings.{camel(o.flag)}`"
        if not any(chart_key in row and f"`{o.env}`" in row for row in chart_readme_rows):
            problems.append(f"{o.flag}: no row with {chart_key} and `{o.env}` in the chart README")
    return problems


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    return values


@pytest.fixture(scope="module")
def readme_rows() -> list[str]:
    return table_rows(section((ROOT / "README.md").read_text(), "## Operator settings"))


@pytest.fixture(scope="module")
def chart_readme_rows() -> list[str]:
    return table_rows(section((CHART / "README.md").read_text(), "## Values"))


def test_options_chart_and_readmes_agree(
    default_objects: list[dict[str, Any]],
    chart_values: dict[str, Any],
    readme_rows: list[str],
    chart_readme_rows: list[str],
) -> None:
    env = container_env(default_objects)
    assert sync_problems(OPTIONS, env, chart_values, readme_rows, chart_readme_rows) == []


def test_the_check_catches_each_kind_of_drift(
    default_objects: list[dict[str, Any]],
    chart_values: dict[str, Any],
    readme_rows: list[str],
    chart_readme_rows: list[str],
) -> None:
    """The check above is not vacuous: a new option, a stray variable, a stray value and a
    missing README row are each reported by name."""
    env = container_env(default_objects)
    new_option = type(OPTIONS[0])("runtime", "frobnicate", "--frobnicate", "")
    assert sync_problems(
        (*OPTIONS, new_option), env, chart_values, readme_rows, chart_readme_rows
    ) == [
        "--frobnicate: no MESHLESS_FROBNICATE in the Deployment",
        "--frobnicate: no chart value settings.frobnicate",
        "--frobnicate: no row with `--frobnicate` and `MESHLESS_FROBNICATE` in README.md",
        "--frobnicate: no row with `settings.frobnicate` and `MESHLESS_FROBNICATE` in the "
        "chart README",
    ]
    stray_env = [*env, {"name": "MESHLESS_COLOUR", "value": "blue"}]
    assert sync_problems(OPTIONS, stray_env, chart_values, readme_rows, chart_readme_rows) == [
        "Deployment env MESHLESS_COLOUR maps to no `meshless run` option"
    ]
    stray_value = {**chart_values, "colour": "blue"}
    assert sync_problems(OPTIONS, env, stray_value, readme_rows, chart_readme_rows) == [
        "chart value settings.colour maps to no `meshless run` option"
    ]
    without_jitter = [row for row in readme_rows if "`--jitter`" not in row]
    assert sync_problems(OPTIONS, env, chart_values, without_jitter, chart_readme_rows) == [
        "--jitter: no row with `--jitter` and `MESHLESS_JITTER` in README.md"
    ]


def env_as_operator_sees_it(env: list[dict[str, Any]], namespace: str) -> dict[str, str]:
    """The container's variables, with the downward API filled in as the kubelet would."""
    out: dict[str, str] = {}
    for entry in env:
        if "value" in entry:
            out[entry["name"]] = entry["value"]
        elif entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace":
            out[entry["name"]] = namespace
        else:
            out[entry["name"]] = "meshless-7d9f-abcde"
    return out


# A value for every chart setting, each different from its default, and what the operator must
# make of it. Adding an option means adding it here too (the key check below says so).
OVERRIDES: dict[str, tuple[Any, Any]] = {
    "trustDomain": ("prod.example.org", "prod.example.org"),
    "rootNamespace": ("mesh-root", "mesh-root"),
    "caSource": ("corp-intermediate", "corp-intermediate"),
    "defaultTtl": ("36h", timedelta(hours=36)),
    "ttlFloor": ("15m", timedelta(minutes=15)),
    "renewalFraction": (0.25, 0.25),
    "jitter": (0.05, 0.05),
    "writeBudgetQps": (2_500_000.5, 2_500_000.5),
    "writeBudgetBurst": (10_000_000, 10_000_000),  # helm renders big numbers as 1e+07
    "watchNamespaces": (["shop", "billing"], ("shop", "billing")),
    "webhookPort": (10443, 10443),
    "webhookHost": ("::", "::"),
    "metricsPort": (18080, 18080),
    "healthPort": (18081, 18081),
    "logFormat": ("text", "text"),
    "workers": (3, 3),
    "resyncInterval": ("7m", timedelta(minutes=7)),
    "caPollInterval": ("30s", timedelta(seconds=30)),
    "caRenewalFraction": (0.75, 0.75),
    "caSettleTime": ("5m", timedelta(minutes=5)),
    "caRotationWindow": ("3h", timedelta(hours=3)),
    "leaderElection": (False, False),
    "probeInterval": ("90s", timedelta(seconds=90)),
    "probeQps": (7.5, 7.5),
    "probeTimeout": ("5s", timedelta(seconds=5)),
    "clusterDomain": ("corp.example", "corp.example"),
    "allowedDnsNames": (
        ["*.{namespace}.example.com", "api.corp.internal"],
        ("*.{namespace}.example.com", "api.corp.internal"),
    ),
    "identityDelivery": ("PodCertificate", "PodCertificate"),
    "podCertificateMaxTtl": ("12h", timedelta(hours=12)),
    "podCertificateRefreshAfter": ("15m", timedelta(minutes=15)),
}


def test_every_value_reaches_its_option(chart_values: dict[str, Any], tmp_path: Path) -> None:
    assert set(OVERRIDES) == set(chart_values), "OVERRIDES must cover every chart setting"
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"settings": {k: v for k, (v, _) in OVERRIDES.items()}}))
    env = container_env(render("-f", str(values_file), namespace="ops"))
    settings = load_settings(env=env_as_operator_sees_it(env, "ops"))
    by_value = {o.helm_value: o for o in OPTIONS}
    for key, (_, expected) in OVERRIDES.items():
        assert by_value[key].value_of(settings) == expected, key
    assert settings.runtime.namespace == "ops"
    assert settings.webhook.service == "meshless-webhook"
    assert settings.webhook.url == ""


def test_chart_defaults_are_the_operators_defaults(default_objects: list[dict[str, Any]]) -> None:
    env = env_as_operator_sees_it(container_env(default_objects), "meshless-system")
    from_chart = load_settings(env=env)
    plain = Settings()  # namespace meshless-system, webhook Service meshless-webhook
    for o in OPTIONS:
        got, default = o.value_of(from_chart), o.value_of(plain)
        if o.flag in CHART_DEFAULTS:
            wanted = CHART_DEFAULTS[o.flag]
            assert got == wanted, o.flag
            if isinstance(wanted, float):
                assert math.isclose(got, default, abs_tol=1e-3), o.flag
        else:
            assert got == default, f"{o.flag}: chart {got!r}, meshless run {default!r}"
