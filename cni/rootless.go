package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/moatc/moatc/rootless"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Rootless moatc (Config.Kit set) makes its networks inside rootlesskit's network namespace,
// which reaches the world through slirp4netns. The bridges, the namespaces and the rules are
// those of a rootful moatc, with three differences:
//
//   - Published ports go through rootlesskit's port driver (its parent listens on the host,
//     its child connects to the run's address), not through Proxy: a listener of moatc's is
//     inside the namespace, out of the host's reach. They are added after the run's address
//     is allocated and before anything else is made, found again by that address (the child
//     IP) to be removed, and ports whose address no network of this home holds are swept.
//   - The "host" of the rootful rules is rootlesskit's namespace; the user's host is outside.
//     slirp4netns connects for the runs, from the host: to the host's 127.0.0.1 for slirp's
//     10.0.2.2, and to the host's own addresses directly. Both are closed to runs (outsideRules);
//     so is the rest of slirp's network but its resolver (10.0.2.3:53, without a strict policy).
//   - A host port opened for the run (--host-port) is the host's loopback port: moatc-host:PORT
//     (the gateway) is DNATed to 10.0.2.2:PORT, and only such DNATed connections are forwarded
//     there. A strict run reaches it through its proxy, which dials 10.0.2.2:PORT itself.

// Outside is the world beyond a rootless moatc's namespace as a run's rules see it: slirp4netns's
// network and the host's own addresses when the network was made.
type Outside struct {
	rootless.Outside
	HostAddrs []netip.Prefix `json:"host_addrs,omitempty"`
}

// rootlessState is what a Manager caches of its kit.
type rootlessState struct {
	mu    sync.Mutex
	slirp *rootless.Outside
}

// outside reads the kit's slirp4netns network (once) and the host's addresses (each time:
// they change).
func (m *Manager) outside(ctx context.Context) (*Outside, error) {
	k := m.cfg.Kit
	m.kit.mu.Lock()
	if m.kit.slirp == nil {
		o, err := k.Outside(ctx)
		if err != nil {
			m.kit.mu.Unlock()
			return nil, err
		}
		m.kit.slirp = &o
	}
	slirp := *m.kit.slirp
	m.kit.mu.Unlock()
	addrs, err := k.HostAddrs()
	if err != nil {
		return nil, err
	}
	return &Outside{Outside: slirp, HostAddrs: addrs}, nil
}

// OutsideAddrs are the host's own addresses when moatc is rootless (nil otherwise): from
// rootlesskit's namespace they are not local, and whatever dials them there (the runs' proxy)
// reaches the host through slirp4netns.
func (m *Manager) OutsideAddrs() ([]netip.Prefix, error) {
	if m.cfg.Kit == nil {
		return nil, nil
	}
	return m.cfg.Kit.HostAddrs()
}

// portSpec is p as rootlesskit's API writes it, forwarded to child.
func portSpec(p Port, child netip.Addr) rootless.PortSpec {
	return rootless.PortSpec{Proto: p.Proto, ParentIP: p.HostIP.String(), ParentPort: int(p.HostPort),
		ChildIP: child.String(), ChildPort: int(p.ContainerPort)}
}

// publish publishes a run's ports through the kit. A port refused is reported as a rootful
// bind error would be; the ports published before it are left to the caller's teardown.
func (m *Manager) publish(ctx context.Context, rec *record) error {
	if err := m.blockPool(); err != nil {
		return err
	}
	api := m.cfg.Kit.Ports()
	for _, p := range rec.Ports {
		if _, err := api.Add(ctx, portSpec(p, rec.IP)); err != nil {
			return bindError(p, err)
		}
	}
	return nil
}

// CheckPorts says whether every port can be published now, publishing nothing for long:
// callers use it to refuse a taken port before they create anything (Setup publishes them
// for real later). Rootless, the kit's driver binds them for a moment, forwarding to the
// pool's network address, which is never a run's (sweepPorts removes them should this
// process die in between).
func (m *Manager) CheckPorts(ctx context.Context, ports []Port) error {
	ports, err := normalizePorts(ports)
	if err != nil {
		return err
	}
	if m.cfg.Kit == nil || len(ports) == 0 {
		return CheckPorts(ports)
	}
	if err := m.blockPool(); err != nil {
		return err
	}
	api := m.cfg.Kit.Ports()
	var ids []int
	defer func() {
		for _, id := range ids {
			api.Remove(context.WithoutCancel(ctx), id)
		}
	}()
	for _, p := range ports {
		id, err := api.Add(ctx, portSpec(p, m.cfg.Pool.Addr()))
		if err != nil {
			return bindError(p, err)
		}
		ids = append(ids, id)
	}
	return nil
}

// blockPool makes the pool's addresses that no run's bridge holds unreachable in the kit's
// namespace (each bridge's /24 route is more specific and wins). Without it the kit's driver
// forwards a connection to such an address (CheckPorts' target, or a port a killed moatc left
// behind) out through slirp4netns to whatever that address is on the host's network.
func (m *Manager) blockPool() error {
	p := m.cfg.Pool.Masked()
	rt := &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Type: unix.RTN_UNREACHABLE, Table: unix.RT_TABLE_MAIN}
	if err := netlink.RouteReplace(rt); err != nil {
		return fmt.Errorf("making the unused addresses of pool %s unreachable in rootlesskit's namespace: %w", p, err)
	}
	return nil
}

// unpublish removes the kit's ports that forward to ip, and those that forward to an address
// of the pool no network of this home (or another home's claim) holds: what a moatc killed
// between publishing and its teardown, or during CheckPorts, left behind. Ports outside the
// pool are not moatc's. A kit that is not running publishes nothing.
func (m *Manager) unpublish(ctx context.Context, ip netip.Addr) error {
	if m.cfg.Kit == nil {
		return nil
	}
	api := m.cfg.Kit.Ports()
	// Listed before the records are read: a port published after its network's record was
	// written, so every port listed here whose network exists has its record read below.
	ports, err := api.List(ctx)
	if errors.Is(err, rootless.ErrKitDown) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(ports) == 0 {
		return nil
	}
	recs, _, err := m.records()
	if err != nil {
		return err
	}
	held := map[netip.Addr]bool{}
	for _, r := range recs {
		if r.IP != ip {
			held[r.IP] = true
		}
	}
	others := m.othersSubnets()
	var errs []error
	for _, st := range ports {
		a, err := netip.ParseAddr(st.Spec.ChildIP)
		if err != nil || !m.cfg.Pool.Contains(a) || held[a] || others[netip.PrefixFrom(a, 24).Masked()] {
			continue
		}
		if err := api.Remove(ctx, st.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SweepPorts removes the kit's ports that no network of this home accounts for (see
// unpublish); rootful, it does nothing.
func (m *Manager) SweepPorts(ctx context.Context) error {
	if err := m.unpublish(ctx, netip.Addr{}); err != nil {
		return fmt.Errorf("removing published ports no run holds: %w", err)
	}
	return nil
}

// othersSubnets are the subnets another moatc home claims (homes sharing one kit through
// --address): their ports are theirs.
func (m *Manager) othersSubnets() map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	ents, _ := os.ReadDir(claimsDir)
	for _, e := range ents {
		a, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue
		}
		if c, err := readClaim(filepath.Join(claimsDir, e.Name())); err == nil && c.StateDir != m.cfg.StateDir && !c.orphaned() {
			out[netip.PrefixFrom(a, 24)] = true
		}
	}
	return out
}
