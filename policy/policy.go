// Package policy is a run's egress policy: permissive (the default: anything outside the host
// and other runs) or strict (only the hosts allowed). The proxy enforces it per request, the
// host's firewall makes the proxy the only way out of a strict run.
package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Modes.
const (
	Permissive = "permissive"
	Strict     = "strict"
)

// Pattern is one allow entry: a host name, "*.domain" (any name below domain, not domain
// itself), or an IP address, each optionally with ":port". Without a port every port matches.
type Pattern struct {
	Host     string // lower case, no trailing dot; for a wildcard the domain after "*."
	Wildcard bool
	Port     uint16 // 0: any
}

// Error is a malformed allow entry.
type Error struct {
	Entry string
	Why   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("allow entry %q: %s; write a host (api.example.com), a domain (*.example.com) or either with a port (api.example.com:8443)", e.Entry, e.Why)
}

// ParsePattern parses an allow entry.
func ParsePattern(s string) (Pattern, error) {
	in := s
	bad := func(why string) (Pattern, error) { return Pattern{}, &Error{Entry: in, Why: why} }
	s = strings.TrimSpace(s)
	if s == "" {
		return bad("it is empty")
	}
	if strings.Contains(s, "://") || strings.ContainsAny(s, "/?#@ \t") {
		return bad("give a host, not a URL")
	}
	var p Pattern
	host, port := s, ""
	if strings.HasPrefix(s, "[") { // [v6]:port
		end := strings.Index(s, "]")
		if end < 0 {
			return bad("unclosed [")
		}
		host, port = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if s[end+1:] != "" && !strings.HasPrefix(s[end+1:], ":") {
			return bad("text after ]")
		}
	} else if strings.Count(s, ":") == 1 {
		host, port, _ = strings.Cut(s, ":")
	}
	if port != "" || strings.HasSuffix(s, ":") {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return bad(fmt.Sprintf("port %q is not a number from 1 to 65535", port))
		}
		p.Port = uint16(n)
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if a, err := netip.ParseAddr(host); err == nil {
		p.Host = a.Unmap().String()
		return p, nil
	}
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		p.Wildcard, host = true, rest
	}
	if err := checkName(host); err != nil {
		return bad(err.Error())
	}
	if p.Wildcard && !strings.Contains(host, ".") {
		return bad("a wildcard needs a domain with a dot, such as *.example.com")
	}
	p.Host = host
	return p, nil
}

func checkName(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("the host name is empty or too long")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("the host name has an empty or overlong label")
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				if c == '*' {
					return fmt.Errorf("'*' is allowed only as the first label, as in *.example.com")
				}
				return fmt.Errorf("%q is not allowed in a host name", c)
			}
		}
	}
	return nil
}

// NormalizeHost lowers a host name and drops a trailing dot and IPv6 brackets, so that names
// compare as DNS does.
func NormalizeHost(h string) string {
	h = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap().String()
	}
	return h
}

// Match reports whether host:port is allowed by p. host is normalized first.
func (p Pattern) Match(host string, port uint16) bool {
	if p.Port != 0 && p.Port != port {
		return false
	}
	host = NormalizeHost(host)
	if p.Wildcard {
		return strings.HasSuffix(host, "."+p.Host)
	}
	return host == p.Host
}

func (p Pattern) String() string {
	h := p.Host
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	if p.Wildcard {
		h = "*." + h
	}
	if p.Port != 0 {
		h += ":" + strconv.Itoa(int(p.Port))
	}
	return h
}

// Policy is what a run may reach through the proxy.
type Policy struct {
	Strict bool
	Allow  []Pattern // consulted only when Strict
}

// Mode names the policy's mode.
func (p Policy) Mode() string {
	if p.Strict {
		return Strict
	}
	return Permissive
}

// Allows reports whether the run may reach host:port. A permissive policy allows everything
// (the proxy's address checks still apply).
func (p Policy) Allows(host string, port uint16) bool {
	if !p.Strict {
		return true
	}
	for _, a := range p.Allow {
		if a.Match(host, port) {
			return true
		}
	}
	return false
}

// ParseMode parses "permissive" or "strict".
func ParseMode(s string) (bool, error) {
	switch s {
	case Permissive:
		return false, nil
	case Strict:
		return true, nil
	}
	return false, fmt.Errorf("%q is not a network policy: write permissive (the default: anything outside the host) or strict (only the allowed hosts, through moatc's proxy)", s)
}
