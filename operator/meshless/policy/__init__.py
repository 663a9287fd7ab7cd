"""MtlsPolicy: PeerAuthentication semantics (spec, resolution, rendering) and its controller."""
