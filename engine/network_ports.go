package engine

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/vishvananda/netns"

	"github.com/moatc/moatc/cni"
)

// Published ports (-p, -P) are not opened on the host (the host is closed to runs and the
// world must not reach a run's containers): they listen in a network namespace of the engine's
// own on the run's network, at cni.PortsAddr(subnet) (the subnet's .254, attachment
// cni.PortsKey), and each connection is proxied to the container's address. The workload
// reaches a published port at that address; so does the host (the bridge's gateway). The
// sockets live in the engine's process: they open when a container starts (and again when an
// engine takes over running containers) and close when it stops or the engine exits.

// portsState holds the listeners of each running container.
type portsState struct {
	mu  sync.Mutex
	ns  *cni.Attachment
	ctr map[string][]io.Closer
}

// portBinding is one published port: the container's port and the one at the ports address.
type portBinding struct {
	Port     string // network.Port's text: "80/tcp"
	HostPort uint16
}

// maxPorts bounds the ports an engine has published at once: each is a socket and a proxy in
// moatc's process, and `-P` of an image exposing 1-65535 must not take it down.
const maxPorts = 1024

// planPorts is what a container asks to publish: PortBindings, and with PublishAllPorts every
// exposed port; 0 is a free port picked when it opens.
func planPorts(hc hostPorts, exposed network.PortSet) ([]portBinding, error) {
	var out []portBinding
	seen := map[string]bool{}
	for p, bs := range hc.PortBindings {
		if p.Proto() != network.TCP && p.Proto() != network.UDP {
			return nil, notImplemented("moatc publishes tcp and udp ports only, not %s", p)
		}
		if len(bs) == 0 {
			bs = []network.PortBinding{{}}
		}
		for _, b := range bs {
			if b.HostIP.IsValid() && !b.HostIP.IsUnspecified() {
				return nil, invalid("moatc publishes ports at the run's ports address only: drop the host address %s from -p", b.HostIP)
			}
			hp := uint16(0)
			if b.HostPort != "" {
				n, err := strconv.ParseUint(b.HostPort, 10, 16)
				if err != nil {
					return nil, invalid("invalid host port %q: moatc takes a single port number", b.HostPort)
				}
				hp = uint16(n)
			}
			out = append(out, portBinding{Port: p.String(), HostPort: hp})
			seen[p.String()] = true
		}
	}
	if hc.PublishAll {
		for p := range exposed {
			if !seen[p.String()] && (p.Proto() == network.TCP || p.Proto() == network.UDP) {
				out = append(out, portBinding{Port: p.String()})
			}
		}
	}
	if len(out) > maxPorts {
		return nil, invalid("the container publishes %d ports; moatc publishes at most %d for an engine", len(out), maxPorts)
	}
	return out, nil
}

type hostPorts struct {
	PortBindings network.PortMap
	PublishAll   bool
}

// openPorts opens the published ports of a started container (a no-op without any).
func (e *Engine) openPorts(id string) error {
	e.nw.mu.Lock()
	e.netLoad()
	cn := e.nw.ctrs[id]
	var plan []portBinding
	var target netip.Addr
	if cn != nil {
		plan, target = cn.Ports, cn.IP
	}
	e.nw.mu.Unlock()
	if len(plan) == 0 || e.cfg.Net == nil {
		return nil
	}
	ps := &e.ports
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.ctr == nil {
		ps.ctr = map[string][]io.Closer{}
	}
	if ps.ctr[id] != nil {
		return nil
	}
	open := 0
	for _, cs := range ps.ctr {
		open += len(cs)
	}
	if open+len(plan) > maxPorts {
		return fmt.Errorf("publishing %d ports of the container: the engine has %d open, and publishes at most %d: %w", len(plan), open, maxPorts, errdefs.ErrInvalidArgument)
	}
	if ps.ns == nil {
		a, err := e.cfg.Net.Attach(e.bg, e.cfg.NetRun, cni.PortsKey)
		if err != nil {
			return err
		}
		ps.ns = a
	}
	var opened []io.Closer
	fail := func(err error) error {
		for _, c := range opened {
			c.Close()
		}
		return err
	}
	changed := false
	for i, b := range plan {
		p, err := network.ParsePort(b.Port)
		if err != nil {
			return fail(err)
		}
		c, port, err := e.listenPort(ps.ns, p.Proto(), b.HostPort, netip.AddrPortFrom(target, p.Num()))
		if err != nil {
			return fail(fmt.Errorf("publishing port %s of the container at %s:%d: %w", p, ps.ns.IP, b.HostPort, err))
		}
		opened = append(opened, c)
		if b.HostPort == 0 {
			plan[i].HostPort, changed = port, true
		}
	}
	ps.ctr[id] = opened
	if changed {
		// Kept: an engine that takes the container over opens the same ports again.
		e.nw.mu.Lock()
		if cn := e.nw.ctrs[id]; cn != nil {
			cn.Ports = plan
			e.saveCtrNet(e.containerDir(id), cn)
		}
		e.nw.mu.Unlock()
	}
	return nil
}

