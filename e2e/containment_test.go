package e2e

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatc/moatc/internal/testnet"
)

// The escape suite: each test is the workload's real attempt to widen what it reaches, and
// its failure. The workload writes its workspace, so it writes the config file too.

const escapeConfig = "sandbox: none\nmounts: [/etc:/hostetc, /root:/hostroot]\n"

// workloadWrites has a gVisor run write text to a file of its workspace.
func workloadWrites(t *testing.T, ws, name, text string) {
	t.Helper()
	mustRun(t, busyboxRun("gvisor", nil, ws, "sh", "-c", fmt.Sprintf("printf '%%s' '%s' > /workspace/%s", text, name))...)
}

func TestWorkloadWrittenConfigIsRefusedUntilTrusted(t *testing.T) {
	requireStack(t)
	for _, name := range []string{"moatc.yaml", "agent.yaml", "moat.yaml"} {
		t.Run(name, func(t *testing.T) {
			ws := workspace(t)
			workloadWrites(t, ws, name, escapeConfig)
			path := filepath.Join(ws, name)
			before := len(list(t))
			r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "cat", "/hostetc/hostname")...)
			if r.code != 125 {
				t.Fatalf("untrusted %s: exit %d stdout %q stderr %q", name, r.code, r.stdout, r.stderr)
			}
			for _, want := range []string{path + ":1: sandbox: none", path + ":2: mounts: [/etc:/hostetc, /root:/hostroot]", "moatc trust " + path} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("the refusal does not say %q:\n%s", want, r.stderr)
				}
			}
			if n := len(list(t)); n != before {
				t.Errorf("a refused run left a record: %d runs, before %d", n, before)
			}
			if name != "moatc.yaml" {
				return
			}
			// The person reads the keys and trusts the file: then it counts.
			tr := mustRun(t, "trust", ws)
			if !strings.Contains(tr.stdout, "line 1: sandbox: none") {
				t.Errorf("trust does not show the keys: %s", tr.stdout)
			}
			host, _ := os.ReadFile("/etc/hostname")
			r = moatcRun(t, opts{}, busyboxRun("gvisor", []string{"-n", "trusted-escape"}, ws, "cat", "/hostetc/hostname")...)
			if r.code != 0 || r.stdout != string(host) || status(t, "trusted-escape").Spec.Runtime != "runc" {
				t.Fatalf("trusted file: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
			// The (now trusted, runc) workload changes one byte: refused again.
			mustRun(t, busyboxRun("gvisor", nil, ws, "sh", "-c", "echo >> /workspace/moatc.yaml")...)
			r = moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "true")...)
			if r.code != 125 || !strings.Contains(r.stderr, "changed since you trusted it") {
				t.Fatalf("changed file: exit %d stderr %q", r.code, r.stderr)
			}
			// Flags are the person's: they need no trust.
			os.Remove(path)
			r = moatcRun(t, opts{}, busyboxRun("runc", []string{"-m", "/etc:/hostetc:ro"}, ws, "cat", "/hostetc/hostname")...)
			if r.code != 0 || r.stdout != string(host) {
				t.Fatalf("flags: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestCorruptTrustStoreTrustsNothing(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("sandbox: none\n"), 0o644)
	mustRun(t, "trust", ws)
	store := filepath.Join(home, "trust.json")
	good, _ := os.ReadFile(store)
	defer os.WriteFile(store, good, 0o600)
	os.WriteFile(store, good[:len(good)/2], 0o600)
	r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "trust store "+store) || !strings.Contains(r.stderr, "rm "+store) {
		t.Fatalf("corrupt store: exit %d stderr %q", r.code, r.stderr)
	}
}

