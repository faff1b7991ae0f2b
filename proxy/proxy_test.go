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
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var tempDirs []string

func tempDir() (string, error) {
	d, err := os.MkdirTemp("", "moatc-proxy-test-")
	if err == nil {
		tempDirs = append(tempDirs, d)
	}
	return d, err
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

func TestCredentialInjected(t *testing.T) {
	up := newUpstream(t, true, false)
	e := startProxy(t, baseConfig(t))
	req, _ := http.NewRequest("GET", "https://api.test:"+up.port+"/v1/things?access_token=query-secret", nil)
	req.Header.Set("Authorization", "Bearer placeholder")
	req.Header.Add("AUTHORIZATION", "Bearer second-placeholder")
	req.Header["authorization"] = []string{"Bearer lower-case-placeholder"}
	req.Header.Set("X-Custom", "visible")
	resp, err := e.goodClient().Do(req)
	mustStatus(t, resp, err, 200)

	s := up.seen()
	if len(s) != 1 || s[0].Auth != testToken || s[0].AuthValues != 1 || s[0].Forwarded != "" || s[0].ProxyAuth != "" {
		t.Fatalf("upstream saw %+v, want the granted token alone", s)
	}
	en := e.waitEntry(func(en Entry) bool { return en.Path == "/v1/things" })
	if en.Decision != "allowed" || en.Grant != "api" || en.Scheme != "https" || en.Host != "api.test" ||
		en.Port != atoi(up.port) || en.Status != 200 || en.Method != "GET" || en.BytesIn != int64(len("ok 0")) {
		t.Errorf("entry %+v", en)
	}
	if en.Headers["Authorization"] != "[redacted]" || en.Headers["X-Custom"] != "visible" {
		t.Errorf("entry headers %v", en.Headers)
	}
	if strings.Contains(e.trace.String(), "query-secret") || strings.Contains(e.trace.String(), "placeholder") {
		t.Errorf("trace has the query or a client secret: %s", e.trace.String())
	}
}

func TestCredentialHeaderAnyCase(t *testing.T) {
	up := newUpstream(t, true, true)
	cfg := baseConfig(t)
	cfg.Credentials = []Credential{
		{Grant: "k", Host: "api.test", Headers: map[string]string{"x-api-key": "key-SECRET-value-1234"}},
		{Grant: "t", Host: "api.test", Headers: map[string]string{"X-Tenant": "tenant-SECRET-42"}},
	}
	e := startProxy(t, cfg)
	for _, h2 := range []bool{false, true} {
		req, _ := http.NewRequest("GET", "https://api.test:"+up.port+"/", nil)
		req.Header["x-api-key"] = []string{"fake-one"}
		req.Header["X-API-KEY"] = []string{"fake-two"}
		resp, err := e.client(h2, url.UserPassword("moatc", testSecret)).Do(req)
		mustStatus(t, resp, err, 200)
	}
	for _, s := range up.seen() {
		if s.APIKey != "key-SECRET-value-1234" {
			t.Errorf("upstream saw X-Api-Key %q", s.APIKey)
		}
	}
	if tr := e.trace.String(); strings.Contains(tr, "key-SECRET") || strings.Contains(tr, "tenant-SECRET") {
		t.Error("trace has a grant value")
	}
	if en := e.waitEntry(func(Entry) bool { return true }); en.Grant != "k,t" || en.Headers["X-Tenant"] != "[redacted]" {
		t.Errorf("entry %+v", en)
	}
}

func TestAuthRequired(t *testing.T) {
	up := newUpstream(t, false, false)
	e := startProxy(t, baseConfig(t))
	target := "http://other.test:" + up.port + "/"
	for name, user := range map[string]*url.Userinfo{
		"no secret":    nil,
		"wrong secret": url.UserPassword("moatc", "wrong"),
		"wrong user":   url.UserPassword("root", testSecret),
		"empty":        url.UserPassword("moatc", ""),
	} {
		resp, err := e.client(false, user).Get(target)
		mustStatus(t, resp, err, http.StatusProxyAuthRequired)
		if got := resp.Header.Get("Proxy-Authenticate"); got != `Basic realm="moatc"` {
			t.Errorf("%s: Proxy-Authenticate %q", name, got)
		}
		_, cresp := e.rawConnect("api.test:"+up.port, "")
		if cresp.StatusCode != http.StatusProxyAuthRequired {
			t.Errorf("%s: CONNECT got %s", name, cresp.Status)
		}
	}
	for _, bad := range []string{"Bearer " + testSecret, "Basic !!!", basic("moatc", testSecret+"x"), "basic"} {
		_, cresp := e.rawConnect("api.test:"+up.port, bad)
		if cresp.StatusCode != http.StatusProxyAuthRequired {
			t.Errorf("CONNECT with %q got %s", bad, cresp.Status)
		}
	}
	if n := len(up.seen()); n != 0 {
		t.Errorf("upstream saw %d requests", n)
	}
	en := e.waitEntry(func(en Entry) bool { return en.Decision == "denied-auth" })
	if en.Status != 407 || en.Headers != nil {
		t.Errorf("entry %+v", en)
	}
	// The right secret works (case-insensitive scheme too).
	_, cresp := e.rawConnect("api.test:"+up.port, "basic "+basic("moatc", testSecret)[6:])
	if cresp.StatusCode != 200 {
		t.Errorf("right secret: %s", cresp.Status)
	}
}

func TestWrongSource(t *testing.T) {
	up := newUpstream(t, false, false)
	cfg := baseConfig(t)
	cfg.Client = netip.MustParseAddr("127.0.0.2")
	e := startProxy(t, cfg)
	resp, err := e.goodClient().Get("http://other.test:" + up.port + "/")
	mustStatus(t, resp, err, http.StatusProxyAuthRequired)
	_, cresp := e.rawConnect("api.test:"+up.port, basic("moatc", testSecret))
	if cresp.StatusCode != http.StatusProxyAuthRequired {
		t.Errorf("CONNECT from the wrong source: %s", cresp.Status)
	}
	if len(up.seen()) != 0 {
		t.Error("upstream saw a request")
	}
}

func TestManyWrongSecrets(t *testing.T) {
	up := newUpstream(t, false, false)
	e := startProxy(t, baseConfig(t))
	bad := e.client(false, url.UserPassword("moatc", "guess"))
	target := "http://other.test:" + up.port + "/"
	for i := range 1000 {
		resp, err := bad.Get(target)
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusProxyAuthRequired {
			t.Fatalf("attempt %d: %s", i, resp.Status)
		}
	}
	resp, err := e.goodClient().Get(target)
	mustStatus(t, resp, err, 200)
	resp, err = e.goodClient().Get("https://api.test:" + newUpstream(t, true, false).port + "/")
	mustStatus(t, resp, err, 200)
}

func TestStrictPolicy(t *testing.T) {
	up := newUpstream(t, true, false)
	plain := newUpstream(t, false, false)
	cfg := baseConfig(t)
	cfg.Policy = strictPolicy(t, "api.test", "*.allowed.test")
	e := startProxy(t, cfg)
	resp, err := e.goodClient().Get("https://api.test:" + up.port + "/")
	mustStatus(t, resp, err, 200)

	c, cresp := e.rawConnect("other.test:"+up.port, basic("moatc", testSecret))
	body, _ := io.ReadAll(cresp.Body)
	if cresp.StatusCode != http.StatusProxyAuthRequired || cresp.Header.Get("X-Moatc-Blocked") != "network-policy" ||
		!strings.Contains(string(body), "moatc run --allow other.test") || !strings.Contains(string(body), "network.allow") {
		t.Errorf("CONNECT other.test: %s %v %q", cresp.Status, cresp.Header, body)
	}
	// Refused before any TLS: the proxy closes the connection.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Errorf("connection still open after a refused CONNECT")
	}

	resp, err = e.goodClient().Get("http://other.test:" + plain.port + "/")
	b := mustStatus(t, resp, err, http.StatusProxyAuthRequired)
	if resp.Header.Get("X-Moatc-Blocked") != "network-policy" || !strings.Contains(string(b), "not allowed") {
		t.Errorf("plain other.test: %v %q", resp.Header, b)
	}
	if len(plain.seen()) != 0 || len(up.seen()) != 1 {
		t.Errorf("upstreams saw %v %v", plain.seen(), up.seen())
	}
	e.waitEntry(func(en Entry) bool {
		return en.Decision == "denied-policy" && en.Method == "CONNECT" && en.Host == "other.test" && en.Status == 407
	})
}

