package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Proxy forwards a run's published host ports to the run's address from inside this process
// (see the package doc for why not the portmap plugin). Its sockets are bound by Setup, so a
// port in use fails Setup before anything is created, and they close when the process dies, so
// a crash leaves no forwarding behind. Connections reach the container from the gateway address.
type Proxy struct {
	target netip.Addr
	ports  []Port
	socks  []io.Closer // *net.TCPListener or *net.UDPConn, one per port

	mu      sync.Mutex
	conns   map[io.Closer]struct{}
	serving bool
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup
}

const (
	proxyDialTimeout = 5 * time.Second
	udpIdleTimeout   = 60 * time.Second // a UDP "session" without traffic either way ends
)

// listenPorts binds every published port, or none: this is the check that the ports are free.
func listenPorts(target netip.Addr, ports []Port) (*Proxy, error) {
	p := &Proxy{target: target, ports: ports, conns: map[io.Closer]struct{}{}, done: make(chan struct{})}
	for _, port := range ports {
		ap := netip.AddrPortFrom(port.HostIP, port.HostPort)
		var s io.Closer
		var err error
		if port.Proto == "udp" {
			s, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		} else {
			s, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
		}
		if err != nil {
			p.Close()
			return nil, bindError(port, err)
		}
		p.socks = append(p.socks, s)
	}
	return p, nil
}

func bindError(p Port, err error) error {
	where := fmt.Sprintf("%s/%s", netip.AddrPortFrom(p.HostIP, p.HostPort), p.Proto)
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("publishing %s: the host port is already in use; stop what uses it or publish another host port, e.g. %s:%d:%d: %w",
			where, p.HostIP, p.HostPort+1, p.ContainerPort, err)
	case errors.Is(err, syscall.EACCES) && p.HostPort < 1024:
		return fmt.Errorf("publishing %s: ports below 1024 are privileged and rootless moatc cannot publish them; publish a port from 1024 up, e.g. %s:%d:%d (or, as root, allow it: sysctl -w net.ipv4.ip_unprivileged_port_start=%d): %w",
			where, p.HostIP, int(p.HostPort)+8000, p.ContainerPort, p.HostPort, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("publishing %s: %s is not an address of this machine; publish on 127.0.0.1 (this machine only) or 0.0.0.0 (every address): %w",
			where, p.HostIP, err)
	}
	return fmt.Errorf("publishing %s: %w", where, err)
}

// Serve forwards until ctx ends or Close is called, then closes every socket and connection.
// A nil Proxy (a run without published ports) returns at once.
func (p *Proxy) Serve(ctx context.Context) error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	if p.serving || p.closed {
		p.mu.Unlock()
		return errors.New("serving published ports: proxy already served or closed")
	}
	p.serving = true
	for i, s := range p.socks {
		p.wg.Add(1)
		switch s := s.(type) {
		case *net.TCPListener:
			go p.serveTCP(s, p.ports[i])
		case *net.UDPConn:
			go p.serveUDP(s, p.ports[i])
		}
	}
	p.mu.Unlock()
	select {
	case <-ctx.Done():
		p.Close()
	case <-p.done:
	}
	p.wg.Wait()
	return nil
}

// Close stops forwarding and releases the host ports. It is safe to call more than once.
func (p *Proxy) Close() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	close(p.done)
	for _, s := range p.socks {
		s.Close()
	}
	for c := range p.conns {
		c.Close()
	}
	return nil
}

// track registers a connection so Close can end it; false means the proxy is closing.
func (p *Proxy) track(cs ...io.Closer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(cs ...io.Closer) {
	p.mu.Lock()
	for _, c := range cs {
		delete(p.conns, c)
		c.Close()
	}
	p.mu.Unlock()
}

func (p *Proxy) stopped() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *Proxy) serveTCP(l *net.TCPListener, port Port) {
	defer p.wg.Done()
	target := netip.AddrPortFrom(p.target, port.ContainerPort).String()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if p.stopped() || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(20 * time.Millisecond) // e.g. out of file descriptors: do not spin
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			u, err := net.DialTimeout("tcp", target, proxyDialTimeout)
			if err != nil {
				c.SetLinger(0) // a reset tells the client nothing listens, as a closed port would
				c.Close()
				return
			}
			if !p.track(c, u) {
				c.Close()
				u.Close()
				return
			}
			defer p.untrack(c, u)
			half := make(chan struct{}, 2)
			go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite(); half <- struct{}{} }()
			go func() { io.Copy(c, u); c.CloseWrite(); half <- struct{}{} }()
			<-half
			<-half
		}()
	}
}

func (p *Proxy) serveUDP(l *net.UDPConn, port Port) {
	defer p.wg.Done()
	target := net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.target, port.ContainerPort))
	type session struct {
		conn *net.UDPConn
		last atomic.Int64 // unix nanos of the last datagram either way
	}
	var mu sync.Mutex
	sessions := map[netip.AddrPort]*session{}
	buf := make([]byte, 65535)
	for {
		n, from, err := l.ReadFromUDPAddrPort(buf)
		if err != nil {
			if p.stopped() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		mu.Lock()
		s := sessions[from]
		if s == nil {
			u, err := net.DialUDP("udp", nil, target)
			if err != nil || !p.track(u) {
				mu.Unlock()
				if u != nil {
					u.Close()
				}
				continue
			}
			s = &session{conn: u}
			s.last.Store(time.Now().UnixNano())
			sessions[from] = s
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				b := make([]byte, 65535)
				for {
					s.conn.SetReadDeadline(time.Unix(0, s.last.Load()).Add(udpIdleTimeout))
					n, err := s.conn.Read(b)
					if err != nil {
						var ne net.Error
						if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, s.last.Load())) < udpIdleTimeout {
							continue
						}
						break
					}
					s.last.Store(time.Now().UnixNano())
					l.WriteToUDPAddrPort(b[:n], from)
				}
				mu.Lock()
				delete(sessions, from)
				mu.Unlock()
				p.untrack(s.conn)
			}()
		}
		mu.Unlock()
		s.last.Store(time.Now().UnixNano())
		s.conn.Write(buf[:n]) // UDP is lossy: a send error just drops the datagram
	}
}

// CheckPorts says whether every port can be bound now, binding nothing for long: callers use
// it to refuse a taken port before they create anything (Setup binds them for real).
func CheckPorts(ports []Port) error {
	p, err := listenPorts(netip.IPv4Unspecified(), ports)
	if err != nil {
		return err
	}
	return p.Close()
}
