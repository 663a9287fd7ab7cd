"""Writing the webhook configurations (shell): where the API server calls us, and the
server-side apply of both configurations (configurations.py renders them).

The chart creates the configurations (docs/decisions/chart.md); the operator fills in their
webhooks and keeps the caBundle in step with the webhook CA. Kopf's managed configurations
are not used (docs/decisions/admission.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from meshless.admission.configurations import (
    Endpoint,
    ServiceRef,
    mutating_configuration,
    validating_configuration,
)
from meshless.admission.serving import service_dns_names
from meshless.kube import MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS, ApiError, Json, Kube

HELM_RELEASE_ANNOTATION = "meta.helm.sh/release-name"


class ConfigurationMissing(Exception):
    """A webhook configuration does not exist and these credentials may not create it (the
    chart's RBAC grants get and patch by name, not create): the chart creates it."""


def applied_configuration(configuration: Json, existing: Json | None) -> Json:
    """What the operator applies: the webhooks (everything configurations.py says about them)
    and, on an object it creates or created, its labels. On the chart's object the metadata
    is Helm's: applying our labels there would fight `helm upgrade` over them."""
    metadata: Json = {"name": configuration["metadata"]["name"]}
    annotations = ((existing or {}).get("metadata") or {}).get("annotations") or {}
    if HELM_RELEASE_ANNOTATION not in annotations:
        metadata["labels"] = configuration["metadata"]["labels"]
    return {
        "apiVersion": configuration["apiVersion"],
        "kind": configuration["kind"],
        "metadata": metadata,
        "webhooks": configuration["webhooks"],
    }


async def apply_configurations(
    kube: Kube,
    endpoint: Endpoint,
    ca_bundle: bytes,
    operator_namespace: str,
    timeout_seconds: int = 5,
) -> None:
    """Fill in both webhook configurations (server-side apply, field manager meshless: the
    webhooks list, whatever it holds, pointing at `endpoint`); call again whenever the CA
    bundle changes. Each is read by name first. The chart creates them; with credentials that
    may create them (`make run`, an admin's kubeconfig) a missing one is created by the same
    apply, and without (the chart's RBAC) that is a `ConfigurationMissing` naming it."""
    for resource, configuration in (
        (
            MUTATING_WEBHOOKS,
            mutating_configuration(endpoint, ca_bundle, operator_namespace, timeout_seconds),
        ),
        (
            VALIDATING_WEBHOOKS,
            validating_configuration(endpoint, ca_bundle, operator_namespace, timeout_seconds),
        ),
    ):
        name = configuration["metadata"]["name"]
        existing = await kube.get(resource, None, name)
        try:
            await kube.apply(resource, applied_configuration(configuration, existing))
        except ApiError as exc:
            if existing is None and exc.status == 403:
                raise ConfigurationMissing(
                    f"{configuration['kind']}/{name} does not exist and the operator may not "
                    "create it (its RBAC grants get and patch by name): the Helm chart creates "
                    "it, `helm upgrade` puts back a deleted one"
                ) from None
            raise


def webhook_endpoint(
    url: str | None, service: str, namespace: str, service_port: int = 443
) -> tuple[Endpoint, tuple[str, ...]]:
    """Where the API server calls us and the hosts the serving certificate must name: the
    URL's host when registered by URL (outside a cluster: https://127.0.0.1:<port>), else
    the Service's DNS names."""
    if url:
        host = urlsplit(url).hostname
        if not host or urlsplit(url).scheme != "https":
            raise ValueError(f"webhook URL {url!r} must be https://<host>[:port]")
        return Endpoint(url=url), (host,)
    return (
        Endpoint(service=ServiceRef(namespace, service, service_port)),
        service_dns_names(service, namespace),
    )