func TestCheckRefuses(t *testing.T) {
	up := newUpstream(t, true, false)
	cfg := baseConfig(t)
	var checked atomic.Int32
	cfg.Check = func(ap netip.AddrPort) error {
		checked.Add(1)
		if ap.Addr() == netip.MustParseAddr("127.0.0.1") {
			return errRefused
		}
		return nil
	}
	e := startProxy(t, cfg)
	resp, err := e.goodClient().Get("https://api.test:" + up.port + "/")
	mustStatus(t, resp, err, http.StatusForbidden)
	if resp.Header.Get("X-Moatc-Blocked") != "address" {
		t.Errorf("header %v", resp.Header)
	}
	resp, err = e.goodClient().Get("http://127.0.0.1:" + up.port + "/")
	mustStatus(t, resp, err, http.StatusForbidden)
	if len(up.seen()) != 0 || checked.Load() < 2 {
		t.Errorf("upstream saw %v, checked %d", up.seen(), checked.Load())
	}
	en := e.waitEntry(func(en Entry) bool { return en.Decision == "denied-address" })
	if en.Status != 403 || !strings.Contains(en.Error, "refused by test") {
		t.Errorf("entry %+v", en)
	}
}

func TestSNIMismatch(t *testing.T) {
	up := newUpstream(t, true, false)
	e := startProxy(t, baseConfig(t))
	if _, err := e.tunnel("other.test:"+up.port, "api.test"); err == nil {
		t.Fatal("handshake with SNI api.test inside a CONNECT to other.test succeeded")
	}
	if _, err := e.tunnel("api.test:"+up.port, ""); err == nil {
		t.Fatal("handshake without SNI inside a CONNECT to a name succeeded")
	}
	if len(up.seen()) != 0 {
		t.Errorf("upstream saw %v", up.seen())
	}
	e.waitEntry(func(en Entry) bool {
		return en.Decision == "refused-mismatch" && en.Host == "other.test" && strings.Contains(en.Error, `"api.test"`)
	})
	// The matching name works.
	tc, err := e.tunnel("api.test:"+up.port, "API.test")
	if err != nil {
		t.Fatal(err)
	}
	tc.Close()
}

