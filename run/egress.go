package run

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/grant"
	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/policy"
	"github.com/moatc/moatc/proxy"
	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// Where the container finds moatc's CA: the certificate alone (for NODE_EXTRA_CA_CERTS) and a
// bundle of the image's own roots plus moatc's CA (for everything that replaces the roots).
const (
	CAPath     = "/etc/moatc/ca.pem"
	BundlePath = "/etc/moatc/ca-bundle.pem"
)

// systemBundles are where images keep their root certificates; the first one found is
// replaced, read-only, by the bundle with moatc's CA, so tools that read only the system roots
// trust the proxy too.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
	"/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
	"/etc/ssl/ca-bundle.pem",             // openSUSE
	"/etc/ssl/cert.pem",                  // Alpine's, macOS-style
}

// Egress is what a run's proxy will do, resolved from its spec without starting anything: the
// grants' hosts, the policy, the trust for upstream servers.
type Egress struct {
	Policy      policy.Policy
	Credentials []proxy.Credential
	RootCAs     *x509.CertPool
}

// GrantedHosts lists grant -> hosts, for display.
func (e *Egress) GrantedHosts() map[string][]string {
	out := map[string][]string{}
	for _, c := range e.Credentials {
		out[c.Grant] = append(out[c.Grant], c.Host)
	}
	return out
}

// ResolveEgress checks a spec's grants, policy and upstream CA and resolves them. Every error
// here comes before anything is created. A grant's hosts join a strict run's allow list, and so
// do the host ports the person opened (as moatc-host:PORT).
func (m *Manager) ResolveEgress(s state.Spec) (*Egress, error) {
	e := &Egress{}
	strict, err := policy.ParseMode(pick(s.Policy, policy.Permissive))
	if err != nil {
		return nil, err
	}
	e.Policy.Strict = strict
	for _, a := range s.Allow {
		p, err := policy.ParsePattern(a)
		if err != nil {
			return nil, err
		}
		e.Policy.Allow = append(e.Policy.Allow, p)
	}
	if len(s.Grants) > 0 {
		res, err := grant.Open(m.Dir).Resolve(s.Grants)
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			e.Credentials = append(e.Credentials, proxy.Credential{Grant: r.Grant, Host: policy.NormalizeHost(r.Host), Headers: r.Headers})
			e.Policy.Allow = append(e.Policy.Allow, policy.Pattern{Host: policy.NormalizeHost(r.Host)})
		}
	}
	for _, h := range s.HostPorts {
		if hp, err := cni.ParseHostPort(h); err == nil && hp.Proto == "tcp" {
			e.Policy.Allow = append(e.Policy.Allow, policy.Pattern{Host: cni.GatewayName, Port: hp.Port})
		}
	}
	if e.RootCAs, err = rootCAs(s.UpstreamCA); err != nil {
		return nil, err
	}
	return e, nil
}

// rootCAs are the system's roots plus the PEM bundle at extra.
func rootCAs(extra string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if extra == "" {
		return pool, nil
	}
	b, err := os.ReadFile(extra)
	if err != nil {
		return nil, fmt.Errorf("reading the upstream CA bundle: %w", err)
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("the upstream CA bundle %s holds no PEM certificate: give a file with -----BEGIN CERTIFICATE----- blocks", extra)
	}
	return pool, nil
}

// egress is a run's proxy, from the moment its port is bound to its close.
type egress struct {
	m      *Manager
	run    *state.Run
	cfg    *Egress
	ca     *proxy.CA
	secret string

	mu    sync.Mutex
	ln    net.Listener
	port  uint16
	px    *proxy.Proxy
	trace *os.File
}

// newEgress prepares run r's proxy: the CA (made once per home) and the run's secret.
func (m *Manager) newEgress(r *state.Run) (*egress, error) {
	cfg, err := m.ResolveEgress(r.Spec)
	if err != nil {
		return nil, err
	}
	ca, err := proxy.LoadCA(filepath.Join(m.Dir, "proxy"))
	if err != nil {
		return nil, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("making the run's proxy secret: %w", err)
	}
	return &egress{m: m, run: r, cfg: cfg, ca: ca, secret: hex.EncodeToString(b)}, nil
}

