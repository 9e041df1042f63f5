// Package kubeletstreams serves the streaming endpoints of the harness'
// kubelet: port-forward, exec and container logs, which the API server
// proxies `kubectl port-forward|exec|logs` (and weftctl's reads of ztunnel's
// admin API) to. The protocols themselves (SPDY, the channel websockets,
// exit statuses) are the kubelet's own upstream code from
// k8s.io/cri-streaming; this package only finds the pod and reaches into
// it.
//
// The harness' kubelet (Rust, e2e/src/kube/kubelet) runs the pods and writes
// one record per running pod, <pods-dir>/<namespace>_<name>.json, saying
// where the pod's network namespace is and which runc container runs each
// of its containers; this server reads it on every request, so it needs no
// API access of its own.
package kubeletstreams

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The timeouts a kubelet uses by default.
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
)

// podRecord is what the harness' kubelet writes for a running pod.
type podRecord struct {
	UID string `json:"uid"`
	// Netns is the pod's network namespace; empty for a host-network pod,
	// whose ports are the node's own (this server runs in the node's
	// namespace).
	Netns string `json:"netns"`
	// Containers maps a container's name to its runc container id.
	Containers map[string]string `json:"containers"`
	// Logs maps a container's name to its log file.
	Logs map[string]string `json:"logs"`
}

type server struct {
	podsDir   string
	runc      string
	runcRoot  string
	allowUser string
}

func (s *server) pod(namespace, name string) (*podRecord, error) {
	path := filepath.Join(s.podsDir, namespace+"_"+name+".json")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pod %s/%s is not running on this node", namespace, name)
	}
	if err != nil {
		return nil, err
	}
	var record podRecord
	if err := json.Unmarshal(data, &record); err != nil {
		return nil, fmt.Errorf("the kubelet's record of pod %s/%s: %w", namespace, name, err)
	}
	return &record, nil
}

