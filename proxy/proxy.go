// Package proxy is a run's HTTP(S) proxy. It authenticates the run, enforces its network
// policy, refuses addresses the run may not reach, intercepts HTTPS (CONNECT) with moatc's CA
// so it can set granted credentials on requests to granted hosts, and writes one trace line
// per request. Every byte from the client is treated as hostile.
//
// Only the standard library is used: net/http's bundled HTTP/2 serves h2 inside intercepted
// tunnels (an http.Server handed *tls.Conn values that negotiated "h2") and speaks h2
// upstream (Transport.ForceAttemptHTTP2), so golang.org/x/net is not needed.
package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatc/moatc/policy"
)

const (
	headerTimeout    = 30 * time.Second // CONNECT or plain request line and headers
	handshakeTimeout = 15 * time.Second // client TLS handshake after CONNECT
	idleTimeout      = 2 * time.Minute
	maxClientConns   = 1024 // concurrent client connections per proxy
	proxyUser        = "moatc"
)

// Credential is a grant's headers for one host.
type Credential struct {
	Grant   string            // grant name, for the trace
	Host    string            // exact host name (normalized with policy.NormalizeHost), no port
	Headers map[string]string // header -> full value, set on every HTTPS request to Host, replacing whatever the client sent
}

// Config configures a Proxy.
type Config struct {
	Listener net.Listener // where to serve; the Proxy owns and closes it (also when New fails)
	Secret   string       // clients send Proxy-Authorization: Basic base64("moatc:"+Secret)
	Client   netip.Addr   // the run's address: the only source address accepted
	// AnyClient accepts every source address, the secret alone admitting a client: a
	// cluster run's proxy pod starts before the workload's pod has an address (a
	// NetworkPolicy, where enforced, keeps other pods out).
	AnyClient   bool
	Policy      policy.Policy
	Credentials []Credential
	Hosts       map[string]netip.Addr // names resolved here instead of by DNS; never chained through Upstream
	// Check vets every address before it is dialled on the client's behalf; an error refuses
	// it (403, X-Moatc-Blocked: address). nil allows all. When a request is chained through
	// Upstream, only an IP-literal target is vetted: names are resolved by the upstream proxy.
	Check    func(netip.AddrPort) error
	CA       *CA                                   // signs the intercepted hosts' certificates
	RootCAs  *x509.CertPool                        // trust for upstream servers; nil = system roots
	Upstream func(*http.Request) (*url.URL, error) // the host's proxy to chain through; nil = direct
	Trace    io.Writer                             // one JSON Entry per line, writes serialized; all written when Serve returns
	Logf     func(format string, args ...any)      // diagnostics, rate-limited and scrubbed of secrets; may be nil
}

// Proxy is one run's proxy.
type Proxy struct {
	cfg       Config
	addr      netip.AddrPort
	client    netip.Addr
	secretSum [32]byte
	grants    map[string]*grant
	hosts     map[string]netip.Addr
	sec       *secrets
	log       *limitedLog
	trace     *tracer

	ln        *limitListener
	outer     *http.Server // client connections: plain proxy requests and CONNECT
	inner     *http.Server // decrypted tunnels
	innerLn   *chanListener
	tlsConf   *tls.Config
	transport *http.Transport
	rp        *httputil.ReverseProxy
	dialer    net.Dialer

	baseCtx context.Context // cancelled by Close
	cancel  context.CancelFunc

	closeOnce sync.Once
	closed    chan struct{}
	serving   atomic.Bool

	mu      sync.Mutex
	shut    bool
	tunnels map[*tunnelConn]struct{}
	active  sync.WaitGroup // handlers; Add only under mu while !shut
}

// grant is the merged credentials for one host.
type grant struct {
	name   string
	names  []string // canonical header names
	values []string
}

