// CoreDNS for the local node (hack/build-node.sh): CoreDNS's own main, with only the plugins
// the node's Corefile (hack/localnode.py) uses linked in. The plugin order is CoreDNS's own
// (core/dnsserver.Directives, unchanged); a directive whose plugin is not imported here is
// simply unavailable in a Corefile.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
