package cni

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as a helper run inside network namespaces and as a second moatc
// process: MOATC_CNI_HELPER names what to do, the arguments say with what.

const helperEnv = "MOATC_CNI_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(helper(h, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func helper(mode string, args []string) int {
	fail := func(err error) int { fmt.Println("error:", err); return 1 }
	switch mode {
	case "serve-tcp": // ADDR: greet every connection with "hello <peer>", print "ready" once listening
		l, err := net.Listen("tcp", args[0])
		if err != nil {
			return fail(err)
		}
		fmt.Println("ready")
		for {
			c, err := l.Accept()
			if err != nil {
				return fail(err)
			}
			fmt.Fprintf(c, "hello %s\n", c.RemoteAddr())
			c.Close()
		}
	case "serve-udp": // ADDR: echo datagrams prefixed with "echo "
		c, err := net.ListenPacket("udp", args[0])
		if err != nil {
			return fail(err)
		}
		fmt.Println("ready")
		b := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(b)
			if err != nil {
				return fail(err)
			}
			c.WriteTo(append([]byte("echo "), b[:n]...), from)
		}
	case "dial": // ADDR: print what the server says
		c, err := net.DialTimeout("tcp", args[0], 2*time.Second)
		if err != nil {
			return fail(err)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			return fail(err)
		}
		fmt.Print(string(b))
		return 0
	case "setup", "setup-hold": // STATEDIR CONFDIR POOL RUNID: Setup in this process, print the network
		m, err := New(Config{StateDir: args[0], ConfDir: args[1], Pool: netip.MustParsePrefix(args[2])})
		if err != nil {
			return fail(err)
		}
		n, err := m.Setup(context.Background(), args[3], Options{})
		if err != nil {
			return fail(err)
		}
		b, _ := json.Marshal(n)
		fmt.Println(string(b))
		if mode == "setup-hold" {
			fmt.Println("ready")
			select {}
		}
		return 0
	}
	return fail(fmt.Errorf("unknown helper %q", mode))
}

// helperCmd runs the test binary as helper, inside netns when it is not "".
func helperCmd(netns, mode string, args ...string) *exec.Cmd {
	self, _ := os.Executable()
	var cmd *exec.Cmd
	if netns == "" {
		cmd = exec.Command(self, args...)
	} else {
		cmd = exec.Command("ip", append([]string{"netns", "exec", netns, self}, args...)...)
	}
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "GODEBUG=netdns=go")
	return cmd
}

// startHelper starts a long-running helper and waits for its "ready" line; the test's cleanup
// kills it.
func startHelper(t *testing.T, netns, mode string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := helperCmd(netns, mode, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("helper %s %v exited before it was ready", mode, args)
			}
			if l == "ready" {
				go func() {
					for range lines {
					}
				}()
				return cmd
			}
			t.Logf("helper %s: %s", mode, l)
		case <-timeout:
			t.Fatalf("helper %s %v not ready after 10s", mode, args)
		}
	}
}

// dialFrom connects to addr from inside netns (the host when "") and returns what the server
// said, or an error.
func dialFrom(netns, addr string) (string, error) {
	out, err := helperCmd(netns, "dial", addr).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// missing skips the test when the machine cannot run it, and fails it in CI (CI=true), where
// every prerequisite must be there.
func missing(t *testing.T, format string, a ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing: "+format, a...)
	}
	t.Skipf("prerequisite missing (not CI, so skipping): "+format, a...)
}

// prereqs skips the test (fails it under CI=true) when the machine cannot run it.
func prereqs(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "must run as root")
	}
	m, err := New(Config{StateDir: t.TempDir(), ConfDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.checkPlugins(); err != nil {
		missing(t, "%v", err)
	}
	if _, err := findFirewall(); err != nil {
		missing(t, "%v", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing(t, "the ip command (apt-get install iproute2)")
	}
}

// testPool picks a /19 (32 runs) that no host route touches, at random so that tests running at
// the same time on this machine do not share one.
func testPool(t *testing.T) netip.Prefix {
	t.Helper()
	rts, err := routes()
	if err != nil {
		t.Fatal(err)
	}
	for range 200 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(200 + rand.IntN(50)), byte(32 * rand.IntN(8)), 0}), 19)
		ok := true
		for _, r := range rts {
			if r.dst.Bits() > 0 && r.dst.Overlaps(p) {
				ok = false
			}
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free test pool in 10.200.0.0/14")
	return netip.Prefix{}
}

