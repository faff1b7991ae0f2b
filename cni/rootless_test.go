package cni

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/moatc/moatc/rootless"
)

func rootlessRecord(strict, shared bool) *record {
	return &record{
		RunID: "rl1", Pool: netip.MustParsePrefix("10.213.0.0/16"), Subnet: netip.MustParsePrefix("10.213.4.0/24"),
		Gateway: netip.MustParseAddr("10.213.4.1"), IP: netip.MustParseAddr("10.213.4.2"),
		HostPorts: []HostPort{{Port: 5432, Proto: "tcp"}, {Port: 5353, Proto: "udp"}},
		Services:  []HostPort{{Port: 40000, Proto: "tcp"}},
		Strict:    strict, Shared: shared,
		Outside: &Outside{
			Outside: rootless.Outside{Net: netip.MustParsePrefix("10.0.2.0/24"),
				HostLoopback: netip.MustParseAddr("10.0.2.2"), DNS: netip.MustParseAddr("10.0.2.3")},
			HostAddrs: []netip.Prefix{netip.MustParsePrefix("192.0.2.2/32"), netip.MustParsePrefix("198.51.100.0/28")},
		},
	}
}

// ruleLines renders rules as "table chain match -j target", in order.
func ruleLines(rules []rule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.table+" "+r.chain+" "+r.match+" -j "+r.target)
	}
	return out
}

func indexOf(lines []string, want string) int {
	for i, l := range lines {
		if l == want {
			return i
		}
	}
	return -1
}

// TestRootlessRules: a rootless run's host ports are the host's loopback (DNAT from the
// gateway to slirp4netns's 10.0.2.2, forwarded only as that DNAT), slirp4netns's network and the
// host's own addresses are dropped before egress is accepted, and DNS to slirp4netns's resolver
// stays open; the rootful INPUT rule for host ports is gone (nothing of the namespace's own is
// the host).
func TestRootlessRules(t *testing.T) {
	got := ruleLines(runRules(rootlessRecord(false, false)))
	br := "mc-rl1"
	for _, want := range []string{
		"nat PREROUTING -i " + br + " -d 10.213.4.1 -p tcp --dport 5432 -j DNAT --to-destination 10.0.2.2:5432",
		"nat PREROUTING -i " + br + " -d 10.213.4.1 -p udp --dport 5353 -j DNAT --to-destination 10.0.2.2:5353",
		"filter MOATC-FORWARD -i " + br + " -d 10.0.2.2 -p tcp --dport 5432 -m conntrack --ctstate DNAT --ctorigdst 10.213.4.1 -j ACCEPT",
		"filter MOATC-FORWARD -i " + br + " -d 10.0.2.2 -p udp --dport 5353 -m conntrack --ctstate DNAT --ctorigdst 10.213.4.1 -j ACCEPT",
		"filter MOATC-FORWARD -i " + br + " -d 10.0.2.3 -p udp --dport 53 -j ACCEPT",
		"filter MOATC-FORWARD -i " + br + " -d 10.0.2.3 -p tcp --dport 53 -j ACCEPT",
		"filter MOATC-INPUT -i " + br + " -d 10.213.4.1 -p tcp --dport 40000 -j ACCEPT", // the proxy, as rootful
		"nat POSTROUTING -s 10.213.4.0/24 ! -o " + br + " -j MASQUERADE",
	} {
		if indexOf(got, want) < 0 {
			t.Errorf("missing rule %q in\n%s", want, strings.Join(got, "\n"))
		}
	}
	accept := indexOf(got, "filter MOATC-FORWARD -i "+br+" -j ACCEPT")
	for _, drop := range []string{
		"filter MOATC-FORWARD -i " + br + " -d 10.0.2.0/24 -j DROP",
		"filter MOATC-FORWARD -i " + br + " -d 192.0.2.2/32 -j DROP",
		"filter MOATC-FORWARD -i " + br + " -d 198.51.100.0/28 -j DROP",
	} {
		if i := indexOf(got, drop); i < 0 || i > accept || accept < 0 {
			t.Errorf("rule %q missing or after the egress ACCEPT (%d, %d) in\n%s", drop, i, accept, strings.Join(got, "\n"))
		}
	}
	// The DNS and DNAT accepts come before slirp4netns's network is dropped.
	if a, d := indexOf(got, "filter MOATC-FORWARD -i "+br+" -d 10.0.2.3 -p udp --dport 53 -j ACCEPT"), indexOf(got, "filter MOATC-FORWARD -i "+br+" -d 10.0.2.0/24 -j DROP"); a > d {
		t.Errorf("DNS accept after the drop of slirp4netns's network")
	}
	for _, l := range got {
		if strings.HasPrefix(l, "filter MOATC-INPUT") && strings.Contains(l, "--dport 5432") {
			t.Errorf("rootless: a host port is opened on the namespace itself: %q", l)
		}
	}

	// Strict: nothing forwarded, no DNAT, no NAT; the proxy reaches host ports itself.
	strict := ruleLines(runRules(rootlessRecord(true, false)))
	for _, l := range strict {
		if strings.Contains(l, "DNAT") || strings.Contains(l, "MASQUERADE") || strings.Contains(l, "10.0.2.3") {
			t.Errorf("strict rootless run has %q", l)
		}
	}
	if indexOf(strict, "filter MOATC-FORWARD -i "+br+" -j DROP") < 0 {
		t.Errorf("strict rootless run forwards: \n%s", strings.Join(strict, "\n"))
	}

	// The build network (shared, no host ports) gets the same drops.
	sh := rootlessRecord(false, true)
	sh.HostPorts, sh.Services = nil, nil
	shared := ruleLines(runRules(sh))
	for _, drop := range []string{"-d 10.0.2.0/24 -j DROP", "-d 192.0.2.2/32 -j DROP"} {
		if indexOf(shared, "filter MOATC-FORWARD -i "+br+" "+drop) < 0 {
			t.Errorf("build network lacks %q:\n%s", drop, strings.Join(shared, "\n"))
		}
	}

	// Rootful records are untouched: no rule names slirp4netns.
	rf := rootlessRecord(false, false)
	rf.Outside = nil
	for _, l := range ruleLines(runRules(rf)) {
		if strings.Contains(l, "10.0.2.") || strings.Contains(l, "DNAT") {
			t.Errorf("rootful run has %q", l)
		}
	}
}
