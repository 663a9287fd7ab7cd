"""Pure PKI core: keys, SPIFFE IDs, the issuing CA, X.509-SVIDs, renewal timing, trust
bundles and the reissue checks. No Kubernetes calls; every clock is passed in."""
