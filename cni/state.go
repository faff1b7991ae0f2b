package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/internal/lockfile"
)

// record is what Teardown needs to undo a run's network, written before anything is created.
type record struct {
	RunID    string       `json:"run_id"`
	Hostname string       `json:"hostname"`
	Pool     netip.Prefix `json:"pool"` // the pool at creation; the isolation rule names it
	Subnet   netip.Prefix `json:"subnet"`
	Gateway  netip.Addr   `json:"gateway"`
	IP       netip.Addr   `json:"ip"`
	Ports    []Port       `json:"ports,omitempty"`
	// HostPorts are the host's ports the run may reach at Gateway; the rest of the host is closed.
	HostPorts []HostPort `json:"host_ports,omitempty"`
	// Services are ports of moatc's own at Gateway (the run's proxy), open to the run.
	Services []HostPort `json:"services,omitempty"`
	// Strict: nothing is forwarded; the run reaches its Services and nothing else.
	Strict bool `json:"strict,omitempty"`
	MTU    int  `json:"mtu,omitempty"` // the uplink's; 0: the plugin's default
	// Outside: made by a rootless moatc; what its rules close of the host beyond the namespace.
	Outside *Outside `json:"outside,omitempty"`
	// Shared: another program (BuildKit) attaches containers; IPAM hands out .2 to .254.
	Shared bool `json:"shared,omitempty"`
	// Prepared: made ahead of its run (a warm pool's member) and not yet finished for one: it
	// has no ports, services or rules, and its hostname is its id.
	Prepared bool      `json:"prepared,omitempty"`
	Created  time.Time `json:"created"`
	PID      int       `json:"pid"`
}

func (m *Manager) runsDir() string             { return filepath.Join(m.cfg.StateDir, "runs") }
func (m *Manager) runDir(id string) string     { return filepath.Join(m.runsDir(), id) }
func (m *Manager) ipamDir() string             { return filepath.Join(m.cfg.StateDir, "ipam") }
func (m *Manager) cacheDir() string            { return filepath.Join(m.cfg.StateDir, "cache") }
func (m *Manager) recordPath(id string) string { return filepath.Join(m.runDir(id), "network.json") }

// ConfPath is where the conflist of network id is written.
func (m *Manager) ConfPath(id string) string { return m.confPath(id) }

func (m *Manager) confPath(id string) string {
	return filepath.Join(m.cfg.ConfDir, netName(id)+".conflist")
}

// lock takes the StateDir-wide lock that serialises subnet allocation across processes.
func (m *Manager) lock() (func(), error) {
	if err := os.MkdirAll(m.cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	return lockfile.Flock(filepath.Join(m.cfg.StateDir, "lock"), unix.LOCK_EX)
}

func (m *Manager) readRecord(id string) (*record, error) {
	b, err := os.ReadFile(m.recordPath(id))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("reading %s: %w", m.recordPath(id), err)
	}
	return &r, nil
}

// records returns every run's record; unreadable ones still count by id so their subnet is
// never handed out twice (their subnet is then unknown, which is reported by allocate).
func (m *Manager) records() ([]*record, []string, error) {
	ents, err := os.ReadDir(m.runsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var recs []*record
	var ids []string
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		ids = append(ids, e.Name())
		if r, err := m.readRecord(e.Name()); err == nil {
			recs = append(recs, r)
		}
	}
	sort.Strings(ids)
	return recs, ids, nil
}
