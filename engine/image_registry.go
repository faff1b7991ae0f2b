package engine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/distribution/reference"
	"github.com/moatc/moatc/ctrd"
	"github.com/moby/moby/api/types/events"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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

// pull fetches named into the engine's namespace as a run's engine may: checkRegistry first,
// then, unless private registries are allowed, every connection checked as it is made, so a
// registry name that resolves anew (DNS rebinding) or a redirect to an internal address does
// not get past it. seen (if set) is told of each blob; creds (if set) answer the registry.
// Every pull of the engine (docker pull, a build's base images) goes through here.
func (e *Engine) pull(ctx context.Context, named reference.Named, seen func(ocispec.Descriptor), creds func(string) (string, string, error)) (containerd.Image, error) {
	if err := e.checkRegistry(ctx, reference.Domain(named)); err != nil {
		return nil, err
	}
	var opts []ctrd.PullOpt
	if !e.cfg.PrivateRegistries {
		opts = append(opts, ctrd.WithDialCheck(func(a netip.Addr) error {
			if internalAddr(a) {
				return fmt.Errorf("moatc refuses to connect to %s for a pull: an address on the host or an internal network is closed to runs", a)
			}
			return nil
		}))
	}
	if creds != nil {
		opts = append(opts, ctrd.WithCredentials(creds))
	}
	img, err := e.cfg.Client.Pull(ctx, named.String(), e.cfg.Snapshotter, seen, opts...)
	if err != nil {
		return nil, err
	}
	name := reference.FamiliarString(named)
	e.emit(events.ImageEventType, events.ActionPull, name, map[string]string{"name": name})
	return img, nil
}
