"""Operator settings: flags over environment over defaults, and one clear line per bad setting."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from meshless.settings import (
    CA_SECRET_NAME,
    OPTIONS,
    Settings,
    SettingsError,
    add_arguments,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
ENV_OF = {opt.flag: opt.env for opt in OPTIONS}


def parse_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def assert_one_line_naming(exc: SettingsError, flag: str) -> None:
    message = str(exc)
    assert "\n" not in message
    assert flag in message
    assert ENV_OF[flag] in message


def test_defaults_with_an_empty_environment() -> None:
    s = load_settings(None, env={})
    assert s == Settings()
    assert s.identity.trust_domain == "cluster.local"
    assert s.identity.default_ttl == timedelta(hours=24)
    assert s.identity.ttl_floor == timedelta(minutes=10)
    assert s.identity.renewal_fraction == pytest.approx(1 / 3)
    assert s.runtime.watch_namespaces == ()
    assert s.runtime.log_format == "text"
    assert s.effective_root_namespace == "meshless-system"
    assert s.ca.secret_name == CA_SECRET_NAME


def test_environment_overrides_defaults() -> None:
    env = {
        "MESHLESS_NAMESPACE": "ops",
        "MESHLESS_TRUST_DOMAIN": "example.org",
        "MESHLESS_ROOT_NAMESPACE": "istio-system",
        "MESHLESS_CA_SOURCE": "my-intermediate",
        "MESHLESS_DEFAULT_TTL": "1h30m",
        "MESHLESS_TTL_FLOOR": "5m",
        "MESHLESS_RENEWAL_FRACTION": "0.5",
        "MESHLESS_JITTER": "0.2",
        "MESHLESS_WRITE_BUDGET_QPS": "7.5",
        "MESHLESS_WRITE_BUDGET_BURST": "3",
        "MESHLESS_WEBHOOK_PORT": "10443",
        "MESHLESS_METRICS_PORT": "9090",
        "MESHLESS_HEALTH_PORT": "9091",
        "MESHLESS_LOG_FORMAT": "json",
        "MESHLESS_WORKERS": "4",
        "MESHLESS_RESYNC_INTERVAL": "2m",
        "MESHLESS_CA_POLL_INTERVAL": "30s",
    }
    s = load_settings(None, env=env)
    assert s.runtime.namespace == "ops"
    assert s.identity.trust_domain == "example.org"
    assert s.effective_root_namespace == "istio-system"
    assert s.ca.source == "my-intermediate"
    assert s.ca.secret_name == "my-intermediate"
    assert s.identity.default_ttl == timedelta(hours=1, minutes=30)
    assert s.identity.ttl_floor == timedelta(minutes=5)
    assert s.identity.renewal_fraction == 0.5
    assert s.identity.jitter == 0.2
    assert s.writes.budget_qps == 7.5
    assert s.writes.budget_burst == 3
    assert (s.webhook.port, s.endpoints.metrics_port, s.endpoints.health_port) == (
        10443,
        9090,
        9091,
    )
    assert s.runtime.log_format == "json"
    assert s.runtime.workers == 4
    assert s.identity.resync_interval == timedelta(minutes=2)
    assert s.ca.poll_interval == timedelta(seconds=30)


def test_flags_override_environment() -> None:
    env = {
        "MESHLESS_TRUST_DOMAIN": "from-env.example",
        "MESHLESS_DEFAULT_TTL": "2h",
        "MESHLESS_WORKERS": "2",
        "MESHLESS_LOG_FORMAT": "text",
    }
    args = parse_flags("--trust-domain", "from-flag.example", "--default-ttl", "3h")
    s = load_settings(args, env=env)
    assert s.identity.trust_domain == "from-flag.example"
    assert s.identity.default_ttl == timedelta(hours=3)
    # Not given as flags: the environment still applies.
    assert s.runtime.workers == 2
    assert s.runtime.log_format == "text"


def test_a_flag_hides_a_bad_environment_value() -> None:
    args = parse_flags("--log-format", "json")
    s = load_settings(args, env={"MESHLESS_LOG_FORMAT": "xml"})
    assert s.runtime.log_format == "json"


def test_empty_values_count_as_unset() -> None:
    args = parse_flags("--workers", "")
    s = load_settings(args, env={"MESHLESS_WORKERS": "", "MESHLESS_TRUST_DOMAIN": ""})
    assert s.runtime.workers == Settings().runtime.workers
    assert s.identity.trust_domain == "cluster.local"


def test_os_environ_is_the_default_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLESS_TRUST_DOMAIN", "env.example")
    monkeypatch.setenv("MESHLESS_WORKERS", "3")
    s = load_settings(None)
    assert s.identity.trust_domain == "env.example"
    assert s.runtime.workers == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("shop", ("shop",)),
        ("shop,payments", ("shop", "payments")),
        (" shop , payments ,, billing ", ("shop", "payments", "billing")),
        ("shop,", ("shop",)),
    ],
)
def test_watch_namespaces_split_on_commas(raw: str, expected: tuple[str, ...]) -> None:
    assert (
        load_settings(None, env={"MESHLESS_WATCH_NAMESPACES": raw}).runtime.watch_namespaces
        == expected
    )
    args = parse_flags("--watch-namespaces", raw)
    assert load_settings(args, env={}).runtime.watch_namespaces == expected


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"--trust-domain": "spiffe://cluster.local"}, "--trust-domain"),
        ({"--trust-domain": "Cluster.Local"}, "--trust-domain"),
        ({"--trust-domain": "cluster.local/ns"}, "--trust-domain"),
        ({"--trust-domain": "cluster.local:443"}, "--trust-domain"),
        ({"--trust-domain": "a" * 256}, "--trust-domain"),
        ({"--namespace": "   "}, "--namespace"),
        ({"--ttl-floor": "59s"}, "--ttl-floor"),
        ({"--ttl-floor": "0s"}, "--ttl-floor"),
        ({"--default-ttl": "5m"}, "--default-ttl"),  # below the default floor of 10m
        ({"--ttl-floor": "1h", "--default-ttl": "30m"}, "--default-ttl"),
        ({"--default-ttl": "31d"}, "--default-ttl"),
        ({"--renewal-fraction": "0"}, "--renewal-fraction"),
        ({"--renewal-fraction": "1"}, "--renewal-fraction"),
        ({"--renewal-fraction": "1.5"}, "--renewal-fraction"),
        ({"--renewal-fraction": "-0.1"}, "--renewal-fraction"),
        ({"--renewal-fraction": "nan"}, "--renewal-fraction"),
        ({"--jitter": "0.7"}, "--jitter"),  # leaves no room before renewal at 1/3
        ({"--renewal-fraction": "0.5", "--jitter": "0.5"}, "--jitter"),
        ({"--jitter": "-0.01"}, "--jitter"),
        ({"--write-budget-qps": "0"}, "--write-budget-qps"),
        ({"--write-budget-qps": "-5"}, "--write-budget-qps"),
        ({"--write-budget-qps": "nan"}, "--write-budget-qps"),
        ({"--write-budget-burst": "0"}, "--write-budget-burst"),
        ({"--webhook-port": "65536"}, "--webhook-port"),
        ({"--metrics-port": "-1"}, "--metrics-port"),
        ({"--health-port": "70000"}, "--health-port"),
        ({"--log-format": "xml"}, "--log-format"),
        ({"--log-format": "JSON"}, "--log-format"),
        ({"--ca-poll-interval": "0s"}, "--ca-poll-interval"),
        ({"--workers": "0"}, "--workers"),
        ({"--ca-renewal-fraction": "1"}, "--ca-renewal-fraction"),
        ({"--ca-renewal-fraction": "0"}, "--ca-renewal-fraction"),
        ({"--ca-renewal-fraction": "nan"}, "--ca-renewal-fraction"),
        ({"--ca-settle-time": "1"}, "--ca-settle-time"),
        ({"--ca-rotation-window": "0s"}, "--ca-rotation-window"),
        # Unparseable values.
        ({"--default-ttl": "ten minutes"}, "--default-ttl"),
        ({"--ttl-floor": "10"}, "--ttl-floor"),
        ({"--resync-interval": "500ms"}, "--resync-interval"),
        ({"--workers": "many"}, "--workers"),
        ({"--webhook-port": "https"}, "--webhook-port"),
        ({"--write-budget-burst": "1.5"}, "--write-budget-burst"),
        ({"--renewal-fraction": "1/3"}, "--renewal-fraction"),
        ({"--write-budget-qps": "fast"}, "--write-budget-qps"),
        ({"--ca-settle-time": "soon"}, "--ca-settle-time"),
        ({"--ca-rotation-window": "1 hour"}, "--ca-rotation-window"),
    ],
)
def test_invalid_settings_raise_one_line_naming_flag_and_variable(
    values: dict[str, str], flag: str
) -> None:
    # Through flags ...
    argv = [item for pair in values.items() for item in pair]
    with pytest.raises(SettingsError) as from_flags:
        load_settings(parse_flags(*argv), env={})
    assert_one_line_naming(from_flags.value, flag)
    # ... and through the environment.
    env = {ENV_OF[f]: v for f, v in values.items()}
    with pytest.raises(SettingsError) as from_env:
        load_settings(None, env=env)
    assert_one_line_naming(from_env.value, flag)


def test_unparseable_value_is_quoted_in_the_message() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, env={"MESHLESS_DEFAULT_TTL": "1h\n2m"})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid --default-ttl / MESHLESS_DEFAULT_TTL ")
    assert repr("1h\n2m") in message


def test_boundary_values_are_accepted() -> None:
    s = load_settings(
        parse_flags(
            "--ttl-floor",
            "1m",
            "--default-ttl",
            "30d",
            "--jitter",
            "0",
            "--webhook-port",
            "65535",
            "--ca-poll-interval",
            "1s",
            "--write-budget-burst",
            "1",
        ),
        env={},
    )
    assert s.identity.ttl_floor == timedelta(minutes=1)
    assert s.identity.default_ttl == timedelta(days=30)
    assert s.identity.jitter == 0.0
    assert s.webhook.port == 65535
    assert s.writes.budget_burst == 1


def test_default_ttl_equal_to_the_floor_is_accepted() -> None:
    s = load_settings(None, env={"MESHLESS_TTL_FLOOR": "2m", "MESHLESS_DEFAULT_TTL": "120s"})
    assert s.identity.default_ttl == s.identity.ttl_floor == timedelta(minutes=2)


def test_every_option_names_a_settings_field_and_a_prefixed_variable() -> None:
    for opt in OPTIONS:
        assert opt.name in getattr(Settings(), opt.group).__dataclass_fields__
        assert opt.flag.startswith("--") and opt.flag.endswith(opt.name.replace("_", "-"))
        assert opt.env == "MESHLESS_" + opt.flag.removeprefix("--").upper().replace("-", "_")
    assert len({opt.flag for opt in OPTIONS}) == len(OPTIONS), "two fields make one flag"


def test_every_setting_is_documented_where_it_is_declared() -> None:
    for opt in OPTIONS:
        assert opt.help and not opt.help.endswith("."), opt.flag


def test_cli_rejects_a_bad_log_format_with_one_line_before_any_cluster_contact(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHLESS_")}
    # Were a cluster contacted, this kubeconfig would make it fail differently.
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    meshless = Path(sys.executable).parent / "meshless"
    if not meshless.exists():
        meshless = ROOT / ".venv" / "bin" / "meshless"
    proc = subprocess.run(
        [str(meshless), "run", "--log-format", "xml"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--log-format" in lines[0]
    assert "MESHLESS_LOG_FORMAT" in lines[0]
    assert "'xml'" in lines[0]
    assert proc.stdout == ""


def test_meshless_version_prints_the_package_version() -> None:
    import subprocess
    import sys

    from meshless import __version__

    out = subprocess.run(
        [sys.executable, "-m", "meshless", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == __version__ != "0.0.0+unknown"


def test_ca_rotation_settings_default_and_parse() -> None:
    defaults = load_settings(None, env={})
    assert defaults.ca.settle_time == timedelta(minutes=2)
    assert defaults.ca.rotation_window == timedelta(hours=1)
    assert abs(defaults.ca.renewal_fraction - 2 / 3) < 1e-9
    s = load_settings(
        None,
        env={
            "MESHLESS_CA_SETTLE_TIME": "0s",
            "MESHLESS_CA_ROTATION_WINDOW": "1s",
            "MESHLESS_CA_RENEWAL_FRACTION": "0.5",
        },
    )
    assert s.ca.settle_time == timedelta(0)
    assert s.ca.rotation_window == timedelta(seconds=1)
    assert s.ca.renewal_fraction == 0.5


def test_allowed_dns_names_are_parsed_from_a_comma_separated_list() -> None:
    settings = load_settings(
        env={"MESHLESS_ALLOWED_DNS_NAMES": "*.{namespace}.example.com, api.corp.internal"}
    )
    assert settings.names.allowed_dns_names == ("*.{namespace}.example.com", "api.corp.internal")
    assert settings.names.policy.violation("shop", "www.shop.example.com") is None
    assert settings.names.policy.violation("shop", "www.other.example.com") is not None


@pytest.mark.parametrize("pattern", ["*.{namespace}", "a.*.example.com", "{ns}.example.com"])
def test_a_malformed_dns_name_pattern_stops_the_operator_with_one_line(pattern: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(env={"MESHLESS_ALLOWED_DNS_NAMES": pattern})
    message = str(raised.value)
    assert "\n" not in message
    assert "--allowed-dns-names" in message and "MESHLESS_ALLOWED_DNS_NAMES" in message
    assert repr(pattern) in message


def test_a_malformed_cluster_domain_stops_the_operator() -> None:
    with pytest.raises(SettingsError, match="--cluster-domain"):
        load_settings(env={"MESHLESS_CLUSTER_DOMAIN": "bad_domain"})


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("False", False), ("1", True)])
def test_a_boolean_setting_reads_true_and_false(raw: str, value: bool) -> None:
    assert load_settings(env={"MESHLESS_LEADER_ELECTION": raw}).runtime.leader_election is value


def test_a_misspelt_boolean_is_refused_not_read_as_false() -> None:
    with pytest.raises(SettingsError, match=r"--leader-election.*'flase'.*true or false"):
        load_settings(env={"MESHLESS_LEADER_ELECTION": "flase"})
