package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Port is a published port: connections to HostIP:HostPort on the host reach ContainerPort
// on the run's address.
type Port struct {
	HostIP        netip.Addr `json:"host_ip"`
	HostPort      uint16     `json:"host_port"`
	ContainerPort uint16     `json:"container_port"`
	Proto         string     `json:"proto"` // "tcp" or "udp"
}

func (p Port) String() string {
	return fmt.Sprintf("%s->%d/%s", netip.AddrPortFrom(p.HostIP, p.HostPort), p.ContainerPort, p.Proto)
}

// DefaultHostIP is the host address a port is published on when the spec names none: only
// this machine can reach it. Write 0.0.0.0:HOST:CONTAINER to publish on every address.
var DefaultHostIP = netip.MustParseAddr("127.0.0.1")

var errPublish = errors.New("invalid port to publish")

// ParsePublish parses "[IP:]HOST:CONTAINER[/tcp|udp]", e.g. "8080:80", "0.0.0.0:8080:80/tcp",
// "[::1]:5353:53/udp". The host IP defaults to 127.0.0.1 and the protocol to tcp.
func ParsePublish(spec string) (Port, error) {
	bad := func(format string, a ...any) (Port, error) {
		return Port{}, fmt.Errorf("parsing port %q: %s: %w", spec, fmt.Sprintf(format, a...), errPublish)
	}
	p := Port{HostIP: DefaultHostIP, Proto: "tcp"}
	rest := strings.TrimSpace(spec)
	if rest == "" {
		return bad("empty; write HOST:CONTAINER, e.g. 8080:80")
	}
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		p.Proto = strings.ToLower(rest[i+1:])
		rest = rest[:i]
		if p.Proto != "tcp" && p.Proto != "udp" {
			return bad("protocol %q is not supported; write /tcp or /udp (or nothing, for tcp)", p.Proto)
		}
	}
	var ip string
	var parts []string
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return bad("an IPv6 host address needs a closing bracket, e.g. [::1]:8080:80")
		}
		ip, parts = rest[1:end], strings.Split(rest[end+2:], ":")
		if len(parts) != 2 {
			return bad("write [IP]:HOST:CONTAINER, e.g. [::1]:8080:80")
		}
	} else {
		parts = strings.Split(rest, ":")
		switch len(parts) {
		case 1:
			return bad("a single port is ambiguous; write HOST:CONTAINER, e.g. %s:%s (or 127.0.0.1:%s:%s)", rest, rest, rest, rest)
		case 2:
		case 3:
			ip, parts = parts[0], parts[1:]
			if ip == "" {
				return bad("the host address before the first colon is empty; write HOST:CONTAINER or IP:HOST:CONTAINER, e.g. 127.0.0.1:%s:%s", parts[0], parts[1])
			}
		default:
			return bad("too many colons; write [IP:]HOST:CONTAINER, and an IPv6 address in brackets, e.g. [::1]:8080:80")
		}
	}
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil || a.Zone() != "" {
			return bad("%q is not an IP address; write one such as 127.0.0.1 or 0.0.0.0 (all addresses), e.g. 127.0.0.1:%s:%s", ip, parts[0], parts[1])
		}
		p.HostIP = a.Unmap()
	}
	var err error
	if p.HostPort, err = parsePort(parts[0], "host"); err != nil {
		return Port{}, fmt.Errorf("parsing port %q: %w", spec, err)
	}
	if p.ContainerPort, err = parsePort(parts[1], "container"); err != nil {
		return Port{}, fmt.Errorf("parsing port %q: %w", spec, err)
	}
	return p, nil
}

func parsePort(s, which string) (uint16, error) {
	if strings.Contains(s, "-") {
		return 0, fmt.Errorf("%s port %q: port ranges are not supported; publish each port with its own spec: %w", which, s, errPublish)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%s port %q is not a port number; write a number from 1 to 65535: %w", which, s, errPublish)
	}
	return uint16(n), nil
}

// normalizePorts fills defaults and rejects what ParsePublish would have rejected, for ports
// built by hand, and the same host port twice.
func normalizePorts(ports []Port) ([]Port, error) {
	out := make([]Port, 0, len(ports))
	seen := map[string]bool{}
	for _, p := range ports {
		if !p.HostIP.IsValid() {
			p.HostIP = DefaultHostIP
		}
		p.HostIP = p.HostIP.Unmap()
		if p.Proto == "" {
			p.Proto = "tcp"
		}
		if p.Proto != "tcp" && p.Proto != "udp" {
			return nil, fmt.Errorf("port %s: protocol must be tcp or udp: %w", p, errPublish)
		}
		if p.HostPort == 0 || p.ContainerPort == 0 {
			return nil, fmt.Errorf("port %s: ports must be from 1 to 65535: %w", p, errPublish)
		}
		k := netip.AddrPortFrom(p.HostIP, p.HostPort).String() + "/" + p.Proto
		if seen[k] {
			return nil, fmt.Errorf("host port %s is published twice; publish each host port once: %w", k, errPublish)
		}
		seen[k] = true
		out = append(out, p)
	}
	return out, nil
}
