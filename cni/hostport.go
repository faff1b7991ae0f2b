package cni

import (
	"fmt"
	"strconv"
	"strings"
)

// HostPort is a port on the host that a run may reach at its gateway address (moatc-host).
// Everything else the host serves is closed to runs.
type HostPort struct {
	Port  uint16
	Proto string // tcp or udp
}

func (h HostPort) String() string { return fmt.Sprintf("%d/%s", h.Port, h.Proto) }

// ParseHostPort parses PORT[/tcp|udp], e.g. 5432 or 53/udp.
func ParseHostPort(s string) (HostPort, error) {
	port, proto, _ := strings.Cut(strings.TrimSpace(s), "/")
	h := HostPort{Proto: "tcp"}
	switch proto {
	case "", "tcp":
	case "udp":
		h.Proto = "udp"
	default:
		return h, fmt.Errorf("%q: the protocol must be tcp or udp, e.g. 53/udp", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return h, fmt.Errorf("%q is not a port: write a number from 1 to 65535, optionally /tcp or /udp", s)
	}
	h.Port = uint16(n)
	return h, nil
}