// listen binds the proxy on the run's gateway, a port of its own: only the run can reach it
// there (the firewall opens it to the run's bridge alone).
func (e *egress) listen(gw netip.Addr) ([]cni.HostPort, error) {
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(gw, 0)))
	if err != nil {
		return nil, fmt.Errorf("binding the run's proxy on %s: %w", gw, err)
	}
	e.mu.Lock()
	e.ln, e.port = ln, uint16(ln.Addr().(*net.TCPAddr).Port)
	e.mu.Unlock()
	return []cni.HostPort{{Port: e.port, Proto: "tcp"}}, nil
}

// start serves the proxy for the run's network nw until close.
func (e *egress) start(ctx context.Context, nw *cni.Network) error {
	tf, err := os.OpenFile(filepath.Join(e.m.Store.Dir(e.run.ID), "network.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening the run's request trace: %w", err)
	}
	var hostPorts []uint16
	for _, h := range e.run.Spec.HostPorts {
		if hp, err := cni.ParseHostPort(h); err == nil && hp.Proto == "tcp" {
			hostPorts = append(hostPorts, hp.Port)
		}
	}
	var logf func(string, ...any)
	if e.run.Spec.Debug {
		logf = func(format string, a ...any) { fmt.Fprintf(os.Stderr, "moatc: proxy: "+format+"\n", a...) }
	}
	upstream := func(r *http.Request) (*url.URL, error) {
		if r.URL.Hostname() == cni.GatewayName {
			return nil, nil // the host's own ports are never behind the host's proxy
		}
		return http.ProxyFromEnvironment(r)
	}
	// moatc-host is the gateway; rootless, the proxy is in rootlesskit's namespace and reaches
	// the host's ports at slirp4netns's alias for the host's loopback instead.
	host := nw.Gateway
	if nw.Outside != nil {
		host = nw.Outside.HostLoopback
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ln == nil {
		tf.Close()
		return errors.New("starting the run's proxy: it has no port")
	}
	px, err := proxy.New(proxy.Config{
		Listener: e.ln, Secret: e.secret, Client: nw.IP, Policy: e.cfg.Policy, Credentials: e.cfg.Credentials,
		Hosts: map[string]netip.Addr{cni.GatewayName: host},
		Check: destinationCheck(e.m.Net.Pool(), host, hostPorts, nw.Outside, e.m.Net.OutsideAddrs),
		CA:    e.ca, RootCAs: e.cfg.RootCAs, Upstream: upstream, Trace: &cappedTrace{w: tf, max: traceMax(e.run.Spec)}, Logf: logf,
	})
	if err != nil {
		tf.Close()
		return fmt.Errorf("starting the run's proxy: %w", err)
	}
	e.px, e.trace = px, tf
	e.ln = nil // the proxy owns it now
	go px.Serve(ctx)
	return nil
}

// env is what the workload gets to use the proxy. NO_PROXY names loopback only: in a strict
// run nothing else is reachable anyway, and the host's services go through the proxy too.
func (e *egress) env(nw *cni.Network, port uint16) []string {
	u := fmt.Sprintf("http://moatc:%s@%s", e.secret, netip.AddrPortFrom(nw.Gateway, port))
	noProxy := "localhost,127.0.0.1,::1"
	return []string{
		"HTTP_PROXY=" + u, "HTTPS_PROXY=" + u, "http_proxy=" + u, "https_proxy=" + u,
		"NO_PROXY=" + noProxy, "no_proxy=" + noProxy,
		"SSL_CERT_FILE=" + BundlePath, "REQUESTS_CA_BUNDLE=" + BundlePath, "CURL_CA_BUNDLE=" + BundlePath,
		"GIT_SSL_CAINFO=" + BundlePath, "NODE_EXTRA_CA_CERTS=" + CAPath,
	}
}

// attach gives the created container the proxy's environment and moatc's CA: the certificate,
// and the image's roots plus the certificate, over the image's own bundle where it has one.
// Only the public certificate is ever mounted.
func (e *egress) attach(ctx context.Context, ctr containerd.Container, img containerd.Image, nw *cni.Network) error {
	c, err := e.m.Client(ctx)
	if err != nil {
		return err
	}
	found, roots, err := e.m.imageRoots(ctx, img, ctr.ID())
	if err != nil {
		return err
	}
	// One directory for both files: under gVisor each bind mount costs the start time.
	dir := filepath.Join(e.m.Store.Dir(e.run.ID), "ca")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("writing the run's CA bundle: %w", err)
	}
	bundle := filepath.Join(dir, filepath.Base(BundlePath))
	if err := atomicfile.Write(filepath.Join(dir, filepath.Base(CAPath)), e.ca.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("writing the run's CA certificate: %w", err)
	}
	if err := atomicfile.Write(bundle, append(append(roots, '\n'), e.ca.CertPEM()...), 0o644); err != nil {
		return fmt.Errorf("writing the run's CA bundle: %w", err)
	}
	ro := []string{"rbind", "ro", "nosuid", "nodev", "noexec"}
	mounts := []specs.Mount{{Destination: filepath.Dir(CAPath), Type: "bind", Source: dir, Options: ro}}
	if found != "" {
		mounts = append(mounts, specs.Mount{Destination: found, Type: "bind", Source: bundle, Options: ro})
	}
	return c.AddToSpec(ctx, ctr, e.env(nw, e.port), mounts)
}

