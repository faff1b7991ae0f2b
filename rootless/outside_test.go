package rootless

import (
	"net/netip"
	"reflect"
	"testing"
)

// A fib_trie as this machine's kernel writes it, with a second interface, an address on a
// /32 of its own and an AnyIP "local" route (ip route add local 198.51.100.0/28 dev lo).
const fibTrie = `Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
     |-- 172.17.0.1
        /16 link UNICAST
        /32 host LOCAL
     |-- 198.51.100.0
        /28 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.2
              /32 host LOCAL
`

func TestLocalAddrs(t *testing.T) {
	got := localAddrs([]byte(fibTrie))
	want := []netip.Prefix{
		netip.MustParsePrefix("172.17.0.1/32"),
		netip.MustParsePrefix("192.0.2.2/32"),
		netip.MustParsePrefix("198.51.100.0/28"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("localAddrs = %v, want %v", got, want)
	}
}

func TestOutsideOf(t *testing.T) {
	var in Info
	in.NetworkDriver.Driver, in.NetworkDriver.ChildIP, in.NetworkDriver.DNS = "slirp4netns", "10.0.2.100", []string{"10.0.2.3"}
	o, err := outsideOf(&in)
	if err != nil {
		t.Fatal(err)
	}
	want := Outside{Net: netip.MustParsePrefix("10.0.2.0/24"), HostLoopback: netip.MustParseAddr("10.0.2.2"), DNS: netip.MustParseAddr("10.0.2.3")}
	if o != want {
		t.Errorf("outsideOf = %+v, want %+v", o, want)
	}
	in.NetworkDriver.Driver = "vpnkit"
	if _, err := outsideOf(&in); err == nil {
		t.Error("vpnkit: no error; moatc's rules are written for slirp4netns")
	}
}
