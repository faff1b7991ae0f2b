package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moatc/moatc/internal/testnet"
	rlkit "github.com/moatc/moatc/rootless"
)

// The networking of rootless runs (docs/rootless.md): egress through slirp4netns,
// ports published through rootlesskit's port driver, moatc-host as the user's host loopback
// for the ports opened to the run and nothing else of the host, strict egress.

// rlNetEnv: until moatc's specs are rootless-safe (no cgroupsPath), the runs here need the
// stop-gap that clears it.
var rlNetEnv = []string{"MOATC_TEMPHACK=1"}

func rlNet(t *testing.T, want int, args ...string) result {
	t.Helper()
	r := rlExec(context.Background(), opts{env: rlNetEnv}, args...)
	if r.code != want {
		t.Fatalf("rootless moatc %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, want, r.stdout, r.stderr)
	}
	return r
}

var rlGVisor struct {
	once sync.Once
	err  error
}

// rlRuntime skips gVisor (outside CI) while it cannot run rootless on this host: a cgroup it
// may not make, which another change fixes. Any other failure is the test's to report.
func rlRuntime(t *testing.T, rt string) {
	t.Helper()
	if rt != "gvisor" {
		return
	}
	rlGVisor.once.Do(func() {
		ws, err := os.MkdirTemp(rl.dir, "ws-")
		if err != nil {
			rlGVisor.err = err
			return
		}
		defer os.RemoveAll(ws)
		os.Chown(ws, rl.uid, rl.gid)
		r := rlExec(context.Background(), opts{env: rlNetEnv}, "run", "--rm", "--image", "busybox", ws, "--", "true")
		if r.code != 0 && strings.Contains(r.stderr, "cgroup") {
			rlGVisor.err = fmt.Errorf("exit %d: %s", r.code, strings.TrimSpace(r.stderr))
		}
	})
	if rlGVisor.err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("gVisor does not run rootless here: %v", rlGVisor.err)
	}
	t.Skipf("gVisor does not run rootless on this host yet (never skipped in CI, where this fails): %v", rlGVisor.err)
}

// hostLoopback serves body on 127.0.0.1 (the host's loopback only) and returns the port.
func hostLoopback(t *testing.T, body string) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: text(body)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// outsideMachine is another machine (a netns behind a veth of the host's) serving "outside"
// on port 80 and "outside-8080" on 8080; its host end is one of the host's own addresses.
func outsideMachine(t *testing.T) *testnet.Machine {
	t.Helper()
	m, err := testnet.New("mc-rlout", netip.MustParseAddr("198.18.7.2"), netip.MustParseAddr("198.18.7.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for port, body := range map[int]string{80: "outside\n", 8080: "outside-8080\n"} {
		if _, err := m.Serve(text(body), port); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// probe is one line of a probe script: it prints "NAME open" or "NAME closed" (or, for
// status probes, "NAME " and wget's error).
type probe struct{ name, line string }

func direct(name, url string) probe  { return probe{name, reach(name, url)} }
func proxied(name, url string) probe { return probe{name, reachProxied(name, url)} }

// proxyStatus prints "NAME open", or "NAME " and the proxy's refusal (e.g. 407).
func proxyStatus(name, url string) probe {
	return probe{name, fmt.Sprintf("if out=$(timeout 5 wget -q -O /dev/null %s 2>&1); then echo '%s open'; else echo \"%s $out\"; fi; ", url, name, name)}
}

// script runs every probe at once and prints their lines in order.
func script(ps []probe) string {
	var b strings.Builder
	for i, p := range ps {
		fmt.Fprintf(&b, "( %s) > /tmp/probe%d 2>&1 & ", p.line, i)
	}
	b.WriteString("wait; ")
	for i := range ps {
		fmt.Fprintf(&b, "cat /tmp/probe%d; ", i)
	}
	return b.String()
}

// outcomes reads a probe script's output: name -> the rest of its line.
func outcomes(out string) map[string]string {
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		name, rest, _ := strings.Cut(l, " ")
		got[name] = rest
	}
	return got
}

// expect checks every probe came out as wanted ("open" or "closed").
func expect(t *testing.T, out string, want map[string]string) {
	t.Helper()
	got := outcomes(out)
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: %q, want %q", name, got[name], w)
		}
	}
	if t.Failed() {
		t.Logf("probe output:\n%s", out)
	}
}

