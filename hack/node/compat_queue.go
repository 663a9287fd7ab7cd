// Added to sigs.k8s.io/kube-network-policies by meshless' hack/build-node.sh.
//
// Upstream queues packets with nftables' native `queue` expression (nft_queue). Kernels built
// without CONFIG_NFT_QUEUE (this VM's, for one) refuse that rule with ENOENT, while the
// xtables NFQUEUE target, reached through nft_compat, is there: iptables-nft uses it too.
// Same queue, same verdicts, same userspace; only the rule's encoding differs.

package networkpolicy

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// compatQueue is `-j NFQUEUE --queue-num num [--queue-bypass]` (xt_NFQ_info_v3, revision 3).
func compatQueue(num uint16, bypass bool) expr.Any {
	info := make([]byte, 8) // queuenum, queues_total, flags (u16 each), padded to XT_ALIGN
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], 1) // NFQ_FLAG_BYPASS
	}
	raw := xt.Unknown(info)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &raw}
}
