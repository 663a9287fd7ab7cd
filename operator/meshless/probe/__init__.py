"""Proof of enforcement: live handshake probes of a port, classified as the mode it enforces.

classify.py and records.py are pure; handshake.py and endpoint.py open connections.
"""

from meshless.probe.classify import Verdict, classify
from meshless.probe.endpoint import Expectation, ProbeResult, probe_endpoint
from meshless.probe.handshake import DEFAULT_TIMEOUT, ProbeContexts, ProberIdentity

__all__ = [
    "DEFAULT_TIMEOUT",
    "Expectation",
    "ProbeContexts",
    "ProbeResult",
    "ProberIdentity",
    "Verdict",
    "classify",
    "probe_endpoint",
]