// TestRootlessNetwork: a rootless run has egress (through slirp4netns), reaches the host port
// opened for it at moatc-host (a service on the host's loopback), and nothing else of the
// host: not a port not opened, not slirp4netns's 10.0.2.2 (the host's loopback) directly, not
// the host's own addresses (slirp4netns would connect to them from the host), not the cloud
// metadata address; directly or through its proxy. The open ones are the control: the paths the
// closed ones would take work.
func TestRootlessNetwork(t *testing.T) {
	rootless(t)
	out := outsideMachine(t)
	open, closed := hostLoopback(t, "loopback-open\n"), hostLoopback(t, "loopback-closed\n")
	any := serveHost(t, "any-address\n") // on 0.0.0.0
	meta := metadataServer(t)
	hostIPs := []string{hostAddr(t), out.HostAddr.String()}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			rlRuntime(t, rt)
			ps := []probe{
				direct("egress", "http://198.18.7.2/"),
				proxied("egress-proxy", "http://198.18.7.2/"),
				direct("host-port", fmt.Sprintf("http://moatc-host:%d/", open)),
				proxied("host-port-proxy", fmt.Sprintf("http://moatc-host:%d/", open)),
				direct("host-closed", fmt.Sprintf("http://moatc-host:%d/", closed)),
				proxied("host-closed-proxy", fmt.Sprintf("http://moatc-host:%d/", closed)),
				direct("slirp-open-port", fmt.Sprintf("http://10.0.2.2:%d/", open)),
				direct("slirp-closed-port", fmt.Sprintf("http://10.0.2.2:%d/", closed)),
				proxied("slirp-closed-proxy", fmt.Sprintf("http://10.0.2.2:%d/", closed)),
				direct("metadata", meta+"/"),
				proxied("metadata-proxy", meta+"/"),
			}
			want := map[string]string{"egress": "open", "egress-proxy": "open", "host-port": "open", "host-port-proxy": "open"}
			for _, p := range ps {
				if want[p.name] == "" {
					want[p.name] = "closed"
				}
			}
			// The service on 0.0.0.0, at each of the host's own addresses.
			for i, ip := range hostIPs {
				n := fmt.Sprintf("host-ip%d", i)
				ps = append(ps, direct(n, fmt.Sprintf("http://%s:%d/", ip, any)), proxied(n+"-proxy", fmt.Sprintf("http://%s:%d/", ip, any)))
				want[n], want[n+"-proxy"] = "closed", "closed"
			}
			ps = append(ps, probe{"dns", "if timeout 5 nslookup deb.debian.org >/dev/null 2>&1; then echo 'dns open'; else echo 'dns closed'; fi; "})
			r := rlNet(t, 0, busyboxRun(rt, []string{"--host-port", strconv.Itoa(open)}, rlWorkspace(t), "sh", "-c", script(ps))...)
			expect(t, r.stdout, want)
			// DNS goes to slirp4netns's resolver; it answers only where the host resolves names.
			if got := outcomes(r.stdout)["dns"]; got != "open" {
				if _, err := net.LookupHost("deb.debian.org"); err == nil {
					t.Errorf("dns: %q, but the host resolves deb.debian.org", got)
				}
			}
		})
	}
}

// TestRootlessStrictEgress: under a strict policy a rootless run reaches its proxy and nothing
// else: the proxy serves the allowed host and answers 407 for another; direct TCP to the
// outside, DNS and the host port fail; the host port is served through the proxy.
func TestRootlessStrictEgress(t *testing.T) {
	rootless(t)
	outsideMachine(t)
	open := hostLoopback(t, "loopback-open\n")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			rlRuntime(t, rt)
			ps := []probe{
				proxied("allowed", "http://198.18.7.2/"),
				proxyStatus("other", "http://198.18.7.2:8080/"),
				direct("direct", "http://198.18.7.2/"),
				direct("direct-other", "http://198.18.7.2:8080/"),
				direct("host-port-direct", fmt.Sprintf("http://moatc-host:%d/", open)),
				proxied("host-port-proxy", fmt.Sprintf("http://moatc-host:%d/", open)),
				direct("slirp", fmt.Sprintf("http://10.0.2.2:%d/", open)),
				{"dns", "if timeout 5 nslookup deb.debian.org 10.0.2.3 >/dev/null 2>&1; then echo 'dns open'; else echo 'dns closed'; fi; "},
			}
			r := rlNet(t, 0, busyboxRun(rt, []string{"--policy", "strict", "--allow", "198.18.7.2:80", "--host-port", strconv.Itoa(open)},
				rlWorkspace(t), "sh", "-c", script(ps))...)
			expect(t, r.stdout, map[string]string{"allowed": "open", "direct": "closed", "direct-other": "closed",
				"host-port-direct": "closed", "host-port-proxy": "open", "slirp": "closed", "dns": "closed"})
			if got := outcomes(r.stdout)["other"]; !strings.Contains(got, "407") {
				t.Errorf("a host the policy does not allow: %q, want the proxy's 407\n%s", got, r.stdout)
			}
		})
	}
}

