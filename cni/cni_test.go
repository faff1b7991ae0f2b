package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestParsePublish(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	for _, c := range []struct {
		spec string
		want Port
		err  string // a part of the error text; "" for success
	}{
		{"8080:80", Port{lo, 8080, 80, "tcp"}, ""},
		{"8080:80/tcp", Port{lo, 8080, 80, "tcp"}, ""},
		{"5353:53/udp", Port{lo, 5353, 53, "udp"}, ""},
		{"5353:53/UDP", Port{lo, 5353, 53, "udp"}, ""},
		{"0.0.0.0:8080:80", Port{netip.MustParseAddr("0.0.0.0"), 8080, 80, "tcp"}, ""},
		{"192.0.2.7:1:65535/tcp", Port{netip.MustParseAddr("192.0.2.7"), 1, 65535, "tcp"}, ""},
		{"[::1]:8080:80", Port{netip.MustParseAddr("::1"), 8080, 80, "tcp"}, ""},
		{" 8080:80 ", Port{lo, 8080, 80, "tcp"}, ""},
		{"", Port{}, "write HOST:CONTAINER"},
		{"8080", Port{}, "write HOST:CONTAINER, e.g. 8080:8080"},
		{"8080:80/sctp", Port{}, "write /tcp or /udp"},
		{"localhost:8080:80", Port{}, `"localhost" is not an IP address`},
		{":8080:80", Port{}, "host address before the first colon is empty"},
		{"0:80", Port{}, "write a number from 1 to 65535"},
		{"8080:70000", Port{}, "container port \"70000\""},
		{"http:80", Port{}, "host port \"http\" is not a port number"},
		{"8000-8010:8000-8010", Port{}, "port ranges are not supported"},
		{"::1:8080:80", Port{}, "IPv6 address in brackets"},
		{"[::1:8080:80", Port{}, "closing bracket"},
		{"[fe80::1%eth0]:8080:80", Port{}, "is not an IP address"},
	} {
		got, err := ParsePublish(c.spec)
		if c.err == "" {
			if err != nil || got != c.want {
				t.Errorf("ParsePublish(%q) = %v, %v; want %v", c.spec, got, err, c.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, errPublish) {
			t.Errorf("ParsePublish(%q) error = %v; want one containing %q", c.spec, err, c.err)
		}
		if err != nil && err.Error() != strings.ToLower(err.Error()[:1])+err.Error()[1:] {
			t.Errorf("ParsePublish(%q) error starts upper case: %v", c.spec, err)
		}
	}
}

func TestResolvFile(t *testing.T) {
	resolved := []byte("nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch corp.example\n")
	withResolved := func(string) ([]byte, error) { return resolved, nil }
	noResolved := func(string) ([]byte, error) { return nil, os.ErrNotExist }
	for _, c := range []struct {
		name, host string
		read       func(string) ([]byte, error)
		dns        []netip.Addr
		want, not  []string
	}{
		{"plain", "# c\nnameserver 10.255.255.53\nsearch example.com\noptions ndots:2 edns0\n", noResolved, nil,
			[]string{"nameserver 10.255.255.53\n", "search example.com\n", "options ndots:2 edns0\n"}, []string{"# c"}},
		{"systemd-resolved stub", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n", withResolved, nil,
			[]string{"nameserver 192.0.2.53\n", "search lan\n", "options edns0 trust-ad\n"}, []string{"127.0.0.53", "2001:db8::53", "corp.example"}},
		{"loopback, no upstream", "nameserver 127.0.0.1\n", noResolved, nil,
			[]string{"no nameserver a run can reach", "127.0.0.1) are loopback"}, []string{"\nnameserver"}},
		{"ipv6 only", "nameserver 2001:db8::1\n", withResolved, nil,
			[]string{"no nameserver a run can reach"}, []string{"\nnameserver"}},
		{"mixed keeps ipv4", "nameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\n", withResolved, nil,
			[]string{"nameserver 192.0.2.1\n"}, []string{"127.0.0.53", "192.0.2.53", "::1"}},
		{"configured", "nameserver 127.0.0.53\nsearch lan\n", withResolved, []netip.Addr{netip.MustParseAddr("192.0.2.99")},
			[]string{"nameserver 192.0.2.99\n", "search lan\n"}, []string{"192.0.2.53", "no nameserver"}},
	} {
		got := string(resolvFile([]byte(c.host), c.read, c.dns))
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: resolv.conf lacks %q:\n%s", c.name, w, got)
			}
		}
		for _, n := range c.not {
			if strings.Contains(got, n) {
				t.Errorf("%s: resolv.conf has %q:\n%s", c.name, n, got)
			}
		}
	}
}