func (g *grant) sets(name string) bool {
	if g == nil {
		return false
	}
	for _, n := range g.names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// apply removes every client-sent header a grant sets, under any spelling, then sets them.
func (g *grant) apply(h http.Header) {
	for k := range h {
		if g.sets(k) {
			delete(h, k)
		}
	}
	for i, n := range g.names {
		h[n] = []string{g.values[i]}
	}
}

// New makes a proxy; Serve starts it.
func New(cfg Config) (*Proxy, error) {
	p, err := newProxy(cfg)
	if err != nil {
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		return nil, fmt.Errorf("make proxy: %w", err)
	}
	return p, nil
}

func newProxy(cfg Config) (*Proxy, error) {
	switch {
	case cfg.Listener == nil:
		return nil, errors.New("no listener")
	case cfg.Secret == "":
		return nil, errors.New("no secret")
	case !cfg.Client.IsValid() && !cfg.AnyClient:
		return nil, errors.New("no client address")
	case cfg.CA == nil:
		return nil, errors.New("no CA")
	}
	p := &Proxy{
		cfg:       cfg,
		client:    cfg.Client.Unmap().WithZone(""),
		secretSum: sha256.Sum256([]byte(cfg.Secret)),
		grants:    map[string]*grant{},
		hosts:     map[string]netip.Addr{},
		closed:    make(chan struct{}),
		tunnels:   map[*tunnelConn]struct{}{},
		dialer:    net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second},
	}
	secretVals, err := p.addGrants(cfg.Credentials)
	if err != nil {
		return nil, err
	}
	for name, a := range cfg.Hosts {
		if !a.IsValid() {
			return nil, fmt.Errorf("host %q has no address", name)
		}
		p.hosts[policy.NormalizeHost(name)] = a.Unmap()
	}
	p.sec = newSecrets(append([]string{cfg.Secret}, secretVals...))
	p.log = &limitedLog{logf: cfg.Logf, sec: p.sec}
	p.trace = &tracer{w: cfg.Trace, logf: p.log.printf}

	switch a := cfg.Listener.Addr().(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		p.addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			p.addr = ap
		}
	}
	p.baseCtx, p.cancel = context.WithCancel(context.Background())
	p.setupServers(log.New(logWriter{p.log}, "", 0))
	return p, nil
}

// addGrants indexes the credentials by host and returns their header values (secrets to keep
// out of logs and traces).
func (p *Proxy) addGrants(creds []Credential) ([]string, error) {
	var secretVals []string
	for _, c := range creds {
		host := policy.NormalizeHost(c.Host)
		if host == "" || !validHost(host) {
			return nil, fmt.Errorf("grant %q: host %q is not a host name or IP address (no port)", c.Grant, c.Host)
		}
		if len(c.Headers) == 0 {
			return nil, fmt.Errorf("grant %q: no headers for %s", c.Grant, host)
		}
		g := p.grants[host]
		if g == nil {
			g = &grant{name: c.Grant}
			p.grants[host] = g
		} else if !strings.Contains(","+g.name+",", ","+c.Grant+",") {
			g.name += "," + c.Grant
		}
		for name, val := range c.Headers {
			if !validHeaderName(name) || forbiddenHeader(name) {
				return nil, fmt.Errorf("grant %q: %q cannot be set as a credential header", c.Grant, name)
			}
			if !validHeaderValue(val) {
				return nil, fmt.Errorf("grant %q: the value of header %s has a control character", c.Grant, name)
			}
			if g.sets(name) {
				return nil, fmt.Errorf("grant %q: header %s for %s is set by another grant too", c.Grant, name, host)
			}
			g.names = append(g.names, textproto.CanonicalMIMEHeaderKey(name))
			g.values = append(g.values, val)
			secretVals = append(secretVals, val)
		}
	}
	return secretVals, nil
}

// setupServers makes the upstream transport, the reverse proxy, the TLS config for tunnels and
// the two HTTP servers: the outer one clients talk to and the inner one for tunnelled requests.
func (p *Proxy) setupServers(errLog *log.Logger) {
	cfg := p.cfg
	p.transport = &http.Transport{
		DialContext:            p.dial,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs},
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    15 * time.Second,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true, // pass bodies through as they are
		MaxResponseHeaderBytes: 1 << 20,
	}
	if cfg.Upstream != nil {
		p.transport.Proxy = p.upstreamProxy
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      p.transport,
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.errorHandler,
		ErrorLog:       errLog,
		BufferPool:     bufPool{},
	}
	p.tlsConf = &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2", "http/1.1"},
		GetConfigForClient: p.checkSNI,
		GetCertificate:     p.certificate,
	}

	var h1 http.Protocols
	h1.SetHTTP1(true)
	p.ln = &limitListener{Listener: cfg.Listener, sem: make(chan struct{}, maxClientConns), done: p.closed}
	p.outer = &http.Server{
		Handler:           http.HandlerFunc(p.serveClient),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errLog,
		Protocols:         &h1,
	}
	p.innerLn = &chanListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: cfg.Listener.Addr()}
	// TLSConfig stays nil so that Serve sets up HTTP/2 for conns that negotiated "h2".
	p.inner = &http.Server{
		Handler:           http.HandlerFunc(p.serveTunnel),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          errLog,
		ConnContext:       tunnelContext,
	}
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() netip.AddrPort { return p.addr }