// A config file that is not a regular file is refused without reading what it points to.
func TestConfigFileThatIsNotARegularFile(t *testing.T) {
	requireStack(t)
	secret := filepath.Join(home, "host-secret")
	os.WriteFile(secret, []byte("root:HOST-SECRET-LINE:19000:0:99999:7:::\n"), 0o600)
	defer os.Remove(secret)
	for name, create := range map[string]func(p string) error{
		"symlink to a host file": func(p string) error { return os.Symlink(secret, p) },
		"fifo":                   func(p string) error { return syscall.Mkfifo(p, 0o644) },
		"10 MB":                  func(p string) error { return os.WriteFile(p, []byte(strings.Repeat("# padding\n", 1<<20)), 0o644) },
	} {
		t.Run(name, func(t *testing.T) {
			ws := workspace(t)
			p := filepath.Join(ws, "moatc.yaml")
			if err := create(p); err != nil {
				t.Fatal(err)
			}
			r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "true")...)
			if r.code != 125 || !strings.Contains(r.stderr, p) || strings.Contains(r.stderr+r.stdout, "HOST-SECRET") {
				t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
			// trust reads it the same way.
			if tr := moatcRun(t, opts{}, "trust", ws); tr.code != 125 || strings.Contains(tr.stderr+tr.stdout, "HOST-SECRET") {
				t.Fatalf("trust: exit %d stdout %q stderr %q", tr.code, tr.stdout, tr.stderr)
			}
		})
	}
}

func TestMountCannotBeRedirectedOutOfTheWorkspace(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	os.Mkdir(filepath.Join(ws, "data"), 0o755)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("mounts: [\"./data:/data\"]\n"), 0o644)
	mustRun(t, "trust", ws)
	r := moatcRun(t, opts{}, busyboxRun("gvisor", []string{"-n", "mount-1"}, ws, "sh", "-c", "echo via-mount > /data/ok; cat /data/ok")...)
	if r.code != 0 || r.stdout != "via-mount\n" {
		t.Fatalf("trusted mount: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "data", "ok")); string(b) != "via-mount\n" {
		t.Fatalf("the write through the mount is not in the workspace: %q", b)
	}
	if s := mustRun(t, "status", "mount-1").stdout; !strings.Contains(s, filepath.Join(ws, "data")+" -> /data (rw)") {
		t.Errorf("status does not show the mount's host path:\n%s", s)
	}
	if m := mountsUnder(t, home); len(m) > 0 {
		t.Errorf("pins left mounted after the run: %v", m)
	}
	// The workload swaps data/ for a link to /etc between runs.
	mustRun(t, busyboxRun("gvisor", nil, ws, "sh", "-c", "rm -rf /workspace/data && ln -s /etc /workspace/data")...)
	r = moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "cat", "/data/hostname")...)
	if r.code != 125 || !strings.Contains(r.stderr, filepath.Join(ws, "moatc.yaml")+":1: mounts:") || !strings.Contains(r.stderr, "leads out of the workspace") || r.stdout != "" {
		t.Fatalf("redirected mount: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	// A link that stays inside the workspace is followed, and what it leads to is mounted.
	os.Remove(filepath.Join(ws, "data"))
	os.Mkdir(filepath.Join(ws, "real"), 0o755)
	os.WriteFile(filepath.Join(ws, "real", "f"), []byte("inside"), 0o644)
	os.Symlink("real", filepath.Join(ws, "data"))
	r = moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "cat", "/data/f")...)
	if r.code != 0 || r.stdout != "inside" {
		t.Fatalf("link inside the workspace: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	// `..` from an untrusted file is refused like any mount.
	ws2 := workspace(t)
	os.WriteFile(filepath.Join(ws2, "moatc.yaml"), []byte("mounts: [\"..:/up\"]\n"), 0o644)
	if r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws2, "ls", "/up")...); r.code != 125 || !strings.Contains(r.stderr, "moatc trust") {
		t.Fatalf("untrusted .. mount: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

// The workspace and writable mounts may not hold moatc's own state: a workload could trust its
// own next config.
func TestWorkspaceHoldingMoatcHomeIsRefused(t *testing.T) {
	requireStack(t)
	r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, filepath.Dir(home), "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "holds moatc's home") {
		t.Fatalf("workspace above home: exit %d stderr %q", r.code, r.stderr)
	}
	ws := workspace(t)
	r = moatcRun(t, opts{}, busyboxRun("gvisor", []string{"-m", home + ":/h"}, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "holds moatc's home") {
		t.Fatalf("writable mount of home: exit %d stderr %q", r.code, r.stderr)
	}
}

// mountsUnder lists what is mounted below dir, but for buildkitd's own network namespaces
// (its pool of them, kept while it runs, under buildkit/root/net).
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") && !strings.HasPrefix(f[4], filepath.Join(dir, "buildkit", "root", "net")+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func hostAddr(t *testing.T) string {
	t.Helper()
	a, err := testnet.HostAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a.String()
}

// metadataServer stands for a cloud's metadata service: 169.254.169.254 in a netns of its
// own, routed from the host, answering HTTP on port 80.
func metadataServer(t *testing.T) string {
	t.Helper()
	m, err := testnet.New("mc-meta", netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("169.254.169.253"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	url, err := m.Serve(text("instance-credentials\n"), 80)
	if err != nil {
		t.Fatal(err)
	}
	// The host itself reaches it: what a run cannot reach is really there.
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatalf("the host cannot reach the metadata stand-in: %v", err)
	}
	resp.Body.Close()
	return url
}

// text is a handler that answers s.
func text(s string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(s)) })
}