func TestMissingPlugins(t *testing.T) {
	empty := t.TempDir()
	m, err := New(Config{ConfDir: t.TempDir(), StateDir: t.TempDir(), PluginDirs: []string{empty, "/nonexistent/cni"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Setup(context.Background(), "abc", Options{})
	if !errors.Is(err, ErrNoPlugins) {
		t.Fatalf("Setup without plugins: %v; want ErrNoPlugins", err)
	}
	for _, w := range []string{"creating network moatc-abc", "bridge, host-local, loopback", empty + ", /nonexistent/cni", "make setup", "apt-get install containernetworking-plugins"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

func TestBadInput(t *testing.T) {
	m, err := New(Config{ConfDir: t.TempDir(), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "has space", "0123456789abc", "../x"} {
		if _, err := m.Setup(context.Background(), id, Options{}); err == nil || !strings.Contains(err.Error(), "run id") {
			t.Errorf("Setup(%q): %v", id, err)
		}
		if err := m.Teardown(context.Background(), id); err == nil {
			t.Errorf("Teardown(%q) accepted it", id)
		}
	}
	if _, err := m.Setup(context.Background(), "abc", Options{Hostname: "bad\nhost"}); err == nil || !strings.Contains(err.Error(), "hostname") {
		t.Errorf("bad hostname: %v", err)
	}
	for _, p := range []string{"10.213.0.0/25", "10.213.1.0/16", "2001:db8::/48"} {
		if _, err := New(Config{ConfDir: "c", StateDir: "s", Pool: netip.MustParsePrefix(p)}); err == nil {
			t.Errorf("pool %s accepted", p)
		}
	}
	t.Setenv(PoolEnv, "10.214.0.0/16")
	if m, err := New(Config{ConfDir: "c", StateDir: "s"}); err != nil || m.Pool().String() != "10.214.0.0/16" {
		t.Errorf("pool from %s: %v %v", PoolEnv, m, err)
	}
}

// TestNetwork is the main end-to-end test: two runs, one with published ports, checked from
// inside their namespaces with real traffic, then torn down to the host's prior state.
func TestNetwork(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tcpPort, udpPort := freePort(t, "tcp"), freePort(t, "udp")
	a, b := e.id(), e.id()
	gwPort := freePort(t, "tcp") // run a may reach the host on this port only
	na, err := e.m.Setup(ctx, a, Options{Hostname: "box-a", Ports: []Port{
		{HostPort: tcpPort, ContainerPort: 8080, Proto: "tcp"},
		{HostPort: udpPort, ContainerPort: 5353, Proto: "udp"},
	}, HostPorts: []HostPort{{Port: uint16(gwPort), Proto: "tcp"}}})
	if err != nil {
		t.Fatal(err)
	}
	proxyCtx, stopProxy := context.WithCancel(ctx)
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- na.Proxy.Serve(proxyCtx) }()
	defer stopProxy()
	nb, err := e.m.Setup(ctx, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("run a: %s gw %s netns %s; run b: %s", na.IP, na.Gateway, na.NetNSPath, nb.IP)
	nsA, nsB := netName(a), netName(b)
	if na.Subnet == nb.Subnet || !e.pool.Contains(na.IP) || !e.pool.Contains(nb.IP) || na.Gateway.Next() != na.IP {
		t.Fatalf("bad addresses: %+v %+v", na, nb)
	}
	if na.NetNSPath != "/run/netns/"+nsA {
		t.Errorf("netns path %s", na.NetNSPath)
	}

	// Servers on the host: on the gateway address at the opened port, and on every address at
	// a port no run opened.
	gwL, err := net.Listen("tcp", netip.AddrPortFrom(na.Gateway, uint16(gwPort)).String())
	if err != nil {
		t.Fatal(err)
	}
	defer gwL.Close()
	go serveHello(gwL)
	closedL, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer closedL.Close()
	go serveHello(closedL)
	closedPort := closedL.Addr().(*net.TCPAddr).Port

	t.Run("reaches host on its opened port only", func(t *testing.T) {
		got, err := dialFrom(nsA, fmt.Sprintf("%s:%d", na.Gateway, gwPort))
		if err != nil || !strings.HasPrefix(got, "hello "+na.IP.String()+":") {
			t.Fatalf("dial gateway from run: %q, %v (want hello from %s)", got, err, na.IP)
		}
		for _, addr := range append(hostAddrs(t), na.Gateway) {
			if got, err := dialFrom(nsA, fmt.Sprintf("%s:%d", addr, closedPort)); err == nil {
				t.Errorf("run a reached the host's closed port at %s:%d: %q", addr, closedPort, got)
			}
		}
		// Run b opened no port: the host is closed to it, on a's opened port too.
		if got, err := dialFrom(nsB, fmt.Sprintf("%s:%d", na.Gateway, gwPort)); err == nil {
			t.Errorf("run b reached the host at %s:%d: %q", na.Gateway, gwPort, got)
		}
		if got, err := dialFrom(nsB, fmt.Sprintf("%s:%d", nb.Gateway, closedPort)); err == nil {
			t.Errorf("run b reached the host at its own gateway: %q", got)
		}
	})

	t.Run("hosts file", func(t *testing.T) {
		b, err := os.ReadFile(na.HostsPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"127.0.0.1\tlocalhost\n", na.IP.String() + "\tbox-a\n", na.Gateway.String() + "\tmoatc-host\n"} {
			if !strings.Contains(string(b), w) {
				t.Errorf("hosts lacks %q:\n%s", w, b)
			}
		}
		// The hostname defaults to the run id.
		if hb, _ := os.ReadFile(nb.HostsPath); !strings.Contains(string(hb), nb.IP.String()+"\t"+nb.RunID+"\n") {
			t.Errorf("hosts of run b lacks its id as hostname:\n%s", hb)
		}
		// Resolve moatc-host with this file as /etc/hosts inside the run's netns (Go's resolver
		// reads /etc/hosts), then connect to the host's server by that name.
		self, _ := os.Executable()
		cmd := exec.Command("ip", "netns", "exec", nsA, "sh", "-c",
			`mount --bind "$1" /etc/hosts && exec "$2" "$3"`, "sh", na.HostsPath, self, fmt.Sprintf("moatc-host:%d", gwPort))
		cmd.Env = append(os.Environ(), helperEnv+"=dial", "GODEBUG=netdns=go")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "hello "+na.IP.String()) {
			t.Fatalf("dial moatc-host from run: %s, %v", out, err)
		}
		r, _ := os.ReadFile(na.ResolvPath)
		t.Logf("resolv.conf of the run:\n%s", r)
		if !bytes.HasPrefix(r, []byte("# written by moatc")) {
			t.Errorf("resolv.conf: %s", r)
		}
	})

	t.Run("runs are isolated", func(t *testing.T) {
		startHelper(t, nsB, "serve-tcp", "0.0.0.0:7000")
		startHelper(t, nsA, "serve-tcp", "0.0.0.0:7000")
		// The host reaches both: the servers are up.
		for _, ip := range []netip.Addr{na.IP, nb.IP} {
			if got, err := dialFrom("", ip.String()+":7000"); err != nil {
				t.Fatalf("host cannot reach %s:7000 (%q, %v)", ip, got, err)
			}
		}
		if got, err := dialFrom(nsA, nb.IP.String()+":7000"); err == nil {
			t.Errorf("run a reached run b: %q", got)
		}
		if got, err := dialFrom(nsB, na.IP.String()+":7000"); err == nil {
			t.Errorf("run b reached run a: %q", got)
		}
	})

	t.Run("published ports", func(t *testing.T) {
		startHelper(t, nsA, "serve-tcp", "0.0.0.0:8080")
		startHelper(t, nsA, "serve-udp", "0.0.0.0:5353")
		got, err := dialFrom("", fmt.Sprintf("127.0.0.1:%d", tcpPort))
		if err != nil || !strings.HasPrefix(got, "hello "+na.Gateway.String()+":") {
			t.Errorf("tcp 127.0.0.1:%d: %q, %v", tcpPort, got, err)
		}
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 100)
		var n int
		for try := 0; try < 5; try++ {
			c.Write([]byte("ping"))
			c.SetReadDeadline(time.Now().Add(time.Second))
			if n, err = c.Read(buf); err == nil {
				break
			}
		}
		if string(buf[:n]) != "echo ping" {
			t.Errorf("udp 127.0.0.1:%d: %q, %v", udpPort, buf[:n], err)
		}
		// A second Setup cannot take the same host port.
		_, err = e.m.Setup(ctx, e.id(), Options{Ports: []Port{{HostPort: tcpPort, ContainerPort: 1}}})
		if err == nil || !strings.Contains(err.Error(), "already in use") {
			t.Errorf("Setup with a taken port: %v", err)
		}
	})

	t.Run("egress is masqueraded", func(t *testing.T) {
		out := outsideNetns(t)
		startHelper(t, out.ns, "serve-tcp", out.addr.String()+":9000")
		got, err := dialFrom(nsA, out.addr.String()+":9000")
		if err != nil || !strings.HasPrefix(got, "hello "+out.hostAddr.String()+":") {
			t.Errorf("egress from run a: %q, %v (want it to come from %s)", got, err, out.hostAddr)
		}
	})

	t.Run("no ipv6", func(t *testing.T) {
		out, err := exec.Command("ip", "netns", "exec", nsA, "sh", "-c",
			"cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6; ip -6 -o addr show scope global; ip -6 -o addr show dev eth0; ip -6 route show").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("inside the run: disable_ipv6, global and eth0 IPv6 addresses, IPv6 routes:\n%s (%v)", out, err)
		}
		if v, _ := os.ReadFile("/proc/sys/net/ipv6/conf/" + bridgeName(a) + "/disable_ipv6"); strings.TrimSpace(string(v)) != "1" {
			t.Errorf("host bridge %s has IPv6 on: %q", bridgeName(a), v)
		}
		// A host service on every IPv6 address must not be reachable over IPv6 from the run.
		l6, err := net.Listen("tcp6", "[::]:0")
		if err != nil {
			missing(t, "no IPv6 on the host: %v", err)
		}
		defer l6.Close()
		go serveHello(l6)
		p6 := l6.Addr().(*net.TCPAddr).Port
		targets := []string{fmt.Sprintf("[2001:db8::1]:%d", p6)}
		addrs, _ := net.InterfaceAddrs()
		for _, ad := range addrs {
			if p, err := netip.ParsePrefix(ad.String()); err == nil && p.Addr().Is6() && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
				target := netip.AddrPortFrom(p.Addr(), uint16(p6)).String()
				if _, err := dialFrom("", target); err != nil {
					t.Fatalf("host cannot reach its own %s: %v", target, err)
				}
				targets = append(targets, target)
			}
		}
		for _, target := range targets {
			if got, err := dialFrom(nsA, target); err == nil {
				t.Errorf("run reached %s over IPv6: %q", target, got)
			} else {
				t.Logf("IPv6 %s from the run: %v", target, err)
			}
		}
	})

	stopProxy()
	<-proxyDone
	for _, id := range []string{a, b} {
		if err := e.m.Teardown(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := e.m.Teardown(ctx, id); err != nil {
			t.Fatalf("second teardown: %v", err)
		}
	}
	if _, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", tcpPort)); err != nil {
		t.Errorf("published port still taken after teardown: %v", err)
	}
	e.checkRestored()
}

func serveHello(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "hello %s\n", c.RemoteAddr())
		c.Close()
	}
}