// udpEcho is a UDP server for the container: it answers each datagram with "echo:" and it.
const udpEcho = `package main

import ("net"; "os")

func main() {
	c, err := net.ListenPacket("udp4", ":"+os.Args[1])
	if err != nil { panic(err) }
	b := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(b)
		if err != nil { return }
		c.WriteTo(append([]byte("echo:"), b[:n]...), from)
	}
}
`

// buildUDPEcho puts a static udpEcho in ws, owned by the rootless user.
func buildUDPEcho(t *testing.T, ws string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "udpecho.go")
	os.WriteFile(src, []byte(udpEcho), 0o644)
	bin := filepath.Join(ws, "udpecho")
	build := exec.Command("go", "build", "-o", bin, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the UDP echo server: %v\n%s", err, out)
	}
	os.Chown(bin, rl.uid, rl.gid)
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// httpGet fetches url from the host, waiting up to wait for an answer.
func httpGet(url string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	c := &http.Client{Timeout: 3 * time.Second}
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(b), nil
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// udpAsk sends msg to addr from the host and returns the first answer, retrying for a while
// (the server in the container may not listen yet).
func udpAsk(addr, msg string) (string, error) {
	c, err := net.Dial("udp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	b := make([]byte, 1500)
	var lastErr error
	for range 20 {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(b)
		if err == nil {
			return string(b[:n]), nil
		}
		lastErr = err
	}
	return "", lastErr
}

// kitPorts is the rootless user's rootlesskit port driver, asked by root from the host.
func kitPorts() *rlkit.Ports { return rlkit.NewPorts(filepath.Join(rl.dir, "rootless", "api.sock")) }

// publishedOn lists the kit's ports published on host port hp.
func publishedOn(t *testing.T, hp int) []rlkit.PortStatus {
	t.Helper()
	ports, err := kitPorts().List(context.Background())
	if err != nil {
		t.Fatalf("listing rootlesskit's ports: %v", err)
	}
	var out []rlkit.PortStatus
	for _, p := range ports {
		if p.Spec.ParentPort == hp {
			out = append(out, p)
		}
	}
	return out
}

// TestRootlessPublish: ports published by a rootless run (-p, tcp and udp) answer on the host
// through rootlesskit's port driver, `moatc status` lists them, and they go when the run does.
func TestRootlessPublish(t *testing.T) {
	rootless(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			rlRuntime(t, rt)
			ws := rlWorkspace(t)
			buildUDPEcho(t, ws)
			hp, up := freePort(t), freeUDPPort(t)
			name := "rl-publish-" + rt
			rlNet(t, 0, busyboxRun(rt, []string{"-d", "--name", name, "-p", fmt.Sprintf("127.0.0.1:%d:80", hp), "-p", fmt.Sprintf("%d:5353/udp", up)},
				ws, "sh", "-c", "mkdir -p /tmp/w && echo published-"+rt+" > /tmp/w/index.html && (/workspace/udpecho 5353 &) && httpd -f -p 80 -h /tmp/w")...)
			defer rlExec(context.Background(), opts{env: rlNetEnv}, "destroy", "--force", name)
			got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", hp), 30*time.Second)
			if err != nil || got != "published-"+rt+"\n" {
				t.Fatalf("the published tcp port from the host: %q %v", got, err)
			}
			if got, err := udpAsk(fmt.Sprintf("127.0.0.1:%d", up), "ping"); err != nil || got != "echo:ping" {
				t.Errorf("the published udp port from the host: %q %v", got, err)
			}
			var st struct {
				Ports []string `json:"ports"`
			}
			if err := json.Unmarshal([]byte(rlNet(t, 0, "status", "--json", name).stdout), &st); err != nil {
				t.Fatal(err)
			}
			for _, w := range []string{fmt.Sprintf("127.0.0.1:%d->80/tcp", hp), fmt.Sprintf("127.0.0.1:%d->5353/udp", up)} {
				if !slices.Contains(st.Ports, w) {
					t.Errorf("status lists ports %v, want %s among them", st.Ports, w)
				}
			}
			rlNet(t, 0, "destroy", "--force", name)
			if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", hp), 0); err == nil {
				t.Errorf("the port still answers after the run was destroyed: %q", got)
			}
			if left := append(publishedOn(t, hp), publishedOn(t, up)...); len(left) > 0 {
				t.Errorf("rootlesskit still publishes %v after the run was destroyed", left)
			}
		})
	}
}

