// CoreDNS for the real node with only the plugins its Corefile uses (corefile() in
// neuraxis/dev/node.py). Upstream's main links every plugin, cloud DNS clients included, which
// is twice the compile work. tests/test_node.py checks that every directive of the Corefile is
// a plugin of the built binary; a directive added there needs its import here.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() {
	coremain.Run()
}
