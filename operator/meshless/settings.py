"""Operator settings: command-line flags, each with an environment variable and a Helm value.

Invalid settings stop the operator at start with one clear line (SettingsError).
"""

# Settings are declared with `setting(default, doc)` (a dataclasses.field carrying its doc):
# ruff: noqa: RUF009

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from datetime import timedelta
from functools import cached_property
from typing import Any

from meshless.delivery import DeliverySetting
from meshless.durations import parse_duration
from meshless.pki.names import DnsNamePolicy, PatternError
from meshless.pki.spiffe import validate_trust_domain

CA_SELF_SIGNED = "self-signed"
CA_SECRET_NAME = "meshless-ca"
IDENTITY_DELIVERIES = tuple(setting.value for setting in DeliverySetting)


class SettingsError(Exception):
    """A setting that cannot be used; the message is one line naming flag and variable."""


def setting(default: Any, doc: str, flag: str = "") -> Any:
    """A field of a settings group: its default and its documentation (the flag's help).
    `flag` names the flag (without `--`) where `<group prefix><field>` would not read well."""
    metadata = {"doc": doc, "flag": flag}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def group(kind: type[Any], prefix: str = "") -> Any:
    """A group of settings in Settings; `prefix` starts its flags (`ca-` makes --ca-source)."""
    return field(default_factory=kind, metadata={"prefix": prefix})


@dataclass(frozen=True)
class RuntimeSettings:
    """The operator process: where it runs, what it watches, how much it does at once."""

    namespace: str = setting("meshless-system", "the operator's own namespace")
    service_account: str = setting(
        "meshless", "the operator's ServiceAccount: the prober's identity is issued for it"
    )
    watch_namespaces: tuple[str, ...] = setting(
        (), "comma-separated namespaces to watch (default: all)"
    )
    workers: int = setting(16, "concurrent reconciles")
    log_format: str = setting("text", "text or json")
    leader_election: bool = setting(
        True,
        "elect one leader among replicas on a Lease in the operator's namespace (true/false)",
    )


@dataclass(frozen=True)
class IdentitySettings:
    """The certificates of WorkloadIdentities: their names, lifetimes and renewal."""

    trust_domain: str = setting("cluster.local", "SPIFFE trust domain")
    default_ttl: timedelta = setting(timedelta(hours=24), "certificate lifetime")
    ttl_floor: timedelta = setting(timedelta(minutes=10), "shortest lifetime accepted")
    renewal_fraction: float = setting(
        1 / 3, "default renewBefore as a fraction of the lifetime"
    )  # renewBefore default = ttl * fraction
    jitter: float = setting(
        0.1, "renewal jitter as a fraction of lifetime"
    )  # up to this fraction of the lifetime earlier, spread per certificate
    resync_interval: timedelta = setting(
        timedelta(minutes=10), "how often every identity is checked even without changes"
    )
    delivery: str = setting(
        "auto",
        "how pods get their identity when their MtlsPolicy does not say: auto (PodCertificate "
        "where the API server serves PodCertificateRequests, else Secret), Secret or "
        "PodCertificate",
        flag="identity-delivery",
    )


@dataclass(frozen=True)
class NameSettings:
    """The name policy (pki/names.py): an identity may carry the Service names of its own
    namespace, plus these patterns ({namespace} placeholder, leading '*' for one label)."""

    cluster_domain: str = setting(
        "cluster.local",
        "the cluster's DNS domain: identities may carry <svc>.<ns>.svc.<cluster domain>",
    )
    allowed_dns_names: tuple[str, ...] = setting(
        (),
        "comma-separated extra DNS name patterns identities may carry, e.g. "
        "*.{namespace}.example.com (default: only the namespace's Service names)",
    )

    @cached_property
    def policy(self) -> DnsNamePolicy:
        return DnsNamePolicy(cluster_domain=self.cluster_domain, allowed=self.allowed_dns_names)


