// Command weft-kube is the Kubernetes control plane weft's kube-mode tests
// and demo run on: one binary that is etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kube-proxy or kubectl, all at the release
// go.mod pins, or the streaming endpoints of the harness' kubelet. Every
// Kubernetes component is the upstream one, built from Go modules; the only
// code of the project's own is the dispatch and kubelet-streams' glue
// between the upstream streaming server and the harness' pods.
//
// The component is the first argument, or the name the binary is called by
// (a symlink named kubectl works as kubectl).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	_ "time/tzdata" // CronJob time zones, as the upstream mains import it

	"go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	"weft.dev/kube/kubeletstreams"
)

// components maps a component's name to its entry point; each receives the
// arguments after the component's name and returns the process' exit code.
var components = map[string]func(args []string) int{
	"etcd": func(args []string) int {
		// etcdmain reads its flags from the whole argv, program name first.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	},
	"kube-apiserver": func(args []string) int {
		command := apiserver.NewAPIServerCommand()
		command.SetArgs(args)
		return cli.Run(command)
	},
	"kube-controller-manager": func(args []string) int {
		command := controllermanager.NewControllerManagerCommand()
		command.SetArgs(args)
		return cli.Run(command)
	},
	"kube-proxy": func(args []string) int {
		command := proxy.NewProxyCommand()
		command.SetArgs(args)
		return cli.Run(command)
	},
	"kubelet-streams": kubeletstreams.Main,
	"kube-scheduler": func(args []string) int {
		command := scheduler.NewSchedulerCommand()
		command.SetArgs(args)
		return cli.Run(command)
	},
	"kubectl": func(args []string) int {
		// kubectl sets its verbosity before building its commands, so that
		// plugins and .kuberc parsing log at the level asked for.
		logs.GlogSetter(kubectl.GetLogVerbosity(append([]string{"kubectl"}, args...))) //nolint:errcheck
		command := kubectl.NewDefaultKubectlCommand()
		command.SetArgs(args)
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := components[name]; !ok {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	run, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "weft-kube: unknown component %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(run(args))
}

func usage() {
	names := make([]string, 0, len(components))
	for name := range components {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: weft-kube COMPONENT [ARGS...]\n\ncomponents: %s\n", strings.Join(names, ", "))
}