// reach is a shell line that prints "NAME open" or "NAME closed" for an HTTP URL, reached
// directly (not through the run's proxy).
func reach(name, url string) string {
	return fmt.Sprintf("if timeout 5 wget -Y off -q -O /dev/null %s 2>/dev/null; then echo '%s open'; else echo '%s closed'; fi; ", url, name, name)
}

// reachProxied is reach through the run's proxy (busybox wget follows http_proxy): the proxy
// must not be a way around the firewall.
func reachProxied(name, url string) string {
	return fmt.Sprintf("if timeout 5 wget -q -O /dev/null %s 2>/dev/null; then echo '%s open'; else echo '%s closed'; fi; ", url, name, name)
}

// reachAll is a shell script that tries every URL at once and prints reach's lines in order.
func reachAll(names, urls []string) string {
	var b strings.Builder
	for i := range names {
		fmt.Fprintf(&b, "( %s) > /tmp/reach%d & ", reach(names[i], urls[i]), i)
	}
	b.WriteString("wait; ")
	for i := range names {
		fmt.Fprintf(&b, "cat /tmp/reach%d; ", i)
	}
	return b.String()
}

func TestHostClosedToRuns(t *testing.T) {
	requireStack(t)
	open, closed := serveHost(t, "open-port"), serveHost(t, "closed-port")
	meta := metadataServer(t)
	addr := hostAddr(t)
	urls := []string{fmt.Sprintf("http://moatc-host:%d/", open), fmt.Sprintf("http://moatc-host:%d/", closed),
		fmt.Sprintf("http://%s:%d/", addr, open), meta + "/"}
	script := reachAll([]string{"gateway-open", "gateway-closed", "host-address", "metadata"}, urls)
	proxied := ""
	for i, n := range []string{"proxied-gateway-open", "proxied-gateway-closed", "proxied-host-address", "proxied-metadata"} {
		proxied += reachProxied(n, urls[i])
	}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			r := moatcRun(t, opts{}, busyboxRun(rt, nil, ws, "sh", "-c", script+proxied)...)
			want := "gateway-open closed\ngateway-closed closed\nhost-address closed\nmetadata closed\n" +
				"proxied-gateway-open closed\nproxied-gateway-closed closed\nproxied-host-address closed\nproxied-metadata closed\n"
			if r.code != 0 || r.stdout != want {
				t.Errorf("no host port: exit %d stdout %q (want %q) stderr %q", r.code, r.stdout, want, r.stderr)
			}
			r = moatcRun(t, opts{}, busyboxRun(rt, []string{"--host-port", fmt.Sprint(open)}, ws, "sh", "-c", script+proxied)...)
			want = "gateway-open open\ngateway-closed closed\nhost-address closed\nmetadata closed\n" +
				"proxied-gateway-open open\nproxied-gateway-closed closed\nproxied-host-address closed\nproxied-metadata closed\n"
			if r.code != 0 || r.stdout != want {
				t.Errorf("--host-port %d: exit %d stdout %q (want %q) stderr %q", open, r.code, r.stdout, want, r.stderr)
			}
		})
	}
	// From a trusted file too; a bad port is a clear error.
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte(fmt.Sprintf("network:\n  host: [%d]\n", open)), 0o644)
	if r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "true")...); r.code != 125 || !strings.Contains(r.stderr, "network.host") {
		t.Fatalf("untrusted network.host: exit %d stderr %q", r.code, r.stderr)
	}
	mustRun(t, "trust", ws)
	if r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "sh", "-c", script)...); !strings.HasPrefix(r.stdout, "gateway-open open\ngateway-closed closed\n") {
		t.Errorf("trusted network.host: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("network:\n  host: [70000]\n"), 0o644)
	mustRun(t, "trust", ws)
	if r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "true")...); r.code != 125 || !strings.Contains(r.stderr, "moatc.yaml:2: network.host: \"70000\" is not a port") {
		t.Fatalf("bad port: exit %d stderr %q", r.code, r.stderr)
	}
}

