package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/moatc/moatc/builder"
	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/mounts"
	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// reconcileBudget bounds the time one abandoned run may take from a command's reconcile.
const reconcileBudget = 15 * time.Second

// Reconcile brings records up to date with reality; every moatc command calls it first. An
// active run whose supervisor is gone (moatc killed with -9, a crash) is finalized: a task
// that ended gets its exit code; one still running is stopped and the run marked failed, so
// nothing is left half-alive. Runs with a live supervisor cost no containerd call.
func (m *Manager) Reconcile(ctx context.Context) error {
	runs, err := m.Store.List()
	if err != nil {
		return err
	}
	for _, r := range runs {
		if r.Active() && !r.Supervisor.Alive() {
			// One run that cannot be finalized now (a hung shim) must not block every command:
			// say so, and try again next time.
			// Bounded: a hung shim must not hold up every command.
			fctx, cancel := context.WithTimeout(ctx, reconcileBudget)
			err := m.finalizeAbandoned(fctx, r.ID)
			cancel()
			if err != nil {
				fmt.Fprintf(os.Stderr, "moatc: warning: run %s lost its supervisor and could not be cleaned up yet (the next moatc command tries again; `moatc destroy --force %s` to give up on it): %v\n", r.ID, r.ID, err)
			}
		}
	}
	// gVisor sandboxes of runs killed while being created live on outside containerd's view.
	m.SweepAbandoned(ctx, runs)
	// Warm pool members whose fill or run was killed.
	if m.Pool != nil {
		pctx, cancel := context.WithTimeout(ctx, reconcileBudget)
		if err := m.Pool.RemoveAbandoned(pctx); err != nil {
			fmt.Fprintf(os.Stderr, "moatc: warning: removing warm pool members whose process died: %v (run `moatc clean` to retry)\n", err)
		}
		cancel()
	}
	// A build whose moatc was killed leaves leases behind; they go once no build is live.
	if (&builder.Daemon{Dir: m.buildDir()}).Abandoned() {
		sctx, cancel := context.WithTimeout(ctx, reconcileBudget)
		_, _, err := m.SweepLeases(sctx, false)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "moatc: warning: removing the leases of a killed build: %v (run `moatc clean` to retry)\n", err)
		}
	}
	return nil
}

func (m *Manager) finalizeAbandoned(ctx context.Context, id string) error {
	_, err := m.Store.Update(id, func(r *state.Run) error {
		// Re-check under the run's lock: another moatc may have finalized it meanwhile.
		if !r.Active() || r.Supervisor.Alive() {
			return nil
		}
		if r.Kube != nil {
			// Its pod is on a cluster, which only `moatc destroy` asks.
			now := time.Now().UTC()
			r.State, r.Finished = state.Failed, &now
			r.Error = fmt.Sprintf("the moatc that ran this run on cluster %s is gone; its pod may still be there: `moatc destroy %s` removes it", r.Kube.Context, r.ID)
			return nil
		}
		// A detached run whose task still runs gets a new supervisor rather than its end.
		if m.adoptable(r) {
			// Only a task known not to run is removed: a shim that does not answer may be
			// slow, not gone.
			adopted, err := m.adopt(ctx, r)
			if err != nil || adopted {
				return err
			}
		}
		cl, err := m.Client(ctx)
		if err != nil {
			return err
		}
		rm, err := cl.RemoveContainer(ctx, r.ContainerID)
		if err != nil {
			return err
		}
		if r.Sandbox != "" {
			if err := m.removeSandbox(ctx, r.ID); err != nil {
				return err
			}
		}
		if err := mounts.Unpin(m.pinDir(r.ID)); err != nil {
			return err
		}
		if err := m.Net.Teardown(ctx, r.ID); err != nil {
			return err
		}
		now := time.Now().UTC()
		r.Finished = &now
		who := "moatc"
		if r.Supervisor != nil {
			who = fmt.Sprintf("moatc (pid %d)", r.Supervisor.Pid)
		}
		switch {
		case rm.Exit != nil && !rm.WasRunning:
			code := int(*rm.Exit)
			r.State, r.ExitCode = state.Stopped, &code
			r.Error = who + " exited before recording the end of the run; its end was recorded from containerd"
			if r.Output != "shim" {
				r.Error += "; the log may be incomplete"
			}
		case rm.WasRunning:
			r.State = state.Failed
			code := 137
			r.ExitCode = &code
			r.Error = who + " that supervised this run is gone; the workload was killed"
		default:
			r.State = state.Failed
			r.Error = who + " exited before the container started"
		}
		// The task is deleted: a shim-owned log is whole, and says what it could not keep.
		if st, ok := readLogStatus(m.Store.Dir(r.ID)); ok && st.lostError() != nil {
			r.Error += "; recording the output failed, the log is incomplete: " + st.lostError().Error()
		}
		return nil
	})
	return err
}