// imageRoots returns the image's root bundle and its path ("" when it has none), read from
// the container's rootfs once per image and kept under moatc's home.
func (m *Manager) imageRoots(ctx context.Context, img containerd.Image, key string) (string, []byte, error) {
	dir := filepath.Join(m.Dir, "proxy", "roots")
	sum := sha256.Sum256([]byte(img.Target().Digest.String()))
	name := filepath.Join(dir, hex.EncodeToString(sum[:8]))
	if where, err := os.ReadFile(name + ".path"); err == nil {
		if len(where) == 0 {
			return "", nil, nil
		}
		if b, err := os.ReadFile(name + ".pem"); err == nil {
			return string(where), b, nil
		}
	}
	c, err := m.Client(ctx)
	if err != nil {
		return "", nil, err
	}
	found, b, err := c.ReadRootfsFile(ctx, snapshot.Default(), key, systemBundles, 8<<20)
	if err != nil {
		return "", nil, err
	}
	if os.MkdirAll(dir, 0o700) == nil {
		// A cache: a failed write costs a read next time, nothing else.
		if found == "" || atomicfile.Write(name+".pem", b, 0o600) == nil {
			atomicfile.Write(name+".path", []byte(found), 0o600)
		}
	}
	return found, b, nil
}

// traceMax caps a run's network.jsonl like its log: a workload sending requests forever (or
// 407s by the million) cannot fill the disk through the trace.
func traceMax(s state.Spec) int64 {
	if s.LogMax > 0 {
		return s.LogMax
	}
	return DefaultLogMax
}

// cappedTrace writes whole batches of trace lines until max, then one line saying the rest
// was dropped.
type cappedTrace struct {
	w       io.Writer
	max, n  int64
	dropped bool
}