// closePorts closes the published ports of a container that ended; a port picked by the
// engine is picked again at the next start, as Docker does.
func (e *Engine) closePorts(id string) {
	e.ports.mu.Lock()
	cs := e.ports.ctr[id]
	delete(e.ports.ctr, id)
	e.ports.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	if cn := e.nw.ctrs[id]; cn != nil && cn.Asked != nil {
		cn.Ports = append([]portBinding(nil), cn.Asked...)
		e.saveCtrNet(e.containerDir(id), cn)
	}
}

// listenPort opens a socket in the ports namespace (on a locked thread switched into it:
// a socket stays in the namespace it was made in) and proxies it to target.
func (e *Engine) listenPort(a *cni.Attachment, proto network.IPProtocol, port uint16, target netip.AddrPort) (io.Closer, uint16, error) {
	type res struct {
		c    io.Closer
		port uint16
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(a.NetNSPath)
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- res{err: err}
			return
		}
		var r res
		addr := netip.AddrPortFrom(a.IP, port).String()
		if proto == network.UDP {
			var pc net.PacketConn
			if pc, r.err = net.ListenPacket("udp4", addr); r.err == nil {
				r.c, r.port = pc, uint16(pc.LocalAddr().(*net.UDPAddr).Port)
			}
		} else {
			var l net.Listener
			if l, r.err = net.Listen("tcp4", addr); r.err == nil {
				r.c, r.port = l, uint16(l.Addr().(*net.TCPAddr).Port)
			}
		}
		// Back to the host's namespace; a thread that cannot go back dies locked.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- r
	}()
	r := <-ch
	if r.err != nil {
		return nil, 0, r.err
	}
	switch c := r.c.(type) {
	case net.Listener:
		go proxyTCP(c, target)
	case net.PacketConn:
		go proxyUDP(c, target)
	}
	return r.c, r.port, nil
}

func proxyTCP(l net.Listener, target netip.AddrPort) {
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			out, err := net.DialTimeout("tcp4", target.String(), 10*time.Second)
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			cp := func(dst, src net.Conn) {
				io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go cp(out, in)
			go cp(in, out)
			<-done
			<-done
		}()
	}
}

// proxyUDP forwards datagrams, one upstream socket a client, each forgotten after a minute
// of quiet.
func proxyUDP(pc net.PacketConn, target netip.AddrPort) {
	var mu sync.Mutex
	peers := map[string]net.Conn{}
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			mu.Lock()
			for _, c := range peers {
				c.Close()
			}
			mu.Unlock()
			return
		}
		mu.Lock()
		up := peers[from.String()]
		if up == nil {
			if up, err = net.Dial("udp4", target.String()); err != nil {
				mu.Unlock()
				continue
			}
			peers[from.String()] = up
			go func(up net.Conn, from net.Addr) {
				b := make([]byte, 65535)
				for {
					up.SetReadDeadline(time.Now().Add(time.Minute))
					n, err := up.Read(b)
					if err != nil {
						break
					}
					pc.WriteTo(b[:n], from)
				}
				mu.Lock()
				delete(peers, from.String())
				mu.Unlock()
				up.Close()
			}(up, from)
		}
		mu.Unlock()
		up.Write(buf[:n])
	}
}

// portMap is a container's NetworkSettings.Ports: the exposed ports, and where each
// published one is reached (the ports address).
func (e *Engine) portMap(rec record) network.PortMap {
	out := network.PortMap{}
	if rec.Config != nil {
		for p := range rec.Config.ExposedPorts {
			out[p] = nil
		}
	}
	e.nw.mu.Lock()
	cn := e.nw.ctrs[rec.ID]
	e.nw.mu.Unlock()
	if cn == nil || rec.State.Status != "running" {
		return out
	}
	for _, b := range cn.Ports {
		p, err := network.ParsePort(b.Port)
		if err != nil || b.HostPort == 0 {
			continue
		}
		out[p] = append(out[p], network.PortBinding{HostIP: cni.PortsAddr(cn.Subnet), HostPort: strconv.Itoa(int(b.HostPort))})
	}
	return out
}

// reopenPorts opens the ports of the containers an engine before this one left running.
func (e *Engine) reopenPorts() {
	for _, rec := range e.snapshot() {
		if rec.State.Status == "running" {
			if err := e.openPorts(rec.ID); err != nil {
				fmt.Fprintf(os.Stderr, "moatc engine: warning: %v\n", err)
			}
		}
	}
}

// portSummary is a container's Ports in the list.
func (e *Engine) portSummary(rec record) []container.PortSummary {
	out := []container.PortSummary{}
	for p, bs := range e.portMap(rec) {
		if len(bs) == 0 {
			out = append(out, container.PortSummary{PrivatePort: p.Num(), Type: string(p.Proto())})
		}
		for _, b := range bs {
			n, _ := strconv.ParseUint(b.HostPort, 10, 16)
			out = append(out, container.PortSummary{IP: b.HostIP, PrivatePort: p.Num(), PublicPort: uint16(n), Type: string(p.Proto())})
		}
	}
	return out
}