func freePort(t *testing.T, proto string) uint16 {
	t.Helper()
	if proto == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

type outside struct {
	ns             string
	addr, hostAddr netip.Addr
}

// outsideNetns makes a stand-in for the internet: a netns joined to the host by a veth, with
// 198.18.X.2 inside and 198.18.X.1 on the host (benchmarking addresses, unused here).
func outsideNetns(t *testing.T) outside {
	t.Helper()
	x := byte(rand.IntN(250))
	o := outside{
		ns:       fmt.Sprintf("moatc-test-out-%d", x),
		addr:     netip.AddrFrom4([4]byte{198, 18, x, 2}),
		hostAddr: netip.AddrFrom4([4]byte{198, 18, x, 1}),
	}
	veth := fmt.Sprintf("mct-out-%d", x)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", veth).Run()
		exec.Command("ip", "netns", "del", o.ns).Run()
	})
	for _, c := range [][]string{
		{"netns", "add", o.ns},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", o.ns},
		{"addr", "add", o.hostAddr.String() + "/30", "dev", veth},
		{"link", "set", veth, "up"},
		{"-n", o.ns, "addr", "add", o.addr.String() + "/30", "dev", "eth0"},
		{"-n", o.ns, "link", "set", "eth0", "up"},
		{"-n", o.ns, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", c, err, out)
		}
	}
	return o
}

