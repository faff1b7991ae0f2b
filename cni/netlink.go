package cni

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Just enough rtnetlink to list links and IPv4 routes and to delete a link, so the package needs
// no netlink library and no `ip` process.

type link struct {
	index  int
	name   string
	master int
	kind   string // "bridge", "veth", ... ("" when the kernel gives none)
}

func links() ([]link, error) {
	msgs, err := dump(syscall.RTM_GETLINK, syscall.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []link
	for _, m := range msgs {
		if m.Header.Type != syscall.RTM_NEWLINK || len(m.Data) < syscall.SizeofIfInfomsg {
			continue
		}
		ifi := (*syscall.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		l := link{index: int(ifi.Index)}
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.IFLA_IFNAME:
				l.name = strings.TrimRight(string(a.Value), "\x00")
			case syscall.IFLA_MASTER:
				if len(a.Value) >= 4 {
					l.master = int(binary.NativeEndian.Uint32(a.Value))
				}
			case syscall.IFLA_LINKINFO:
				for _, n := range nested(a.Value) {
					if n.typ == unix.IFLA_INFO_KIND {
						l.kind = strings.TrimRight(string(n.val), "\x00")
					}
				}
			}
		}
		out = append(out, l)
	}
	return out, nil
}

type route struct {
	dst   netip.Prefix
	dev   string
	table int
}

// routes lists the host's IPv4 routes in every table but "local" (which holds the host's own
// addresses, not destinations reached through an interface).
func routes() ([]route, error) {
	msgs, err := dump(syscall.RTM_GETROUTE, syscall.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	ls, err := links()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range ls {
		names[l.index] = l.name
	}
	var out []route
	for _, m := range msgs {
		if m.Header.Type != syscall.RTM_NEWROUTE || len(m.Data) < syscall.SizeofRtMsg {
			continue
		}
		rt := (*syscall.RtMsg)(unsafe.Pointer(&m.Data[0]))
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		r := route{table: int(rt.Table), dst: netip.PrefixFrom(netip.IPv4Unspecified(), int(rt.Dst_len))}
		vanished := false
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.RTA_DST:
				if ip, ok := netip.AddrFromSlice(a.Value); ok {
					r.dst = netip.PrefixFrom(ip.Unmap(), int(rt.Dst_len))
				}
			case syscall.RTA_OIF:
				if len(a.Value) >= 4 {
					var ok bool
					// A device missing from the link dump appeared or went away in between:
					// another run's bridge being made or removed right now, not a host route.
					r.dev, ok = names[int(binary.NativeEndian.Uint32(a.Value))]
					vanished = !ok
				}
			case syscall.RTA_TABLE:
				if len(a.Value) >= 4 {
					r.table = int(binary.NativeEndian.Uint32(a.Value))
				}
			}
		}
		if r.table == syscall.RT_TABLE_LOCAL || vanished {
			continue
		}
		out = append(out, r)
	}
	return out, nil
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

// deleteLink deletes a link by index; a link that is already gone is not an error.
func deleteLink(index int) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	req := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfInfomsg)
	h := (*unix.NlMsghdr)(unsafe.Pointer(&req[0]))
	h.Len = uint32(len(req))
	h.Type = unix.RTM_DELLINK
	h.Flags = unix.NLM_F_REQUEST | unix.NLM_F_ACK
	h.Seq = 1
	ifi := (*unix.IfInfomsg)(unsafe.Pointer(&req[unix.SizeofNlMsghdr]))
	ifi.Family = unix.AF_UNSPEC
	ifi.Index = int32(index)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type != syscall.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			errno := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
			if errno == 0 || syscall.Errno(errno) == syscall.ENODEV {
				return nil
			}
			return syscall.Errno(errno)
		}
	}
}

// deleteBridge deletes a run's bridge and any veth still enslaved to it (its container end may
// live in a netns something still holds open, so deleting the netns alone is not enough).
func deleteBridge(name string) error { return removeBridge(name, false) }

// removeBridge deletes a run's bridge and the veths on it. With detach, the bridge itself is
// deleted by an `ip link del` that outlives this process: deleting a bridge waits out kernel
// RCU grace periods (35-75 ms here), and nothing needs that to be over before a run's moatc
// exits. Until it is gone its subnet counts as taken (allocate skips subnets routed to mc-*
// bridges) and Leftovers still lists it.
func removeBridge(name string, detach bool) error {
	ls, err := links()
	if err != nil {
		return err
	}
	br := 0
	for _, l := range ls {
		if l.name == name {
			br = l.index
		}
	}
	if br == 0 {
		return nil
	}
	var errs []error
	for _, l := range ls {
		if l.master == br && l.kind == "veth" {
			if err := deleteLink(l.index); err != nil {
				errs = append(errs, fmt.Errorf("deleting veth %s: %w", l.name, err))
			}
		}
	}
	if detach {
		if ip, err := lookSbin("ip"); err == nil {
			cmd := exec.Command(ip, "link", "del", name)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if cmd.Start() == nil {
				cmd.Process.Release()
				return errors.Join(errs...)
			}
		}
	}
	if err := deleteLink(br); err != nil {
		errs = append(errs, fmt.Errorf("deleting bridge %s: %w", name, err))
	}
	return errors.Join(errs...)
}

func dump(typ, family int) ([]syscall.NetlinkMessage, error) {
	b, err := syscall.NetlinkRIB(typ, family)
	if err != nil {
		return nil, os.NewSyscallError("netlink", err)
	}
	return syscall.ParseNetlinkMessage(b)
}

type attr struct {
	typ uint16
	val []byte
}

func nested(b []byte) []attr {
	var out []attr
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		t := binary.NativeEndian.Uint16(b[2:4]) &^ unix.NLA_F_NESTED
		if l < 4 || l > len(b) {
			break
		}
		out = append(out, attr{t, b[4:l]})
		al := (l + 3) &^ 3
		if al > len(b) {
			break
		}
		b = b[al:]
	}
	return out
}