@dataclass(frozen=True)
class PodCertificateSettings:
    """Pod certificates (podcert/): what the signer meshless.dev/spiffe signs."""

    max_ttl: timedelta = setting(
        timedelta(hours=24),
        "longest pod certificate signed (1h..91d): a request's maxExpirationSeconds is capped",
    )
    refresh_after: timedelta = setting(
        timedelta(0),
        "for tests: beginRefreshAt this long after notBefore (>= 10m; 0: at 2/3 of the life)",
    )


@dataclass(frozen=True)
class CASettings:
    """The issuing CA and its rotation (docs/decisions/ca-rotation.md)."""

    source: str = setting(
        CA_SELF_SIGNED,
        "'self-signed' or the name of a Secret (tls.crt, tls.key, ca.crt) holding an intermediate",
    )
    poll_interval: timedelta = setting(
        timedelta(seconds=10), "how often the CA Secret is read for changes"
    )
    renewal_fraction: float = setting(
        2 / 3,
        "the self-signed intermediate and root are rotated at this fraction of their lifetime",
    )
    settle_time: timedelta = setting(
        timedelta(minutes=2),
        "wait after every bundle carries a new root before it issues (kubelet file sync)",
    )
    rotation_window: timedelta = setting(
        timedelta(hours=1),
        "existing certificates are reissued spread over this window after a CA switch",
    )

    @property
    def secret_name(self) -> str:
        """The CA Secret the operator reads: its own copy, or the user's Secret."""
        return CA_SECRET_NAME if self.source == CA_SELF_SIGNED else self.source


@dataclass(frozen=True)
class WriteSettings:
    """The cluster-wide budget of Secret writes (budget.py)."""

    budget_qps: float = setting(50.0, "cluster-wide Secret writes per second")
    budget_burst: int = setting(100, "Secret writes allowed in a burst")


@dataclass(frozen=True)
class PolicySettings:
    """MtlsPolicy resolution."""

    root_namespace: str = setting(
        "", "namespace of cluster-wide MtlsPolicies (default: the operator's namespace)"
    )


@dataclass(frozen=True)
class WebhookSettings:
    """The admission webhooks' server and how the API server reaches it."""

    port: int = setting(9443, "admission webhook port")
    host: str = setting("0.0.0.0", "address the admission webhooks listen on")
    url: str = setting(
        "", "register the webhooks by this https URL (outside a cluster) instead of the Service"
    )  # outside a cluster: https://127.0.0.1:<port>, registered by URL
    service: str = setting(
        "meshless-webhook", "the Service in the operator's namespace that fronts the webhooks"
    )


@dataclass(frozen=True)
class EndpointSettings:
    """The operator's own HTTP endpoints."""

    metrics_port: int = setting(8080, "Prometheus /metrics port")
    health_port: int = setting(8081, "/healthz port")


@dataclass(frozen=True)
class ProbeSettings:
    """Enforcement probes (probe/): how often and how fast ports are probed."""

    interval: timedelta = setting(
        timedelta(minutes=5), "how often each STRICT and PERMISSIVE port is probed (jittered)"
    )
    qps: float = setting(20.0, "probe connections per second, cluster-wide")
    timeout: timedelta = setting(timedelta(seconds=3), "time limit of each probe step")


@dataclass(frozen=True)
class Settings:
    """Every setting, grouped by concern (as Kopf's OperatorSettings are): `settings.ca.source`.
    A group's fields are its flags: `--<prefix><field>`, variable MESHLESS_<PREFIX><FIELD>,
    Helm value `settings.<prefixField>` (see `OPTIONS`)."""

    runtime: RuntimeSettings = group(RuntimeSettings)
    identity: IdentitySettings = group(IdentitySettings)
    names: NameSettings = group(NameSettings)
    pod_certificates: PodCertificateSettings = group(PodCertificateSettings, "pod-certificate-")
    ca: CASettings = group(CASettings, "ca-")
    writes: WriteSettings = group(WriteSettings, "write-")
    policy: PolicySettings = group(PolicySettings)
    webhook: WebhookSettings = group(WebhookSettings, "webhook-")
    endpoints: EndpointSettings = group(EndpointSettings)
    probe: ProbeSettings = group(ProbeSettings, "probe-")

    @property
    def effective_root_namespace(self) -> str:
        return self.policy.root_namespace or self.runtime.namespace


