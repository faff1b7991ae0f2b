package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/http/cgi"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatc/moatc/internal/testnet"
)

// The tools image: curl, git and iproute2 on Debian, made once per suite from the
// dependency registry with moatc's own builder.
var (
	toolsOnce sync.Once
	toolsName string
	toolsErr  error
)

func toolsImage(t *testing.T) string {
	t.Helper()
	requireStack(t)
	toolsOnce.Do(func() {
		ws, err := os.MkdirTemp(home, "tools-")
		if err != nil {
			toolsErr = err
			return
		}
		os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies: [curl, git, apt:iproute2]\n"), 0o644)
		r := moatcRun(t, opts{}, "build", "-q", ws)
		if r.code != 0 {
			toolsErr = fmt.Errorf("building the tools image: exit %d: %s", r.code, r.stderr)
			return
		}
		dry := moatcRun(t, opts{}, "build", "--dry-run", ws).stdout
		toolsName = strings.Fields(strings.SplitN(dry, "\n", 2)[0])[2] // "# image moatc/run:HASH from BASE"
	})
	if toolsErr != nil {
		t.Fatal(toolsErr)
	}
	return toolsName
}

// fakeAPI is an HTTPS server on the host standing for a provider's API: its own CA (given to
// runs' proxies as the upstream bundle), every request recorded. /api answers "api-ok",
// /redirect sends the client to the same server under another name (its IP), /git/ serves a
// real repository with git's http-backend.
type fakeAPI struct {
	port   int
	caFile string

	mu   sync.Mutex
	seen []seenRequest
}

type seenRequest struct {
	Host, Path, Authorization, APIKey string
}

func newFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake API test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	api := &fakeAPI{caFile: filepath.Join(t.TempDir(), "fake-ca.pem")}
	os.WriteFile(api.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	var certMu sync.Mutex
	certs := map[string]*tls.Certificate{}
	// A leaf for whatever name or address the client asks for: the proxy decides what is
	// reached, and this server must answer for moatc-host and for the gateway's address.
	leaf := func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		name := hello.ServerName
		if name == "" {
			name, _, _ = net.SplitHostPort(hello.Conn.LocalAddr().String())
		}
		certMu.Lock()
		defer certMu.Unlock()
		if c := certs[name]; c != nil {
			return c, nil
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if ip := net.ParseIP(name); ip != nil {
			tmpl.IPAddresses = []net.IP{ip}
		} else {
			tmpl.DNSNames = []string{name}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
		certs[name] = c
		return c, nil
	}
	repos := t.TempDir()
	src := filepath.Join(repos, "src")
	for _, args := range [][]string{
		{"init", "-q", "-b", "main", src},
		{"-C", src, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "first"},
		{"clone", "-q", "--bare", src, filepath.Join(repos, "repo.git")},
	} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	backend := &cgi.Handler{Path: "/usr/lib/git-core/git-http-backend", Root: "/git",
		Env: []string{"GIT_PROJECT_ROOT=" + repos, "GIT_HTTP_EXPORT_ALL=1"}}
	mux := http.NewServeMux()
	mux.HandleFunc("/api", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api-ok\n") })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
		http.Redirect(w, r, "https://"+local+"/api", http.StatusFound)
	})
	mux.Handle("/git/", backend)
	// The agents' APIs, as much as one prompt needs (see agents_test.go).
	mux.HandleFunc("/v1/messages", func(w http.ResponseWriter, r *http.Request) { serveSSE(w, r, anthropicAnswer) })
	mux.HandleFunc("/v1/responses", func(w http.ResponseWriter, r *http.Request) { serveSSE(w, r, openaiAnswer) })
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	api.port = l.Addr().(*net.TCPAddr).Port
	srv := &http.Server{
		TLSConfig: &tls.Config{GetCertificate: leaf},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			api.mu.Lock()
			api.seen = append(api.seen, seenRequest{Host: r.Host, Path: r.URL.Path, Authorization: r.Header.Get("Authorization"), APIKey: r.Header.Get("X-Api-Key")})
			api.mu.Unlock()
			mux.ServeHTTP(w, r)
		}),
	}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	return api
}