func TestHostSpoof(t *testing.T) {
	up := newUpstream(t, true, true)
	e := startProxy(t, baseConfig(t))
	for _, tc := range []struct{ name, requestLine, host string }{
		{"host header", "GET / HTTP/1.1", "api.test:" + up.port},
		{"host without port", "GET / HTTP/1.1", "api.test"},
		{"absolute uri", "GET https://api.test:" + up.port + "/ HTTP/1.1", "other.test:" + up.port},
		{"inner connect", "CONNECT api.test:" + up.port + " HTTP/1.1", "api.test:" + up.port},
		{"inner connect same host", "CONNECT other.test:" + up.port + " HTTP/1.1", "other.test:" + up.port},
		{"other port", "GET / HTTP/1.1", "other.test:1"},
	} {
		conn, err := e.tunnel("other.test:"+up.port, "other.test")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "%s\r\nHost: %s\r\nAuthorization: Bearer x\r\n\r\n", tc.requestLine, tc.host)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.StatusCode != http.StatusMisdirectedRequest && resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %s", tc.name, resp.Status)
		}
		conn.Close()
	}
	// h2 with a spoofed :authority.
	conn, err := e.tunnel("other.test:"+up.port, "other.test", "h2")
	if err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q", p)
	}
	conn.Close()
	h2 := e.client(true, url.UserPassword("moatc", testSecret))
	req, _ := http.NewRequest("GET", "https://other.test:"+up.port+"/", nil)
	req.Host = "api.test:" + up.port
	resp, err := h2.Do(req)
	mustStatus(t, resp, err, http.StatusMisdirectedRequest)
	if resp.ProtoMajor != 2 {
		t.Errorf("proto %d", resp.ProtoMajor)
	}
	for _, s := range up.seen() {
		if s.Auth == testToken {
			t.Errorf("upstream saw the token: %+v", s)
		}
	}
	if len(up.seen()) != 0 {
		t.Errorf("upstream saw %v", up.seen())
	}
	en := e.waitEntry(func(en Entry) bool { return en.Decision == "refused-mismatch" })
	if en.Grant != "" || en.Headers != nil {
		t.Errorf("entry %+v", en)
	}
}

