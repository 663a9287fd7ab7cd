"""Proof of enforcement: live handshake probes of a port, classified as the mode it enforces.

Pure (no sockets, no Kubernetes): classify.py (observations -> Verdict, ProbeResult),
records.py (the TLS record tap), report.py (lines for humans). With connections:
handshake.py (the three steps) and endpoint.py (`probe_endpoint`). Import from the
submodules: this package imports nothing, so the pure ones stay light.
"""