// Turning forwarding on for runs must not make the host a router between its other
// interfaces: two stand-in machines on two veths stay apart while runs have egress.
func TestForwardingServesOnlyRuns(t *testing.T) {
	requireStack(t)
	mustRun(t, "clean") // no moatc chains: forwarding as moatc found it
	orig, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	defer os.WriteFile("/proc/sys/net/ipv4/ip_forward", orig, 0o644)
	left, err := testnet.New("mc-left", netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.18.1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer left.Close()
	right, err := testnet.New("mc-right", netip.MustParseAddr("198.18.2.2"), netip.MustParseAddr("198.18.2.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer right.Close()
	url, err := right.Serve(text("right\n"), 80)
	if err != nil {
		t.Fatal(err)
	}
	fromLeft := func() bool {
		return exec.Command("ip", "netns", "exec", "mc-left", "timeout", "5", "busybox", "wget", "-q", "-O", "/dev/null", url+"/").Run() == nil
	}
	// Control: with forwarding on by the person's choice, the host routes between them.
	os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	if !fromLeft() {
		t.Fatal("control failed: with ip_forward=1 the left machine does not reach the right one")
	}
	// With forwarding off, moatc turns it on for a run, and only for runs.
	os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644)
	ws := workspace(t)
	r := moatcRun(t, opts{}, busyboxRun("gvisor", nil, ws, "sh", "-c", reach("right", url+"/"))...)
	if r.code != 0 || r.stdout != "right open\n" {
		t.Fatalf("run egress to another machine: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("ip_forward is %q after a run", b)
	}
	if fromLeft() {
		t.Error("the host routes between its other interfaces since moatc turned forwarding on")
	}
	// Another run keeps one guard, not two.
	mustRun(t, busyboxRun("runc", nil, ws, "true")...)
	out, _ := exec.Command("iptables-save", "-t", "filter").Output()
	if n := strings.Count(string(out), "forwarding was off before moatc"); n != 1 {
		t.Errorf("%d forwarding guards after two runs, want 1:\n%s", n, out)
	}
	// clean puts forwarding back as moatc found it once no run needs it.
	mustRun(t, "clean")
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "0" {
		t.Errorf("ip_forward is %q after clean, want 0 as before", b)
	}
	if out, _ := exec.Command("iptables-save").Output(); strings.Contains(string(out), "MOATC-") {
		t.Errorf("moatc's chains left after clean:\n%s", out)
	}
}

func TestHardenedDefaults(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	// keyctl (250) and add_key (248) through perl, which the debian image has.
	os.WriteFile(filepath.Join(ws, "keys.pl"), []byte(`my ($t,$d,$p)=("user","k","v");
my $r=syscall(248,$t,$d,$p,1,-3); print "add_key ".($r<0 ? "refused: $!" : "allowed")."\n";
$r=syscall(250,0,-3,0); print "keyctl ".($r<0 ? "refused: $!" : "allowed")."\n";
`), 0o644)
	// Control: on the host both work, so the refusals below are the container's policy.
	if out, err := exec.Command("perl", filepath.Join(ws, "keys.pl")).CombinedOutput(); err != nil || string(out) != "add_key allowed\nkeyctl allowed\n" {
		t.Fatalf("control on the host: %q %v", out, err)
	}
	script := "unshare -U true 2>/dev/null && echo unshare allowed || echo unshare refused; " +
		"mount -t tmpfs none /mnt 2>/dev/null && echo mount allowed || echo mount refused; perl /workspace/keys.pl; " +
		"grep -E '^(NoNewPrivs|CapEff)' /proc/self/status"
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			args := append(append([]string{"run"}, sandboxArgs(rt)...), "--image", "debian:bookworm-slim", ws, "--", "sh", "-c", script)
			r := moatcRun(t, opts{}, args...)
			want := "unshare refused\nmount refused\nadd_key refused: Operation not permitted\nkeyctl refused: Operation not permitted\n"
			if r.code != 0 || !strings.HasPrefix(r.stdout, want) {
				t.Fatalf("exit %d stdout %q (want it to start %q) stderr %q", r.code, r.stdout, want, r.stderr)
			}
			if rt == "runc" && !strings.Contains(r.stdout, "NoNewPrivs:\t1") {
				t.Errorf("no_new_privs is not set: %q", r.stdout)
			}
			// Docker's default capabilities: no CAP_SYS_ADMIN (bit 21).
			for _, l := range strings.Split(r.stdout, "\n") {
				var caps uint64
				if _, err := fmt.Sscanf(l, "CapEff:\t%x", &caps); err == nil && caps&(1<<21) != 0 {
					t.Errorf("CAP_SYS_ADMIN is effective: %s", l)
				}
			}
		})
	}
}

