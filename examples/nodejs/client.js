// A TLS client (Node.js `tls` module) with the identity meshless mounts.
//
//   node client.js HOST PORT [SERVER_SPIFFE_ID]
//
// CERT_DIR (default /var/run/secrets/meshless) holds tls.crt, tls.key and ca.crt; without
// tls.crt the client connects with no certificate. The server's chain is verified against
// ca.crt and, given SERVER_SPIFFE_ID, its SPIFFE ID is checked (not a host name: SVIDs name
// workloads). Prints the server's line; exit 0 when served, 1 when refused either way.
"use strict";
const fs = require("fs");
const path = require("path");
const tls = require("tls");

const [host, portText, serverId] = process.argv.slice(2);
if (!host || !portText) {
  console.error("usage: node client.js HOST PORT [SERVER_SPIFFE_ID]");
  process.exit(2);
}
const certDir = process.env.CERT_DIR || "/var/run/secrets/meshless";
const read = (name) => fs.readFileSync(path.join(certDir, name));
const identity = fs.existsSync(path.join(certDir, "tls.crt"))
  ? { key: read("tls.key"), cert: read("tls.crt") }
  : {};

function spiffeId(cert) {
  const uris = ((cert && cert.subjectaltname) || "")
    .split(", ")
    .filter((s) => s.startsWith("URI:spiffe://"));
  return uris.length === 1 ? uris[0].slice(4) : null;
}

let answer = "";
const socket = tls.connect({
  host,
  port: Number(portText),
  ...identity,
  ca: read("ca.crt"),
  minVersion: "TLSv1.2",
  checkServerIdentity: (_name, cert) => {
    const id = spiffeId(cert);
    if (serverId && id !== serverId) {
      return new Error(`server is ${id || "no SPIFFE ID"}, expected ${serverId}`);
    }
    return undefined;
  },
});
socket.setEncoding("utf8");
socket.setTimeout(10000, () => socket.destroy(new Error("timed out")));
socket.on("data", (chunk) => (answer += chunk));
socket.on("end", () => {
  if (answer.startsWith("hello ")) {
    console.log(answer.trim());
    process.exit(0);
  }
  console.log(`refused: ${answer.trim() || "closed without an answer"}`);
  process.exit(1);
});
socket.on("error", (err) => {
  console.log(`refused: ${err.code || ""} ${err.message}`.trim());
  process.exit(1);
});