func TestPlainHTTP(t *testing.T) {
	up := newUpstream(t, false, false)
	e := startProxy(t, baseConfig(t))
	resp, err := e.goodClient().Get("http://api.test:" + up.port + "/x")
	b := mustStatus(t, resp, err, http.StatusForbidden)
	if !strings.Contains(string(b), "https://api.test") {
		t.Errorf("body %q", b)
	}
	if len(up.seen()) != 0 {
		t.Fatalf("upstream saw %v", up.seen())
	}
	e.waitEntry(func(en Entry) bool { return en.Decision == "refused-plain-http" && en.Status == 403 })

	req, _ := http.NewRequest("POST", "http://other.test:"+up.port+"/post?q=1", strings.NewReader("hello"))
	req.Header.Set("Authorization", "Basic client-own")
	resp, err = e.goodClient().Do(req)
	b = mustStatus(t, resp, err, 200)
	if string(b) != "ok 5" {
		t.Errorf("body %q", b)
	}
	s := up.seen()
	if len(s) != 1 || s[0].Host != "other.test:"+up.port || s[0].Auth != "Basic client-own" || s[0].Forwarded != "" || s[0].ProxyAuth != "" {
		t.Errorf("upstream saw %+v", s)
	}
	en := e.waitEntry(func(en Entry) bool { return en.Path == "/post" })
	if en.Scheme != "http" || en.BytesOut != 5 || en.BytesIn != 4 || en.Decision != "allowed" || en.Grant != "" {
		t.Errorf("entry %+v", en)
	}
	// Not a proxy request.
	resp, err = http.Get("http://" + e.p.Addr().String() + "/")
	mustStatus(t, resp, err, http.StatusProxyAuthRequired)
}

func TestRedirectToOtherHost(t *testing.T) {
	up := newUpstream(t, true, false)
	e := startProxy(t, baseConfig(t))
	c := e.goodClient()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get("https://api.test:" + up.port + "/redirect")
	mustStatus(t, resp, err, http.StatusFound)
	if loc := resp.Header.Get("Location"); loc != "https://other.test:"+up.port+"/landing" {
		t.Errorf("Location %q", loc)
	}
	c.CheckRedirect = nil
	resp, err = c.Get("https://api.test:" + up.port + "/redirect")
	mustStatus(t, resp, err, 200)
	var landed bool
	for _, s := range up.seen() {
		if s.Path == "/landing" {
			landed = true
			if s.Auth != "" || !strings.HasPrefix(s.Host, "other.test") {
				t.Errorf("second host saw %+v", s)
			}
		} else if s.Auth != testToken {
			t.Errorf("first host saw %+v", s)
		}
	}
	if !landed {
		t.Error("redirect not followed")
	}
}

func TestUntrustedUpstream(t *testing.T) {
	bad := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("upstream with an untrusted certificate got a request")
	}))
	defer bad.Close()
	_, port, _ := net.SplitHostPort(bad.Listener.Addr().String())
	e := startProxy(t, baseConfig(t))
	resp, err := e.goodClient().Get("https://127.0.0.1:" + port + "/")
	b := mustStatus(t, resp, err, http.StatusBadGateway)
	if !strings.Contains(string(b), "certificate") {
		t.Errorf("body %q", b)
	}
	en := e.waitEntry(func(en Entry) bool { return en.Status == 502 })
	if en.Decision != "error" || !strings.Contains(en.Error, "certificate") || en.Host != "127.0.0.1" {
		t.Errorf("entry %+v", en)
	}
}

