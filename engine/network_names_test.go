package engine

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// A hostname or alias is written into other containers' hosts files: anything but a name
// would add entries of its own there.
func TestCheckNames(t *testing.T) {
	for _, c := range []struct {
		host    string
		aliases []string
		ok      bool
	}{
		{"", nil, true},
		{"web", []string{"db", "db.local", "a_b-c"}, true},
		{"x\n10.0.0.9 db", nil, false},
		{"web", []string{"x\n10.0.0.9 db"}, false},
		{"web", []string{"a b"}, false},
		{"web", []string{"a#b"}, false},
		{"web", []string{"-a"}, false},
		{strings.Repeat("a", 254), nil, false},
		{"web", make([]string, maxAliases+1), false},
	} {
		err := checkNames(c.host, c.aliases)
		if (err == nil) != c.ok {
			t.Errorf("checkNames(%q, %q): %v", c.host, c.aliases, err)
		}
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Errorf("checkNames(%q, %q): not a 400: %v", c.host, c.aliases, err)
		}
	}
}

// Disconnecting a container that has no network (--network none) is Docker's 403, not a panic.
func TestDisconnectWithoutNetwork(t *testing.T) {
	e := &Engine{}
	c := &ctr{rec: record{ID: "abc", Name: "quiet"}}
	if err := e.disconnect(c, "bridge"); !errdefs.IsPermissionDenied(err) {
		t.Errorf("disconnect of a container without a network: %v", err)
	}
}

func TestExtraHosts(t *testing.T) {
	gw := netip.MustParseAddr("10.88.3.254")
	got, err := extraHosts([]string{"db.local:10.0.0.5", "v6=::1", "host.docker.internal:host-gateway", "b:[fe80::1]"}, gw)
	want := []string{"10.0.0.5\tdb.local", "::1\tv6", "10.88.3.254\thost.docker.internal", "fe80::1\tb"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("extraHosts = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"nohost", "a b:1.2.3.4", "x\n1.2.3.4 evil:1.2.3.4", "-x:1.2.3.4", "x:notanip", ":1.2.3.4"} {
		if _, err := extraHosts([]string{bad}, gw); statusOf(err) != 400 {
			t.Errorf("%q: %v; want 400", bad, err)
		}
	}
}
