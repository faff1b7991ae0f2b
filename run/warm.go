package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/pool"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/state"
)

// Warm starts (see the pool package): a run whose class matches a ready member takes it; any
// other run, and any run when the pool has none, starts cold exactly as before.

// PoolClass is the warm pool class of a run with spec s, and whether such a run may start
// warm at all. A gVisor member's sandbox was booted with its platform and limits; a runc
// member is a network, whatever the run's limits. Runs with no network, docker-mode runs (their
// sandbox lets the engine's socket in), debug runs and rootless moatc start cold.
func PoolClass(s state.Spec) (pool.Class, bool) {
	if s.Network == state.NetworkNone || s.Docker != "" || s.Debug || rootless.Enabled() {
		return pool.Class{}, false
	}
	if s.Runtime == state.Runc {
		return pool.Class{Runtime: string(state.Runc)}, true
	}
	platform := s.Platform
	if platform == "systrap" {
		platform = "" // the default, in the same runsc config
	}
	return pool.Class{Runtime: string(state.GVisor), Platform: platform, Memory: s.Memory, CPUs: s.CPUs, Pids: s.Pids}, true
}

// DefaultPids is the pids limit a run gets when nothing sets one (see Options.limits).
func DefaultPids() int64 {
	if HostLimits().Allows(PidsController) {
		return config.DefaultPids
	}
	return 0
}

// claim takes a warm member for req, or returns nil: the run starts cold. Whatever goes wrong
// with the pool is a warning, never the run's failure.
func (m *Manager) claim(ctx context.Context, req Request) *pool.Member {
	if m.Pool == nil || req.Cold || m.Pool.Want() == 0 {
		return nil
	}
	c, ok := PoolClass(req.Spec)
	if !ok {
		return nil
	}
	mem, err := m.Pool.Claim(ctx, c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "moatc: warning: the warm pool: %v; starting cold\n", err)
		return nil
	}
	if mem == nil && m.Pool.Keeps(c.Runtime) {
		if why := m.Pool.FillError(); why != "" {
			fmt.Fprintf(os.Stderr, "moatc: warning: the warm pool could not be filled (%s); starting cold\n", why)
		}
	}
	return mem
}

// refill has the pool made whole again in the background, after run r started: one of its
// members may have gone to r, or r found none of its class.
func (m *Manager) refill(r *state.Run) {
	if m.Pool == nil {
		return
	}
	if c, ok := PoolClass(r.Spec); !r.Warm && (!ok || !m.Pool.Keeps(c.Runtime)) {
		return
	}
	m.Pool.Refill(state.Self())
}

// removeSandbox removes the warm pool sandbox run id's container ran in, if any: before its
// network, whose namespace the sandbox holds.
func (m *Manager) removeSandbox(ctx context.Context, id string) error {
	c, err := m.Client(ctx)
	if err != nil {
		return err
	}
	_, err = c.RemoveContainer(ctx, pool.SandboxID(id))
	return err
}

// drainPool is Clean's first step: every pool member no run holds is removed (dry: listed).
func (m *Manager) drainPool(ctx context.Context, rep *CleanReport, dry bool) error {
	if m.Pool == nil {
		return nil
	}
	if dry {
		ms, err := m.Pool.Members()
		for _, mem := range ms {
			if mem.State != pool.Claimed || !mem.Owner.Alive() {
				rep.Pool = append(rep.Pool, mem.ID)
			}
		}
		return err
	}
	if !m.daemonReachable() {
		// No containerd: nothing of a sandbox is left but what the sandbox sweep finds.
		ms, _ := m.Pool.Members()
		for _, mem := range ms {
			if mem.State != pool.Claimed || !mem.Owner.Alive() {
				if err := m.Net.Teardown(ctx, mem.ID); err != nil {
					return err
				}
				m.Pool.Forget(mem.ID)
				rep.Pool = append(rep.Pool, mem.ID)
			}
		}
		return nil
	}
	gone, err := m.Pool.Drain(ctx)
	rep.Pool = append(rep.Pool, gone...)
	return err
}

// releaseDetached hands the removal of warm run id's container, sandbox and network to a
// process of its own (`moatc _supervise --release ID`), so the run's moatc ends without
// waiting for them (the sandbox's kill alone takes about 100 ms). It reports whether that
// process started; if it dies before it is done, `moatc clean` removes what is left (the
// run's container label and its network record name it).
func (m *Manager) releaseDetached(id string) bool {
	if m.SuperviseCommand == nil || m.Pool == nil {
		return false
	}
	argv := m.SuperviseCommand(id)
	argv = append(argv[:len(argv)-1], "--release", id)
	log, err := os.OpenFile(filepath.Join(m.Pool.Dir, "release.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return false
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Start() != nil {
		return false
	}
	go cmd.Wait()
	return true
}

// ReleaseWarm removes what warm run id held once it ended: its container, the pool sandbox it
// ran in, its network. It does so under the run's record lock, and not at all if the run is
// active again (`moatc restart` removed all of it already, and made its own anew under the
// same id).
func (m *Manager) ReleaseWarm(ctx context.Context, id string) error {
	release := func() error {
		c, err := m.Client(ctx)
		if err != nil {
			return err
		}
		if _, err := c.RemoveContainer(ctx, "moatc-"+id); err != nil {
			return err
		}
		if err := m.removeSandbox(ctx, id); err != nil {
			return err
		}
		return m.Net.Release(ctx, id)
	}
	if _, err := os.Stat(m.Store.Dir(id)); err != nil {
		return release() // --rm: the record is gone, and so can be no restart
	}
	var rerr error
	errKept := errors.New("nothing to write")
	_, err := m.Store.Update(id, func(r *state.Run) error {
		if !r.Active() {
			rerr = release()
		}
		return errKept
	})
	if err != nil && !errors.Is(err, errKept) {
		if _, serr := os.Stat(m.Store.Dir(id)); serr != nil || errors.Is(err, state.ErrNotFound) {
			return release() // removed meanwhile (--rm)
		}
		return err
	}
	return rerr
}
