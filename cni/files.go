package cni

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// GatewayName is the name by which a run reaches the host (the gateway address) through the
// /etc/hosts moatc writes for it.
const GatewayName = "moatc-host"

// hostsFile is the run's /etc/hosts. ::1 stays: lo keeps IPv6 inside the run.
func hostsFile(hostname string, ip, gw netip.Addr) []byte {
	var b bytes.Buffer
	b.WriteString("# written by moatc for this run\n")
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\t%s\n", ip, hostname)
	fmt.Fprintf(&b, "%s\t%s\n", gw, GatewayName)
	return b.Bytes()
}

const (
	hostResolvConf     = "/etc/resolv.conf"
	resolvedResolvConf = "/run/systemd/resolve/resolv.conf" // systemd-resolved's list of upstream servers
)

// resolvFile is the run's /etc/resolv.conf: the host's search and options lines and the host's
// IPv4 nameservers that a run can reach. Loopback servers (systemd-resolved's 127.0.0.53, a local
// dnsmasq) answer only inside the host's netns, so they are replaced by systemd-resolved's
// upstreams when that file exists; IPv6 servers are dropped since runs have no IPv6. When nothing
// reachable is left the file says so and has no nameserver: lookups fail at once instead of
// silently going to a public resolver. dns, when set, replaces the host's servers.
func resolvFile(host []byte, readFile func(string) ([]byte, error), dns []netip.Addr) []byte {
	servers, other, dropped := parseResolv(host)
	note := ""
	if len(dns) > 0 {
		servers = dns
	} else if len(servers) == 0 {
		if hasLoopback(dropped) {
			if up, err := readFile(resolvedResolvConf); err == nil {
				servers, _, _ = parseResolv(up)
			}
		}
		if len(servers) == 0 {
			note = "# no nameserver a run can reach: the host's (" + joinAddrs(dropped) + ") are loopback or IPv6\n" +
				"# and no upstream servers were found; set the runs' DNS servers in moatc's network config\n"
		}
	}
	var b bytes.Buffer
	b.WriteString("# written by moatc for this run\n")
	b.WriteString(note)
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	for _, l := range other {
		b.WriteString(l + "\n")
	}
	return b.Bytes()
}

// parseResolv splits a resolv.conf into usable nameservers, the search/domain/options lines,
// and the nameservers a run cannot use (loopback, IPv6, unparsable).
func parseResolv(data []byte) (servers []netip.Addr, other []string, dropped []string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				continue
			}
			a, err := netip.ParseAddr(f[1])
			if err != nil || !a.Unmap().Is4() || a.IsLoopback() || a.IsUnspecified() {
				dropped = append(dropped, f[1])
				continue
			}
			servers = append(servers, a.Unmap())
		case "search", "domain", "options":
			other = append(other, strings.Join(f, " "))
		}
	}
	return servers, other, dropped
}

func hasLoopback(addrs []string) bool {
	for _, s := range addrs {
		if a, err := netip.ParseAddr(s); err == nil && (a.IsLoopback() || a.IsUnspecified()) {
			return true
		}
	}
	return false
}

func joinAddrs(s []string) string { return strings.Join(s, ", ") }

func readHostResolv() []byte {
	b, _ := os.ReadFile(hostResolvConf) // no file: glibc's default is 127.0.0.1, which a run cannot use either
	if b == nil {
		b = []byte("nameserver 127.0.0.1\n")
	}
	return b
}