func TestIPLiteral(t *testing.T) {
	up := newUpstream(t, true, false)
	e := startProxy(t, baseConfig(t))
	resp, err := e.goodClient().Get("https://127.0.0.1:" + up.port + "/ip")
	mustStatus(t, resp, err, 200)
	if s := up.seen(); len(s) != 1 || s[0].Auth != "" {
		t.Errorf("upstream saw %+v", s)
	}
}

func TestHTTP2BothSides(t *testing.T) {
	up := newUpstream(t, true, true)
	e := startProxy(t, baseConfig(t))
	resp, err := e.client(true, url.UserPassword("moatc", testSecret)).Get("https://api.test:" + up.port + "/h2")
	mustStatus(t, resp, err, 200)
	if resp.ProtoMajor != 2 {
		t.Errorf("client got HTTP/%d", resp.ProtoMajor)
	}
	s := up.seen()
	if len(s) != 1 || s[0].ProtoMajor != 2 || s[0].Auth != testToken {
		t.Errorf("upstream saw %+v", s)
	}
	// HTTP/1.1 client, h2 upstream.
	resp, err = e.goodClient().Get("https://api.test:" + up.port + "/h1")
	mustStatus(t, resp, err, 200)
	if resp.ProtoMajor != 1 {
		t.Errorf("client got HTTP/%d", resp.ProtoMajor)
	}
}

// zeros is an endless reader.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestLargeStreamingBody(t *testing.T) {
	const size = 100 << 20
	up := newUpstream(t, true, false)
	e := startProxy(t, baseConfig(t))
	c := e.goodClient()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	peak := uint64(0)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
		}
	}()
	req, _ := http.NewRequest("PUT", "https://api.test:"+up.port+"/upload", io.LimitReader(zeros{}, size))
	resp, err := c.Do(req)
	close(stop)
	<-sampled
	b := mustStatus(t, resp, err, 200)
	runtime.ReadMemStats(&after)
	if string(b) != fmt.Sprintf("ok %d", size) {
		t.Errorf("upstream got %q", b)
	}
	if grew := int64(peak) - int64(before.HeapInuse); grew > 32<<20 {
		t.Errorf("heap grew by %d MB while streaming", grew>>20)
	}
	en := e.waitEntry(func(en Entry) bool { return en.Path == "/upload" })
	if en.BytesOut != size {
		t.Errorf("entry bytes_out %d", en.BytesOut)
	}
}

func TestChainedUpstream(t *testing.T) {
	up := newUpstream(t, true, true)
	fp := newForwardProxy(t, map[string]string{"api.test": "127.0.0.1"})
	fpURL, _ := url.Parse(fp.srv.URL)
	cfg := baseConfig(t)
	cfg.Hosts = nil // the chained proxy resolves api.test
	cfg.Check = func(netip.AddrPort) error { return errRefused }
	cfg.Upstream = http.ProxyURL(fpURL)
	e := startProxy(t, cfg)
	for _, h2 := range []bool{false, true} {
		resp, err := e.client(h2, url.UserPassword("moatc", testSecret)).Get("https://api.test:" + up.port + "/chained")
		mustStatus(t, resp, err, 200)
	}
	if s := up.seen(); len(s) != 2 || s[0].Auth != testToken {
		t.Errorf("upstream saw %+v", s)
	}
	fp.mu.Lock()
	targets := fp.targets
	fp.mu.Unlock()
	if len(targets) == 0 || targets[0] != "api.test:"+up.port {
		t.Errorf("chained proxy saw %v", targets)
	}
	// An IP literal is still vetted when chained.
	resp, err := e.goodClient().Get("https://127.0.0.1:" + up.port + "/")
	mustStatus(t, resp, err, http.StatusForbidden)
}

func TestNonTLSAfterConnect(t *testing.T) {
	up := newUpstream(t, true, false)
	e := startProxy(t, baseConfig(t))
	c, resp := e.rawConnect("api.test:"+up.port, basic("moatc", testSecret))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c) // the proxy closes the connection
	if !strings.Contains(string(b), "only TLS") {
		t.Errorf("reply %q", b)
	}
	if len(up.seen()) != 0 {
		t.Errorf("upstream saw %v", up.seen())
	}
	e.waitEntry(func(en Entry) bool { return en.Method == "CONNECT" && en.Decision == "error" })
}