// Serve serves until Close is called or ctx is done, then returns nil.
func (p *Proxy) Serve(ctx context.Context) error {
	if !p.serving.CompareAndSwap(false, true) {
		return errors.New("serve proxy: already serving")
	}
	errc := make(chan error, 2)
	go func() { errc <- p.inner.Serve(p.innerLn) }()
	go func() { errc <- p.outer.Serve(p.ln) }()
	var err error
	n := 0
	select {
	case <-ctx.Done():
	case <-p.closed:
	case err = <-errc:
		n++
	}
	p.Close()
	for ; n < 2; n++ {
		<-errc
	}
	p.active.Wait()
	p.trace.drains.Wait() // every line is written when Serve returns
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve proxy on %s: %w", p.addr, err)
	}
	return nil
}

// Close stops listening and closes every connection, tunnels included.
func (p *Proxy) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.shut = true
		tunnels := p.tunnels
		p.tunnels = nil
		p.mu.Unlock()
		close(p.closed)
		p.cancel()
		p.outer.Close()
		p.inner.Close()
		p.innerLn.Close()
		if e := p.cfg.Listener.Close(); e != nil && !errors.Is(e, net.ErrClosed) {
			err = fmt.Errorf("close proxy listener: %w", e)
		}
		for tc := range tunnels {
			tc.Conn.Close()
		}
		p.transport.CloseIdleConnections()
	})
	return err
}

// track counts a handler so that Serve waits for it; false once closed.
func (p *Proxy) track() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shut {
		return false
	}
	p.active.Add(1)
	return true
}

// exchange is one request's state, from the handler to the trace.
type exchange struct {
	e        Entry
	start    time.Time
	rec      recorder
	t        target
	grant    *grant
	out      atomic.Int64 // request body bytes sent upstream (read by the transport)
	upStatus int
}

func newExchange(w http.ResponseWriter, r *http.Request, scheme string) *exchange {
	now := time.Now()
	x := &exchange{start: now}
	x.rec.ResponseWriter = w
	x.e.Time = now.UTC()
	x.e.Method = clip(r.Method, 32)
	x.e.Scheme = scheme
	x.e.Path = clip(r.URL.Path, 1024)
	return x
}

// finish writes the trace entry; a panicking ReverseProxy (client gone mid-body) is recorded
// and re-panicked.
func (p *Proxy) finish(x *exchange) {
	v := recover()
	e := &x.e
	if v != nil && e.Decision == "" {
		e.Decision, e.Error = decError, "response body copy aborted"
	}
	e.Status = x.rec.status
	if e.Status == 0 {
		e.Status = x.upStatus
	}
	e.BytesIn = x.rec.n
	e.BytesOut = x.out.Load()
	e.DurationMS = float64(time.Since(x.start).Microseconds()) / 1000
	if e.Decision == "" {
		e.Decision = decAllowed
	}
	p.trace.write(e)
	if v != nil {
		panic(v)
	}
}

func (x *exchange) refuse(status int, decision, blocked, body string, closeConn bool) {
	h := x.rec.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	if blocked != "" {
		h.Set("X-Moatc-Blocked", blocked)
	}
	if closeConn {
		h.Set("Connection", "close")
	}
	x.e.Decision = decision
	x.rec.WriteHeader(status)
	io.WriteString(&x.rec, body)
}

func (x *exchange) refuseAuth(closeConn bool) {
	x.rec.Header().Set("Proxy-Authenticate", `Basic realm="moatc"`)
	x.refuse(http.StatusProxyAuthRequired, decDeniedAuth, "", "moatc: proxy authentication required\n", closeConn)
}

func (x *exchange) refusePolicy(host string, closeConn bool) {
	x.refuse(http.StatusProxyAuthRequired, decDeniedPolicy, "network-policy", fmt.Sprintf(
		"moatc: %s is not allowed by this run's strict network policy; allow it with `moatc run --allow %s` or in network.allow in moatc.yaml\n",
		host, host), closeConn)
}

