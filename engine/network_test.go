package engine

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
)

func TestPlanPorts(t *testing.T) {
	p80, p81, p53 := network.MustParsePort("80/tcp"), network.MustParsePort("81/tcp"), network.MustParsePort("53/udp")
	got, err := planPorts(hostPorts{PortBindings: network.PortMap{p80: {{HostPort: "8080"}}, p53: {{}}}, PublishAll: true},
		network.PortSet{p80: {}, p81: {}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint16{"80/tcp": 8080, "53/udp": 0, "81/tcp": 0}
	if len(got) != len(want) {
		t.Fatalf("planPorts: %+v", got)
	}
	for _, b := range got {
		if hp, ok := want[b.Port]; !ok || hp != b.HostPort {
			t.Errorf("planPorts: %+v, want %v", got, want)
		}
	}
	// Without -P the exposed ports are not published.
	if got, _ := planPorts(hostPorts{}, network.PortSet{p80: {}}); len(got) != 0 {
		t.Errorf("exposed ports published without -P: %+v", got)
	}
	for name, hp := range map[string]hostPorts{
		"host address": {PortBindings: network.PortMap{p80: {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: "8080"}}}},
		"port range":   {PortBindings: network.PortMap{p80: {{HostPort: "8080-8081"}}}},
	} {
		if _, err := planPorts(hp, nil); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := planPorts(hostPorts{PortBindings: network.PortMap{network.MustParsePort("80/sctp"): {{}}}}, nil); !errdefs.IsNotImplemented(err) {
		t.Errorf("sctp: %v", err)
	}
}

func TestPlanPortsCap(t *testing.T) {
	exposed := network.PortSet{}
	for i := 1; i <= maxPorts+1; i++ {
		exposed[network.MustParsePort(fmt.Sprintf("%d/tcp", i))] = struct{}{}
	}
	if _, err := planPorts(hostPorts{PublishAll: true}, exposed); statusOf(err) != 400 || !strings.Contains(err.Error(), "at most") {
		t.Errorf("-P of %d exposed ports: %v; want 400", len(exposed), err)
	}
	delete(exposed, network.MustParsePort("1/tcp"))
	if got, err := planPorts(hostPorts{PublishAll: true}, exposed); err != nil || len(got) != maxPorts {
		t.Errorf("-P of %d exposed ports: %d planned, %v", len(exposed), len(got), err)
	}
}
