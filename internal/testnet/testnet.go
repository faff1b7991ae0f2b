// Package testnet makes stand-ins for other machines in tests: a network namespace joined to
// the host by a veth pair, with an address of its own and a web server, so a test can check
// what a run or a build can reach (a file server "on the internet", a cloud metadata address)
// without any machine but this one. Root only; everything goes with Close.
package testnet

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Machine is a network namespace that stands for another machine.
type Machine struct {
	Name     string     // the netns, also the stem of the veth names
	Addr     netip.Addr // its address, reached from the host through the veth
	HostAddr netip.Addr // the host's end of the veth
	servers  []*http.Server
}

// New makes netns name with the address addr; hostAddr is the host's end, and both lie in
// one /30 (e.g. 198.18.254.2 and 198.18.254.1, or 169.254.169.254 and 169.254.169.253).
func New(name string, addr, hostAddr netip.Addr) (*Machine, error) {
	if len(name) > 12 {
		return nil, fmt.Errorf("testnet: name %q is longer than 12 bytes (veth names are limited)", name)
	}
	m := &Machine{Name: name, Addr: addr, HostAddr: hostAddr}
	m.Close() // a crashed test may have left one
	host, peer := "th-"+name, "tp-"+name
	steps := [][]string{
		{"ip", "netns", "add", name},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", name},
		{"ip", "addr", "add", hostAddr.String() + "/30", "dev", host},
		{"ip", "link", "set", host, "up"},
		{"ip", "-n", name, "addr", "add", addr.String() + "/30", "dev", peer},
		{"ip", "-n", name, "link", "set", peer, "up"},
		{"ip", "-n", name, "link", "set", "lo", "up"},
		{"ip", "-n", name, "route", "add", "default", "via", hostAddr.String()},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			m.Close()
			return nil, fmt.Errorf("testnet %s: %s: %v: %s", name, strings.Join(s, " "), err, out)
		}
	}
	return m, nil
}

// Listen opens a TCP listener on the machine's address: a socket of its network namespace,
// served by this process.
func (m *Machine) Listen(port int) (net.Listener, error) {
	var l net.Listener
	err := m.inside(func() (err error) {
		l, err = net.Listen("tcp4", netip.AddrPortFrom(m.Addr, uint16(port)).String())
		return err
	})
	return l, err
}

// ListenUDP opens a UDP socket on the machine's address and port.
func (m *Machine) ListenUDP(port int) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := m.inside(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(m.Addr, uint16(port))))
		return err
	})
	return c, err
}

// inside runs f on a thread in the machine's network namespace: sockets f opens belong to it.
func (m *Machine) inside(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer self.Close()
	ns, err := os.Open("/run/netns/" + m.Name)
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("testnet %s: entering the netns: %w", m.Name, err)
	}
	ferr := f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		panic(fmt.Sprintf("testnet %s: leaving the netns: %v", m.Name, err)) // the thread is unusable
	}
	return ferr
}

// Serve serves h over HTTP on the machine's address and port and returns its URL.
func (m *Machine) Serve(h http.Handler, port int) (string, error) {
	l, err := m.Listen(port)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	m.servers = append(m.servers, srv)
	return "http://" + l.Addr().String(), nil
}

// Close stops its servers and removes the namespace (its veth goes with it).
func (m *Machine) Close() error {
	for _, srv := range m.servers {
		srv.Close()
	}
	m.servers = nil
	var errs []error
	if _, err := os.Stat("/run/netns/" + m.Name); err == nil {
		if out, err := exec.Command("ip", "netns", "del", m.Name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", m.Name, err, out))
		}
	}
	exec.Command("ip", "link", "del", "th-"+m.Name).Run() // gone with the netns, normally
	return errors.Join(errs...)
}

// HostAddr is the host's own address on its default route: not loopback, not a bridge of
// moatc's, the address another machine would reach it at.
func HostAddr() (netip.Addr, error) {
	out, err := exec.Command("ip", "-4", "route", "get", "1.1.1.1").Output()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ip route get: %w", err)
	}
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "src" {
			return netip.ParseAddr(f[i+1])
		}
	}
	return netip.Addr{}, fmt.Errorf("no source address in %q", out)
}
