// gospiffe is a go-spiffe peer for meshless's tests: it verifies an X.509-SVID chain against a
// trust bundle with x509svid.Verify, or dials a server with mutual TLS through go-spiffe's
// tlsconfig, and prints the SPIFFE ID it accepted. Any refusal exits 1 with the reason on
// stderr.
//
//	gospiffe verify -trust-domain TD -bundle ca.crt -chain tls.crt
//	gospiffe dial -trust-domain TD -bundle ca.crt -cert tls.crt -key tls.key -addr HOST:PORT -server-id ID
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: gospiffe verify|dial [flags]"))
	}
	var err error
	switch os.Args[1] {
	case "verify":
		err = verify(os.Args[2:])
	case "dial":
		err = dial(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gospiffe:", err)
	os.Exit(1)
}

func loadBundle(trustDomain, path string) (*x509bundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, err
	}
	return x509bundle.Load(td, path)
}

func verify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	trustDomain := fs.String("trust-domain", "", "the trust domain of the bundle")
	bundlePath := fs.String("bundle", "", "PEM roots (ca.crt)")
	chainPath := fs.String("chain", "", "PEM chain, leaf first (tls.crt)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bundle, err := loadBundle(*trustDomain, *bundlePath)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(*chainPath)
	if err != nil {
		return err
	}
	chain, err := parsePEMCertificates(raw)
	if err != nil {
		return err
	}
	id, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return err
	}
	fmt.Println(id.String())
	return nil
}

func dial(args []string) error {
	fs := flag.NewFlagSet("dial", flag.ContinueOnError)
	trustDomain := fs.String("trust-domain", "", "the trust domain of the bundle")
	bundlePath := fs.String("bundle", "", "PEM roots (ca.crt)")
	certPath := fs.String("cert", "", "the client's chain (tls.crt)")
	keyPath := fs.String("key", "", "the client's key (tls.key)")
	addr := fs.String("addr", "", "host:port of the server")
	serverID := fs.String("server-id", "", "the SPIFFE ID the server must present")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bundle, err := loadBundle(*trustDomain, *bundlePath)
	if err != nil {
		return err
	}
	svid, err := x509svid.Load(*certPath, *keyPath)
	if err != nil {
		return err
	}
	want, err := spiffeid.FromString(*serverID)
	if err != nil {
		return err
	}
	config := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(want))
	conn, err := tls.Dial("tcp", *addr, config)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		return err
	}
	reply := make([]byte, 64)
	n, err := conn.Read(reply)
	if err != nil && err != io.EOF {
		return err
	}
	peer := conn.ConnectionState().PeerCertificates[0]
	id, err := x509svid.IDFromCert(peer)
	if err != nil {
		return err
	}
	fmt.Printf("%s %q\n", id.String(), string(reply[:n]))
	return nil
}
