package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Links and routes through github.com/vishvananda/netlink: no `ip` process on the paths a run
// waits for.

// dumpRetries bounds the retries of a dump the kernel interrupted because links or routes
// changed meanwhile (other runs' bridges come and go all the time).
const dumpRetries = 5

func links() ([]netlink.Link, error) {
	for i := 0; ; i++ {
		ls, err := netlink.LinkList()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < dumpRetries {
			continue
		}
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("listing links: %w", err)
		}
		return ls, nil
	}
}

type route struct {
	dst   netip.Prefix
	dev   string
	table int
}

// routes lists the host's IPv4 routes that lead somewhere, in every table but "local".
func routes() ([]route, error) {
	var rts []netlink.Route
	for i := 0; ; i++ {
		var err error
		rts, err = netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < dumpRetries {
			continue
		}
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("listing routes: %w", err)
		}
		break
	}
	ls, err := links()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range ls {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []route
	for _, rt := range rts {
		// "local" holds the host's own addresses; unreachable, blackhole and prohibit routes
		// lead nowhere (moatc puts one over the pool when rootless: see blockPool).
		if rt.Table == unix.RT_TABLE_LOCAL || rt.Type == unix.RTN_UNREACHABLE || rt.Type == unix.RTN_BLACKHOLE || rt.Type == unix.RTN_PROHIBIT {
			continue
		}
		r := route{table: rt.Table, dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0)}
		if rt.Dst != nil {
			if p, ok := prefixOf(rt.Dst); ok {
				r.dst = p
			}
		}
		if rt.LinkIndex > 0 {
			var ok bool
			// A device missing from the link dump appeared or went away in between: another
			// run's bridge being made or removed right now, not a host route.
			if r.dev, ok = names[rt.LinkIndex]; !ok {
				continue
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), bits), true
}

func (r route) String() string {
	s := r.dst.Masked().String()
	if r.dev != "" {
		s += " dev " + r.dev
	}
	if r.table != syscall.RT_TABLE_MAIN && r.table != 0 {
		s += fmt.Sprintf(" table %d", r.table)
	}
	return s
}

// deleteLink deletes a link; one that is already gone is not an error.
func deleteLink(l netlink.Link) error {
	err := netlink.LinkDel(l)
	if errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}

// makeBridge makes a bridge holding gw (the gateway address of its subnet), IPv6 off, and
// raises it.
func makeBridge(name string, gw netip.Prefix) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.Addr().AsSlice(), Mask: net.CIDRMask(gw.Bits(), 32)}}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("adding address %s to bridge %s: %w", gw, name, err)
	}
	if err := sysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("raising bridge %s: %w", name, err)
	}
	return nil
}

// removeBridge deletes a run's bridge and any veth still enslaved to it (its container end may
// live in a netns something still holds open, so deleting the netns alone is not enough). With
// detach, the bridge itself is deleted by a process that outlives this one (moatc's
// `_link-del`): deleting a bridge waits out kernel RCU grace periods (35-75 ms here) inside the
// deleting syscall, and nothing needs that to be over before a run's moatc exits. Until it is
// gone its subnet counts as taken (allocate skips subnets routed to mc-* bridges) and
// Leftovers still lists it.
func (m *Manager) removeBridge(name string, detach bool) error {
	ls, err := links()
	if err != nil {
		return err
	}
	var br netlink.Link
	for _, l := range ls {
		if l.Attrs().Name == name {
			br = l
		}
	}
	if br == nil {
		return nil
	}
	var errs []error
	for _, l := range ls {
		if l.Attrs().MasterIndex == br.Attrs().Index && l.Type() == "veth" {
			if err := deleteLink(l); err != nil {
				errs = append(errs, fmt.Errorf("deleting veth %s: %w", l.Attrs().Name, err))
			}
		}
	}
	if detach && m.deleteDetached(name) {
		return errors.Join(errs...)
	}
	if err := deleteLink(br); err != nil {
		errs = append(errs, fmt.Errorf("deleting bridge %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// deleteDetached starts the configured link-deleting process in a session of its own and
// does not wait for it.
func (m *Manager) deleteDetached(name string) bool {
	if m.cfg.DeleteLinkCommand == nil {
		return false
	}
	argv := m.cfg.DeleteLinkCommand(name)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Start() != nil {
		return false
	}
	cmd.Process.Release()
	return true
}

// DeleteLink deletes the link called name, if there is one: the body of `moatc _link-del`.
// Only moatc's own bridges (mc-*) are deleted this way.
func DeleteLink(name string) error {
	if !strings.HasPrefix(name, "mc-") {
		return fmt.Errorf("%q is not a moatc bridge (mc-*)", name)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	return deleteLink(l)
}