// TestRootlessPublishRefused: a host port in use and a privileged port are refused before the
// run exists, saying why and what to do.
func TestRootlessPublishRefused(t *testing.T) {
	rootless(t)
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bp := busy.Addr().(*net.TCPAddr).Port
	ids := func() []string {
		var rs []runRecord
		if err := json.Unmarshal([]byte(rlNet(t, 0, "list", "--json").stdout), &rs); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		slices.Sort(out)
		return out
	}
	before := ids()
	for _, c := range []struct{ spec, want string }{
		{fmt.Sprintf("127.0.0.1:%d:80", bp), "already in use"},
		{"80:80", "ports below 1024 are privileged"},
		{"0.0.0.0:443:443", "ports below 1024 are privileged"},
	} {
		r := rlNet(t, 125, busyboxRun("runc", []string{"-p", c.spec}, rlWorkspace(t), "true")...)
		if !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, "publish") {
			t.Errorf("-p %s: stderr %q, want it to say %q", c.spec, r.stderr, c.want)
		}
	}
	if after := ids(); !slices.Equal(after, before) {
		t.Errorf("refused runs were recorded: runs %v before, %v after", before, after)
	}
	if left := publishedOn(t, 80); len(left) > 0 {
		t.Errorf("a refused port is published: %v", left)
	}
}

// TestRootlessPublishAfterKill: the ports of a rootless run whose moatc was killed -9 are
// removed by the next command's reconcile, and `moatc clean` removes ports that forward to an
// address of moatc's pool no network holds (what a moatc killed while publishing leaves);
// ports outside the pool are not moatc's and stay.
func TestRootlessPublishAfterKill(t *testing.T) {
	rootless(t)
	ws := rlWorkspace(t)
	hp := freePort(t)
	cmd := exec.Command(rl.bin, busyboxRun("runc", []string{"-p", fmt.Sprintf("%d:80", hp)}, ws,
		"sh", "-c", "mkdir -p /tmp/w && echo before-kill > /tmp/w/index.html && httpd -f -p 80 -h /tmp/w")...)
	cmd.Env = append([]string{"HOME=" + rl.hdir, "USER=" + rl.user, "LOGNAME=" + rl.user,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "MOATC_HOME=" + rl.dir, "MOATC_PREFIX=" + prefix}, rlNetEnv...)
	cmd.Dir = rl.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(rl.uid), Gid: uint32(rl.gid), Groups: []uint32{}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", hp), 30*time.Second); err != nil || got != "before-kill\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the published port before the kill: %q %v", got, err)
	}
	cmd.Process.Kill() // SIGKILL: no teardown of its own
	cmd.Wait()
	if len(publishedOn(t, hp)) == 0 {
		t.Fatal("the port went with moatc's SIGKILL: nothing here shows that reconcile removes it")
	}
	rlNet(t, 0, "list") // reconcile
	if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", hp), 0); err == nil {
		t.Errorf("the port still answers after reconcile: %q", got)
	}
	if left := publishedOn(t, hp); len(left) > 0 {
		t.Errorf("rootlesskit still publishes %v after reconcile", left)
	}

	// Left by a killed moatc: one into the pool (10.213.0.0/16 by default) with no network, and
	// one that is not moatc's.
	ctx := context.Background()
	orphan, foreign := freePort(t), freePort(t)
	for _, s := range []rlkit.PortSpec{
		{Proto: "tcp", ParentIP: "127.0.0.1", ParentPort: orphan, ChildIP: "10.213.254.77", ChildPort: 80},
		{Proto: "tcp", ParentIP: "127.0.0.1", ParentPort: foreign, ChildIP: "10.4.0.5", ChildPort: 80},
	} {
		if _, err := kitPorts().Add(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, p := range publishedOn(t, foreign) {
			kitPorts().Remove(ctx, p.ID)
		}
	}()
	// The orphan forwards to a pool address no bridge holds: refused in the kit's namespace,
	// never sent out through slirp4netns to that address on the host's network (where this
	// machine's egress filter answered it once, in the window of a run's port check).
	pid, err := os.ReadFile(filepath.Join(rl.dir, "rootless", "child_pid"))
	if err != nil {
		t.Fatal(err)
	}
	if o, err := exec.Command("nsenter", "-U", "--preserve-credentials", "-n", "-t", strings.TrimSpace(string(pid)),
		"ip", "route", "get", "10.213.254.77").CombinedOutput(); err == nil {
		t.Errorf("rootlesskit's namespace routes an unused pool address: %s", o)
	}
	if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", orphan), 0); err == nil {
		t.Errorf("a port forwarded to an unused pool address answered: %q", got)
	}
	rlNet(t, 0, "clean")
	if left := publishedOn(t, orphan); len(left) > 0 {
		t.Errorf("clean left the orphan port %v", left)
	}
	if len(publishedOn(t, foreign)) != 1 {
		t.Errorf("clean removed a port outside moatc's pool")
	}
}