func (a *fakeAPI) requests() []seenRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seenRequest(nil), a.seen...)
}

func (a *fakeAPI) reset() {
	a.mu.Lock()
	a.seen = nil
	a.mu.Unlock()
}

// newToken stores a grant for moatc-host under name, with a fresh random token, and returns it.
func newToken(t *testing.T, name string) string {
	t.Helper()
	b := make([]byte, 16)
	rand.Read(b)
	tok := "tok" + hex.EncodeToString(b)
	r := moatcRun(t, opts{stdin: tok + "\n"}, "grant", "add", name, "--host", "moatc-host", "--header", "Authorization: Bearer {{token}}")
	if r.code != 0 {
		t.Fatalf("grant add: exit %d %s", r.code, r.stderr)
	}
	t.Cleanup(func() { moatcRun(t, opts{}, "revoke", name) })
	return tok
}

type traceEntry struct {
	Method, Host, Path, Grant, Decision string
	Status                              int
	Headers                             map[string]string
}

func traceOf(t *testing.T, ref string) ([]traceEntry, string) {
	t.Helper()
	raw := mustRun(t, "trace", "--json", ref).stdout
	var out []traceEntry
	for _, l := range strings.Split(strings.TrimSpace(raw), "\n") {
		if l == "" {
			continue
		}
		var e traceEntry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("trace line %q: %v", l, err)
		}
		out = append(out, e)
	}
	return out, raw
}

// scanFor fails the test when any file under dir holds needle.
func scanFor(t *testing.T, what, dir, needle string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		if containsStream(f, needle) {
			t.Errorf("%s: the token is in %s", what, p)
		}
		return nil
	})
}

func containsStream(r io.Reader, needle string) bool {
	buf := make([]byte, 1<<20)
	carry := []byte{}
	for {
		n, err := r.Read(buf)
		chunk := append(carry, buf[:n]...)
		if bytes.Contains(chunk, []byte(needle)) {
			return true
		}
		if len(chunk) > len(needle) {
			carry = append([]byte{}, chunk[len(chunk)-len(needle):]...)
		}
		if err != nil {
			return false
		}
	}
}

