package cni

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// TestStrict: a strict network reaches the service Setup's Listen opened on its gateway and
// nothing else: not a host port it was given, not the host's other addresses, no DNS. The
// service's rule goes with Teardown.
func TestStrict(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.id()
	hostPort := freePort(t, "tcp")
	var svc net.Listener
	defer func() {
		if svc != nil {
			svc.Close()
		}
	}()
	n, err := e.m.Setup(ctx, id, Options{Strict: true, HostPorts: []HostPort{{Port: hostPort, Proto: "tcp"}},
		Listen: func(gw netip.Addr) ([]HostPort, error) {
			l, err := net.Listen("tcp4", netip.AddrPortFrom(gw, 0).String())
			if err != nil {
				return nil, err
			}
			svc = l
			return []HostPort{{Port: uint16(l.Addr().(*net.TCPAddr).Port), Proto: "tcp"}}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	go serveHello(svc)
	open, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", hostPort))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	go serveHello(open)
	ns := netName(id)
	if got, err := dialFrom(ns, svc.Addr().String()); err != nil || !strings.HasPrefix(got, "hello "+n.IP.String()) {
		t.Errorf("the run cannot reach its service: %q %v", got, err)
	}
	for _, addr := range []string{
		netip.AddrPortFrom(n.Gateway, hostPort).String(), // a host port: through the proxy only
		"198.51.100.1:80", // anywhere outside
	} {
		if got, err := dialFrom(ns, addr); err == nil {
			t.Errorf("a strict run reached %s: %q", addr, got)
		}
	}
	resolv, _ := os.ReadFile(n.ResolvPath)
	if strings.Contains("\n"+string(resolv), "\nnameserver") {
		t.Errorf("a strict run has a nameserver:\n%s", resolv)
	}
	if err := e.m.Teardown(ctx, id); err != nil {
		t.Fatal(err)
	}
	fw, _ := findFirewall()
	found, err := fw.scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(found[id]) != 0 {
		t.Errorf("rules left after Teardown: %v", found[id])
	}
}