var ipv4RE = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+(/\d+)?`)

type env struct {
	t     *testing.T
	m     *Manager
	dir   string
	pool  netip.Prefix
	ids   []string
	prior snapshot
}

// newEnv makes a Manager with its own pool and directories, takes a snapshot of the host's
// network state, and on cleanup tears down every run the test made (even on failure) and checks
// that the host is back to the snapshot.
func newEnv(t *testing.T) *env {
	t.Helper()
	prereqs(t)
	dir := t.TempDir()
	e := &env{t: t, dir: dir, pool: testPool(t)}
	m, err := New(Config{ConfDir: filepath.Join(dir, "conf"), StateDir: filepath.Join(dir, "state"), Pool: e.pool})
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	e.prior = e.snap()
	t.Cleanup(func() {
		// A fresh Manager, as `moatc clean` would have.
		m2, err := New(Config{ConfDir: filepath.Join(dir, "conf"), StateDir: filepath.Join(dir, "state"), Pool: e.pool})
		if err != nil {
			t.Error(err)
			return
		}
		left, err := m2.Leftovers()
		if err != nil {
			t.Error(err)
		}
		for _, id := range append(left, e.ids...) {
			if err := m2.Teardown(context.Background(), id); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return e
}

func (e *env) id() string {
	id := fmt.Sprintf("%012x", rand.Uint64()&0xffffffffffff)
	e.ids = append(e.ids, id)
	return id
}

// snapshot is what the brief asks to compare: netns names, veths, iptables rules mentioning
// moatc, and IPAM lease files.
type snapshot struct{ netns, veths, rules, leases []string }

func (e *env) snap() snapshot {
	e.t.Helper()
	run := func(name string, args ...string) []string {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			e.t.Fatalf("%s %v: %v", name, args, err)
		}
		var ls []string
		for _, l := range strings.Split(string(out), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				ls = append(ls, l)
			}
		}
		return ls
	}
	var s snapshot
	for _, l := range run("ip", "netns", "list") {
		s.netns = append(s.netns, strings.Fields(l)[0])
	}
	for _, l := range run("ip", "-o", "link", "show", "type", "veth") {
		f := strings.Fields(l)
		s.veths = append(s.veths, strings.TrimSuffix(f[1], ":")+" "+strings.Join(f[2:], " "))
	}
	for _, l := range run("iptables-save") {
		if strings.Contains(l, "moatc") {
			s.rules = append(s.rules, l)
		}
	}
	filepath.Walk(filepath.Join(e.dir, "state", "ipam"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			s.leases = append(s.leases, p)
		}
		return nil
	})
	return s
}

// mine reports whether a line of the host's state belongs to this test: it names one of its
// runs (netns moatc-ID, bridge mc-ID, rule tag) or its pool.
func (e *env) mine(l string) bool {
	for _, id := range e.ids {
		if strings.Contains(l, id) {
			return true
		}
	}
	for _, a := range ipv4RE.FindAllString(l, -1) {
		if inPool(" -s "+a, e.pool) {
			return true
		}
	}
	// A veth whose other end or bridge is not named belongs to no one known: count it.
	if strings.Contains(l, "@") && !strings.Contains(l, "master ") && !strings.Contains(l, "link-netns ") {
		return true
	}
	return false
}

// checkRestored compares the host with the snapshot taken before the test. Counts must match;
// when something else on the machine changed them at the same time, only the test's own
// objects fail it.
func (e *env) checkRestored() {
	e.t.Helper()
	now := e.snap()
	cmp := func(what string, before, after []string) {
		e.t.Helper()
		if len(before) == len(after) {
			e.t.Logf("%s: %d before, %d after", what, len(before), len(after))
			return
		}
		b := map[string]bool{}
		for _, l := range before {
			b[l] = true
		}
		var added []string
		for _, l := range after {
			if !b[l] && e.mine(l) {
				added = append(added, l)
			}
		}
		sort.Strings(added)
		if len(added) > 0 || what == "lease files" {
			e.t.Errorf("%s: %d before, %d after; left behind:\n%s", what, len(before), len(after), strings.Join(added, "\n"))
		} else {
			e.t.Logf("%s: %d before, %d after, changed by something else on this machine", what, len(before), len(after))
		}
	}
	cmp("netns", e.prior.netns, now.netns)
	cmp("veths", e.prior.veths, now.veths)
	cmp("iptables rules mentioning moatc", e.prior.rules, now.rules)
	cmp("lease files", e.prior.leases, now.leases)
	left, err := e.m.Leftovers()
	if err != nil {
		e.t.Error(err)
	} else if len(left) > 0 {
		e.t.Errorf("Leftovers after teardown: %v", left)
	}
}
