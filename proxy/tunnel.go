package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/moatc/moatc/policy"
)

var errSNIMismatch = errors.New("tls server name does not match the CONNECT host")

// tunnelConn is a client connection after CONNECT: the hijacked socket, with the bytes the
// HTTP server had already buffered, and the CONNECT target.
type tunnelConn struct {
	net.Conn
	p    *Proxy
	br   *bufio.Reader // bytes read past the CONNECT request; nil once drained
	host string        // normalized
	port uint16

	sni      string // set when the ClientHello names another host
	mismatch bool

	once sync.Once
}

func (c *tunnelConn) Read(b []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(b)
		}
		c.br = nil
	}
	return c.Conn.Read(b)
}

func (c *tunnelConn) Close() error {
	c.once.Do(func() {
		c.p.mu.Lock()
		delete(c.p.tunnels, c)
		c.p.mu.Unlock()
	})
	return c.Conn.Close()
}

// matches reports whether a request's authority (Host or absolute URI) names the tunnel's
// target; a missing port means 443.
func (c *tunnelConn) matches(hostport string) bool {
	h, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		h, ps = hostport, ""
	}
	if policy.NormalizeHost(h) != c.host {
		return false
	}
	if ps == "" {
		return c.port == 443
	}
	return ps == strconv.Itoa(int(c.port))
}

// newTunnel registers a hijacked connection so that Close reaches it; nil when closed.
func (p *Proxy) newTunnel(conn net.Conn, br *bufio.Reader, host string, port uint16) *tunnelConn {
	tc := &tunnelConn{Conn: conn, p: p, host: host, port: port}
	if br != nil && br.Buffered() > 0 {
		tc.br = br
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shut {
		conn.Close()
		return nil
	}
	p.tunnels[tc] = struct{}{}
	return tc
}

// serveConnect authenticates and vets a CONNECT, then intercepts its TLS and hands the
// decrypted connection to the inner server. Only TLS is intercepted: a client that sends
// anything else after CONNECT is told so and disconnected, since plain HTTP has its own path
// (absolute-form requests) and other protocols are not proxied.
func (p *Proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	x := newExchange(w, r, "https")
	x.e.Path = ""
	handedOff := false
	defer func() {
		if !handedOff {
			p.finish(x)
		}
	}()
	host, port, terr := parseHostPort(r.URL.Host, 0)
	if terr == nil {
		x.e.Host, x.e.Port = host, int(port)
	}
	if !p.authorized(r) {
		x.refuseAuth(true)
		return
	}
	if terr != nil {
		x.e.Error = terr.Error()
		x.refuse(http.StatusBadRequest, decError, "", "moatc: "+terr.Error()+"\n", true)
		return
	}
	if !p.cfg.Policy.Allows(host, port) {
		x.refusePolicy(host, true)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		x.e.Error = "hijack: " + err.Error()
		x.refuse(http.StatusInternalServerError, decError, "", "moatc: internal error\n", true)
		return
	}
	x.rec.status = http.StatusOK
	tc := p.newTunnel(conn, brw.Reader, host, port)
	if tc == nil {
		x.e.Decision, x.e.Error = decError, "proxy closed"
		return
	}
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		tc.Close()
		x.e.Decision, x.e.Error = decError, "write CONNECT reply: "+err.Error()
		return
	}
	tlsConn := tls.Server(tc, p.tlsConf)
	if err := tlsConn.Handshake(); err != nil {
		var rhe tls.RecordHeaderError
		switch {
		case tc.mismatch:
			x.e.Decision = decMismatch
			x.e.Error = fmt.Sprintf("tls server name %q does not match CONNECT host %s", clip(tc.sni, 100), host)
		case errors.As(err, &rhe) && rhe.Conn != nil:
			io.WriteString(conn, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n"+
				"moatc: only TLS is accepted after CONNECT; send plain http:// requests to the proxy directly\n")
			x.e.Decision, x.e.Error = decError, "client sent non-TLS bytes after CONNECT"
		default:
			x.e.Decision, x.e.Error = decError, "tls handshake with client: "+p.sec.scrub(err.Error())
		}
		tc.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	if !p.innerLn.push(tlsConn) {
		tc.Close()
		x.e.Decision, x.e.Error = decError, "proxy closed"
		return
	}
	handedOff = true // the requests inside are traced one by one
}

// checkSNI refuses a ClientHello whose server name is not the CONNECT host (an IP-literal
// CONNECT may have none).
func (p *Proxy) checkSNI(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	tc, ok := hello.Conn.(*tunnelConn)
	if !ok {
		return nil, errors.New("not a tunnel")
	}
	if hello.ServerName == "" {
		if validIP(tc.host) {
			return nil, nil
		}
	} else if policy.NormalizeHost(hello.ServerName) == tc.host {
		return nil, nil
	}
	tc.mismatch, tc.sni = true, hello.ServerName
	return nil, errSNIMismatch
}

func (p *Proxy) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	tc, ok := hello.Conn.(*tunnelConn)
	if !ok {
		return nil, errors.New("not a tunnel")
	}
	return p.cfg.CA.leaf(tc.host)
}

type tunnelKey struct{}

// tunnelContext attaches the CONNECT target to the inner server's requests.
func tunnelContext(ctx context.Context, c net.Conn) context.Context {
	if t, ok := c.(*tls.Conn); ok {
		if tc, ok := t.NetConn().(*tunnelConn); ok {
			return context.WithValue(ctx, tunnelKey{}, tc)
		}
	}
	return ctx
}

// serveTunnel handles a request inside an intercepted tunnel (already authenticated by its
// CONNECT). It goes only to the CONNECT target.
func (p *Proxy) serveTunnel(w http.ResponseWriter, r *http.Request) {
	if !p.track() {
		http.Error(w, "moatc: the proxy is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer p.active.Done()
	x := newExchange(w, r, "https")
	defer p.finish(x)
	tc, _ := r.Context().Value(tunnelKey{}).(*tunnelConn)
	if tc == nil {
		x.e.Error = "request without a tunnel"
		x.refuse(http.StatusInternalServerError, decError, "", "moatc: internal error\n", true)
		return
	}
	x.e.Host, x.e.Port = tc.host, int(tc.port)
	target := net.JoinHostPort(tc.host, strconv.Itoa(int(tc.port)))
	if r.Method == http.MethodConnect {
		x.e.Error = fmt.Sprintf("CONNECT %q inside a tunnel to %s", clip(r.Host, 100), target)
		x.refuse(http.StatusForbidden, decMismatch, "", "moatc: CONNECT inside a tunnel is not allowed\n", false)
		return
	}
	if !tc.matches(r.Host) || r.URL.Host != "" && !tc.matches(r.URL.Host) || r.URL.Scheme != "" && r.URL.Scheme != "https" {
		x.e.Error = fmt.Sprintf("request for %q inside a tunnel to %s", clip(r.Host, 100), target)
		x.refuse(http.StatusMisdirectedRequest, decMismatch, "", fmt.Sprintf(
			"moatc: this connection is for %s only; connect again (CONNECT) for another host\n", target), false)
		return
	}
	p.forward(x, r, newTarget("https", tc.host, tc.port, r.Host), p.grants[tc.host])
}

// chanListener is the inner server's listener: intercepted *tls.Conn values arrive by
// channel, so that net/http sees TLS connections and serves h2 on them.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}
