package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// serveHost runs an HTTP server on all host addresses (so on every run's gateway too).
func serveHost(t *testing.T, body string) int {
	t.Helper()
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func TestNetworkEgressAndHostName(t *testing.T) {
	requireStack(t)
	port := serveHost(t, "hello-from-host")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			args := busyboxRun(rt, []string{"-n", "egress-" + rt, "--host-port", fmt.Sprint(port)}, ws, "sh", "-c",
				fmt.Sprintf("grep moatc-host /etc/hosts; wget -q -O- http://moatc-host:%d/", port))
			r := moatcRun(t, opts{}, args...)
			if r.code != 0 || !strings.Contains(r.stdout, "hello-from-host") {
				t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
			st := status(t, "egress-"+rt)
			if !strings.Contains(r.stdout, st.Gateway+"\tmoatc-host") || st.IP == "" {
				t.Errorf("moatc-host is not the gateway %q: %q (ip %q)", st.Gateway, r.stdout, st.IP)
			}
		})
	}
}

func TestNetworkNone(t *testing.T) {
	requireStack(t)
	port := serveHost(t, "unreachable")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			// The host's own addresses, as seen from a run, are not reachable either.
			args := busyboxRun(rt, []string{"--network", "none"}, ws, "sh", "-c",
				fmt.Sprintf("ip route; ip -o addr | grep -v ' lo ' ; if wget -q -O- -T 2 http://10.213.0.1:%d/ 2>/dev/null; then echo REACHED; fi; echo done", port))
			r := moatcRun(t, opts{}, args...)
			if r.code != 0 || strings.Contains(r.stdout, "REACHED") || strings.TrimSpace(r.stdout) != "done" {
				t.Fatalf("network none: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestPublishedPort(t *testing.T) {
	requireStack(t)
	for i, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			hostPort := freePort(t)
			name := "pub-" + rt
			args := busyboxRun(rt, []string{"-d", "-n", name, "-p", fmt.Sprintf("%d:8080", hostPort)}, ws, "sh", "-c", fmt.Sprintf("mkdir -p /tmp/www && echo published-%d > /tmp/www/index.html && echo ready && httpd -f -p 8080 -h /tmp/www", i))
			mustRun(t, args...)
			defer mustRun(t, "destroy", "--force", name)
			waitLog(t, name, "ready")
			var body string
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", hostPort))
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					body = string(b)
					break
				}
			}
			if body != fmt.Sprintf("published-%d\n", i) {
				t.Fatalf("published port answered %q", body)
			}
			if s := mustRun(t, "status", name).stdout; !strings.Contains(s, fmt.Sprintf("127.0.0.1:%d->8080/tcp", hostPort)) {
				t.Errorf("status does not list the port: %s", s)
			}
			// The port is taken now: a second run asking for it is refused before anything exists.
			before := len(list(t))
			r := moatcRun(t, opts{}, "run", "--no-sandbox", "-p", fmt.Sprintf("%d:80", hostPort), "--image", "busybox", ws, "--", "true")
			if r.code != 125 || !strings.Contains(r.stderr, "already in use") {
				t.Errorf("taken port: exit %d %q", r.code, r.stderr)
			}
			if after := len(list(t)); after != before {
				t.Errorf("a refused run left a record")
			}
		})
	}
	if r := moatcRun(t, opts{}, "run", "--no-sandbox", "-p", "80:abc", workspace(t)); r.code != 2 || !strings.Contains(r.stderr, "-p 80:abc") {
		t.Errorf("bad publish spec: %d %q", r.code, r.stderr)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestRunsCannotReachEachOther(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "iso-" + rt
			mustRun(t, busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c", "mkdir -p /tmp/w && echo secret > /tmp/w/index.html && echo ready && httpd -f -p 8080 -h /tmp/w")...)
			defer mustRun(t, "destroy", "--force", name)
			waitLog(t, name, "ready")
			ip := status(t, name).IP
			r := moatcRun(t, opts{}, busyboxRun(rt, []string{}, ws, "sh", "-c",
				fmt.Sprintf("if wget -q -O- -T 3 http://%s:8080/; then echo REACHED; else echo blocked; fi", ip))...)
			if r.code != 0 || strings.Contains(r.stdout, "REACHED") || !strings.Contains(r.stdout, "blocked") {
				t.Fatalf("a run reached another: %q %q", r.stdout, r.stderr)
			}
			// The host itself can reach the run (that is how published ports work).
			out, err := exec.Command("wget", "-q", "-O-", "-T", "3", fmt.Sprintf("http://%s:8080/", ip)).CombinedOutput()
			if err != nil || string(out) != "secret\n" {
				t.Logf("host to run: %v %q (informational)", err, out)
			}
		})
	}
}