// TestRootlessBuildNetworkClosed: BuildKit's RUN steps in rootless moatc get the build network,
// with the rules of a run: a namespace attached to its bridge as a RUN step's is (made inside
// rootlesskit's namespaces) has egress and reaches none of the host: not 10.0.2.2 (the host's
// loopback), not the host's own addresses, not the metadata address.
func TestRootlessBuildNetworkClosed(t *testing.T) {
	rootless(t)
	out := outsideMachine(t)
	loop := hostLoopback(t, "loopback\n")
	any := serveHost(t, "any-address\n")
	meta := metadataServer(t)
	ws := rlWorkspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies: [jq]\n"), 0o644)
	os.Chown(filepath.Join(ws, "moatc.yaml"), rl.uid, rl.gid)
	// Whatever becomes of the build (busybox has no apt), its network is made before any step.
	build := rlExec(context.Background(), opts{env: rlNetEnv}, "build", "--image", "busybox", ws)
	var rec struct {
		Subnet  netip.Prefix `json:"subnet"`
		Gateway netip.Addr   `json:"gateway"`
		Shared  bool         `json:"shared"`
		Outside *struct{}    `json:"outside"`
	}
	recs, _ := filepath.Glob(filepath.Join(rl.dir, "cni", "state", "runs", "bld*", "network.json"))
	if len(recs) != 1 {
		t.Fatalf("no build network after `moatc build` (exit %d): %v\n%s", build.code, recs, build.stderr)
	}
	b, _ := os.ReadFile(recs[0])
	if err := json.Unmarshal(b, &rec); err != nil || !rec.Shared || rec.Outside == nil {
		t.Fatalf("build network record %s: %v\n%s", recs[0], err, b)
	}
	bridge := "mc-" + filepath.Base(filepath.Dir(recs[0]))
	addr := netip.PrefixFrom(rec.Subnet.Addr().Next().Next().Next().Next(), rec.Subnet.Bits()) // .4, as IPAM would hand out
	targets := map[string]string{
		"egress":     "http://198.18.7.2/",
		"slirp-host": fmt.Sprintf("http://10.0.2.2:%d/", loop),
		"host-ip":    fmt.Sprintf("http://%s:%d/", hostAddr(t), any),
		"host-veth":  fmt.Sprintf("http://%s:%d/", out.HostAddr, any),
		"metadata":   meta + "/",
	}
	var lines []string
	for name, url := range targets {
		lines = append(lines, fmt.Sprintf("if nsenter --net=/run/netns/$ns timeout 5 busybox wget -q -O /dev/null %s 2>/dev/null; then echo '%s open'; else echo '%s closed'; fi", url, name, name))
	}
	// A RUN step's namespace: a veth on the build bridge, an address of its subnet, the gateway.
	sh := fmt.Sprintf(`set -e
ns=moatc-rlprobe
ip netns add $ns
trap 'ip netns del $ns; ip link del rlp0 2>/dev/null || true' EXIT
ip link add rlp0 type veth peer name rlp1
ip link set rlp1 netns $ns
ip link set rlp0 master %s up
nsenter --net=/run/netns/$ns sh -c 'ip link set lo up; ip addr add %s dev rlp1; ip link set rlp1 up; ip route add default via %s'
set +e
%s
`, bridge, addr, rec.Gateway, strings.Join(lines, "\n"))
	pid, err := os.ReadFile(filepath.Join(rl.dir, "rootless", "child_pid"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "-U", "--preserve-credentials", "-m", "-n", "-t", strings.TrimSpace(string(pid)), "sh", "-c", sh)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(rl.uid), Gid: uint32(rl.gid), Groups: []uint32{}}}
	o, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probing from the build network: %v\n%s", err, o)
	}
	want := map[string]string{}
	for name := range targets {
		want[name] = "closed"
	}
	want["egress"] = "open"
	expect(t, string(o), want)
}
