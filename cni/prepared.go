package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// A warm pool makes networks ahead of their runs: Prepare does the slow, run-independent part
// (address, netns, bridge, veth, CNI ADD), and Finish does the rest once a run takes the
// network, with that run's options, exactly as Setup would have. A network is finished at
// most once; until then it has no published ports, services or rules, and only moatc's own
// idle sandbox is attached to it.

// Prepare makes network id ahead of the run that will take it (the run gets id as its own).
// Any failure undoes everything Prepare did.
func (m *Manager) Prepare(ctx context.Context, id string) (_ *Network, err error) {
	fail := func(err error) error { return fmt.Errorf("preparing network %s: %w", netName(id), err) }
	if m.cfg.Kit != nil {
		return nil, fail(errors.New("networks cannot be prepared ahead by a rootless moatc"))
	}
	if err := checkRunID(id); err != nil {
		return nil, fail(err)
	}
	if err := m.checkPlugins(); err != nil {
		return nil, fail(err)
	}
	fw, err := findFirewall()
	if err != nil {
		return nil, fail(err)
	}
	rec, err := m.allocate(record{RunID: id, Hostname: id, Prepared: true})
	if err != nil {
		return nil, fail(err)
	}
	defer m.undo(ctx, rec, &err, fail)
	release, err := fw.hold()
	if err != nil {
		return nil, err
	}
	defer release()
	if err := m.link(ctx, rec); err != nil {
		return nil, err
	}
	return m.network(rec), nil
}

// Finish completes prepared network id for its run with the options Setup takes. On failure
// the network stays as it was made and the caller tears it down (Teardown): it may hold half
// of the run's rules.
func (m *Manager) Finish(ctx context.Context, id string, o Options) (_ *Network, err error) {
	fail := func(err error) error { return fmt.Errorf("finishing network %s: %w", netName(id), err) }
	hostname, ports, err := m.checkSetup(id, o)
	if err != nil {
		return nil, fail(err)
	}
	fw, err := findFirewall()
	if err != nil {
		return nil, fail(err)
	}
	rec, err := m.readRecord(id)
	if err != nil {
		return nil, fail(err)
	}
	if !rec.Prepared {
		return nil, fail(errors.New("it is not a prepared network, or a run has taken it already"))
	}
	var proxy *Proxy
	if len(ports) > 0 {
		if proxy, err = listenPorts(rec.IP, ports); err != nil {
			return nil, fail(err)
		}
	}
	defer func() {
		if err != nil {
			proxy.Close()
		}
	}()
	rec.Hostname, rec.Ports, rec.HostPorts, rec.Strict, rec.Prepared = hostname, ports, o.HostPorts, o.Strict, false
	rec.PID = os.Getpid()
	// Written before the rules: Teardown removes the rules the record names.
	if err := m.writeRecord(rec); err != nil {
		return nil, fail(err)
	}
	release, err := fw.hold()
	if err != nil {
		return nil, fail(err)
	}
	defer release()
	if err := m.open(ctx, fw, rec, o); err != nil {
		return nil, fail(err)
	}
	n := m.network(rec)
	if err := m.writeRunFiles(n, rec, o.Strict); err != nil {
		return nil, fail(err)
	}
	m.keepProxy(n, proxy)
	return n, nil
}

// Prepared reports whether network id exists and was prepared but not finished.
func (m *Manager) Prepared(id string) bool {
	if checkRunID(id) != nil {
		return false
	}
	rec, err := m.readRecord(id)
	return err == nil && rec.Prepared
}
