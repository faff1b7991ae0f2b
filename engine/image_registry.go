package engine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/moatc/moatc/ctrd"
)

// Pulls run in containerd, on the host's network, not the run's: the run's rules do not apply
// to them. So a pull names a registry out on the internet or is refused, or a workload could
// reach the host's own services (a registry API on 127.0.0.1) and the networks the run's rules
// close, through containerd's HTTP client. Under a strict policy the run reaches nothing but
// its proxy's hosts: its engine pulls nothing (images come with --dind-image).

// internalNets are the ranges a pull never goes to, beyond loopback, link-local, private and
// unspecified addresses.
var internalNets = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT, often a cloud's internal network
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
}

// internalAddr reports whether a is an address a pull must not reach.
func internalAddr(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast() {
		return true
	}
	for _, p := range internalNets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// checkRegistry refuses a pull from registry host (a reference's domain, host[:port]) that the
// run may not reach: any registry under a strict policy, and one whose name is or resolves to
// an internal address (Config.PrivateRegistries lifts that, for the developer's engine).
func (e *Engine) checkRegistry(ctx context.Context, domain string) error {
	if e.cfg.Strict {
		return forbidden("the run's egress policy is strict: its engine pulls nothing (pulls leave from the host, not through the run's proxy); give the run its images with --dind-image")
	}
	if e.cfg.PrivateRegistries {
		return nil
	}
	host := domain
	if h, _, err := net.SplitHostPort(domain); err == nil {
		host = h
	}
	if host == "docker.io" {
		host = "registry-1.docker.io"
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if addrs, err = net.DefaultResolver.LookupNetIP(lctx, "ip", host); err != nil {
			return notFound("pulling from %s: looking the registry up: %v", domain, err)
		}
	}
	for _, a := range addrs {
		if host == "localhost" || internalAddr(a) {
			return forbidden("moatc refuses to pull from %s (%s): a registry on the host or an internal network is closed to runs; push the image to a registry on the internet, or give it with --dind-image", domain, a)
		}
	}
	return nil
}

// pullOpts are the options of every pull of the engine: unless private registries are allowed,
// each connection is checked as it is made, so a registry name that resolves anew (DNS
// rebinding) or a redirect to an internal address does not get past checkRegistry.
func (e *Engine) pullOpts() []ctrd.PullOpt {
	if e.cfg.PrivateRegistries {
		return nil
	}
	return []ctrd.PullOpt{ctrd.WithDialCheck(func(a netip.Addr) error {
		if internalAddr(a) {
			return fmt.Errorf("moatc refuses to connect to %s for a pull: an address on the host or an internal network is closed to runs", a)
		}
		return nil
	})}
}
