package builder

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moatc/moatc/deps"
	"github.com/moatc/moatc/internal/testnet"
)

// listen serves "x" over TCP on addr until the test ends and returns its port.
func listen(t *testing.T, addr string) int {
	t.Helper()
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("x")) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// TestBuildStepIsConfined: a RUN step (what an npm postinstall or a go install runs) tries the
// host's 127.0.0.1, the host's own address, the build network's gateway and a metadata address.
// Under moatc's sandbox it reaches none of them, only the outside machine, and it runs in
// gVisor; the same step built the old way (runc, host network) reaches them all.
func TestBuildStepIsConfined(t *testing.T) {
	requireStack(t)
	loopPort := listen(t, "127.0.0.1:0")
	hostPort := listen(t, "0.0.0.0:0")
	meta, err := testnet.New("mc-bmeta", netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("169.254.169.253"))
	if err != nil {
		t.Fatal(err)
	}
	defer meta.Close()
	metaURL, err := meta.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("credentials")) }), 80)
	if err != nil {
		t.Fatal(err)
	}
	filesURL, err := files.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("file")) }), 0)
	if err != nil {
		t.Fatal(err)
	}
	hostIP, err := testnet.HostAddr()
	if err != nil {
		t.Fatal(err)
	}
	gw := bridgeAddr(t, "mc-"+testNetwork)
	targets := []string{
		"loopback=127.0.0.1:" + fmt.Sprint(loopPort),
		"host=" + hostIP.String() + ":" + fmt.Sprint(hostPort),
		"gateway=" + gw + ":" + fmt.Sprint(hostPort),
		"metadata=" + strings.TrimPrefix(metaURL, "http://"),
		"outside=" + strings.TrimPrefix(filesURL, "http://"),
	}
	// bash's /dev/tcp: debian:bookworm-slim has no wget or curl. A time stamp keeps BuildKit
	// from reusing an earlier result.
	df := fmt.Sprintf(`FROM docker.io/library/debian:bookworm-slim
RUN echo %d; for t in %s; do a=${t#*=}; if timeout 5 bash -c "exec 3<>/dev/tcp/${a%%:*}/${a##*:}" 2>/dev/null; then echo "${t%%=*} open"; else echo "${t%%=*} closed"; fi; done > /probe; cat /proc/version >> /probe
`, time.Now().UnixNano(), strings.Join(targets, " "))
	probe := func(d *Daemon, tag string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		name, err := Build(ctx, d, Request{Dockerfile: []byte(df), Tag: tag, Mode: ModeQuiet, LogPath: filepath.Join(testDir, "logs", tag[len("moatc/run:"):]+".log")})
		if err != nil {
			t.Fatalf("build: %v", err)
		}
		return run(t, name, "cat", "/probe")
	}
	got := probe(testDaemon, "moatc/run:confined")
	want := "loopback closed\nhost closed\ngateway closed\nmetadata closed\noutside open\n"
	if !strings.HasPrefix(got, want) || !strings.Contains(got, "-gvisor") {
		t.Errorf("sandboxed RUN step: %q, want %q and a gVisor kernel", got, want)
	}
	// Control: the unsandboxed daemon (runc in the host's network, as moatc built before).
	open := &Daemon{Dir: filepath.Join(testDir, "bk3"), Prefix: prefix, ContainerdAddress: ctrdSock, Namespace: testNamespace}
	extraDaemons = append(extraDaemons, open)
	got = probe(open, "moatc/run:unconfined")
	if want := "loopback open\nhost open\ngateway open\nmetadata open\noutside open\n"; !strings.HasPrefix(got, want) || strings.Contains(got, "-gvisor") {
		t.Errorf("control, unsandboxed RUN step: %q, want %q on the host kernel", got, want)
	}
	open.Stop(context.Background(), 10*time.Second)
}

func bridgeAddr(t *testing.T, name string) string {
	t.Helper()
	i, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := i.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			return p.Addr().String()
		}
	}
	t.Fatalf("%s has no IPv4 address", name)
	return ""
}

// TestBuildCachesArePerWorkspace: a build step of one workspace (an npm postinstall, say)
// writes into the apt lists cache mount moatc generates for it. The same workspace's next build
// sees it; another workspace's build sees neither the cache nor a layer made with it (BuildKit
// leaves cache mounts out of a step's cache key, so a step of workspace A could otherwise serve
// workspace B). Without the scope (the control) the other build sees it: apt would trust it.
func TestBuildCachesArePerWorkspace(t *testing.T) {
	requireStack(t)
	stamp := time.Now().UnixNano()
	// The generator's own prelude (FROM, SHELL, ARGs) and apt lists mount, for a scope.
	recipe := func(scope string) (prelude, mount string) {
		p := planFor(t, deps.Default(), "jq")
		p.Scope = scope
		df := string(p.Dockerfile("debian:bookworm-slim"))
		m := regexp.MustCompile(`--mount=(type=cache,id=moatc-apt-lists\S*)`).FindStringSubmatch(df)
		if m == nil {
			t.Fatalf("no apt lists cache mount in the Dockerfile of scope %q", scope)
		}
		return df[:strings.Index(df, "\nRUN ")+1], m[1]
	}
	file := fmt.Sprintf("/var/lib/apt/lists/moatc-test-poison-%d", stamp)
	build := func(tag, scope, cmd string) {
		t.Helper()
		prelude, mount := recipe(scope)
		df := fmt.Sprintf("%sRUN --mount=%s echo %d; %s\n", prelude, mount, stamp, cmd)
		if _, err := Build(context.Background(), testDaemon, Request{Dockerfile: []byte(df), Tag: tag, Mode: ModeQuiet}); err != nil {
			t.Fatalf("build %s: %v", tag, err)
		}
	}
	seen := func(tag, scope string) string {
		t.Helper()
		build(tag, scope, fmt.Sprintf("cat %s > /seen 2>/dev/null || echo clean > /seen", file))
		return run(t, "docker.io/"+tag, "cat", "/seen")
	}
	poison := fmt.Sprintf("echo poisoned > %s", file)
	a, b := fmt.Sprintf("wsa%d", stamp), fmt.Sprintf("wsb%d", stamp)
	build("moatc/run:poison-a", a, poison)
	if got := seen("moatc/run:seen-a", a); got != "poisoned" {
		t.Fatalf("the same workspace's next build does not see its cache (so the test proves nothing): %q", got)
	}
	// The very step that just saw the poison, built for workspace B.
	if got := seen("moatc/run:seen-b", b); got != "clean" {
		t.Errorf("another workspace's build sees the poisoned cache, or reuses a layer made with it: %q", got)
	}
	// Control: unscoped caches, as moatc had them, are shared.
	build("moatc/run:poison-x", "", poison)
	if got := seen("moatc/run:seen-y", ""); got != "poisoned" {
		t.Errorf("control: an unscoped cache is not shared: %q", got)
	}
}
