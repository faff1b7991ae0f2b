package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatc/moatc/policy"
)

const (
	testSecret = "s3cret-run-secret-0123456789"
	testToken  = "Bearer sk-test-TOKEN-9f8e7d6c5b4a"
)

var (
	upstreamOnce sync.Once
	upstreamCert tls.Certificate
	upstreamPool *x509.CertPool
)

// upstreamTLS is a certificate for api.test, other.test and 127.0.0.1, signed by a test CA.
func upstreamTLS(t testing.TB) (tls.Certificate, *x509.CertPool) {
	upstreamOnce.Do(func() {
		caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		caTmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{CommonName: "test upstream CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
		if err != nil {
			panic(err)
		}
		caCert, _ := x509.ParseCertificate(caDER)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: serial(), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			DNSNames: []string{"api.test", "other.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			panic(err)
		}
		upstreamCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		upstreamPool = x509.NewCertPool()
		upstreamPool.AddCert(caCert)
	})
	return upstreamCert, upstreamPool
}

// seen is what an upstream server received.
type seen struct {
	Host, Path, Auth, APIKey string
	Forwarded, ProxyAuth     string // X-Forwarded-For and Via; Proxy-Authorization
	AuthValues, ProtoMajor   int
	BodyBytes                int64
}

type upstream struct {
	srv  *httptest.Server
	port string
	mu   sync.Mutex
	reqs []seen
}

func (u *upstream) seen() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

func (u *upstream) handler(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	u.reqs = append(u.reqs, seen{Host: r.Host, Path: r.URL.Path, Auth: r.Header.Get("Authorization"),
		APIKey: r.Header.Get("X-Api-Key"), AuthValues: len(r.Header.Values("Authorization")),
		Forwarded: r.Header.Get("X-Forwarded-For") + r.Header.Get("Via"), ProxyAuth: r.Header.Get("Proxy-Authorization"), ProtoMajor: r.ProtoMajor, BodyBytes: n})
	u.mu.Unlock()
	switch r.URL.Path {
	case "/redirect":
		http.Redirect(w, r, "https://other.test:"+u.port+"/landing", http.StatusFound)
	default:
		fmt.Fprintf(w, "ok %d", n)
	}
}

// newUpstream starts a server for api.test/other.test/127.0.0.1: TLS (h2 when asked) or plain.
func newUpstream(t testing.TB, useTLS, h2 bool) *upstream {
	u := &upstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(u.handler))
	if useTLS {
		cert, _ := upstreamTLS(t)
		u.srv.EnableHTTP2 = h2
		u.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		u.srv.StartTLS()
	} else {
		u.srv.Start()
	}
	t.Cleanup(u.srv.Close)
	_, u.port, _ = net.SplitHostPort(u.srv.Listener.Addr().String())
	return u
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a running proxy with its trace.
type env struct {
	t     testing.TB
	p     *Proxy
	ca    *CA
	url   *url.URL
	trace *syncBuffer
	logs  *syncBuffer
	done  chan error
}

var (
	testCAOnce sync.Once
	testCA     *CA
	testCAErr  error
)

func sharedCA(t testing.TB) *CA {
	testCAOnce.Do(func() {
		dir, err := tempDir()
		if err != nil {
			testCAErr = err
			return
		}
		testCA, testCAErr = LoadCA(dir)
	})
	if testCAErr != nil {
		t.Fatal(testCAErr)
	}
	return testCA
}

func baseConfig(t testing.TB) Config {
	_, pool := upstreamTLS(t)
	return Config{
		Secret:      testSecret,
		Client:      netip.MustParseAddr("127.0.0.1"),
		Credentials: []Credential{{Grant: "api", Host: "API.test.", Headers: map[string]string{"authorization": testToken}}},
		Hosts: map[string]netip.Addr{
			"api.test":   netip.MustParseAddr("127.0.0.1"),
			"other.test": netip.MustParseAddr("127.0.0.1"),
		},
		CA:      sharedCA(t),
		RootCAs: pool,
	}
}

func startProxy(t testing.TB, cfg Config) *env {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, trace: &syncBuffer{}, logs: &syncBuffer{}, done: make(chan error, 1)}
	cfg.Listener = ln
	if cfg.Trace == nil {
		cfg.Trace = e.trace
	}
	cfg.Logf = func(f string, a ...any) { fmt.Fprintf(e.logs, f+"\n", a...) }
	e.p, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.ca = cfg.CA
	go func() { e.done <- e.p.Serve(context.Background()) }()
	e.url = &url.URL{Scheme: "http", User: url.UserPassword("moatc", testSecret), Host: e.p.Addr().String()}
	t.Cleanup(func() {
		e.p.Close()
		select {
		case err := <-e.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
		if s := e.trace.String(); strings.Contains(s, "sk-test-TOKEN") || strings.Contains(s, testSecret) {
			t.Errorf("trace has a secret:\n%s", s)
		}
		if s := e.logs.String(); strings.Contains(s, "sk-test-TOKEN") || strings.Contains(s, testSecret) {
			t.Errorf("log has a secret:\n%s", s)
		}
	})
	return e
}

// client goes through the proxy with the given credentials and trusts moatc's CA.
func (e *env) client(h2 bool, user *url.Userinfo) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.ca.CertPEM())
	pu := *e.url
	pu.User = user
	tr := &http.Transport{
		Proxy:             http.ProxyURL(&pu),
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: h2,
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func (e *env) goodClient() *http.Client {
	return e.client(false, url.UserPassword("moatc", testSecret))
}

func (e *env) entries() []Entry {
	var out []Entry
	for _, line := range strings.Split(strings.TrimSpace(e.trace.String()), "\n") {
		if line == "" {
			continue
		}
		var en Entry
		if err := json.Unmarshal([]byte(line), &en); err != nil {
			e.t.Fatalf("trace line %q: %v", line, err)
		}
		out = append(out, en)
	}
	return out
}

// waitEntry waits for a trace entry that satisfies ok.
func (e *env) waitEntry(ok func(Entry) bool) Entry {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, en := range e.entries() {
			if ok(en) {
				return en
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no matching trace entry in:\n%s", e.trace.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// rawConnect sends a CONNECT and reads the reply.
func (e *env) rawConnect(target, auth string) (net.Conn, *http.Response) {
	e.t.Helper()
	c, err := net.Dial("tcp", e.p.Addr().String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if auth != "" {
		req += "Proxy-Authorization: " + auth + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		e.t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetReadDeadline(time.Time{})
	return c, resp
}

// tunnel opens an intercepted TLS connection for target with the given SNI.
func (e *env) tunnel(target, sni string, alpn ...string) (*tls.Conn, error) {
	e.t.Helper()
	c, resp := e.rawConnect(target, basic("moatc", testSecret))
	if resp.StatusCode != 200 {
		e.t.Fatalf("CONNECT %s: %s", target, resp.Status)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.ca.CertPEM())
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: pool, NextProtos: alpn})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

func strictPolicy(t testing.TB, entries ...string) policy.Policy {
	p := policy.Policy{Strict: true}
	for _, s := range entries {
		pat, err := policy.ParsePattern(s)
		if err != nil {
			t.Fatal(err)
		}
		p.Allow = append(p.Allow, pat)
	}
	return p
}

func mustStatus(t testing.TB, resp *http.Response, err error, want int) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("status %s, want %d; body %q", resp.Status, want, b)
	}
	return b
}

// forwardProxy is a tiny plain forward proxy (CONNECT only) that resolves names itself.
type forwardProxy struct {
	srv     *httptest.Server
	mu      sync.Mutex
	targets []string
}

func newForwardProxy(t testing.TB, resolve map[string]string) *forwardProxy {
	fp := &forwardProxy{}
	fp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		fp.mu.Lock()
		fp.targets = append(fp.targets, r.Host)
		fp.mu.Unlock()
		host, port, err := net.SplitHostPort(r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if ip, ok := resolve[host]; ok {
			host = ip
		}
		up, err := net.Dial("tcp", net.JoinHostPort(host, port))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
		go func() {
			io.Copy(up, brw)
			up.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(c, up)
		c.Close()
		up.Close()
	}))
	t.Cleanup(fp.srv.Close)
	return fp
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

var errRefused = errors.New("refused by test")