// A setuid-root file the workload leaves in its workspace gives no privilege on the next run.
func TestSetuidInWorkspaceIsNotEffective(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	os.Chmod(ws, 0o777)
	src := filepath.Join(t.TempDir(), "euid.go")
	os.WriteFile(src, []byte("package main\nimport (\"fmt\";\"os\")\nfunc main() { fmt.Println(os.Geteuid()) }\n"), 0o644)
	build := exec.Command("go", "build", "-o", filepath.Join(ws, "euid"), src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the euid probe: %v\n%s", err, out)
	}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			suid := "suid-" + rt
			// The workload, as root, leaves a setuid-root copy of the probe.
			mustRun(t, busyboxRun(rt, []string{"-u", "0:0"}, ws, "sh", "-c", "cp /workspace/euid /workspace/"+suid+" && chmod 4755 /workspace/"+suid)...)
			fi, err := os.Stat(filepath.Join(ws, suid))
			if err != nil || fi.Mode()&os.ModeSetuid == 0 {
				t.Fatalf("the setuid file was not made: %v %v", fi, err)
			}
			// Control: on the host, run by uid 1000, it is setuid-effective.
			out, err := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", filepath.Join(ws, suid)).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "0" {
				t.Fatalf("control on the host: %q %v", out, err)
			}
			r := moatcRun(t, opts{}, busyboxRun(rt, []string{"-u", "1000:1000"}, ws, "/workspace/"+suid)...)
			if r.code != 0 || strings.TrimSpace(r.stdout) != "1000" {
				t.Fatalf("setuid file in the workspace: exit %d euid %q stderr %q", r.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestPidsLimit(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "bomb.pl"), []byte(`my $n = 0; my @kids;
while ($n < 2000) { my $p = fork(); if (!defined $p) { print "fork refused\n"; last } if ($p == 0) { sleep 60; exit 0 } push @kids, $p; $n++ }
print "forked $n\n"; kill 9, @kids; 1 while wait() > 0;
`), 0o644)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			args := append(append([]string{"run"}, sandboxArgs(rt)...), "--pids-limit", "64", "--image", "debian:bookworm-slim", ws, "--", "perl", "/workspace/bomb.pl")
			r := moatcRun(t, opts{}, args...)
			var n int
			fmt.Sscanf(strings.TrimPrefix(r.stdout, "fork refused\n"), "forked %d", &n)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "fork refused\n") || n < 32 || n >= 64 {
				t.Fatalf("pids bomb: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
			t.Logf("%s: %d processes forked before the limit", rt, n)
		})
	}
}

func TestLogCapped(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	id := strings.TrimSpace(mustRun(t, busyboxRun("gvisor", []string{"-d", "--log-max", "1m"}, ws, "timeout", "20", "yes")...).stdout)
	deadline := time.Now().Add(2 * time.Minute)
	for status(t, id).State != "stopped" {
		if time.Now().After(deadline) {
			t.Fatalf("the run did not end: %+v", status(t, id))
		}
		time.Sleep(500 * time.Millisecond)
	}
	var total int64
	for _, f := range []string{"output.log", "output.1.log"} {
		if fi, err := os.Stat(filepath.Join(home, "runs", id, f)); err == nil {
			total += fi.Size()
		}
	}
	if total == 0 || total > 1<<20 {
		t.Fatalf("the log takes %d bytes, cap 1 MiB", total)
	}
	r := moatcRun(t, opts{}, "logs", id)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) < 1000 || strings.Trim(strings.Join(lines, ""), "y") != "" || !strings.Contains(r.stderr, "output dropped") {
		t.Fatalf("logs: exit %d, %d lines (%q...), stderr %q", r.code, len(lines), lines[0], r.stderr)
	}
	t.Logf("20 s of yes: %d bytes of log; %s", total, strings.TrimSpace(r.stderr))
}
