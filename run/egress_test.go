package run

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
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
	check := destinationCheck(pool, gw, []uint16{5432})
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
