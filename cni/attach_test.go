package cni

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPortsAddr(t *testing.T) {
	if got := PortsAddr(netip.MustParsePrefix("10.213.7.0/24")); got != netip.MustParseAddr("10.213.7.254") {
		t.Errorf("PortsAddr = %s", got)
	}
}

// TestAttach: containers attached to a run's network reach the run and each other, not
// another run nor its attachments, and the run's Teardown leaves nothing of them.
func TestAttach(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, b := e.id(), e.id()
	na, err := e.m.Setup(ctx, a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	nb, err := e.m.Setup(ctx, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	x, err := e.m.Attach(ctx, a, "x")
	if err != nil {
		t.Fatal(err)
	}
	y, err := e.m.Attach(ctx, a, "y")
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.m.Attach(ctx, a, PortsKey)
	if err != nil {
		t.Fatal(err)
	}
	bx, err := e.m.Attach(ctx, b, "x")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("run a %s, x %s, y %s, ports %s; run b %s, b's x %s", na.IP, x.IP, y.IP, p.IP, nb.IP, bx.IP)
	if !na.Subnet.Contains(x.IP) || x.IP == y.IP || x.IP == na.IP || x.Gateway != na.Gateway || x.Subnet != na.Subnet {
		t.Fatalf("bad addresses: run %+v, x %+v, y %+v", na, x, y)
	}
	if p.IP != PortsAddr(na.Subnet) {
		t.Errorf("ports attachment at %s, want %s", p.IP, PortsAddr(na.Subnet))
	}
	if again, err := e.m.Attach(ctx, a, "x"); err != nil || again.IP != x.IP {
		t.Errorf("second Attach of x: %+v, %v", again, err)
	}
	if list, err := e.m.Attachments(a); err != nil || len(list) != 3 {
		t.Errorf("Attachments: %d, %v", len(list), err)
	}
	ns := func(path string) string { return filepath.Base(path) }
	startHelper(t, ns(x.NetNSPath), "serve-tcp", x.IP.String()+":8080")
	startHelper(t, ns(na.NetNSPath), "serve-tcp", na.IP.String()+":8080")
	startHelper(t, ns(bx.NetNSPath), "serve-tcp", bx.IP.String()+":8080")
	for _, c := range []struct{ from, to string }{
		{ns(y.NetNSPath), x.IP.String()},  // sibling to sibling
		{ns(na.NetNSPath), x.IP.String()}, // run to sibling
		{ns(x.NetNSPath), na.IP.String()}, // sibling to run
	} {
		if got, err := dialFrom(c.from, c.to+":8080"); err != nil || !strings.HasPrefix(got, "hello ") {
			t.Errorf("%s -> %s: %q, %v", c.from, c.to, got, err)
		}
	}
	for _, c := range []struct{ from, to string }{
		{ns(x.NetNSPath), bx.IP.String()},  // another run's sibling
		{ns(x.NetNSPath), nb.IP.String()},  // another run
		{ns(na.NetNSPath), bx.IP.String()}, // the run to another run's sibling
		{ns(bx.NetNSPath), x.IP.String()},
	} {
		if got, err := dialFrom(c.from, c.to+":8080"); err == nil {
			t.Errorf("%s reached another run's %s: %q", c.from, c.to, got)
		}
	}
	if err := e.m.Detach(ctx, a, "y"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(y.NetNSPath); !os.IsNotExist(err) {
		t.Errorf("netns of y after Detach: %v", err)
	}
	// Teardown from a fresh Manager (as `moatc clean` after a kill -9) removes x and ports.
	m2, err := New(e.m.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a, b} {
		if err := m2.Teardown(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{x.NetNSPath, p.NetNSPath, bx.NetNSPath} {
		if _, err := os.Stat(n); !os.IsNotExist(err) {
			t.Errorf("netns %s after Teardown: %v", n, err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.m.runDir(a), "ipam")); !os.IsNotExist(err) {
		t.Errorf("attachment leases after Teardown: %v", err)
	}
	e.checkRestored()
}