// Stop asks the workload to end with SIGTERM and kills it after grace; a negative grace is
// the run's own --stop-timeout (DefaultStopTimeout without one). It returns once the run's
// end is recorded (or its record is gone: a --rm run).
func (m *Manager) Stop(ctx context.Context, ref string, grace time.Duration) (*state.Run, error) {
	r, err := m.Store.Find(ref)
	if err != nil {
		return nil, err
	}
	if !r.Active() {
		return r, nil
	}
	if grace < 0 {
		grace = DefaultStopTimeout * time.Second
		if r.Spec.StopTimeout != nil {
			grace = time.Duration(*r.Spec.StopTimeout) * time.Second
		}
	}
	if r.Kube != nil {
		return m.stopRemote(ctx, r, grace)
	}
	c, err := m.Client(ctx)
	if err != nil {
		return nil, err
	}
	r, err = m.Store.Update(r.ID, func(r *state.Run) error {
		if r.State == state.Running || r.State == state.Created {
			r.State = state.Stopping
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stopping run %s: %w", ref, err)
	}
	r, done, err := m.awaitStart(ctx, r)
	if done || err != nil {
		return r, err
	}
	ctr, err := c.LoadContainer(ctx, r.ContainerID)
	if err == nil {
		if task, terr := ctr.Task(ctx, nil); terr == nil {
			if err := terminate(ctx, task, grace); err != nil {
				return nil, err
			}
		}
	} else if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("stopping run %s: %w", r.ID, err)
	}
	return m.awaitEnd(ctx, r)
}

// awaitStart waits for a run marked stopping to have started, or to be over (done): a run not
// started yet is not started at all, since its supervisor sees the mark before it starts the
// task. If it started meanwhile, it is signalled like any other.
func (m *Manager) awaitStart(ctx context.Context, r *state.Run) (*state.Run, bool, error) {
	for r.Started == nil {
		if !r.Active() {
			return r, true, nil
		}
		if !r.Supervisor.Alive() {
			if err := m.finalizeAbandoned(ctx, r.ID); err != nil {
				return nil, true, err
			}
			r, err := m.Store.Get(r.ID)
			return r, true, err
		}
		select {
		case <-ctx.Done():
			return nil, true, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		cur, err := m.Store.Get(r.ID)
		if errors.Is(err, state.ErrNotFound) && r.Spec.Remove {
			return m.removedEnd(ctx, r), true, nil
		}
		if err != nil {
			return nil, true, err
		}
		r = cur
	}
	return r, false, nil
}

// terminate sends SIGTERM and, after grace, SIGKILL to every process of the task, and waits
// for it to exit.
func terminate(ctx context.Context, task containerd.Task, grace time.Duration) error {
	wait, err := task.Wait(ctx)
	if err != nil {
		return nil // gone already
	}
	task.Kill(ctx, syscall.SIGTERM)
	select {
	case <-wait:
	case <-time.After(grace):
		ctrd.KillAll(ctx, task)
		<-wait
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// awaitEnd waits for the supervisor to record the end of a run whose task was told to end,
// and records it itself if the supervisor is gone.
func (m *Manager) awaitEnd(ctx context.Context, r *state.Run) (*state.Run, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		cur, err := m.Store.Get(r.ID)
		if errors.Is(err, state.ErrNotFound) && r.Spec.Remove {
			return m.removedEnd(ctx, r), nil
		}
		if err != nil {
			return nil, err
		}
		if !cur.Active() {
			return cur, nil
		}
		if !cur.Supervisor.Alive() || time.Now().After(deadline) {
			if err := m.finalizeAbandoned(ctx, r.ID); err != nil {
				return nil, err
			}
			return m.Store.Get(r.ID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removedEnd is the end of a --rm run whose record went once it ended: its last record, with
// the state and exit code of its "exited" event.
func (m *Manager) removedEnd(ctx context.Context, last *state.Run) *state.Run {
	end := *last
	end.State = state.Stopped
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.Store.Events(ectx, state.EventOptions{Since: last.Created, Until: time.Now(),
		Filter: state.EventFilter{Runs: []string{last.ID}, Types: []string{"exited"}}}, func(e state.Event) error {
		end.State, end.ExitCode, end.Error = e.State, e.ExitCode, e.Error
		return nil
	})
	return &end
}

// ActiveError refuses to destroy a run that still runs.
type ActiveError struct{ Ref string }

func (e *ActiveError) Error() string {
	return fmt.Sprintf("run %s is still running: stop it first with `moatc stop %s`, or use `moatc destroy --force %s`", e.Ref, e.Ref, e.Ref)
}

// Destroy removes a run: its container and snapshot if any are left, and its record and log.
func (m *Manager) Destroy(ctx context.Context, ref string, force bool) (*state.Run, error) {
	r, err := m.Store.Find(ref)
	if errors.Is(err, state.ErrNotFound) {
		// A run whose creation failed half-way has a directory but no record: by its id.
		if half, _ := m.Store.Incomplete(0); slices.Contains(half, ref) {
			if err := m.removeLeftovers(ctx, ref, "moatc-"+ref, ""); err != nil {
				return nil, err
			}
			return &state.Run{ID: ref}, m.Store.Remove(ref)
		}
	}
	if err != nil {
		return nil, err
	}
	if r.Active() {
		if !force {
			return nil, &ActiveError{Ref: ref}
		}
		if _, err := m.Stop(ctx, r.ID, 0); err != nil {
			return nil, err
		}
	}
	if r.Kube != nil {
		if m.Remote == nil {
			return nil, errNoRemote
		}
		if err := m.Remote.Destroy(ctx, r); err != nil {
			return nil, err
		}
		return r, m.Store.Remove(r.ID)
	}
	if err := m.removeLeftovers(ctx, r.ID, r.ContainerID, r.Spec.Docker); err != nil {
		return nil, err
	}
	return r, m.Store.Remove(r.ID)
}

// removeLeftovers removes a finished run's container and snapshot if a crash left them, and
// what its engine left when the run had one (docker: its docker mode, or "").
func (m *Manager) removeLeftovers(ctx context.Context, id, containerID, docker string) error {
	if err := mounts.Unpin(m.pinDir(id)); err != nil {
		return err
	}
	if err := m.Net.Teardown(ctx, id); err != nil {
		return err
	}
	// An engine killed with its supervisor leaves its namespace (dind) or containers (host).
	if docker != "" {
		if err := m.removeEngineLeftovers(ctx, id, docker); err != nil {
			return err
		}
	}
	if !m.daemonReachable() {
		return nil
	}
	c, err := m.Client(ctx)
	if err != nil {
		return err
	}
	if _, err := c.RemoveContainer(ctx, containerID); err != nil {
		return err
	}
	if err := m.removeSandbox(ctx, id); err != nil {
		return err
	}
	return c.RemoveSnapshot(ctx, snapshot.Default(), containerID)
}

// daemonReachable avoids starting the managed containerd just to find nothing to clean.
func (m *Manager) daemonReachable() bool {
	if m.client != nil || m.Conn.Address != "" {
		return true
	}
	return m.Conn.Daemon.Answering()
}

// CleanReport lists what Clean removed (or, dry, would remove).
type CleanReport struct {
	Runs       []string `json:"runs"`
	Networks   []string `json:"networks"`
	Containers []string `json:"containers"`
	Snapshots  []string `json:"snapshots"`
	Sandboxes  []string `json:"sandboxes"`  // gVisor sandboxes, shims and runsc state no run accounts for
	Namespaces []string `json:"namespaces"` // docker:dind engines' namespaces no run accounts for
	// Leases of moatc processes that died (an import, pull, unpack or container creation
	// killed half-way), and BuildKit's temporary leases once no build runs.
	Leases      []string `json:"leases"`
	BuildLeases []string `json:"build_leases"`
	// Pool lists the warm pool's members removed (no run held them).
	Pool []string `json:"pool"`
}

// Clean removes finished runs and whatever moatc created that no run record accounts for.
func (m *Manager) Clean(ctx context.Context, dry bool) (*CleanReport, error) {
	rep := &CleanReport{Runs: []string{}, Networks: []string{}, Containers: []string{}, Snapshots: []string{}, Sandboxes: []string{}, Namespaces: []string{},
		Leases: []string{}, BuildLeases: []string{}, Pool: []string{}}
	// The warm pool goes first (clean leaves nothing idle behind); the sweeps below then find
	// what a killed fill left that no member record names.
	if err := m.drainPool(ctx, rep, dry); err != nil {
		return rep, err
	}
	active, err := m.cleanRuns(ctx, rep, dry)
	if err != nil {
		return rep, err
	}
	// Leases before networks: the sweep may stop the idle buildkitd, whose network then goes.
	build, own, err := m.SweepLeases(ctx, dry)
	rep.BuildLeases, rep.Leases = append(rep.BuildLeases, build...), append(rep.Leases, own...)
	if err != nil {
		return rep, err
	}
	if err := m.cleanNetworks(ctx, rep, active, dry, len(build) > 0); err != nil {
		return rep, err
	}
	// Pins of runs whose record is gone (a crash between pin and task create, then destroy).
	if ents, err := os.ReadDir(filepath.Join(m.Dir, "pins")); err == nil {
		for _, e := range ents {
			if !active[e.Name()] && !dry {
				if err := mounts.Unpin(m.pinDir(e.Name())); err != nil {
					return rep, err
				}
			}
		}
	}
	if !dry {
		// moatc's shared chains go once no run of any home uses them.
		if err := cni.Prune(ctx); err != nil {
			return rep, err
		}
	}
	if !m.daemonReachable() {
		rep.Sandboxes, err = m.SweepSandboxes(ctx, dry)
		return rep, err
	}
	if err := m.cleanContainers(ctx, rep, active, dry); err != nil {
		return rep, err
	}
	if err := m.cleanEngines(ctx, rep, active, dry); err != nil {
		return rep, err
	}
	rep.Sandboxes, err = m.SweepSandboxes(ctx, dry)
	return rep, err
}

// cleanRuns removes the records (and what is left of them) of the runs that are not active,
// and of runs whose creation failed half-way; it returns the active runs.
func (m *Manager) cleanRuns(ctx context.Context, rep *CleanReport, dry bool) (map[string]bool, error) {
	runs, err := m.Store.List()
	if err != nil {
		return nil, err
	}
	active := map[string]bool{}
	for _, r := range runs {
		if r.Active() {
			active[r.ID] = true
			continue
		}
		if r.Kube != nil && r.Kube.Keep {
			continue // its objects are on the cluster: `moatc destroy` removes both
		}
		rep.Runs = append(rep.Runs, r.ID)
		if !dry && r.Kube == nil {
			if err := m.removeLeftovers(ctx, r.ID, r.ContainerID, r.Spec.Docker); err != nil {
				return nil, err
			}
		}
		if !dry {
			if err := m.Store.Remove(r.ID); err != nil {
				return nil, err
			}
		}
	}
	// Directories of runs whose creation failed half-way (older than a minute: not a run
	// being created right now).
	half, err := m.Store.Incomplete(time.Minute)
	if err != nil {
		return nil, err
	}
	for _, id := range half {
		rep.Runs = append(rep.Runs, id)
		if !dry {
			if err := m.removeLeftovers(ctx, id, "moatc-"+id, ""); err != nil {
				return nil, err
			}
			if err := m.Store.Remove(id); err != nil {
				return nil, err
			}
		}
	}
	return active, nil
}

// cleanNetworks removes the networks of runs that are not active; the build network only
// while no build can start (and, on a dry run, when the lease sweep would stop buildkitd).
func (m *Manager) cleanNetworks(ctx context.Context, rep *CleanReport, active map[string]bool, dry, buildLeases bool) error {
	nets, err := m.Net.Leftovers()
	if err != nil {
		return err
	}
	bd := m.BuildDaemon()
	for _, id := range nets {
		if active[id] {
			continue
		}
		if id == m.BuildNetwork() {
			// Only while no build can start: a build makes its network before buildkitd runs.
			_, err := bd.WhenIdle(func() error {
				if bd.Answering() && !(dry && buildLeases) {
					return nil
				}
				rep.Networks = append(rep.Networks, id)
				if dry {
					return nil
				}
				return m.Net.Teardown(ctx, id)
			})
			if err != nil {
				return err
			}
			continue
		}
		// A run started since the list above has its network before it is ever listed again.
		if r, err := m.Store.Get(id); err == nil && r.Active() {
			continue
		}
		rep.Networks = append(rep.Networks, id)
		if !dry {
			if err := m.Net.Teardown(ctx, id); err != nil {
				return err
			}
		}
	}
	if dry {
		return nil
	}
	// Rootless: ports published through rootlesskit for networks that are gone (a moatc
	// killed between publishing them and recording its network's address, or while checking).
	return m.Net.SweepPorts(ctx)
}

// cleanContainers removes the containers and snapshots moatc owns that belong to no active run.
func (m *Manager) cleanContainers(ctx context.Context, rep *CleanReport, active map[string]bool, dry bool) error {
	c, err := m.Client(ctx)
	if err != nil {
		return err
	}
	owned, err := c.Owned(ctx)
	if err != nil {
		return err
	}
	// Runs started since the list above are spared: their records are read again.
	startedSince := func(runID string) bool {
		cur, err := m.Store.Get(runID)
		return err == nil && cur.Active()
	}
	for ctrID, runID := range owned {
		if active[runID] || startedSince(runID) {
			continue
		}
		rep.Containers = append(rep.Containers, ctrID)
		if !dry {
			if _, err := c.RemoveContainer(ctx, ctrID); err != nil {
				return err
			}
		}
	}
	snaps, err := c.OwnedSnapshots(ctx, snapshot.Default())
	if err != nil {
		return err
	}
	for name, runID := range snaps {
		if active[runID] || startedSince(runID) {
			continue
		}
		if _, ok := owned[name]; ok {
			continue // goes with its container
		}
		rep.Snapshots = append(rep.Snapshots, name)
		if !dry {
			if err := c.RemoveSnapshot(ctx, snapshot.Default(), name); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}