// TestGrantReachesAPIButNotTheContainer: curl and git inside a run with a grant reach a fake
// API on the host through the run's proxy, and the API sees the real token; nothing in the
// container (environment, processes, files), in the run's records or logs, in moatc's -v
// output or in the host's process list holds it. Requests without the proxy's secret get 407,
// host spoofing and plain http get no token, a redirect to another host carries none.
func TestGrantReachesAPIButNotTheContainer(t *testing.T) {
	img := toolsImage(t)
	api := newFakeAPI(t)
	tok := newToken(t, "fakeapi")
	p := api.port
	script := strings.Join([]string{
		// The client's own placeholder is replaced.
		fmt.Sprintf(`echo "api: $(curl -sS -H 'Authorization: Bearer placeholder' https://moatc-host:%d/api)"`, p),
		fmt.Sprintf(`git ls-remote https://moatc-host:%d/git/repo.git >/dev/null && echo git: ok`, p),
		// Plain http to a granted host: refused, nothing sent.
		fmt.Sprintf(`echo "plain: $(curl -s -o /dev/null -w '%%{http_code}' http://moatc-host:%d/api)"`, p),
		// A redirect to another name (the same server at the gateway's address).
		fmt.Sprintf(`echo "redirect: $(curl -sS -L https://moatc-host:%d/redirect)"`, p),
		// CONNECT to the address, inner Host the granted name.
		fmt.Sprintf(`echo "spoof: $(curl -s -o /dev/null -w '%%{http_code}' -H 'Host: moatc-host:%d' https://$(getent hosts moatc-host | cut -d' ' -f1):%d/api)"`, p, p),
		// Without the secret, and with a wrong one.
		fmt.Sprintf(`gw=$(getent hosts moatc-host | cut -d' ' -f1); port=${HTTPS_PROXY##*:}; echo "nosecret: $(curl -s -o /dev/null -w '%%{http_code}' --proxy http://$gw:$port http://moatc-host:%d/api)"`, p),
		fmt.Sprintf(`echo "wrongsecret: $(curl -s -o /dev/null -w '%%{http_code}' --proxy http://moatc:wrong@$gw:$port http://moatc-host:%d/api)"`, p),
		// A TLS server name other than the CONNECT host: no handshake, nothing sent.
		fmt.Sprintf(`s=${HTTPS_PROXY#http://moatc:}; s=${s%%%%@*}; if echo | timeout 10 openssl s_client -proxy $gw:$port -proxy_user moatc -proxy_pass pass:$s -connect moatc-host:%d -servername evil.example >/dev/null 2>&1; then echo sni: accepted; else echo sni: refused; fi`, p),
		// Everything the container holds, for the host to search.
		`env > /workspace/env.txt; cat /proc/[0-9]*/environ > /workspace/environ.bin 2>/dev/null; cat /proc/[0-9]*/cmdline > /workspace/cmdline.bin 2>/dev/null`,
		`tar -cf /workspace/fs.tar --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./workspace -C / . 2>/dev/null`,
		`touch /workspace/requests-done; sleep 2`,
	}, "\n")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			api.reset()
			ws := workspace(t)
			name := "grant-" + rt
			args := append([]string{"-v", "run", "-n", name, "--image", img, "--grant", "fakeapi", "--host-port", fmt.Sprint(p), "--upstream-ca", api.caFile}, sandboxArgs(rt)...)
			cmd := exec.Command(moatc, append(args, ws, "--", "bash", "-c", script)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// While the run is alive: the host's process list.
			deadline := time.Now().Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				if _, err := os.Stat(filepath.Join(ws, "requests-done")); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			ps, _ := exec.Command("ps", "-eww", "-o", "args").Output()
			if bytes.Contains(ps, []byte(tok)) {
				t.Error("the host's ps shows the token")
			}
			cmd.Wait()
			out := stdout.String()
			for _, want := range []string{"api: api-ok\n", "git: ok\n", "plain: 403\n", "redirect: api-ok\n", "nosecret: 407\n", "wrongsecret: 407\n", "sni: refused\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("missing %q in the run's output:\n%s\nstderr: %s", want, out, stderr.String())
				}
			}
			if strings.Contains(out, "spoof: 200") {
				t.Errorf("a spoofed Host was served: %s", out)
			}
			// What the API saw: the real token on the granted name only.
			var granted, other int
			for _, rq := range api.requests() {
				if strings.HasPrefix(rq.Host, "moatc-host") {
					granted++
					if rq.Authorization != "Bearer "+tok {
						t.Errorf("request to %s%s carried %q, want the grant's token", rq.Host, rq.Path, rq.Authorization)
					}
				} else {
					other++
					if strings.Contains(rq.Authorization, tok) || rq.Authorization != "" {
						t.Errorf("request to %s%s (not granted) carried Authorization %q", rq.Host, rq.Path, rq.Authorization)
					}
				}
			}
			if granted < 3 || other < 1 {
				t.Errorf("the API saw %d requests to the granted name and %d to others; want >= 3 and >= 1: %+v", granted, other, api.requests())
			}
			// Nowhere the token may not be.
			if strings.Contains(out+stderr.String(), tok) {
				t.Error("the token is in moatc's -v output or the run's output")
			}
			for _, f := range []string{"env.txt", "environ.bin", "cmdline.bin", "fs.tar"} {
				fh, err := os.Open(filepath.Join(ws, f))
				if err != nil {
					t.Fatalf("the container did not write %s: %v", f, err)
				}
				if containsStream(fh, tok) {
					t.Errorf("the token is in the container's %s", f)
				}
				fh.Close()
			}
			if st, err := os.Stat(filepath.Join(ws, "fs.tar")); err != nil || st.Size() < 10<<20 {
				t.Errorf("the container's filesystem was not archived whole: %v", err)
			}
			env, _ := os.ReadFile(filepath.Join(ws, "env.txt"))
			for _, want := range []string{"HTTPS_PROXY=http://moatc:", "SSL_CERT_FILE=/etc/moatc/ca-bundle.pem", "NODE_EXTRA_CA_CERTS=/etc/moatc/ca.pem", "NO_PROXY=localhost,127.0.0.1,::1"} {
				if !bytes.Contains(env, []byte(want)) {
					t.Errorf("the container's environment lacks %q", want)
				}
			}
			logs := moatcRun(t, opts{}, "logs", name)
			if strings.Contains(logs.stdout+logs.stderr, tok) {
				t.Error("the token is in moatc logs")
			}
			scanFor(t, "run records", filepath.Join(home, "runs"), tok)
			scanFor(t, "proxy state", filepath.Join(home, "proxy"), tok)
			scanFor(t, "runsc logs", filepath.Join(home, "runsc"), tok)
			// The trace: every request, the grant named, its value redacted.
			entries, raw := traceOf(t, name)
			if strings.Contains(raw, tok) {
				t.Error("the token is in network.jsonl")
			}
			var allowed, auth, plain, mismatch int
			for _, e := range entries {
				switch e.Decision {
				case "allowed":
					allowed++
					if e.Host == "moatc-host" && (e.Grant != "fakeapi" || e.Headers["Authorization"] != "[redacted]") {
						t.Errorf("trace of a granted request: %+v", e)
					}
				case "denied-auth":
					auth++
				case "refused-plain-http":
					plain++
				case "refused-mismatch":
					mismatch++
				}
			}
			if allowed < 4 || auth < 2 || plain != 1 || mismatch != 2 {
				t.Errorf("trace: %d allowed, %d denied-auth, %d plain-http refused, %d mismatches; want >= 4, >= 2, 1, 2 (Host, SNI):\n%s", allowed, auth, plain, mismatch, raw)
			}
			table := mustRun(t, "trace", name).stdout
			if !strings.Contains(table, "DECISION") || !strings.Contains(table, "fakeapi") {
				t.Errorf("trace table:\n%s", table)
			}
		})
	}
	// An upstream whose certificate the proxy cannot verify: 502 to the client, recorded.
	ws := workspace(t)
	r := moatcRun(t, opts{}, "run", "-n", "grant-badcert", "--image", img, "--grant", "fakeapi", "--host-port", fmt.Sprint(p), ws, "--",
		"sh", "-c", fmt.Sprintf("curl -s -o /dev/null -w '%%{http_code}' https://moatc-host:%d/api", p))
	if r.code != 0 || r.stdout != "502" {
		t.Errorf("untrusted upstream: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if entries, raw := traceOf(t, "grant-badcert"); len(entries) != 1 || entries[0].Decision != "error" || entries[0].Status != 502 {
		t.Errorf("trace of the untrusted upstream:\n%s", raw)
	}
}

