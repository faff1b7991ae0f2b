package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/moatc/moatc/policy"
)

const dialBudget = 30 * time.Second // resolution and every connect attempt of one dial

// target is where a request goes.
type target struct {
	scheme     string
	host       string // normalized
	port       uint16
	hostHeader string // the Host the client sent (already checked against host:port)
	urlHost    string // host[:port], without the scheme's default port
	dialAddr   string // host:port, as http.Transport spells the address it dials
}

func newTarget(scheme, host string, port uint16, hostHeader string) target {
	t := target{scheme: scheme, host: host, port: port, hostHeader: hostHeader}
	t.dialAddr = net.JoinHostPort(host, strconv.Itoa(int(port)))
	t.urlHost = t.dialAddr
	if scheme == "https" && port == 443 || scheme == "http" && port == 80 {
		t.urlHost = host
		if validIP(host) && netip.MustParseAddr(host).Is6() {
			t.urlHost = "[" + host + "]"
		}
	}
	return t
}

func validIP(h string) bool {
	_, err := netip.ParseAddr(h)
	return err == nil
}

type exchangeKey struct{}

// forward streams r to t through the ReverseProxy, setting g's credentials.
func (p *Proxy) forward(x *exchange, r *http.Request, t target, g *grant) {
	x.t, x.grant = t, g
	p.rp.ServeHTTP(&x.rec, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	out := pr.Out
	out.URL.Scheme = x.t.scheme
	out.URL.Host = x.t.urlHost
	out.URL.User = nil
	out.Host = x.t.hostHeader
	// ReverseProxy drops hop-by-hop headers (these among them) already; be explicit.
	out.Header.Del("Proxy-Authorization")
	out.Header.Del("Proxy-Connection")
	if g := x.grant; g != nil {
		g.apply(out.Header)
		for k := range out.Trailer {
			if g.sets(k) {
				delete(out.Trailer, k)
			}
		}
		x.e.Grant = g.name
	}
	if out.Body != nil && out.Body != http.NoBody {
		out.Body = &countingBody{ReadCloser: out.Body, n: &x.out}
	}
	x.e.Headers = p.sec.traceHeaders(out.Header, x.grant)
}

func (p *Proxy) modifyResponse(res *http.Response) error {
	if x, ok := res.Request.Context().Value(exchangeKey{}).(*exchange); ok {
		x.upStatus = res.StatusCode
	}
	return nil
}

func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	x, ok := r.Context().Value(exchangeKey{}).(*exchange)
	if !ok {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	var blocked *blockedError
	x.e.Error = p.sec.scrub(err.Error())
	switch {
	case errors.As(err, &blocked):
		x.refuse(http.StatusForbidden, decDeniedAddress, "address", fmt.Sprintf(
			"moatc: %s resolves only to addresses this run may not reach\n", x.t.host), false)
	case certError(err):
		x.refuse(http.StatusBadGateway, decError, "", fmt.Sprintf(
			"moatc: the TLS certificate of %s is not trusted: %s\n", x.t.host, x.e.Error), false)
	default:
		x.refuse(http.StatusBadGateway, decError, "", fmt.Sprintf(
			"moatc: cannot reach %s: %s\n", x.t.dialAddr, x.e.Error), false)
	}
}

func certError(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	return errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid)
}

// blockedError: every address of a target was refused by Config.Check.
type blockedError struct {
	host string
	why  error
}

func (e *blockedError) Error() string {
	return fmt.Sprintf("dial %s: every address is refused: %v", e.host, e.why)
}

// upstreamProxy picks the host's proxy for a request. Names of Config.Hosts are local and
// never chained; an IP literal is vetted by Check even when chained, since no resolution
// stands between the client and the address.
func (p *Proxy) upstreamProxy(req *http.Request) (*url.URL, error) {
	host := policy.NormalizeHost(req.URL.Hostname())
	if _, ok := p.hosts[host]; ok {
		return nil, nil
	}
	u, err := p.cfg.Upstream(req)
	if err != nil || u == nil {
		return u, err
	}
	if a, err := netip.ParseAddr(host); err == nil && p.cfg.Check != nil {
		port := 443
		if req.URL.Scheme == "http" {
			port = 80
		}
		if s := req.URL.Port(); s != "" {
			port, _ = strconv.Atoi(s)
		}
		if err := p.cfg.Check(netip.AddrPortFrom(a.Unmap(), uint16(port))); err != nil {
			return nil, &blockedError{host: host, why: err}
		}
	}
	return u, nil
}

// dial connects to a target on the client's behalf: resolve (Config.Hosts, else DNS), vet
// every address with Config.Check and dial only a vetted address itself, so that a second
// resolution cannot swap it (DNS rebinding). A dial to the host's upstream proxy is not
// vetted: it is the host's configuration, not the client's choice.
func (p *Proxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialBudget)
	defer cancel()
	stop := context.AfterFunc(p.baseCtx, cancel)
	defer stop()
	if p.cfg.Upstream != nil {
		// The transport keeps the request's context values for its dials.
		if x, ok := ctx.Value(exchangeKey{}).(*exchange); ok && addr != x.t.dialAddr {
			return p.dialer.DialContext(ctx, network, addr)
		}
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("dial %s: bad port", addr)
	}
	addrs, err := p.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var refused, failed error
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, uint16(port))
		if p.cfg.Check != nil {
			if err := p.cfg.Check(ap); err != nil {
				refused = err
				continue
			}
		}
		c, err := p.dialer.DialContext(ctx, "tcp", ap.String())
		if err == nil {
			return c, nil
		}
		failed = err
	}
	if failed != nil {
		return nil, failed
	}
	if refused != nil {
		return nil, &blockedError{host: host, why: refused}
	}
	return nil, fmt.Errorf("resolve %s: no addresses", host)
}

// resolve returns host's addresses, IPv4 first.
func (p *Proxy) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	host = policy.NormalizeHost(host)
	if a, ok := p.hosts[host]; ok {
		return []netip.Addr{a}, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	slices.SortStableFunc(ips, func(a, b netip.Addr) int {
		switch {
		case a.Is4() == b.Is4():
			return 0
		case a.Is4():
			return -1
		}
		return 1
	})
	return slices.Compact(ips), nil
}

// countingBody counts the request body bytes the transport sends upstream.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
