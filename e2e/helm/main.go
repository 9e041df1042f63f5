// Command helm is the Helm CLI the chart's tests run (`helm template`,
// `install`, `upgrade`, `uninstall`): upstream Helm v4's own command tree,
// built from Go modules by scripts/build-helm.sh. No code of its own beyond
// starting it.
package main

import (
	"errors"
	"fmt"
	"os"

	helmcmd "helm.sh/helm/v4/pkg/cmd"
	"helm.sh/helm/v4/pkg/kube"
)

func main() {
	// Objects Helm writes name it as their field manager under this name,
	// whatever the binary is called.
	kube.ManagedFieldsManager = "helm"
	root, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helm:", err)
		os.Exit(1)
	}
	if err := root.Execute(); err != nil {
		var cmdErr helmcmd.CommandError
		if errors.As(err, &cmdErr) {
			os.Exit(cmdErr.ExitCode)
		}
		os.Exit(1)
	}
}