func TestPortInUse(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	id := e.id()
	_, err = e.m.Setup(context.Background(), id, Options{Ports: []Port{{HostPort: port + 0, ContainerPort: 80}}})
	if err == nil {
		t.Fatal("Setup took a port in use")
	}
	t.Log(err)
	for _, w := range []string{"creating network moatc-" + id, fmt.Sprintf("127.0.0.1:%d/tcp", port), "already in use", "publish another host port"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q", w)
		}
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error does not wrap EADDRINUSE")
	}
	if _, err := os.Stat(e.m.runDir(id)); !os.IsNotExist(err) {
		t.Errorf("Setup left a record: %v", err)
	}
	e.checkRestored()
}

// TestSetupFailureUndoes breaks Setup after the bridge plugin did its work (a wrapper runs the
// real plugin, then reports failure): Setup must remove the netns, bridge, veth, lease and files.
func TestSetupFailureUndoes(t *testing.T) {
	e := newEnv(t)
	real := ""
	for _, d := range e.m.cfg.PluginDirs {
		if _, err := os.Stat(filepath.Join(d, "bridge")); err == nil {
			real = d
			break
		}
	}
	dir := t.TempDir()
	for _, p := range []string{"loopback", "host-local"} {
		os.Symlink(filepath.Join(real, p), filepath.Join(dir, p))
	}
	script := fmt.Sprintf("#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] || exec %s/bridge\n%s/bridge >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"injected failure\"}'\nexit 1\n", real, real)
	if err := os.WriteFile(filepath.Join(dir, "bridge"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{ConfDir: e.m.cfg.ConfDir, StateDir: e.m.cfg.StateDir, Pool: e.pool, PluginDirs: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	id := e.id()
	_, err = m.Setup(context.Background(), id, Options{Ports: []Port{{HostPort: freePort(t, "tcp"), ContainerPort: 80}}})
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Setup: %v; want the injected failure", err)
	}
	t.Log(err)
	if strings.Contains(err.Error(), "undoing it failed") {
		t.Errorf("undo failed")
	}
	e.checkRestored()
}

func TestPoolClash(t *testing.T) {
	prereqs(t)
	rts, err := routes()
	if err != nil {
		t.Fatal(err)
	}
	var r route
	for _, x := range rts {
		if x.dst.Bits() >= 16 && x.dst.Bits() <= 30 && x.dst.Addr().Is4() && !strings.HasPrefix(x.dev, "mc-") {
			r = x
			break
		}
	}
	if !r.dst.IsValid() {
		missing(t, "no host route to clash with")
	}
	pool := netip.PrefixFrom(r.dst.Addr(), 16).Masked()
	m, err := New(Config{ConfDir: t.TempDir(), StateDir: t.TempDir(), Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := exec.Command("ip", "netns", "list").Output()
	_, err = m.Setup(context.Background(), "clash1", Options{})
	if err == nil {
		m.Teardown(context.Background(), "clash1")
		t.Fatalf("pool %s accepted although route %s overlaps it", pool, r)
	}
	t.Log(err)
	for _, w := range []string{pool.String(), r.dst.String(), PoolEnv + "="} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q", w)
		}
	}
	if after, _ := exec.Command("ip", "netns", "list").Output(); !bytes.Equal(before, after) {
		t.Errorf("netns changed")
	}
}

// TestParallelSetups runs 20 Setups at once, half in this process and half in other
// processes sharing the StateDir: every run must get its own subnet and address.
func TestParallelSetups(t *testing.T) {
	e := newEnv(t)
	const n = 20
	ids := make([]string, n)
	for i := range ids {
		ids[i] = e.id()
	}
	nets := make([]*Network, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				nets[i], errs[i] = e.m.Setup(context.Background(), ids[i], Options{})
				return
			}
			out, err := helperCmd("", "setup", e.m.cfg.StateDir, e.m.cfg.ConfDir, e.pool.String(), ids[i]).Output()
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, out)
				return
			}
			nets[i] = new(Network)
			errs[i] = json.Unmarshal(out, nets[i])
		}()
	}
	wg.Wait()
	t.Logf("%d Setups in parallel (half in other processes): %v", n, time.Since(start))
	ips := map[netip.Addr]string{}
	subnets := map[netip.Prefix]string{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("setup %d: %v", i, errs[i])
			continue
		}
		if o, dup := ips[nets[i].IP]; dup {
			t.Errorf("runs %s and %s both got %s", o, ids[i], nets[i].IP)
		}
		if o, dup := subnets[nets[i].Subnet]; dup {
			t.Errorf("runs %s and %s both got %s", o, ids[i], nets[i].Subnet)
		}
		ips[nets[i].IP], subnets[nets[i].Subnet] = ids[i], ids[i]
	}
	left, err := e.m.Leftovers()
	if err != nil || len(left) != n {
		t.Errorf("Leftovers: %d ids, %v", len(left), err)
	}
	start = time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.m.Teardown(context.Background(), ids[i]); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d Teardowns in parallel: %v", n, time.Since(start))
	e.checkRestored()
}

