package run

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/rootless"
)

func TestCappedTrace(t *testing.T) {
	var b bytes.Buffer
	c := &cappedTrace{w: &b, max: 100}
	line := []byte(strings.Repeat("x", 39) + "\n")
	for range 10 {
		if n, err := c.Write(line); n != len(line) || err != nil {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 3 || lines[0] != strings.Repeat("x", 39) {
		t.Fatalf("got %q", b.String())
	}
	var mark struct{ Decision, Error string }
	if err := json.Unmarshal([]byte(lines[2]), &mark); err != nil || mark.Decision != "trace-full" {
		t.Errorf("last line %q: %v", lines[2], err)
	}
}

func TestDestinationCheck(t *testing.T) {
	pool := netip.MustParsePrefix("10.213.0.0/16")
	gw := netip.MustParseAddr("10.213.7.1")
	check := destinationCheck(pool, gw, []uint16{5432}, nil, nil)
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"93.184.215.14:443", true},
		{"10.213.7.1:5432", true}, // a host port opened to the run
		{"10.213.7.1:22", false},  // the rest of the gateway
		{"10.213.9.2:80", false},  // another run
		{"127.0.0.1:80", false},   // loopback
		{"[::1]:80", false},       // loopback
		{"169.254.169.254:80", false},
		{"[fe80::1]:80", false},
		{"0.0.0.0:80", false},
		{"0.1.2.3:80", false},
		{"224.0.0.1:80", false},
		{"255.255.255.255:80", false},
		{"[::ffff:127.0.0.1]:80", false}, // mapped loopback
	} {
		err := check(netip.MustParseAddrPort(c.addr))
		if (err == nil) != c.ok {
			t.Errorf("%s: %v, want allowed=%v", c.addr, err, c.ok)
		}
	}
	// Every address of the host itself.
	as, _ := net.InterfaceAddrs()
	for _, a := range as {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if err := check(netip.AddrPortFrom(p.Addr(), 8080)); err == nil {
			t.Errorf("the host's own %s is allowed", p.Addr())
		}
	}
}

// Rootless: the proxy is in rootlesskit's namespace. moatc-host is slirp4netns's alias for the
// host's loopback, and the host's own addresses (outside) are closed like its loopback.
func TestDestinationCheckRootless(t *testing.T) {
	pool := netip.MustParsePrefix("10.213.0.0/16")
	out := &cni.Outside{Outside: rootless.Outside{Net: netip.MustParsePrefix("10.0.2.0/24"),
		HostLoopback: netip.MustParseAddr("10.0.2.2"), DNS: netip.MustParseAddr("10.0.2.3")}}
	addrs := func() ([]netip.Prefix, error) {
		return []netip.Prefix{netip.MustParsePrefix("192.0.2.2/32"), netip.MustParsePrefix("198.51.100.0/28")}, nil
	}
	check := destinationCheck(pool, out.HostLoopback, []uint16{5432}, out, addrs)
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"93.184.215.14:443", true},
		{"10.0.2.2:5432", true},    // a host port opened to the run
		{"10.0.2.2:22", false},     // the rest of the host's loopback
		{"10.0.2.3:53", false},     // slirp4netns's resolver: the proxy resolves by itself
		{"10.0.2.100:80", false},   // the namespace's own address
		{"10.213.7.1:5432", false}, // the gateway is the namespace's, not the host's
		{"192.0.2.2:8080", false},  // the host's own address, outside
		{"198.51.100.9:80", false}, // in a range the host answers as its own
		{"198.51.100.17:80", true}, // beyond it
		{"127.0.0.1:5432", false},  // loopback
	} {
		err := check(netip.MustParseAddrPort(c.addr))
		if (err == nil) != c.ok {
			t.Errorf("%s: %v, want allowed=%v", c.addr, err, c.ok)
		}
	}
	// Host addresses that cannot be read: nothing but opened host ports is allowed.
	blind := destinationCheck(pool, out.HostLoopback, []uint16{5432}, out, func() ([]netip.Prefix, error) { return nil, errors.New("gone") })
	if err := blind(netip.MustParseAddrPort("93.184.215.14:443")); err == nil {
		t.Error("host addresses unreadable: an outside address was allowed")
	}
	if err := blind(netip.MustParseAddrPort("10.0.2.2:5432")); err != nil {
		t.Errorf("host addresses unreadable: the opened host port was refused: %v", err)
	}
}