// TestGrantBadInput: an unknown grant or a malformed allow entry stops the run before
// anything is made, with what to type.
func TestGrantBadInput(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	before := len(list(t))
	r := moatcRun(t, opts{}, busyboxRun("gvisor", []string{"--grant", "nosuch"}, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "nosuch") || !strings.Contains(r.stderr, "moatc grant") {
		t.Errorf("unknown grant: exit %d stderr %q", r.code, r.stderr)
	}
	r = moatcRun(t, opts{}, busyboxRun("gvisor", []string{"--allow", "https://example.com/x"}, ws, "true")...)
	if r.code != 2 || !strings.Contains(r.stderr, "give a host, not a URL") {
		t.Errorf("bad allow entry: exit %d stderr %q", r.code, r.stderr)
	}
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("network:\n  policy: strict\n  allow:\n    - \"*\"\n"), 0o644)
	r = moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "moatc.yaml:4: network.allow") {
		t.Errorf("bad allow entry in moatc.yaml: exit %d stderr %q", r.code, r.stderr)
	}
	// grants: in a workspace's file is a policy key: refused until trusted.
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("grants: [nosuch]\n"), 0o644)
	r = moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "moatc.yaml:1") || !strings.Contains(r.stderr, "moatc trust") {
		t.Errorf("untrusted grants: exit %d stderr %q", r.code, r.stderr)
	}
	if after := len(list(t)); after != before {
		t.Errorf("refused runs left records: %d before, %d after", before, after)
	}
}

