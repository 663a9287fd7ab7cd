"""Operator settings: command-line flags, each with an environment variable and a Helm value.

Invalid settings stop the operator at start with one clear line (SettingsError).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property

from meshless.delivery import DeliverySetting
from meshless.durations import parse_duration
from meshless.pki.names import DnsNamePolicy, PatternError
from meshless.pki.spiffe import validate_trust_domain

CA_SELF_SIGNED = "self-signed"
CA_SECRET_NAME = "meshless-ca"
IDENTITY_DELIVERIES = tuple(setting.value for setting in DeliverySetting)


class SettingsError(Exception):
    """A setting that cannot be used; the message is one line naming flag and variable."""


@dataclass(frozen=True)
class Settings:
    namespace: str = "meshless-system"
    trust_domain: str = "cluster.local"
    root_namespace: str = ""  # empty: the operator's namespace
    ca_source: str = CA_SELF_SIGNED  # or the name of a Secret in `namespace` with an intermediate
    default_ttl: timedelta = timedelta(hours=24)
    ttl_floor: timedelta = timedelta(minutes=10)
    renewal_fraction: float = 1 / 3  # renewBefore default = ttl * fraction
    jitter: float = 0.1  # up to this fraction of the lifetime earlier, spread per certificate
    write_budget_qps: float = 50.0
    write_budget_burst: int = 100
    watch_namespaces: tuple[str, ...] = field(default_factory=tuple)  # empty: all
    webhook_port: int = 9443
    webhook_host: str = "0.0.0.0"
    webhook_url: str = ""  # outside a cluster: https://127.0.0.1:<port>, registered by URL
    webhook_service: str = "meshless-webhook"
    metrics_port: int = 8080
    health_port: int = 8081
    log_format: str = "text"
    workers: int = 16
    resync_interval: timedelta = timedelta(minutes=10)
    ca_poll_interval: timedelta = timedelta(seconds=10)
    # CA rotation (docs/decisions/ca-rotation.md)
    ca_renewal_fraction: float = 2 / 3  # a CA certificate is replaced at this fraction of life
    ca_settle_time: timedelta = timedelta(minutes=2)  # bundles everywhere -> Switch
    ca_rotation_window: timedelta = timedelta(hours=1)  # existing leaves reissued over this
    leader_election: bool = True
    probe_interval: timedelta = timedelta(minutes=5)
    probe_qps: float = 20.0  # probe connections per second, cluster-wide
    probe_timeout: timedelta = timedelta(seconds=3)
    service_account: str = "meshless"  # the operator's own: the prober's identity
    # The name policy (pki/names.py): Service names of the identity's own namespace, plus
    # these patterns ({namespace} placeholder, leading '*' for one label).
    cluster_domain: str = "cluster.local"
    allowed_dns_names: tuple[str, ...] = field(default_factory=tuple)
    # How pods get their identity when their policy does not say (meshless.delivery):
    # auto (PodCertificate where the API server serves PodCertificateRequests), Secret or
    # PodCertificate.
    identity_delivery: str = "auto"
    # Pod certificates (podcert/): the longest lifetime signed (a request's
    # maxExpirationSeconds is capped by it) and, for tests, beginRefreshAt this long after
    # notBefore instead of at 2/3 of the lifetime (0: off).
    pod_certificate_max_ttl: timedelta = timedelta(hours=24)
    pod_certificate_refresh_after: timedelta = timedelta(0)

    @cached_property
    def dns_name_policy(self) -> DnsNamePolicy:
        return DnsNamePolicy(cluster_domain=self.cluster_domain, allowed=self.allowed_dns_names)

    @property
    def effective_root_namespace(self) -> str:
        return self.root_namespace or self.namespace

    @property
    def ca_secret_name(self) -> str:
        return CA_SECRET_NAME if self.ca_source == CA_SELF_SIGNED else self.ca_source


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    attr: str
    help: str


OPTIONS: tuple[_Option, ...] = (
    _Option("--namespace", "MESHLESS_NAMESPACE", "namespace", "the operator's own namespace"),
    _Option("--trust-domain", "MESHLESS_TRUST_DOMAIN", "trust_domain", "SPIFFE trust domain"),
    _Option(
        "--root-namespace",
        "MESHLESS_ROOT_NAMESPACE",
        "root_namespace",
        "namespace of cluster-wide MtlsPolicies (default: the operator's namespace)",
    ),
    _Option(
        "--ca-source",
        "MESHLESS_CA_SOURCE",
        "ca_source",
        "'self-signed' or the name of a Secret (tls.crt, tls.key, ca.crt) holding an intermediate",
    ),
    _Option("--default-ttl", "MESHLESS_DEFAULT_TTL", "default_ttl", "certificate lifetime"),
    _Option("--ttl-floor", "MESHLESS_TTL_FLOOR", "ttl_floor", "shortest lifetime accepted"),
    _Option(
        "--renewal-fraction",
        "MESHLESS_RENEWAL_FRACTION",
        "renewal_fraction",
        "default renewBefore as a fraction of the lifetime",
    ),
    _Option("--jitter", "MESHLESS_JITTER", "jitter", "renewal jitter as a fraction of lifetime"),
    _Option(
        "--write-budget-qps",
        "MESHLESS_WRITE_BUDGET_QPS",
        "write_budget_qps",
        "cluster-wide Secret writes per second",
    ),
    _Option(
        "--write-budget-burst",
        "MESHLESS_WRITE_BUDGET_BURST",
        "write_budget_burst",
        "Secret writes allowed in a burst",
    ),
    _Option(
        "--watch-namespaces",
        "MESHLESS_WATCH_NAMESPACES",
        "watch_namespaces",
        "comma-separated namespaces to watch (default: all)",
    ),
    _Option("--webhook-port", "MESHLESS_WEBHOOK_PORT", "webhook_port", "admission webhook port"),
    _Option(
        "--webhook-host",
        "MESHLESS_WEBHOOK_HOST",
        "webhook_host",
        "address the admission webhooks listen on",
    ),
    _Option(
        "--webhook-url",
        "MESHLESS_WEBHOOK_URL",
        "webhook_url",
        "register the webhooks by this https URL (outside a cluster) instead of the Service",
    ),
    _Option(
        "--webhook-service",
        "MESHLESS_WEBHOOK_SERVICE",
        "webhook_service",
        "the Service in the operator's namespace that fronts the webhooks",
    ),
    _Option("--metrics-port", "MESHLESS_METRICS_PORT", "metrics_port", "Prometheus /metrics port"),
    _Option("--health-port", "MESHLESS_HEALTH_PORT", "health_port", "/healthz port"),
    _Option("--log-format", "MESHLESS_LOG_FORMAT", "log_format", "text or json"),
    _Option("--workers", "MESHLESS_WORKERS", "workers", "concurrent reconciles"),
    _Option(
        "--resync-interval",
        "MESHLESS_RESYNC_INTERVAL",
        "resync_interval",
        "how often every identity is checked even without changes",
    ),
    _Option(
        "--ca-poll-interval",
        "MESHLESS_CA_POLL_INTERVAL",
        "ca_poll_interval",
        "how often the CA Secret is read for changes",
    ),
    _Option(
        "--ca-renewal-fraction",
        "MESHLESS_CA_RENEWAL_FRACTION",
        "ca_renewal_fraction",
        "the self-signed intermediate and root are rotated at this fraction of their lifetime",
    ),
    _Option(
        "--ca-settle-time",
        "MESHLESS_CA_SETTLE_TIME",
        "ca_settle_time",
        "wait after every bundle carries a new root before it issues (kubelet file sync)",
    ),
    _Option(
        "--ca-rotation-window",
        "MESHLESS_CA_ROTATION_WINDOW",
        "ca_rotation_window",
        "existing certificates are reissued spread over this window after a CA switch",
    ),
    _Option(
        "--probe-interval",
        "MESHLESS_PROBE_INTERVAL",
        "probe_interval",
        "how often each STRICT and PERMISSIVE port is probed (jittered)",
    ),
    _Option(
        "--probe-qps",
        "MESHLESS_PROBE_QPS",
        "probe_qps",
        "probe connections per second, cluster-wide",
    ),
    _Option(
        "--probe-timeout",
        "MESHLESS_PROBE_TIMEOUT",
        "probe_timeout",
        "time limit of each probe step",
    ),
    _Option(
        "--service-account",
        "MESHLESS_SERVICE_ACCOUNT",
        "service_account",
        "the operator's ServiceAccount: the prober's identity is issued for it",
    ),
    _Option(
        "--cluster-domain",
        "MESHLESS_CLUSTER_DOMAIN",
        "cluster_domain",
        "the cluster's DNS domain: identities may carry <svc>.<ns>.svc.<cluster domain>",
    ),
    _Option(
        "--allowed-dns-names",
        "MESHLESS_ALLOWED_DNS_NAMES",
        "allowed_dns_names",
        "comma-separated extra DNS name patterns identities may carry, e.g. "
        "*.{namespace}.example.com (default: only the namespace's Service names)",
    ),
    _Option(
        "--identity-delivery",
        "MESHLESS_IDENTITY_DELIVERY",
        "identity_delivery",
        "how pods get their identity when their MtlsPolicy does not say: auto (PodCertificate "
        "where the API server serves PodCertificateRequests, else Secret), Secret or "
        "PodCertificate",
    ),
    _Option(
        "--pod-certificate-max-ttl",
        "MESHLESS_POD_CERTIFICATE_MAX_TTL",
        "pod_certificate_max_ttl",
        "longest pod certificate signed (1h..91d): a request's maxExpirationSeconds is capped",
    ),
    _Option(
        "--pod-certificate-refresh-after",
        "MESHLESS_POD_CERTIFICATE_REFRESH_AFTER",
        "pod_certificate_refresh_after",
        "for tests: beginRefreshAt this long after notBefore (>= 10m; 0: at 2/3 of the life)",
    ),
    _Option(
        "--leader-election",
        "MESHLESS_LEADER_ELECTION",
        "leader_election",
        "elect one leader among replicas on a Lease in the operator's namespace (true/false)",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        parser.add_argument(opt.flag, dest=opt.attr, default=None, help=f"{opt.help} [{opt.env}]")


def _convert(opt: _Option, raw: str) -> object:
    default = getattr(Settings(), opt.attr)
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
    values: dict[str, object] = {}
    for opt in OPTIONS:
        raw = getattr(args, opt.attr, None) if args is not None else None
        if raw is None:
            raw = environ.get(opt.env)
        if raw is not None and raw != "":
            values[opt.attr] = _convert(opt, str(raw))
    settings = Settings(**values)  # type: ignore[arg-type]
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    def fail(flag: str, message: str) -> None:
        env = next(o.env for o in OPTIONS if o.flag == flag)
        raise SettingsError(f"invalid {flag} / {env}: {message}")

    try:
        validate_trust_domain(s.trust_domain)
    except ValueError as exc:
        fail("--trust-domain", str(exc))
    if not s.namespace:
        fail("--namespace", "must not be empty")
    if s.ttl_floor < timedelta(minutes=1):
        fail("--ttl-floor", "must be at least 1m")
    if s.default_ttl < s.ttl_floor:
        fail("--default-ttl", f"{s.default_ttl} is below the ttl floor {s.ttl_floor}")
    if s.default_ttl > timedelta(days=30):
        fail("--default-ttl", "must be at most 30d")
    if not 0 < s.renewal_fraction < 1:
        fail("--renewal-fraction", f"{s.renewal_fraction} must be between 0 and 1")
    if not 0 <= s.jitter < 1 - s.renewal_fraction:
        fail("--jitter", f"{s.jitter} must be >= 0 and leave room before renewal")
    if not s.write_budget_qps > 0:  # written so that NaN fails too
        fail("--write-budget-qps", "must be positive")
    if s.write_budget_burst < 1:
        fail("--write-budget-burst", "must be at least 1")
    seen: dict[int, str] = {}
    for flag, port in _listen_ports(s):
        if not 0 <= port <= 65535:
            fail(flag, f"{port} is not a port")
        if port and port in seen:
            fail(flag, f"{port} is also {seen[port]}")
        seen[port] = flag
    if s.log_format not in ("text", "json"):
        fail("--log-format", f"{s.log_format!r} must be text or json")
    if s.ca_source == CA_SECRET_NAME:
        fail("--ca-source", f"{CA_SECRET_NAME!r} is the operator's own copy; name your Secret")
    if s.ca_poll_interval < timedelta(seconds=1):
        fail("--ca-poll-interval", "must be at least 1s")
    if not 0 < s.ca_renewal_fraction < 1:
        fail("--ca-renewal-fraction", f"{s.ca_renewal_fraction} must be between 0 and 1")
    if s.ca_settle_time < timedelta(0):
        fail("--ca-settle-time", "must not be negative")
    if s.ca_rotation_window < timedelta(seconds=1):
        fail("--ca-rotation-window", "must be at least 1s")
    if s.webhook_url and not s.webhook_url.startswith("https://"):
        fail("--webhook-url", f"{s.webhook_url!r} must start with https://")
    if s.probe_interval < timedelta(seconds=1):
        fail("--probe-interval", "must be at least 1s")
    if not s.probe_qps > 0:
        fail("--probe-qps", "must be positive")
    if not timedelta(seconds=1) <= s.probe_timeout <= timedelta(seconds=60):
        fail("--probe-timeout", "must be between 1s and 60s")
    if not timedelta(hours=1) <= s.pod_certificate_max_ttl <= timedelta(days=91):
        fail("--pod-certificate-max-ttl", "must be between 1h (the API's minimum) and 91d")
    refresh = s.pod_certificate_refresh_after
    if refresh and not timedelta(minutes=10) <= refresh <= s.pod_certificate_max_ttl:
        fail("--pod-certificate-refresh-after", "must be 0 or between 10m and the max ttl")
    if not s.service_account:
        fail("--service-account", "must not be empty")
    if s.workers < 1:
        fail("--workers", "must be at least 1")
    if s.identity_delivery not in IDENTITY_DELIVERIES:
        fail(
            "--identity-delivery",
            f"{s.identity_delivery!r} must be one of {', '.join(IDENTITY_DELIVERIES)}",
        )
    try:
        DnsNamePolicy(cluster_domain=s.cluster_domain)
    except PatternError as exc:
        fail("--cluster-domain", str(exc))
    for pattern in s.allowed_dns_names:
        try:
            DnsNamePolicy(cluster_domain=s.cluster_domain, allowed=(pattern,))
        except PatternError as exc:
            fail("--allowed-dns-names", f"pattern {exc}")


def _listen_ports(s: Settings) -> tuple[tuple[str, int], ...]:
    return (
        ("--webhook-port", s.webhook_port),
        ("--metrics-port", s.metrics_port),
        ("--health-port", s.health_port),
    )


def check_listen_ports(s: Settings) -> None:
    """Bind each port the operator will serve on once, before anything starts, so a busy or
    forbidden port is one line naming its flag instead of a traceback from deep inside the
    metrics, health or webhook server. (A port taken between this check and the real bind still
    fails later; this catches the common case: another process already listening.)"""
    hosts = {"--webhook-port": s.webhook_host}
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
                env = next(o.env for o in OPTIONS if o.flag == flag)
                reason = exc.strerror or str(exc)
                raise SettingsError(
                    f"invalid {flag} / {env}: cannot listen on {host}:{port}: {reason}"
                ) from None