@dataclass(frozen=True)
class _Option:
    """One `meshless run` option, derived from a settings field."""

    group: str  # the Settings field of the group
    name: str  # the field in the group
    flag: str
    help: str

    @property
    def env(self) -> str:
        return "MESHLESS_" + self.flag.removeprefix("--").upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return f"{self.group}__{self.name}"  # argparse's attribute

    @property
    def helm_value(self) -> str:
        """`--write-budget-qps` -> `writeBudgetQps`: the chart value (under `settings`)."""
        first, *rest = self.flag.removeprefix("--").split("-")
        return first + "".join(part.capitalize() for part in rest)

    def value_of(self, settings: Settings) -> Any:
        return getattr(getattr(settings, self.group), self.name)


def _group_type(outer: Field[Any]) -> type[Any]:
    kind: type[Any] = outer.default_factory  # type: ignore[assignment]
    return kind


def _options() -> tuple[_Option, ...]:
    options = []
    for outer in fields(Settings):
        prefix = outer.metadata["prefix"]
        for inner in fields(_group_type(outer)):
            flag = "--" + (inner.metadata["flag"] or prefix + inner.name.replace("_", "-"))
            options.append(_Option(outer.name, inner.name, flag, inner.metadata["doc"]))
    return tuple(options)


OPTIONS: tuple[_Option, ...] = _options()
OPTION_OF_FLAG = {opt.flag: opt for opt in OPTIONS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        parser.add_argument(opt.flag, dest=opt.dest, default=None, help=f"{opt.help} [{opt.env}]")


def _convert(opt: _Option, raw: str) -> object:
    default = opt.value_of(Settings())
    try:
        if isinstance(default, timedelta):
            return parse_duration(raw)
        if isinstance(default, bool):
            word = raw.strip().lower()
            if word in ("1", "true", "yes"):
                return True
            if word in ("0", "false", "no"):
                return False
            raise ValueError("must be true or false")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise SettingsError(f"invalid {opt.flag} / {opt.env} {raw!r}: {exc}") from None
    return raw.strip()


def load_settings(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    environ = os.environ if env is None else env
    values: dict[str, dict[str, object]] = {f.name: {} for f in fields(Settings)}
    for opt in OPTIONS:
        raw = getattr(args, opt.dest, None) if args is not None else None
        if raw is None:
            raw = environ.get(opt.env)
        if raw is not None and raw != "":
            values[opt.group][opt.name] = _convert(opt, str(raw))
    groups = {f.name: _group_type(f)(**values[f.name]) for f in fields(Settings)}
    settings = Settings(**groups)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    def fail(flag: str, message: str) -> None:
        raise SettingsError(f"invalid {flag} / {OPTION_OF_FLAG[flag].env}: {message}")

    try:
        validate_trust_domain(s.identity.trust_domain)
    except ValueError as exc:
        fail("--trust-domain", str(exc))
    if not s.runtime.namespace:
        fail("--namespace", "must not be empty")
    if s.identity.ttl_floor < timedelta(minutes=1):
        fail("--ttl-floor", "must be at least 1m")
    if s.identity.default_ttl < s.identity.ttl_floor:
        fail(
            "--default-ttl",
            f"{s.identity.default_ttl} is below the ttl floor {s.identity.ttl_floor}",
        )
    if s.identity.default_ttl > timedelta(days=30):
        fail("--default-ttl", "must be at most 30d")
    if not 0 < s.identity.renewal_fraction < 1:
        fail("--renewal-fraction", f"{s.identity.renewal_fraction} must be between 0 and 1")
    if not 0 <= s.identity.jitter < 1 - s.identity.renewal_fraction:
        fail("--jitter", f"{s.identity.jitter} must be >= 0 and leave room before renewal")
    if not s.writes.budget_qps > 0:  # written so that NaN fails too
        fail("--write-budget-qps", "must be positive")
    if s.writes.budget_burst < 1:
        fail("--write-budget-burst", "must be at least 1")
    seen: dict[int, str] = {}
    for flag, port in _listen_ports(s):
        if not 0 <= port <= 65535:
            fail(flag, f"{port} is not a port")
        if port and port in seen:
            fail(flag, f"{port} is also {seen[port]}")
        seen[port] = flag
    if s.runtime.log_format not in ("text", "json"):
        fail("--log-format", f"{s.runtime.log_format!r} must be text or json")
    if s.ca.source == CA_SECRET_NAME:
        fail("--ca-source", f"{CA_SECRET_NAME!r} is the operator's own copy; name your Secret")
    if s.ca.poll_interval < timedelta(seconds=1):
        fail("--ca-poll-interval", "must be at least 1s")
    if not 0 < s.ca.renewal_fraction < 1:
        fail("--ca-renewal-fraction", f"{s.ca.renewal_fraction} must be between 0 and 1")
    if s.ca.settle_time < timedelta(0):
        fail("--ca-settle-time", "must not be negative")
    if s.ca.rotation_window < timedelta(seconds=1):
        fail("--ca-rotation-window", "must be at least 1s")
    if s.webhook.url and not s.webhook.url.startswith("https://"):
        fail("--webhook-url", f"{s.webhook.url!r} must start with https://")
    if s.probe.interval < timedelta(seconds=1):
        fail("--probe-interval", "must be at least 1s")
    if not s.probe.qps > 0:
        fail("--probe-qps", "must be positive")
    if not timedelta(seconds=1) <= s.probe.timeout <= timedelta(seconds=60):
        fail("--probe-timeout", "must be between 1s and 60s")
    if not timedelta(hours=1) <= s.pod_certificates.max_ttl <= timedelta(days=91):
        fail("--pod-certificate-max-ttl", "must be between 1h (the API's minimum) and 91d")
    refresh = s.pod_certificates.refresh_after
    if refresh and not timedelta(minutes=10) <= refresh <= s.pod_certificates.max_ttl:
        fail("--pod-certificate-refresh-after", "must be 0 or between 10m and the max ttl")
    if s.identity.delivery not in IDENTITY_DELIVERIES:
        fail(
            "--identity-delivery",
            f"{s.identity.delivery!r} must be one of {', '.join(IDENTITY_DELIVERIES)}",
        )
    if not s.runtime.service_account:
        fail("--service-account", "must not be empty")
    if s.runtime.workers < 1:
        fail("--workers", "must be at least 1")
    try:
        DnsNamePolicy(cluster_domain=s.names.cluster_domain)
    except PatternError as exc:
        fail("--cluster-domain", str(exc))
    for pattern in s.names.allowed_dns_names:
        try:
            DnsNamePolicy(cluster_domain=s.names.cluster_domain, allowed=(pattern,))
        except PatternError as exc:
            fail("--allowed-dns-names", f"pattern {exc}")


def _listen_ports(s: Settings) -> tuple[tuple[str, int], ...]:
    return (
        ("--webhook-port", s.webhook.port),
        ("--metrics-port", s.endpoints.metrics_port),
        ("--health-port", s.endpoints.health_port),
    )


def check_listen_ports(s: Settings) -> None:
    """Bind each port the operator will serve on once, before anything starts, so a busy or
    forbidden port is one line naming its flag instead of a traceback from deep inside the
    metrics, health or webhook server. (A port taken between this check and the real bind still
    fails later; this catches the common case: another process already listening.)"""
    hosts = {"--webhook-port": s.webhook.host}
    for flag, port in _listen_ports(s):
        if port == 0:  # the OS picks one: nothing to check
            continue
        host = hosts.get(flag, "0.0.0.0")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                env = OPTION_OF_FLAG[flag].env
                reason = exc.strerror or str(exc)
                raise SettingsError(
                    f"invalid {flag} / {env}: cannot listen on {host}:{port}: {reason}"
                ) from None