func TestHostsMap(t *testing.T) {
	up := newUpstream(t, false, false)
	cfg := baseConfig(t)
	cfg.Hosts = map[string]netip.Addr{"moatc-host": netip.MustParseAddr("::ffff:127.0.0.1")}
	var got []netip.AddrPort
	cfg.Check = func(ap netip.AddrPort) error { got = append(got, ap); return nil }
	e := startProxy(t, cfg)
	resp, err := e.goodClient().Get("http://moatc-host:" + up.port + "/")
	mustStatus(t, resp, err, 200)
	if len(got) != 1 || got[0].String() != "127.0.0.1:"+up.port {
		t.Errorf("checked %v", got)
	}
}

func TestCloseStopsServe(t *testing.T) {
	up := newUpstream(t, true, true)
	plain := newUpstream(t, false, false)
	base := runtime.NumGoroutine()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(t)
	cfg.Listener = ln
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	e := &env{t: t, p: p, ca: cfg.CA, trace: &syncBuffer{}, url: &url.URL{Scheme: "http", User: url.UserPassword("moatc", testSecret), Host: p.Addr().String()}}
	h1, h2 := e.goodClient(), e.client(true, url.UserPassword("moatc", testSecret))
	for _, c := range []*http.Client{h1, h2} {
		resp, err := c.Get("https://api.test:" + up.port + "/")
		mustStatus(t, resp, err, 200)
		resp, err = c.Get("http://other.test:" + plain.port + "/")
		mustStatus(t, resp, err, 200)
	}
	// A connection stuck in its handshake, and an idle one.
	stuck, cresp := e.rawConnect("api.test:"+up.port, basic("moatc", testSecret))
	if cresp.StatusCode != 200 {
		t.Fatal(cresp.Status)
	}
	idle, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	stuck.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := stuck.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("tunnel in handshake not closed: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	h1.Transport.(*http.Transport).CloseIdleConnections()
	h2.Transport.(*http.Transport).CloseIdleConnections()
	up.srv.CloseClientConnections()
	plain.srv.CloseClientConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
	if _, err := net.DialTimeout("tcp", p.Addr().String(), time.Second); err == nil {
		t.Error("still listening after Close")
	}
}

func TestNewValidates(t *testing.T) {
	good := baseConfig(t)
	for name, mod := range map[string]func(*Config){
		"no secret": func(c *Config) { c.Secret = "" },
		"no client": func(c *Config) { c.Client = netip.Addr{} },
		"no CA":     func(c *Config) { c.CA = nil },
		"host w/ port": func(c *Config) {
			c.Credentials = []Credential{{Grant: "g", Host: "api.test:443", Headers: map[string]string{"A": "b"}}}
		},
		"bad header": func(c *Config) {
			c.Credentials = []Credential{{Grant: "g", Host: "a.test", Headers: map[string]string{"A B": "b"}}}
		},
		"newline value": func(c *Config) {
			c.Credentials = []Credential{{Grant: "g", Host: "a.test", Headers: map[string]string{"A": "b\r\nX: y"}}}
		},
		"host header": func(c *Config) {
			c.Credentials = []Credential{{Grant: "g", Host: "a.test", Headers: map[string]string{"host": "b"}}}
		},
	} {
		cfg := good
		mod(&cfg)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Listener = ln
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		} else if strings.Contains(err.Error(), "b\r\n") {
			t.Errorf("%s: error has the value: %v", name, err)
		}
		if _, err := ln.Accept(); err == nil {
			t.Errorf("%s: listener not closed", name)
		}
	}
}

func TestTLSMinVersion(t *testing.T) {
	up := newUpstream(t, true, false)
	e := startProxy(t, baseConfig(t))
	c, resp := e.rawConnect("api.test:"+up.port, basic("moatc", testSecret))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err := tc.Handshake(); err == nil {
		t.Error("TLS 1.1 handshake succeeded")
	}
}

func TestCloseBeforeServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(t)
	cfg.Listener = ln
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve after Close did not return")
	}
}
