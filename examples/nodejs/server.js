// A TLS server (Node.js `tls` module) with the identity meshless mounts.
//
//   node server.js [PORT]          (default 8443)
//
// Environment: CERT_DIR (default /var/run/secrets/meshless), ALLOWED_SPIFFE_IDS (comma
// separated; empty: any client the CA vouches for), and the mode the meshless webhook sets:
// MESHLESS_MTLS_PORTS (JSON, per port) or MESHLESS_MTLS_MODE; STRICT when neither is set.
//   STRICT      a client certificate chaining to ca.crt is required (refused in the handshake)
//   PERMISSIVE  one is requested and verified, but clients without one are served
//   DISABLE     none is requested
// Each client gets one line, "hello <its SPIFFE ID>", and the connection is closed.
"use strict";
const fs = require("fs");
const path = require("path");
const tls = require("tls");

const certDir = process.env.CERT_DIR || "/var/run/secrets/meshless";
const port = Number(process.argv[2] || 8443);
const allowed = (process.env.ALLOWED_SPIFFE_IDS || "").split(",").filter(Boolean);

function modeFor(p) {
  const ports = process.env.MESHLESS_MTLS_PORTS;
  if (ports) {
    const mode = JSON.parse(ports)[String(p)];
    if (mode) return mode.toUpperCase();
  }
  return (process.env.MESHLESS_MTLS_MODE || "STRICT").toUpperCase();
}

function files() {
  const read = (name) => fs.readFileSync(path.join(certDir, name));
  return { key: read("tls.key"), cert: read("tls.crt"), ca: read("ca.crt") };
}

// The SPIFFE ID is the certificate's one URI SAN.
function spiffeId(cert) {
  const sans = (cert && cert.subjectaltname) || "";
  const uris = sans.split(", ").filter((s) => s.startsWith("URI:spiffe://"));
  return uris.length === 1 ? uris[0].slice(4) : null;
}

const mode = modeFor(port);
if (!["STRICT", "PERMISSIVE", "DISABLE", "UNSET"].includes(mode)) {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
const server = tls.createServer(
  {
    ...files(),
    minVersion: "TLSv1.2",
    requestCert: mode !== "DISABLE",
    rejectUnauthorized: mode === "STRICT",
  },
  (socket) => {
    const cert = socket.getPeerCertificate();
    const presented = cert && Object.keys(cert).length > 0;
    if (presented && !socket.authorized) {
      // PERMISSIVE: a client without a certificate is served, one with a bad certificate not.
      console.error(`refused ${socket.remoteAddress}: ${socket.authorizationError}`);
      socket.destroy();
      return;
    }
    const peer = presented ? spiffeId(cert) : null;
    if (allowed.length && !allowed.includes(peer)) {
      console.error(`refused ${socket.remoteAddress}: ${peer || "no SPIFFE ID"} is not allowed`);
      socket.end(`forbidden ${peer || "anonymous"}\n`);
      return;
    }
    console.log(`served ${peer || "anonymous"} (${socket.getProtocol()})`);
    socket.end(`hello ${peer || "anonymous"}\n`);
  },
);
server.on("tlsClientError", (err, socket) => {
  console.error(`refused ${socket.remoteAddress}: ${err.code || err.message}`);
});
// kubelet swaps the mounted files when meshless renews the certificate: load them into the
// server for the next handshakes (open connections keep theirs).
fs.watchFile(path.join(certDir, "tls.crt"), { interval: 5000 }, () => {
  try {
    server.setSecureContext({ ...files(), minVersion: "TLSv1.2" });
    console.log("reloaded the certificate");
  } catch (err) {
    console.error(`reload failed, keeping the old certificate: ${err.message}`);
  }
});
server.listen(port, () => console.log(`serving ${mode} on port ${port}`));
