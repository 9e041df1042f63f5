// Package echo pins the backends the Gateway API mesh conformance tests
// deploy and exec into: Istio's echo server and client, which the suite's
// manifests name `echo-advanced`. A module of its own, so that Istio's
// requirements never move the suite's version (e2e/conformance), which
// must match the Gateway API CRDs the cluster installs.
package echo