// TestNoIPv6SideDoor: IPv6 is off inside a run (no address on eth0, no route but loopback),
// so it cannot go around the IPv4 rules. gVisor's `ip -6 route` also lists IPv4 routes, hence
// the filter on ':'.
func TestNoIPv6SideDoor(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			r := moatcRun(t, opts{}, busyboxRun(rt, []string{}, ws, "sh", "-c",
				"ip -6 addr show dev eth0 | grep inet6; ip -6 route | grep : | grep -v '^::1 '; if nc -w 2 2001:db8::1 80 </dev/null 2>/dev/null; then echo V6-CONNECTED; fi; echo done")...)
			if r.code != 0 || strings.TrimSpace(r.stdout) != "done" {
				t.Fatalf("IPv6 inside the run: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// hostNetState counts what a run's network leaves on the host.
func hostNetState(t *testing.T) string {
	t.Helper()
	count := func(mark string, name string, args ...string) int {
		out, _ := exec.Command(name, args...).Output()
		n := 0
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, mark) {
				n++
			}
		}
		return n
	}
	leases, _ := exec.Command("sh", "-c", "find "+home+"/cni/state/ipam -type f 2>/dev/null | wc -l").Output()
	// Rules are counted by their run tag: moatc's shared chains come and go with the first
	// run and the last clean, and are no run's leftover.
	return fmt.Sprintf("netns=%d veths=%d iptables=%d leases=%s", count("moatc", "ip", "netns", "list"),
		count("veth", "ip", "-o", "link", "show", "type", "veth"), count("moatc run ", "iptables-save"), strings.TrimSpace(string(leases)))
}

func TestNetworkCleanupAfterKill9(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			before := hostNetState(t)
			ws := workspace(t)
			name := "netk9-" + rt
			fg := exec.Command(moatc, busyboxRun(rt, []string{"-n", name, "-p", fmt.Sprintf("%d:80", freePort(t))}, ws, "sh", "-c", "echo ready; sleep 300")...)
			if err := fg.Start(); err != nil {
				t.Fatal(err)
			}
			waitLog(t, name, "ready")
			if during := hostNetState(t); during == before {
				t.Fatalf("the run's network left no trace to count: %s", during)
			}
			fg.Process.Kill()
			fg.Wait()
			mustRun(t, "clean")
			if after := hostNetState(t); after != before {
				t.Errorf("after kill -9 and clean: %s, before: %s", after, before)
			}
		})
	}
}

func TestNetworkParallelDistinctAddresses(t *testing.T) {
	requireStack(t)
	before := hostNetState(t)
	ws := workspace(t)
	const n = 20
	var wg sync.WaitGroup
	addrs := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rt := runtimes[i%2]
			r := moatcRun(t, opts{}, busyboxRun(rt, []string{}, ws, "sh", "-c", "ip -o -4 addr show dev eth0 | awk '{print $4}'")...)
			if r.code != 0 {
				t.Errorf("run %d (%s): exit %d %s", i, rt, r.code, r.stderr)
			}
			addrs[i] = strings.TrimSpace(r.stdout)
		}(i)
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, a := range addrs {
		if a == "" || seen[a] {
			t.Errorf("run %d: address %q missing or shared", i, a)
		}
		seen[a] = true
	}
	if after := hostNetState(t); after != before {
		t.Errorf("20 runs left network state: %s, before: %s", after, before)
	}
}

// TestHomesSharingAPoolLeaveEachOtherAlone: `moatc clean` in one home once removed the networks
// of another home's live runs on the same pool. Here a second home runs a detached workload
// while this one cleans, and its network survives whole.
func TestHomesSharingAPoolLeaveEachOtherAlone(t *testing.T) {
	requireStack(t)
	other, err := os.MkdirTemp("/tmp", "moatc-other-") // short: containerd's socket path
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"MOATC_HOME=" + other}
	in := func(args ...string) result { return moatcRun(t, opts{env: env}, args...) }
	defer func() {
		in("destroy", "--force", "neighbour")
		in("clean")
		in("system", "stop", "--force")
		os.RemoveAll(other)
	}()
	if r := in("image", "import", prefix+"/images/busybox.oci.tar"); r.code != 0 {
		t.Fatalf("import into the other home: %s", r.stderr)
	}
	ws := workspace(t)
	if r := in(busyboxRun("runc", []string{"-d", "-n", "neighbour"}, ws, "sh", "-c", "echo up; sleep 300")...); r.code != 0 {
		t.Fatalf("a run in the other home: exit %d %s", r.code, r.stderr)
	}
	var st runRecord
	json.Unmarshal([]byte(in("status", "--json", "neighbour").stdout), &st)
	bridge := "mc-" + st.ID
	if _, err := net.InterfaceByName(bridge); err != nil {
		t.Fatalf("the other home's run has no bridge %s: %v", bridge, err)
	}
	// This home cleans, and runs at the same moment (same pool): neither touches the other.
	var wg sync.WaitGroup
	wg.Go(func() { mustRun(t, "clean") })
	wg.Go(func() { mustRun(t, busyboxRun("runc", nil, workspace(t), "true")...) })
	wg.Wait()
	if _, err := net.InterfaceByName(bridge); err != nil {
		t.Errorf("this home's clean removed the other home's bridge: %v", err)
	}
	rules, _ := exec.Command("iptables-save").Output()
	if !strings.Contains(string(rules), "moatc run "+st.ID+":") {
		t.Error("this home's clean removed the other home's rules")
	}
	json.Unmarshal([]byte(in("status", "--json", "neighbour").stdout), &st)
	if st.State != "running" {
		t.Errorf("the other home's run is %s", st.State)
	}
}