// serveClient handles a request on a client connection: CONNECT or an absolute-form request.
func (p *Proxy) serveClient(w http.ResponseWriter, r *http.Request) {
	if !p.track() {
		w.Header().Set("Connection", "close")
		http.Error(w, "moatc: the proxy is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer p.active.Done()
	if r.Method == http.MethodConnect {
		p.serveConnect(w, r)
		return
	}
	x := newExchange(w, r, "http")
	defer p.finish(x)
	u := r.URL
	host, port, terr := parseHostPort(u.Host, 80)
	if terr == nil {
		x.e.Host, x.e.Port = host, int(port)
	}
	if !p.authorized(r) {
		x.refuseAuth(false)
		return
	}
	switch {
	case !u.IsAbs() || u.Host == "":
		x.e.Error = "not a proxy request"
		x.refuse(http.StatusBadRequest, decError, "", "moatc: this is a proxy: send absolute-form requests (set HTTP_PROXY)\n", false)
		return
	case u.Scheme != "http":
		x.e.Error = "absolute-form request for scheme " + clip(u.Scheme, 16)
		x.refuse(http.StatusBadRequest, decError, "", "moatc: only http:// URLs are proxied as plain requests; use CONNECT for https\n", false)
		return
	case terr != nil:
		x.e.Error = terr.Error()
		x.refuse(http.StatusBadRequest, decError, "", "moatc: "+terr.Error()+"\n", false)
		return
	}
	if !p.cfg.Policy.Allows(host, port) {
		x.refusePolicy(host, false)
		return
	}
	if p.grants[host] != nil {
		x.refuse(http.StatusForbidden, decPlainHTTP, "plain-http", fmt.Sprintf(
			"moatc: %s has credentials granted to this run, which are sent only over HTTPS; use https://%s\n", host, host), false)
		return
	}
	p.forward(x, r, newTarget("http", host, port, r.Host), nil)
}

// authorized reports whether r comes from the run's address with the run's secret.
func (p *Proxy) authorized(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || (!p.cfg.AnyClient && ap.Addr().Unmap().WithZone("") != p.client) {
		return false
	}
	vals := r.Header.Values("Proxy-Authorization")
	if len(vals) != 1 {
		return false
	}
	scheme, cred, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return false
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	sum := sha256.Sum256([]byte(pass)) // equal lengths: the compare leaks nothing
	good := subtle.ConstantTimeCompare(sum[:], p.secretSum[:]) == 1
	return ok && good && user == proxyUser
}

// recorder notes what the client got.
type recorder struct {
	http.ResponseWriter
	status int
	n      int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController (used by ReverseProxy) flush and hijack.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// parseHostPort parses a target: host:port, or host alone when defPort is not 0. The host is
// normalized and must be a DNS name or an IP address.
func parseHostPort(hostport string, defPort uint16) (string, uint16, error) {
	h, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		if defPort == 0 {
			return "", 0, fmt.Errorf("target %q is not host:port", clip(hostport, 100))
		}
		h, ps = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), ""
	}
	port := defPort
	if ps != "" {
		n, err := strconv.ParseUint(ps, 10, 16)
		if err != nil || n == 0 {
			return "", 0, fmt.Errorf("target %q has a bad port", clip(hostport, 100))
		}
		port = uint16(n)
	} else if defPort == 0 {
		return "", 0, fmt.Errorf("target %q has no port", clip(hostport, 100))
	}
	h = policy.NormalizeHost(h)
	if !validHost(h) {
		return "", 0, fmt.Errorf("target %q is not a host name or IP address", clip(hostport, 100))
	}
	return h, port, nil
}

// validHost accepts a normalized DNS name (letters, digits, '-', '_') or an IP without zone.
func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == ""
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// forbiddenHeader: headers that a credential cannot meaningfully or safely set.
func forbiddenHeader(name string) bool {
	switch strings.ToLower(name) {
	case "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
		"upgrade", "proxy-authorization", "proxy-authenticate", "proxy-connection":
		return true
	}
	return false
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// limitListener bounds concurrent client connections: a hostile workload must not exhaust
// moatc's file descriptors.
type limitListener struct {
	net.Listener
	sem  chan struct{}
	done <-chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, sem: l.sem}, nil
}

type limitConn struct {
	net.Conn
	sem  chan struct{}
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(func() { <-c.sem })
	return c.Conn.Close()
}

// bufPool recycles ReverseProxy's copy buffers.
type bufPool struct{}

var copyBufs = sync.Pool{New: func() any { return make([]byte, 32<<10) }}

func (bufPool) Get() []byte  { return copyBufs.Get().([]byte) }
func (bufPool) Put(b []byte) { copyBufs.Put(b) } //nolint:staticcheck // a slice header is small
