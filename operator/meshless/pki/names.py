"""Which DNS names a WorkloadIdentity in a namespace may carry (pure): the name policy.

The namespace is the boundary. By default an identity in namespace N may carry only the names
of N's Services:

- `<label>.N.svc`
- `<label>.N.svc.<cluster domain>`

where `<label>` is one DNS label (no wildcard, no dots). A cluster administrator widens this
with patterns in an operator setting (`--allowed-dns-names`), never with an object a tenant
could write. A pattern is a DNS name whose labels may hold the placeholder `{namespace}` (the
identity's namespace, anywhere inside a label) and whose first label may be `*` (exactly one
DNS label). `*` never matches a literal wildcard: wildcard names are never signed.

Every pattern must end in at least one fixed label (no placeholder, no `*`): that suffix is the
DNS subtree the issuing intermediate's NameConstraints permit (`permitted_dns_subtrees`), so a
stolen issuing key cannot mint a name outside what some pattern could produce.

The rules, in the order `violation` applies them:
1. a wildcard name (`*` anywhere) is refused;
2. a name must match one of the patterns, built-in or configured, with `{namespace}` replaced
   by the identity's own namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

NAMESPACE_PLACEHOLDER = "{namespace}"
WILDCARD = "*"
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(rf"^{_LABEL}$")
_PLACEHOLDER_LABEL_RE = re.compile(r"^[-a-z0-9]*(?:\{namespace\}[-a-z0-9]*)+$")
BUILT_IN_PATTERNS = ("*.{namespace}.svc", "*.{namespace}.svc.{cluster_domain}")


class PatternError(ValueError):
    """A pattern of the setting cannot be used; the message names the pattern."""


@dataclass(frozen=True)
class NamePattern:
    """One allowed-name pattern, parsed."""

    text: str

    @classmethod
    def parse(cls, text: str) -> NamePattern:
        raw = text.strip().lower().rstrip(".")
        if not raw:
            raise PatternError(f"{text!r}: an empty pattern")
        if len(raw) > 253:
            raise PatternError(f"{text!r}: longer than 253 characters")
        for index, label in enumerate(raw.split(".")):
            if label == WILDCARD:
                if index != 0:
                    raise PatternError(f"{text!r}: '*' may only be the first label")
            elif NAMESPACE_PLACEHOLDER in label:
                if not _PLACEHOLDER_LABEL_RE.match(label):
                    raise PatternError(
                        f"{text!r}: label {label!r} may hold only a-z, 0-9, '-' and {{namespace}}"
                    )
            elif "{" in label or "}" in label:
                raise PatternError(
                    f"{text!r}: the only placeholder is {{namespace}} (found {label!r})"
                )
            elif not _LABEL_RE.match(label):
                raise PatternError(f"{text!r}: {label!r} is not a DNS label")
        pattern = cls(text=raw)
        if not pattern.fixed_suffix:
            raise PatternError(
                f"{text!r}: must end in at least one fixed label (no '*' or {{namespace}}), "
                "which bounds the CA's name constraints"
            )
        return pattern

    @property
    def fixed_suffix(self) -> str:
        """The longest suffix of whole labels with no placeholder and no wildcard."""
        suffix: list[str] = []
        for label in reversed(self.text.split(".")):
            if label == WILDCARD or NAMESPACE_PLACEHOLDER in label:
                break
            suffix.append(label)
        return ".".join(reversed(suffix))

    def matches(self, namespace: str, name: str) -> bool:
        """Whether `name` (lower case, no trailing dot) is one this pattern allows in
        `namespace`. With the placeholder filled in, only a leading `*` is left to match: it
        stands for exactly one DNS label. Plain string comparison: no regular expression is
        compiled per namespace."""
        concrete = self.text.replace(NAMESPACE_PLACEHOLDER, namespace)
        if concrete.startswith(WILDCARD + "."):
            label, dot, rest = name.partition(".")
            return bool(dot) and rest == concrete[2:] and _LABEL_RE.match(label) is not None
        return name == concrete

    def describe(self, namespace: str) -> str:
        """The pattern as a person reads it for one namespace: `<label>.shop.svc`."""
        text = self.text.replace(NAMESPACE_PLACEHOLDER, namespace)
        if text.startswith("*."):
            text = "<label>" + text[1:]
        return text


@dataclass(frozen=True)
class NameViolation:
    name: str
    message: str  # names the name, the namespace and the rule


@dataclass(frozen=True)
class DnsNamePolicy:
    """The built-in Service-name patterns plus the administrator's extra ones."""

    cluster_domain: str = "cluster.local"
    allowed: tuple[str, ...] = ()
    patterns: tuple[NamePattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domain = self.cluster_domain.strip().lower().rstrip(".")
        if not domain or not all(_LABEL_RE.match(label) for label in domain.split(".")):
            raise PatternError(f"cluster domain {self.cluster_domain!r} is not a DNS name")
        built_in = tuple(p.replace("{cluster_domain}", domain) for p in BUILT_IN_PATTERNS)
        parsed = tuple(NamePattern.parse(p) for p in (*built_in, *self.allowed))
        object.__setattr__(self, "patterns", tuple(dict.fromkeys(parsed)))

    def violation(self, namespace: str, name: str) -> NameViolation | None:
        """Why `name` may not be carried by an identity in `namespace`, or None."""
        normalized = name.strip().lower().rstrip(".")
        if WILDCARD in normalized:
            return NameViolation(
                name,
                f"DNS name {name!r} is a wildcard: meshless never signs wildcard names "
                "(rule: one DNS label per name)",
            )
        if len(normalized) > 253 or not all(_LABEL_RE.match(x) for x in normalized.split(".")):
            return NameViolation(name, f"DNS name {name!r} is not a valid DNS name")
        if any(p.matches(namespace, normalized) for p in self.patterns):
            return None
        allowed = ", ".join(p.describe(namespace) for p in self.patterns)
        return NameViolation(
            name,
            f"DNS name {name!r} is not allowed in namespace {namespace!r}: an identity there "
            f"may carry only {allowed} (rule: the namespace's own names; a cluster "
            "administrator adds patterns with the operator setting --allowed-dns-names)",
        )

    def violations(self, namespace: str, names: Iterable[str]) -> tuple[NameViolation, ...]:
        found = (self.violation(namespace, name) for name in names)
        return tuple(v for v in found if v is not None)

    def permitted_dns_subtrees(self) -> tuple[str, ...]:
        """The DNS subtrees every pattern's names fall under (for NameConstraints), the
        narrowest set: a subtree already covered by a shorter one is dropped."""
        suffixes = sorted({p.fixed_suffix for p in self.patterns}, key=lambda s: s.count("."))
        kept: list[str] = []
        for suffix in suffixes:
            if not any(suffix == k or suffix.endswith("." + k) for k in kept):
                kept.append(suffix)
        return tuple(sorted(kept))