func (c *cappedTrace) Write(p []byte) (int, error) {
	if c.dropped {
		return len(p), nil
	}
	if c.n+int64(len(p)) > c.max {
		c.dropped = true
		mark, _ := json.Marshal(proxy.Entry{Time: time.Now().UTC(), Decision: "trace-full",
			Error: fmt.Sprintf("the trace reached its cap of %d bytes (--log-max); later requests are not recorded", c.max)})
		c.w.Write(append(mark, '\n'))
		return len(p), nil
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// close stops the proxy (or frees its port when it never started).
func (e *egress) close() {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.px != nil {
		e.px.Close()
		e.px = nil
	}
	if e.ln != nil {
		e.ln.Close()
		e.ln = nil
	}
	if e.trace != nil {
		e.trace.Close()
		e.trace = nil
	}
}

// destinationCheck refuses what the proxy must never reach for a run, whatever the policy: the
// host itself (but for the host ports opened to the run, at host: its gateway), other runs,
// loopback, link-local (cloud metadata) and multicast addresses. Without it the proxy would be a
// way around the firewall.
//
// Rootless (out set), the proxy runs in rootlesskit's namespace: the host is also slirp4netns's
// network (host is its alias for the host's loopback) and the host's own addresses outside the
// namespace (outsideAddrs), which slirp4netns would connect to from the host.
func destinationCheck(pool netip.Prefix, host netip.Addr, hostPorts []uint16, out *cni.Outside, outsideAddrs func() ([]netip.Prefix, error)) func(netip.AddrPort) error {
	own := hostAddrs{}
	if out != nil {
		own.outside = outsideAddrs
	}
	return func(ap netip.AddrPort) error {
		a := ap.Addr().Unmap()
		if a == host && slices.Contains(hostPorts, ap.Port()) {
			return nil
		}
		switch {
		case a.IsLoopback(), a.IsUnspecified(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(),
			a.IsMulticast(), a.IsInterfaceLocalMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}),
			a.Is4() && a.As4()[0] == 0:
			return fmt.Errorf("%s is a loopback, link-local, multicast or unspecified address", a)
		case pool.Contains(a):
			return fmt.Errorf("%s belongs to moatc's runs (%s)", a, pool)
		case out != nil && out.Net.Contains(a):
			return fmt.Errorf("%s is in slirp4netns's network (%s is the host's loopback); open a port to the run with --host-port and use moatc-host", a, out.HostLoopback)
		}
		if yes, err := own.has(a); yes || err != nil {
			return fmt.Errorf("%s may be an address of the host itself; open a port to the run with --host-port and use moatc-host: %w", a, cmp.Or(err, errHostAddr))
		}
		return nil
	}
}

var errHostAddr = errors.New("the host is closed to runs")

// hostAddrs caches the host's own addresses for a second: interfaces come and go (other runs'
// bridges), and a new connection should not cost a netlink dump each time. outside, when set,
// adds the addresses of the host beyond rootlesskit's namespace; when they cannot be read,
// the last ones read stand, and with none read every address is refused.
type hostAddrs struct {
	outside func() ([]netip.Prefix, error)

	mu    sync.Mutex
	at    time.Time
	addr  map[netip.Addr]bool
	out   []netip.Prefix
	outOK bool
}

func (h *hostAddrs) has(a netip.Addr) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.addr == nil || time.Since(h.at) > time.Second {
		h.addr = map[netip.Addr]bool{}
		if as, err := net.InterfaceAddrs(); err == nil {
			for _, x := range as {
				if p, err := netip.ParsePrefix(x.String()); err == nil {
					h.addr[p.Addr().Unmap()] = true
				}
			}
		}
		if h.outside != nil {
			if out, err := h.outside(); err == nil {
				h.out, h.outOK = out, true
			}
		}
		h.at = time.Now()
	}
	if h.outside != nil && !h.outOK {
		return false, errors.New("the host's addresses outside rootlesskit's namespace cannot be read")
	}
	for _, p := range h.out {
		if p.Contains(a) {
			return true, nil
		}
	}
	return h.addr[a], nil
}

// ProxyEnvNames are the variables a networked run gets for its proxy, for display.
func ProxyEnvNames() []string {
	var out []string
	for _, kv := range (&egress{}).env(&cni.Network{Gateway: netip.IPv4Unspecified()}, 0) {
		k, _, _ := strings.Cut(kv, "=")
		out = append(out, k)
	}
	return out
}
