"""Pod certificates (KEP-4317): meshless as the signer `meshless.dev/spiffe` of
PodCertificateRequests, and the ClusterTrustBundle that publishes its roots.

`request` reads a PodCertificateRequest and `decide` answers it (pure); `signer` and
`trust_bundle` are the shells that watch, sign and write."""
