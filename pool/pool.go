// Package pool keeps warm starts ready: members made ahead of the runs that will take them.
// A gVisor member is a booted sandbox (moatc-pause as its only process) in a network made for
// it; a runc member is the network alone. A run whose class matches takes one member, takes
// the member's id as its own run id (every name of the network derives from it), starts its
// container in the member's sandbox, and destroys the member when it ends: nothing is reused
// and nothing passes from one run to the next. The pool is refilled by a detached
// `moatc pool fill`, never by the run that took a member.
//
// Each member has a record in Dir/members, written atomically under Dir/lock; the process
// that fills or holds a member is named in it, so a member whose process died is found and
// removed (by the next fill, drain or clean).
package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/internal/lockfile"
	"github.com/moatc/moatc/state"
)

// Class is what a run must match to take a member: the sandbox is booted with these, and
// they cannot change afterwards (runsc fixes the sandbox's limits and platform at boot).
type Class struct {
	Runtime  string  `json:"runtime"`            // "gvisor" or "runc"
	Platform string  `json:"platform,omitempty"` // gVisor's platform; "" is the default
	Memory   int64   `json:"memory,omitempty"`   // bytes; 0 is unlimited
	CPUs     float64 `json:"cpus,omitempty"`     // 0 is unlimited
	Pids     int64   `json:"pids,omitempty"`     // the run's process limit; 0 is none
}

func (c Class) String() string {
	s := c.Runtime
	if c.Platform != "" {
		s += " platform=" + c.Platform
	}
	if c.Memory > 0 {
		s += " memory=" + strconv.FormatInt(c.Memory, 10)
	}
	if c.CPUs > 0 {
		s += " cpus=" + strconv.FormatFloat(c.CPUs, 'f', -1, 64)
	}
	if c.Pids > 0 {
		s += " pids=" + strconv.FormatInt(c.Pids, 10)
	}
	return s
}

// Size is how many members of a class the pool keeps.
type Size struct {
	Class Class
	N     int
}

// Member states.
const (
	Filling = "filling" // being made by Owner
	Ready   = "ready"   // waiting for a run
	Claimed = "claimed" // taken by Owner, a run's supervisor
)

// Member is one warm start.
type Member struct {
	ID      string         `json:"id"` // the run id of the run that takes it
	Class   Class          `json:"class"`
	State   string         `json:"state"`
	Owner   *state.Process `json:"owner,omitempty"`   // the filling or claiming process
	Sandbox string         `json:"sandbox,omitempty"` // the gVisor sandbox's container id
	Created time.Time      `json:"created"`
	// MemoryKB is what the idle member costs: the proportional set size (PSS) of its shim,
	// sandbox and gofer, measured once it was ready.
	MemoryKB int64 `json:"memory_kb,omitempty"`
}

// SandboxID is the container id of member id's sandbox.
func SandboxID(id string) string { return "moatc-pool-" + id }

// IsSandbox reports whether a container id is a pool sandbox's, and whose.
func IsSandbox(ctrID string) (string, bool) {
	id, ok := strings.CutPrefix(ctrID, "moatc-pool-")
	return id, ok && id != ""
}

// Pool is a home's warm pool.
type Pool struct {
	Dir     string // the home's pool directory
	Net     *cni.Manager
	Client  func(context.Context) (*ctrd.Client, error)
	Runtime func(Class) ctrd.Runtime
	Pause   string // the moatc-pause binary
	Sizes   []Size
	// FillCommand is the argv of a detached `moatc pool fill` with this pool's settings.
	FillCommand func() []string
}

// UnavailableError says why runs cannot be warm here at all.
type UnavailableError struct{ Why string }

func (e *UnavailableError) Error() string { return "the warm pool is not available: " + e.Why }

func (p *Pool) membersDir() string          { return filepath.Join(p.Dir, "members") }
func (p *Pool) memberPath(id string) string { return filepath.Join(p.membersDir(), id+".json") }
func (p *Pool) rootfs() string              { return filepath.Join(p.Dir, "rootfs") }

func (p *Pool) lock() (func(), error) {
	if err := os.MkdirAll(p.membersDir(), 0o700); err != nil {
		return nil, fmt.Errorf("locking the pool: %w", err)
	}
	return lockfile.Flock(filepath.Join(p.Dir, "lock"), unix.LOCK_EX)
}

func (p *Pool) write(m *Member) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(p.memberPath(m.ID), append(b, '\n'), 0o600)
}