// TestStrictEgress: under a strict policy the run reaches its proxy and nothing else, made so
// on the host before the task starts; nothing the workload does inside changes it (root,
// NET_ADMIN under runc, new routes, a raw socket, its own resolver, direct addresses). The
// proxy serves allowed hosts and answers 407 for others. Permissive runs are the control.
func TestStrictEgress(t *testing.T) {
	img := toolsImage(t)
	api := newFakeAPI(t)
	tok := newToken(t, "strictapi")
	out, err := testnet.New("mc-out", netip.MustParseAddr("198.18.5.2"), netip.MustParseAddr("198.18.5.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := out.Serve(text("outside\n"), 80); err != nil {
		t.Fatal(err)
	}
	udp, err := out.ListenUDP(53)
	if err != nil {
		t.Fatal(err)
	}
	var udpMu sync.Mutex
	udpSeen := 0
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
			udpMu.Lock()
			udpSeen++
			udpMu.Unlock()
		}
	}()
	defer udp.Close()
	udpCount := func() int { udpMu.Lock(); defer udpMu.Unlock(); return udpSeen }
	host := hostAddr(t)
	hostPort := serveHost(t, "host-service")
	p := api.port
	// A second run to try to reach.
	wsOther := workspace(t)
	mustRun(t, busyboxRun("runc", []string{"-d", "-n", "strict-peer"}, wsOther, "sh", "-c", "mkdir -p /tmp/w && echo peer > /tmp/w/index.html && echo ready && httpd -f -p 8080 -h /tmp/w")...)
	defer mustRun(t, "destroy", "--force", "strict-peer")
	waitLog(t, "strict-peer", "ready")
	peer := status(t, "strict-peer").IP

	direct := func(name, url string) string {
		return fmt.Sprintf(`if curl -s -m 3 --noproxy '*' -o /dev/null %s; then echo '%s open'; else echo '%s closed'; fi`, url, name, name)
	}
	probes := parallel(
		direct("outside", "http://198.18.5.2/"),
		direct("host-address", fmt.Sprintf("http://%s:%d/", host, hostPort)),
		direct("gateway-other-port", fmt.Sprintf("http://moatc-host:%d/", hostPort)),
		direct("gateway-api-port", fmt.Sprintf("https://moatc-host:%d/api -k", p)),
		direct("peer", fmt.Sprintf("http://%s:8080/", peer)),
		direct("ipv6", "http://[2001:db8::1]/"),
		`echo dns-probe > /dev/udp/198.18.5.2/53 2>/dev/null; if timeout 5 getent hosts example.com >/dev/null; then echo 'dns open'; else echo 'dns closed'; fi`,
	)
	viaProxy := strings.Join([]string{
		fmt.Sprintf(`echo "allowed: $(curl -sS https://moatc-host:%d/api)"`, p),
		`echo "other-https: $(curl -s -o /dev/null -w '%{http_connect}' https://198.18.5.2/)"`,
		`echo "other-http: $(curl -s -o /dev/null -w '%{http_code}' -D - http://198.18.5.2/ | tr -d '\r' | grep -i -c '^x-moatc-blocked: network-policy')"`,
	}, "; ")
	wantClosed := "outside closed\nhost-address closed\ngateway-other-port closed\ngateway-api-port closed\npeer closed\nipv6 closed\ndns closed\n"
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			// Control: a permissive run reaches the outside machine directly.
			before := udpCount()
			r := moatcRun(t, opts{}, append(append([]string{"run", "--image", img}, sandboxArgs(rt)...), ws, "--", "bash", "-c", direct("outside", "http://198.18.5.2/")+"; echo x > /dev/udp/198.18.5.2/53")...)
			if r.code != 0 || r.stdout != "outside open\n" {
				t.Fatalf("control: a permissive run: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
			waitFor(t, "the control's UDP packet", func() bool { return udpCount() > before })

			name := "strict-" + rt
			args := []string{"run", "-n", name, "--image", img, "--policy", "strict", "--grant", "strictapi",
				"--host-port", fmt.Sprint(p), "--upstream-ca", api.caFile}
			if rt == "runc" {
				args = append(args, "--cap-add", "NET_ADMIN")
			}
			tamper := "true"
			if rt == "runc" {
				// With NET_ADMIN the workload rewrites its routes and addresses, then tries again.
				tamper = "ip route add 198.18.5.0/24 dev eth0 && ip addr add 10.99.0.7/24 dev eth0 && echo tampered"
			}
			before = udpCount()
			api.reset()
			script := probes + "; " + viaProxy + "; " + tamper + "; " + probes
			r = moatcRun(t, opts{}, append(append(args, sandboxArgs(rt)...), ws, "--", "bash", "-c", script)...)
			got := r.stdout
			if r.code != 0 {
				t.Fatalf("strict run: exit %d stdout %q stderr %q", r.code, got, r.stderr)
			}
			want := wantClosed + "allowed: api-ok\nother-https: 407\nother-http: 1\n"
			if rt == "runc" {
				want += "tampered\n"
			}
			want += wantClosed
			if got != want {
				t.Errorf("strict run:\n got %q\nwant %q\nstderr %s", got, want, r.stderr)
			}
			time.Sleep(200 * time.Millisecond)
			if n := udpCount() - before; n != 0 {
				t.Errorf("%d UDP packets from the strict run reached the outside resolver", n)
			}
			if rq := api.requests(); len(rq) != 1 || rq[0].Authorization != "Bearer "+tok {
				t.Errorf("the API saw %+v, want one request with the grant's token", rq)
			}
			entries, raw := traceOf(t, name)
			if strings.Contains(raw, tok) {
				t.Error("the token is in the strict run's trace")
			}
			var denied int
			for _, e := range entries {
				if e.Decision == "denied-policy" && e.Host == "198.18.5.2" {
					denied++
				}
			}
			if denied != 2 {
				t.Errorf("trace: %d policy denials for the outside machine, want 2:\n%s", denied, raw)
			}
		})
	}
	// A raw socket (busybox ping): out under permissive, nothing under strict. runc only: gVisor
	// has no raw sockets for the workload at all (runsc without --net-raw), said here too.
	ws := workspace(t)
	ping := "if ping -c 1 -W 3 198.18.5.2 >/dev/null 2>/tmp/err; then echo ping open; else echo ping closed; cat /tmp/err; fi"
	if r := moatcRun(t, opts{}, busyboxRun("runc", nil, ws, "sh", "-c", ping)...); r.stdout != "ping open\n" {
		t.Fatalf("control: ping from a permissive run: %q %q", r.stdout, r.stderr)
	}
	if r := moatcRun(t, opts{}, busyboxRun("runc", []string{"--policy", "strict"}, ws, "sh", "-c", ping)...); r.code != 0 || r.stdout != "ping closed\n" {
		t.Errorf("runc: ping from a strict run: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := moatcRun(t, opts{}, busyboxRun("gvisor", []string{"--policy", "strict"}, ws, "sh", "-c", ping)...); r.code != 0 || !strings.Contains(r.stdout, "permission denied") {
		t.Errorf("gvisor: a raw socket was allowed: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	// The policy from moatc.yaml needs no trust (it only narrows), and --dry-run shows it.
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("network:\n  policy: strict\n  allow: [api.example.com, \"*.example.org:443\"]\n"), 0o644)
	dry := mustRun(t, "run", "--dry-run", "--image", "busybox", ws)
	for _, want := range []string{"policy:", "strict", "api.example.com", "*.example.org:443", "HTTPS_PROXY"} {
		if !strings.Contains(dry.stdout, want) {
			t.Errorf("dry run lacks %q:\n%s", want, dry.stdout)
		}
	}
	var plan struct {
		Policy  string
		Allowed []string
		Trust   string
	}
	json.Unmarshal([]byte(mustRun(t, "run", "--dry-run", "--json", "--image", "busybox", ws).stdout), &plan)
	if plan.Policy != "strict" || len(plan.Allowed) != 2 {
		t.Errorf("dry run JSON: %+v", plan)
	}
}

// parallel is a shell script running each line at once and printing their output in order.
func parallel(lines ...string) string {
	var b strings.Builder
	b.WriteString("d=$(mktemp -d); ")
	for i, l := range lines {
		fmt.Fprintf(&b, "( %s ) > $d/%d 2>/dev/null & ", l, i)
	}
	b.WriteString("wait; ")
	for i := range lines {
		fmt.Fprintf(&b, "cat $d/%d; ", i)
	}
	b.WriteString("rm -rf $d")
	return b.String()
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDetachedRunProxyAndTraceFollow: a detached run's proxy lives in its supervisor, grants
// included; `moatc trace -f` prints requests as they come and returns when the run ends.
func TestDetachedRunProxyAndTraceFollow(t *testing.T) {
	img := toolsImage(t)
	api := newFakeAPI(t)
	tok := newToken(t, "detachedapi")
	ws := workspace(t)
	p := api.port
	mustRun(t, "run", "-d", "-n", "traced", "--image", img, "--grant", "detachedapi", "--host-port", fmt.Sprint(p),
		"--upstream-ca", api.caFile, ws, "--", "sh", "-c",
		fmt.Sprintf("for i in 1 2 3; do curl -s -o /dev/null https://moatc-host:%d/api; sleep 1; done", p))
	defer moatcRun(t, opts{}, "destroy", "--force", "traced")
	r := moatcRun(t, opts{}, "trace", "-f", "--json", "traced")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 3 || strings.Count(r.stdout, `"grant":"detachedapi"`) != 3 {
		t.Fatalf("trace -f: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if st := status(t, "traced"); st.State != "stopped" {
		t.Errorf("trace -f returned while the run is %s", st.State)
	}
	rq := api.requests()
	if len(rq) != 3 {
		t.Fatalf("the API saw %d requests, want 3", len(rq))
	}
	for _, q := range rq {
		if q.Authorization != "Bearer "+tok {
			t.Errorf("a detached run's request carried %q", q.Authorization)
		}
	}
}

// TestCorruptCredentialStoreStopsRun: a run that asks for a grant from a store it cannot read
// stops before anything is made, and the store is left as it was.
func TestCorruptCredentialStoreStopsRun(t *testing.T) {
	requireStack(t)
	other := t.TempDir() // a home of its own: nothing here may touch the suite's store
	os.WriteFile(filepath.Join(other, "grants.json"), []byte(`{"version":1,"grants":[{"name":"x"`), 0o600)
	ws := workspace(t)
	r := moatcRun(t, opts{env: []string{"MOATC_HOME=" + other}}, busyboxRun("gvisor", []string{"--grant", "x"}, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "grants.json") {
		t.Errorf("corrupt store: exit %d stderr %q", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(other, "grants.json")); string(b) != `{"version":1,"grants":[{"name":"x"` {
		t.Errorf("the corrupt store was rewritten: %q", b)
	}
	if _, err := os.Stat(filepath.Join(other, "runs")); err == nil {
		if ents, _ := os.ReadDir(filepath.Join(other, "runs")); len(ents) > 0 {
			t.Errorf("a refused run left %d records", len(ents))
		}
	}
	if _, err := os.Stat(filepath.Join(other, "containerd", "containerd.sock")); err == nil {
		t.Error("a refused run started a containerd")
	}
}
