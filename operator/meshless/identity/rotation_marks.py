"""What an identity Secret's annotations record for a root rotation's count (pure).

A root rotation's poll (and `meshless ca status`) counts, over every identity's own Secret,
which roots its `ca.crt` carries and whether its leaf is still valid under a leaving root
(meshless.pki.rotation.count_progress). Listing the Secrets with their data made each poll
download whatever a tenant put in Secrets labelled with an identity's name. Every write of an
identity Secret therefore also writes, computed from the very bytes written:

- `meshless.dev/bundle-roots`: the SHA-256 fingerprints (hex) of the certificates in
  `ca.crt`, sorted, comma-separated (empty when there are none or they do not parse);
- `meshless.dev/leaf-not-after`: the leaf's notAfter (RFC 3339), empty when `tls.crt` does
  not parse (such a leaf is never counted on a leaving root);
- `meshless.dev/leaf-roots`: of the roots in `bundle-roots`, those the chain in `tls.crt` ends
  at (count_progress's anchor_of: each certificate signed by the next, the last by the root).

The poll lists the labelled Secrets as metadata only and counts from these annotations when
the metadata vouches for them: our field manager alone wrote the data and these annotations
(identity.checked.data_written_only_by, and the same rule for each annotation), all three are
present and parse, and every leaving root is among `bundle-roots` (the roots the anchor was
checked against). Otherwise the identity's own Secret is read by name and counted from its
data; no other Secret's data is read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptography import x509

from meshless.api import GROUP
from meshless.identity.checked import data_written_only_by
from meshless.pki.bundle import fingerprint
from meshless.pki.rotation import Progress, RotationState
from meshless.pki.x509 import anchor_of, certificates_in, issued_by

BUNDLE_ROOTS_ANNOTATION = f"{GROUP}/bundle-roots"
LEAF_NOT_AFTER_ANNOTATION = f"{GROUP}/leaf-not-after"
LEAF_ROOTS_ANNOTATION = f"{GROUP}/leaf-roots"
# Ours are a leaf and one or two intermediates. A longer chain (a tenant's edit of a refused
# identity's Secret) is not verified link by link on the operator's event loop.
MAX_CHAIN = 8
ROTATION_ANNOTATIONS = (BUNDLE_ROOTS_ANNOTATION, LEAF_NOT_AFTER_ANNOTATION, LEAF_ROOTS_ANNOTATION)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class RotationMarks:
    """What the annotations say of one identity Secret's data."""

    bundle_roots: frozenset[str]  # fingerprints of the certificates in ca.crt
    leaf_not_after: datetime | None  # None: tls.crt does not parse
    leaf_roots: frozenset[str]  # the roots among bundle_roots the leaf's chain ends at


def rotation_annotations(chain_pem: bytes | None, bundle_pem: bytes | None) -> dict[str, str]:
    """The annotations for a Secret whose tls.crt is `chain_pem` and ca.crt `bundle_pem`."""
    roots = _bundle_certificates(bundle_pem or b"")
    prints = sorted({fingerprint(c).hex() for c in roots})
    not_after = ""
    anchors: set[str] = set()
    chain = certificates_in(chain_pem)
    if chain:
        not_after = chain[0].not_valid_after_utc.isoformat()
        if len(chain) <= MAX_CHAIN and _chain_links(chain):
            anchors = {fingerprint(r).hex() for r in roots if _anchored(chain, r)}
    return {
        BUNDLE_ROOTS_ANNOTATION: ",".join(prints),
        LEAF_NOT_AFTER_ANNOTATION: not_after,
        LEAF_ROOTS_ANNOTATION: ",".join(sorted(anchors)),
    }


