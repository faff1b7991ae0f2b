package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/moatc/moatc/state"
)

// Kill sends sig to run ref's workload (its PID 1, as `docker kill` does; with --init that is
// the init, which passes it on).
func (m *Manager) Kill(ctx context.Context, ref string, sig syscall.Signal) (*state.Run, error) {
	r, _, task, err := m.running(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := task.Kill(ctx, sig); err != nil {
		return nil, fmt.Errorf("sending %v to run %s: %w", sig, r.Name, err)
	}
	return r, nil
}

// Wait blocks until run ref has ended and returns its final record. A run whose supervisor
// died meanwhile is finalized (or adopted) as any command would.
func (m *Manager) Wait(ctx context.Context, ref string) (*state.Run, error) {
	r, err := m.Store.Find(ref)
	if err != nil {
		return nil, err
	}
	poll := 20 * time.Millisecond
	lastCheck := time.Now()
	for r.Active() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(poll):
		}
		poll = min(poll*2, 200*time.Millisecond)
		cur, err := m.Store.Get(r.ID)
		if errors.Is(err, state.ErrNotFound) && r.Spec.Remove {
			return m.removedEnd(ctx, r), nil
		}
		if err != nil {
			return nil, err
		}
		r = cur
		if r.Active() && !r.Supervisor.Alive() && time.Since(lastCheck) > time.Second {
			lastCheck = time.Now()
			if err := m.Reconcile(ctx); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// Restart stops run ref if it runs (SIGTERM, SIGKILL after grace) and starts it again,
// detached, with the same record, spec, name and workspace; its log goes on after the
// previous output. The container and network are made afresh: nothing of the previous
// task's writable layer is kept, as nothing is between moatc runs.
func (m *Manager) Restart(ctx context.Context, ref string, grace time.Duration) (*state.Run, error) {
	r, err := m.Store.Find(ref)
	if err != nil {
		return nil, err
	}
	if r.Active() {
		if r, err = m.Stop(ctx, r.ID, grace); err != nil {
			return nil, err
		}
	}
	// Whatever a crash left of the previous task goes first: the container id is reused.
	if err := m.removeLeftovers(ctx, r.ID, r.ContainerID, r.Spec.Docker); err != nil {
		return nil, fmt.Errorf("restarting run %s: %w", r.Name, err)
	}
	r, err = m.Store.Update(r.ID, func(r *state.Run) error {
		if r.Active() {
			return fmt.Errorf("run %s was started again meanwhile", r.Name)
		}
		r.State, r.ExitCode, r.Error = state.Created, nil, ""
		r.Started, r.Finished, r.Pid, r.IP, r.Gateway, r.Ports = nil, nil, 0, "", "", nil
		r.Spec.Detach, r.Spec.Interactive, r.Spec.TTY = true, false, false
		r.Restarts++
		r.Warm, r.Sandbox = false, "" // the warm sandbox went with the previous task
		r.Supervisor = state.Self()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("restarting run %s: %w", ref, err)
	}
	if err := m.detach(r); err != nil {
		return nil, fmt.Errorf("restarting run %s: %w", r.Name, err)
	}
	return m.Store.Get(r.ID)
}

// Attach prints run ref's output from now on until it ends, and passes the signals moatc gets
// (Ctrl-C: SIGINT) to the workload, as `docker attach` does with its signal proxy. It
// returns the run's exit code. A run's stdin cannot be attached: a detached run has none.
// With proxySignals false, Ctrl-C ends only the attach.
func (m *Manager) Attach(ctx context.Context, ref string, proxySignals bool, out, errw io.Writer) (int, error) {
	r, _, task, err := m.running(ctx, ref)
	if err != nil {
		return 0, err
	}
	if proxySignals {
		stop := m.forwardSignals(context.WithoutCancel(ctx), task, nil)
		defer stop()
	}
	if err := m.Logs(ctx, r.ID, LogOptions{Follow: true, New: true}, out, errw); err != nil {
		return 0, err
	}
	r, err = m.Wait(ctx, r.ID)
	if err != nil {
		return 0, err
	}
	if r.ExitCode == nil {
		return 0, fmt.Errorf("run %s ended without an exit code: %s", r.Name, r.Error)
	}
	return *r.ExitCode, nil
}