// PortForward connects to the port on the pod's loopback, as a kubelet does:
// from inside the pod's network namespace.
func (r *podRecord) PortForward(ctx context.Context, name string, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	conn, err := dialLoopback(ctx, r.Netns, port)
	if err != nil {
		return fmt.Errorf("pod %s: connecting to port %d: %w", name, port, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(conn, stream)
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(stream, conn)
		done <- struct{}{}
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// dialLoopback connects to 127.0.0.1:port in network namespace netns (the
// caller's own when empty). The dialling goroutine's thread enters the
// namespace and is never unlocked, so the runtime retires it instead of
// handing a thread in the wrong namespace to other goroutines.
func dialLoopback(ctx context.Context, netns string, port int32) (net.Conn, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	var dialer net.Dialer
	if netns == "" {
		return dialer.DialContext(ctx, "tcp", addr)
	}
	type result struct {
		conn net.Conn
		err  error
	}
	out := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := os.Open(netns)
		if err != nil {
			out <- result{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			out <- result{err: fmt.Errorf("entering %s: %w", netns, err)}
			return
		}
		conn, err := dialer.DialContext(ctx, "tcp", addr)
		out <- result{conn, err}
	}()
	r := <-out
	return r.conn, r.err
}

// executor runs commands in a pod's containers with runc exec.
type executor struct {
	server *server
	record *podRecord
}

func (e executor) ExecInContainer(ctx context.Context, name string, uid string, container string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	if tty {
		return errors.New("the harness' kubelet runs commands without a terminal; leave out -t")
	}
	id, ok := e.record.Containers[container]
	if !ok {
		return fmt.Errorf("pod %s has no running container %q", name, container)
	}
	if len(cmd) == 0 {
		return errors.New("no command to run")
	}
	args := append([]string{"--root", e.server.runcRoot, "exec", id}, cmd...)
	run := exec.CommandContext(ctx, e.server.runc, args...)
	run.Stdin = in
	if out != nil {
		run.Stdout = out
	}
	if errOut != nil {
		run.Stderr = errOut
	}
	err := run.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		return utilexec.CodeExitError{Err: err, Code: exit.ExitCode()}
	}
	return err
}

func (s *server) authorized(w http.ResponseWriter, req *http.Request) bool {
	if req.TLS == nil || len(req.TLS.PeerCertificates) == 0 {
		http.Error(w, "a client certificate is required", http.StatusUnauthorized)
		return false
	}
	if user := req.TLS.PeerCertificates[0].Subject.CommonName; user != s.allowUser {
		http.Error(w, fmt.Sprintf("user %q may not use this kubelet's streaming endpoints", user), http.StatusForbidden)
		return false
	}
	return true
}

func (s *server) lookup(w http.ResponseWriter, req *http.Request) (*podRecord, bool) {
	if !s.authorized(w, req) {
		return nil, false
	}
	record, err := s.pod(req.PathValue("namespace"), req.PathValue("pod"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return nil, false
	}
	if uid := req.PathValue("uid"); uid != "" && uid != record.UID {
		http.Error(w, "pod not found (its uid differs)", http.StatusNotFound)
		return nil, false
	}
	return record, true
}

func (s *server) portForward(w http.ResponseWriter, req *http.Request) {
	record, ok := s.lookup(w, req)
	if !ok {
		return
	}
	options, err := portforward.NewV4Options(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, req, record, req.PathValue("pod"), record.UID, options,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

func (s *server) exec(w http.ResponseWriter, req *http.Request) {
	record, ok := s.lookup(w, req)
	if !ok {
		return
	}
	options, err := remotecommand.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	command := req.URL.Query()[corev1.ExecCommandParam]
	remotecommand.ServeExec(w, req, executor{s, record}, req.PathValue("pod"), record.UID,
		req.PathValue("container"), command, options,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

// logs serves a container's log file whole (no follow, tail or timestamps).
func (s *server) logs(w http.ResponseWriter, req *http.Request) {
	record, ok := s.lookup(w, req)
	if !ok {
		return
	}
	container := req.PathValue("container")
	path, ok := record.Logs[container]
	if !ok {
		http.Error(w, fmt.Sprintf("pod has no container %q", container), http.StatusNotFound)
		return
	}
	file, err := os.Open(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer file.Close()
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.Copy(w, file)
}

// Main runs the server until SIGTERM or SIGINT; it returns the exit code.
func Main(args []string) int {
	flags := flag.NewFlagSet("kubelet-streams", flag.ContinueOnError)
	listen := flags.String("listen", "", "address to serve on (the node's InternalIP and the kubelet port)")
	cert := flags.String("tls-cert-file", "", "serving certificate")
	key := flags.String("tls-private-key-file", "", "serving key")
	clientCA := flags.String("client-ca-file", "", "CA of the API server's client certificate")
	allowUser := flags.String("allow-user", "kube-apiserver-kubelet-client", "the only client (certificate CN) served")
	podsDir := flags.String("pods-dir", "", "where the harness' kubelet writes its pod records")
	runc := flags.String("runc", "runc", "runc binary")
	runcRoot := flags.String("runc-root", "", "runc's state directory")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	for name, value := range map[string]string{"listen": *listen, "tls-cert-file": *cert, "tls-private-key-file": *key, "client-ca-file": *clientCA, "pods-dir": *podsDir, "runc-root": *runcRoot} {
		if value == "" {
			fmt.Fprintf(os.Stderr, "kubelet-streams: --%s is required\n", name)
			return 2
		}
	}
	caPEM, err := os.ReadFile(*clientCA)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-streams: %v\n", err)
		return 1
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fmt.Fprintf(os.Stderr, "kubelet-streams: %s holds no certificate\n", *clientCA)
		return 1
	}
	s := &server{podsDir: *podsDir, runc: *runc, runcRoot: *runcRoot, allowUser: *allowUser}
	mux := http.NewServeMux()
	mux.HandleFunc("/portForward/{namespace}/{pod}", s.portForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", s.portForward)
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", s.exec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", s.exec)
	mux.HandleFunc("/containerLogs/{namespace}/{pod}/{container}", s.logs)
	httpServer := &http.Server{
		Addr:              *listen,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs:  pool,
			MinVersion: tls.VersionTLS12,
		},
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpServer.Shutdown(ctx)
	}()
	fmt.Fprintf(os.Stderr, "kubelet-streams: serving on %s\n", *listen)
	if err := httpServer.ListenAndServeTLS(*cert, *key); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "kubelet-streams: %v\n", err)
		return 1
	}
	return 0
}
