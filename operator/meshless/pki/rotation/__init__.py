"""CA rotation (pure): the phases recorded in the CA Secret and the decisions that move them.

A root rotates in phases, Idle -> Prepare -> Switch -> Finish -> Idle:

- Prepare: a new root and an intermediate under it are made (kept as `next.crt`, `next.key`,
  `next-root.key`); the CA Secret's `ca.crt`, which is the trust bundle, becomes old + new
  roots. The old intermediate keeps issuing. Ends when every bundle (ConfigMaps and identity
  Secrets) carries the new root and the settle time has passed since they all first did.
- Switch: the new intermediate issues (`tls.crt`/`tls.key`/`root.key` are the new ones); leaves
  under the old root are reissued, each at a deadline spread over the rotation window. Ends
  when no valid leaf under the old root remains, plus the settle time (mounted files lag).
- Finish: `ca.crt` is the new root only; bundles drop the old root. Ends when none carries it.

An intermediate rotates under the same root in one step (no bundle change); its leaves move at
their own renewal, or spread over the window before the old intermediate expires. It rotates
when due, when requested, and when its NameConstraints are not the ones the name policy and
trust domain ask for (a pattern added or removed: reason NameConstraintsChanged). Every new
intermediate, rotated or made with a new root, carries the constraints asked for then.

The package, by topic: `state` (the record in the CA Secret, the phases, the rotate
request), `decide` (when a CA certificate is due, when a phase may end, the next step),
`progress` (counting bundles and leaves), `steps` (the CA Secret's new data for each step),
`leaves` (when a leaf of a retired issuer is reissued), `replacement` (a user-provided CA
replaced by another). Everything here takes `now` and the Secret data and returns decisions
or new Secret data; the shell (meshless.ca_rotation) reads, writes, counts and reports.
"""

from __future__ import annotations

from meshless.pki.rotation.decide import (
    Action,
    Decision,
    RotationPolicy,
    decide,
    due_time,
    finish_may_end,
    intermediate_due,
    prepare_complete,
    prepare_may_end,
    published_roots,
    root_due,
    switch_complete,
    switch_may_end,
)
from meshless.pki.rotation.leaves import (
    retired_issuer_deadline,
    spread_unit,
)
from meshless.pki.rotation.progress import (
    Progress,
    bundle_contains,
    count_progress,
)
from meshless.pki.rotation.replacement import (
    Replacement,
    classify_replacement,
    root_expiry,
)
from meshless.pki.rotation.state import (
    NEXT_CRT,
    NEXT_KEY,
    NEXT_KEYS,
    NEXT_ROOT_KEY,
    PHASE_ORDER,
    ROTATION_KEY,
    Phase,
    RequestKind,
    RotationRequest,
    RotationState,
    next_phase,
    parse_request,
    state_from_secret_data,
)
from meshless.pki.rotation.steps import (
    adopt_intermediate,
    ca_key_algorithm,
    complete,
    finish,
    incoming_root,
    mark_bundles_complete,
    mark_leaves_done,
    new_self_signed_like,
    next_root_key,
    refuse_request,
    rotate_intermediate,
    start_root_rotation,
    switch,
)

__all__ = [
    "NEXT_CRT",
    "NEXT_KEY",
    "NEXT_KEYS",
    "NEXT_ROOT_KEY",
    "PHASE_ORDER",
    "ROTATION_KEY",
    "Action",
    "Decision",
    "Phase",
    "Progress",
    "Replacement",
    "RequestKind",
    "RotationPolicy",
    "RotationRequest",
    "RotationState",
    "adopt_intermediate",
    "bundle_contains",
    "ca_key_algorithm",
    "classify_replacement",
    "complete",
    "count_progress",
    "decide",
    "due_time",
    "finish",
    "finish_may_end",
    "incoming_root",
    "intermediate_due",
    "mark_bundles_complete",
    "mark_leaves_done",
    "new_self_signed_like",
    "next_phase",
    "next_root_key",
    "parse_request",
    "prepare_complete",
    "prepare_may_end",
    "published_roots",
    "refuse_request",
    "retired_issuer_deadline",
    "root_due",
    "root_expiry",
    "rotate_intermediate",
    "spread_unit",
    "start_root_rotation",
    "state_from_secret_data",
    "switch",
    "switch_complete",
    "switch_may_end",
]