def vouched_marks(secret_meta: Mapping[str, Any], manager: str) -> RotationMarks | None:
    """The marks when the Secret's metadata vouches for them: `manager` alone wrote its data
    and each of the annotations, which are all present and parse. None: read the Secret."""
    annotations = secret_meta.get("annotations") or {}
    if any(not isinstance(annotations.get(k), str) for k in ROTATION_ANNOTATIONS):
        return None
    if not data_written_only_by(secret_meta, manager):
        return None
    if not all(_annotation_written_only_by(secret_meta, manager, k) for k in ROTATION_ANNOTATIONS):
        return None
    bundle_roots = _prints(annotations[BUNDLE_ROOTS_ANNOTATION])
    leaf_roots = _prints(annotations[LEAF_ROOTS_ANNOTATION])
    if bundle_roots is None or leaf_roots is None or not leaf_roots <= bundle_roots:
        return None
    text = annotations[LEAF_NOT_AFTER_ANNOTATION]
    not_after: datetime | None = None
    if text:
        try:
            not_after = datetime.fromisoformat(text)
        except ValueError:
            return None
        if not_after.tzinfo is None:
            return None
    elif leaf_roots:
        return None
    return RotationMarks(bundle_roots, not_after, leaf_roots)


def marks_answer(marks: RotationMarks, leaving: Iterable[x509.Certificate]) -> bool:
    """Whether the marks answer for every leaving root: each was in ca.crt when the anchor was
    checked (a root outside it: the leaf may end at it, and only the data can say)."""
    return all(fingerprint(r).hex() in marks.bundle_roots for r in leaving)


def count_marked(
    marked: Iterable[tuple[RotationMarks, bool]],
    state: RotationState,
    leaving: Sequence[x509.Certificate],
    now: datetime,
) -> Progress:
    """count_progress over Secrets given by their marks (each with whether its identity's spec
    is refused: its leaf counts, never as on a leaving root), for marks that answer
    (marks_answer). Equal to count_progress over the same Secrets' data."""
    old = set(state.old_roots)
    leaving_prints = {fingerprint(r).hex() for r in leaving}
    total = with_new = with_old = leaves = on_old = 0
    for marks, refused in marked:
        total += 1
        with_new += state.new_root in marks.bundle_roots
        with_old += bool(marks.bundle_roots & old)
        leaves += 1
        if refused or marks.leaf_not_after is None or now >= marks.leaf_not_after:
            continue
        on_old += bool(marks.leaf_roots & leaving_prints)
    return Progress(total, with_new, with_old, leaves, on_old)


def _annotation_written_only_by(secret_meta: Mapping[str, Any], manager: str, key: str) -> bool:
    """No managedFields entry but `manager`'s (on the main resource) owns the annotation."""
    field = f"f:{key}"
    for entry in secret_meta.get("managedFields") or ():
        fields = entry.get("fieldsV1") or {}
        annotations = (fields.get("f:metadata") or {}).get("f:annotations") or {}
        if field in annotations and (entry.get("manager") != manager or entry.get("subresource")):
            return False
    return True


def _prints(text: str) -> frozenset[str] | None:
    if not text:
        return frozenset()
    prints = text.split(",")
    if any(len(p) != 64 or not set(p) <= _HEX for p in prints):
        return None
    return frozenset(prints)


@lru_cache(maxsize=8)
def _bundle_certificates(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates in a bundle (every Secret carries the same few bundles)."""
    return tuple(certificates_in(pem))


def _chain_links(chain: Sequence[x509.Certificate]) -> bool:
    """Each certificate signed by the next (the leaf's by its intermediate; the intermediates'
    links are the same for every leaf and cached)."""
    if len(chain) < 2:
        return True
    if not issued_by(chain[0], chain[1]):
        return False
    return all(_issued(child, parent) for child, parent in itertools.pairwise(chain[1:]))


def _anchored(chain: Sequence[x509.Certificate], root: x509.Certificate) -> bool:
    """anchor_of(chain, [root]) for a chain whose links hold, with the top's check cached."""
    return _anchored_top(chain[-1], root)


@lru_cache(maxsize=64)
def _anchored_top(top: x509.Certificate, root: x509.Certificate) -> bool:
    return anchor_of([top], [root]) is not None


@lru_cache(maxsize=64)
def _issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    return issued_by(child, parent)


__all__ = [
    "BUNDLE_ROOTS_ANNOTATION",
    "LEAF_NOT_AFTER_ANNOTATION",
    "LEAF_ROOTS_ANNOTATION",
    "ROTATION_ANNOTATIONS",
    "RotationMarks",
    "count_marked",
    "marks_answer",
    "rotation_annotations",
    "vouched_marks",
]
