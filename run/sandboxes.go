package run

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/pool"
	"github.com/moatc/moatc/state"
)

// Container ids moatc gives: a run's ("moatc-" and the run id) and a runtime probe's
// ("moatc-probe-RUNTIME-UNIXNANO", see ctrd.Probe).
var (
	runContainerID   = regexp.MustCompile(`^moatc-[0-9a-f]{12}$`)
	probeContainerID = regexp.MustCompile(`^moatc-probe-[a-z0-9-]+-([0-9]+)$`)
	poolContainerID  = regexp.MustCompile(`^moatc-pool-[0-9a-f]{12}$`)
)

// probeGrace is how old a probe's sandbox must be to count as left over: a probe gives up
// after 20 s.
const probeGrace = 2 * time.Minute

// SweepSandboxes finds the gVisor sandboxes (sandbox and gofer processes, runsc state,
// cgroups), and the shims (gVisor's and runc's), of this home that no active run accounts
// for, and removes them; dry only lists them. It returns their container ids. containerd need
// not run: they are found on the host (ctrd.FindSandboxes), which is how those containerd lost
// track of are found at all (a moatc killed during task create).
//
// What is left alone: anything of an active run (created, running, stopping: a run still
// starting has its record before any container exists, and the record is read after the
// host is searched); a probe younger than probeGrace; BuildKit's RUN steps while the home's
// buildkitd runs; on a shared containerd, a shim not shown to be this home's.
func (m *Manager) SweepSandboxes(ctx context.Context, dry bool) ([]string, error) {
	sc := m.sandboxScope()
	found, err := ctrd.FindSandboxes(sc)
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return []string{}, nil
	}
	runs, err := m.Store.List()
	if err != nil {
		return nil, err
	}
	active, known := map[string]bool{}, map[string]bool{}
	for _, r := range runs {
		known[r.ContainerID] = true
		if r.Active() {
			active[r.ContainerID] = true
		}
	}
	var building *bool
	buildkitdRuns := func() bool {
		if building == nil {
			b := m.BuildDaemon().Answering()
			building = &b
		}
		return *building
	}
	var gone []*ctrd.HostSandbox
	for id, s := range found {
		if s.Empty() || active[id] {
			continue
		}
		switch {
		case poolContainerID.MatchString(id):
			// A warm pool's: ready, or being made or used by a live process, it stays.
			member, _ := pool.IsSandbox(id)
			if active["moatc-"+member] || (m.Pool != nil && m.Pool.Live(member)) || (!s.Proven && !known["moatc-"+member]) {
				continue
			}
		case runContainerID.MatchString(id):
			if !s.Proven && !known[id] {
				continue
			}
		case probeContainerID.MatchString(id):
			// Its id says when it started (the wall clock), its processes too (the boot
			// clock): young by either, it may be a live moatc's probe.
			ns, _ := strconv.ParseInt(probeContainerID.FindStringSubmatch(id)[1], 10, 64)
			young := time.Since(time.Unix(0, ns)) < probeGrace || (s.Youngest > 0 && s.Youngest < probeGrace)
			if !s.Proven || young {
				continue
			}
		default:
			// Not moatc's id: a BuildKit RUN step (it runs under the home's gVisor config).
			if !s.InRoot || buildkitdRuns() {
				continue
			}
		}
		gone = append(gone, s)
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].ID < gone[j].ID })
	if dry {
		ids := make([]string, len(gone))
		for i, s := range gone {
			ids[i] = s.ID
		}
		return ids, nil
	}
	removed, err := ctrd.RemoveSandboxes(ctx, sc, gone)
	if removed == nil {
		removed = []string{}
	}
	return removed, err
}

// sweepDind removes every sandbox and shim of dind namespace ns found on the host, and the
// mounts left in its task directory. The namespace is its run's alone and the run is over, so
// all of it goes, with what containerd lost track of: an engine killed while it started a
// container leaves a shim that makes the sandbox for nobody, and DestroyNamespace, asking
// containerd, never sees it.
func (m *Manager) sweepDind(ctx context.Context, ns string) error {
	sc := m.sandboxScope()
	sc.Namespace = ns
	if sc.TaskDir != "" {
		sc.TaskDir = m.Conn.Daemon.TaskDir(ns)
	}
	found, err := ctrd.FindSandboxes(sc)
	if err != nil {
		return err
	}
	var gone []*ctrd.HostSandbox
	for _, s := range found {
		if !s.Empty() && s.Proven {
			gone = append(gone, s)
		}
	}
	if _, err := ctrd.RemoveSandboxes(ctx, sc, gone); err != nil {
		return fmt.Errorf("removing the sandboxes of %s: %w", ns, err)
	}
	if sc.TaskDir != "" {
		if err := ctrd.UnmountUnder(sc.TaskDir); err != nil {
			return fmt.Errorf("removing the sandboxes of %s: %w", ns, err)
		}
	}
	os.Remove(filepath.Join(sc.Root, ns)) // empty once its sandboxes are gone
	ctrd.RemoveNamespaceDirs(ns)          // cgroups and runc state a runc create killed half-way leaves
	return nil
}

// sandboxScope says where this home's sandboxes are: its runsc root, its containerd.
func (m *Manager) sandboxScope() ctrd.SandboxScope {
	g := ctrd.GVisor{Prefix: m.Prefix, Dir: filepath.Join(m.Dir, "runsc")}
	ns := m.Conn.Namespace
	if ns == "" {
		ns = ctrd.DefaultNamespace
	}
	sc := ctrd.SandboxScope{Runsc: g.RunscPath(), Root: g.StateRoot(), Namespace: ns, Address: m.Conn.Address}
	if sc.Address == "" && m.Conn.Daemon != nil {
		sc.Address, sc.Managed, sc.TaskDir = m.Conn.Daemon.Address(), true, m.Conn.Daemon.TaskDir(ns)
	}
	return sc
}

// SweepAbandoned is Reconcile's last step. runs is the list Reconcile went through, read
// before it finalized anything: when one of them had lost its supervisor, the sandboxes no
// active run accounts for are removed (a moatc killed while its run was being created can
// leave one that containerd no longer knows). Nothing is searched otherwise, so commands
// stay cheap. A failure is a warning: the next clean retries.
func (m *Manager) SweepAbandoned(ctx context.Context, runs []*state.Run) {
	abandoned := false
	for _, r := range runs {
		if r.Active() && !r.Supervisor.Alive() {
			abandoned = true
			break
		}
	}
	if !abandoned {
		return
	}
	if _, err := m.SweepSandboxes(ctx, false); err != nil {
		fmt.Fprintf(os.Stderr, "moatc: warning: removing sandboxes of runs that lost their supervisor: %v (run `moatc clean` to retry)\n", err)
	}
}

// PruneSandboxRoot removes the home's runsc state root when it is empty (see
// ctrd.GVisor.PruneStateRoot); for `moatc system stop`, after SweepSandboxes.
func (m *Manager) PruneSandboxRoot() error {
	return ctrd.GVisor{Prefix: m.Prefix, Dir: filepath.Join(m.Dir, "runsc")}.PruneStateRoot()
}
