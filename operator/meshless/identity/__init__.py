"""WorkloadIdentity: from spec to a SPIFFE X.509-SVID in a Secret."""