// Members lists the members' records, oldest first.
func (p *Pool) Members() ([]*Member, error) {
	ents, err := os.ReadDir(p.membersDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing the pool: %w", err)
	}
	var out []*Member
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		m, err := p.read(id)
		if err != nil {
			continue // half-written by a crash before its rename: nothing was made for it
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

func (p *Pool) read(id string) (*Member, error) {
	b, err := os.ReadFile(p.memberPath(id))
	if err != nil {
		return nil, err
	}
	var m Member
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("reading pool member %s: %w", id, err)
	}
	return &m, nil
}

// Live reports whether member id is in the pool and accounted for: ready, or being made or
// used by a process that runs. Clean-up of a home leaves live members alone.
func (p *Pool) Live(id string) bool {
	m, err := p.read(id)
	return err == nil && (m.State == Ready || m.Owner.Alive())
}

// Claim takes a ready member of class c for the calling process, checking that it is whole
// (its sandbox runs, its network is there): a broken one is removed and the next tried. It
// returns nil when there is none.
func (p *Pool) Claim(ctx context.Context, c Class) (*Member, error) {
	for {
		m, err := p.take(c)
		if m == nil || err != nil {
			return nil, err
		}
		if why := p.Broken(ctx, m); why != "" {
			fmt.Fprintf(os.Stderr, "moatc: warning: pool member %s was broken (%s); removed, the pool makes another\n", m.ID, why)
			if err := p.Remove(ctx, m.ID); err != nil {
				return nil, err
			}
			continue
		}
		return m, nil
	}
}

func (p *Pool) take(c Class) (*Member, error) {
	unlock, err := p.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	ms, err := p.Members()
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.State != Ready || m.Class != c {
			continue
		}
		m.State, m.Owner = Claimed, state.Self()
		if err := p.write(m); err != nil {
			return nil, fmt.Errorf("claiming pool member %s: %w", m.ID, err)
		}
		return m, nil
	}
	return nil, nil
}

// Broken says what is wrong with a member's sandbox or network, or "".
func (p *Pool) Broken(ctx context.Context, m *Member) string {
	if !p.Net.Prepared(m.ID) {
		return "its network record is gone"
	}
	if _, err := os.Stat(p.Net.Paths(m.ID).NetNSPath); err != nil {
		return "its network namespace is gone"
	}
	if m.Sandbox != "" {
		c, err := p.Client(ctx)
		if err != nil {
			return "containerd: " + err.Error()
		}
		if !c.SandboxRunning(ctx, m.Sandbox) {
			return "its sandbox is not running"
		}
	}
	return ""
}

// Evict removes one ready member, the oldest, to free what it holds (its address) for a
// run that needs it. It reports whether there was one.
func (p *Pool) Evict(ctx context.Context) (bool, error) {
	unlock, err := p.lock()
	if err != nil {
		return false, err
	}
	ms, err := p.Members()
	var victim *Member
	for _, m := range ms {
		if m.State == Ready {
			victim = m
			victim.State, victim.Owner = Claimed, state.Self()
			err = p.write(victim)
			break
		}
	}
	unlock()
	if victim == nil || err != nil {
		return false, err
	}
	return true, p.Remove(ctx, victim.ID)
}

// GiveBack returns a claimed member that was not used to the pool.
func (p *Pool) GiveBack(m *Member) {
	unlock, err := p.lock()
	if err != nil {
		return
	}
	defer unlock()
	m.State, m.Owner = Ready, nil
	p.write(m)
}

// Forget removes member id's record once its sandbox and network are gone (its run removed them).
func (p *Pool) Forget(id string) error {
	if err := os.Remove(p.memberPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing pool member %s: %w", id, err)
	}
	return nil
}

// Remove destroys member id: its sandbox, its network, its record. What is gone already is
// not an error.
func (p *Pool) Remove(ctx context.Context, id string) error {
	c, err := p.Client(ctx)
	if err != nil {
		return fmt.Errorf("removing pool member %s: %w", id, err)
	}
	// The sandbox first: its netns lives on while it runs.
	if _, err := c.RemoveContainer(ctx, SandboxID(id)); err != nil {
		return fmt.Errorf("removing pool member %s: %w", id, err)
	}
	if err := p.Net.Teardown(ctx, id); err != nil {
		return fmt.Errorf("removing pool member %s: %w", id, err)
	}
	return p.Forget(id)
}
