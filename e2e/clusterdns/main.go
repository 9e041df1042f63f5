// Command weft-dns is the cluster DNS of weft's kube-mode tests and demo:
// CoreDNS, the upstream program with its standard plugins, built from Go
// modules. It holds no code of its own beyond starting CoreDNS.
package main

import (
	_ "github.com/coredns/coredns/core/plugin" // the standard plugin set
	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