// TestCrashRecovery kills -9 a process right after its Setup; a fresh Manager must find the
// run in Leftovers and tear it down to nothing.
func TestCrashRecovery(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	cmd := startHelper(t, "", "setup-hold", e.m.cfg.StateDir, e.m.cfg.ConfDir, e.pool.String(), id)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if _, err := os.Stat(netnsPath(id)); err != nil {
		t.Fatalf("the killed process's netns is gone already: %v", err)
	}
	m2, err := New(Config{ConfDir: e.m.cfg.ConfDir, StateDir: e.m.cfg.StateDir, Pool: e.pool})
	if err != nil {
		t.Fatal(err)
	}
	left, err := m2.Leftovers()
	if err != nil || !slices.Contains(left, id) {
		t.Fatalf("Leftovers = %v, %v; want %s", left, err, id)
	}
	if err := m2.Teardown(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if err := m2.Teardown(context.Background(), id); err != nil {
		t.Fatalf("second teardown: %v", err)
	}
	e.checkRestored()

	// The same with the record gone too (state dir wiped): the rules and the bridge are still
	// found by their names, in this pool.
	id2 := e.id()
	cmd = startHelper(t, "", "setup-hold", e.m.cfg.StateDir, e.m.cfg.ConfDir, e.pool.String(), id2)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	os.RemoveAll(e.m.runDir(id2))
	os.Remove(e.m.confPath(id2))
	os.RemoveAll(filepath.Join(e.m.ipamDir(), netName(id2)))
	left, err = m2.Leftovers()
	if err != nil || !slices.Contains(left, id2) {
		t.Fatalf("Leftovers without records = %v, %v; want %s", left, err, id2)
	}
	if err := m2.Teardown(context.Background(), id2); err != nil {
		t.Fatal(err)
	}
	e.checkRestored()
}

// TestTiming measures Setup and Teardown one after another, as a container start and exit
// would see them.
func TestTiming(t *testing.T) {
	e := newEnv(t)
	const rounds = 15
	var setups, teardowns []time.Duration
	// Each step's time is when it ended, counted from the start of its Setup or Teardown
	// (Teardown's steps run side by side).
	steps := map[string][]time.Duration{}
	var mu sync.Mutex
	var t0 time.Time
	phase := ""
	e.m.trace = func(s string) {
		mu.Lock()
		defer mu.Unlock()
		steps[phase+s] = append(steps[phase+s], time.Since(t0))
	}
	for range rounds {
		id := e.id()
		phase, t0 = "setup: ", time.Now()
		if _, err := e.m.Setup(context.Background(), id, Options{Ports: []Port{{HostPort: freePort(t, "tcp"), ContainerPort: 80}}}); err != nil {
			t.Fatal(err)
		}
		setups = append(setups, time.Since(t0))
		phase, t0 = "teardown: ", time.Now()
		if err := e.m.Teardown(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		teardowns = append(teardowns, time.Since(t0))
	}
	e.m.trace = nil
	t.Logf("Setup:    median %v, min %v, max %v (%d rounds)", median(setups), slices.Min(setups), slices.Max(setups), rounds)
	t.Logf("Teardown: median %v, min %v, max %v", median(teardowns), slices.Min(teardowns), slices.Max(teardowns))
	var names []string
	for s := range steps {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, s := range names {
		t.Logf("  %-24s done after %v (median)", s, median(steps[s]))
	}
	e.checkRestored()
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func BenchmarkSetupTeardown(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	dir := b.TempDir()
	m, err := New(Config{ConfDir: filepath.Join(dir, "conf"), StateDir: filepath.Join(dir, "state"), Pool: netip.MustParsePrefix("10.252.0.0/19")})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("bench%d", i)
		i++
		if _, err := m.Setup(ctx, id, Options{}); err != nil {
			b.Fatal(err)
		}
		if err := m.Teardown(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLoad reads a run's network back from its record, as a moatc adopting the run does.
func TestLoad(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.id()
	n, err := e.m.Setup(ctx, id, Options{Ports: []Port{{HostPort: freePort(t, "tcp"), ContainerPort: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	n.Proxy.Close()
	loaded, err := e.m.Load(id)
	if err != nil || loaded.IP != n.IP || loaded.Gateway != n.Gateway || len(loaded.Ports) != 1 || loaded.NetNSPath != n.NetNSPath {
		t.Fatalf("Load: %+v, %v", loaded, err)
	}
	if _, err := e.m.Load("../x"); err == nil {
		t.Error("Load of a bad run id: no error")
	}
	if err := e.m.Teardown(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Load(id); err == nil {
		t.Error("Load after Teardown: no error")
	}
	e.checkRestored()
}

// TestRelease: at the end of a run everything but the bridge is gone when Release returns;
// the bridge goes shortly after, in a detached process, and its subnet is not handed out
// while it lingers.
func TestRelease(t *testing.T) {
	e := newEnv(t)
	a, b := e.id(), e.id()
	na, err := e.m.Setup(context.Background(), a, Options{Hostname: "a"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.m.Release(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	t.Logf("Release returned after %v", time.Since(start))
	if _, err := os.Stat(netnsPath(a)); err == nil {
		t.Errorf("netns left after Release")
	}
	if _, err := os.Stat(e.m.recordPath(a)); err == nil {
		t.Errorf("record left after Release")
	}
	// A Setup right now must not reuse the subnet of a bridge still being deleted.
	nb, err := e.m.Setup(context.Background(), b, Options{Hostname: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if nb.Subnet == na.Subnet {
		t.Errorf("subnet %s handed out again while its bridge may linger", nb.Subnet)
	}
	if err := e.m.Teardown(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	gone := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if out, _ := exec.Command("ip", "link", "show", bridgeName(a)).CombinedOutput(); !strings.Contains(string(out), bridgeName(a)+":") {
			gone = true
			break
		}
	}
	if !gone {
		t.Errorf("bridge %s still there 10s after Release", bridgeName(a))
	}
	e.checkRestored()
}

// hostAddrs are the host's own IPv4 addresses outside moatc's bridges, loopback included.
func hostAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, "mc-") {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				out = append(out, p.Addr())
			}
		}
	}
	return out
}
