package run

import (
	"context"
	"fmt"
	"time"

	"github.com/moatc/moatc/cni"
)

// StopStack stops what moatc started on this host for its home: buildkitd first (it works on
// containerd's store), then the managed containerd; then it removes the sandboxes' leftovers
// and the build network. Active runs make it refuse unless force: their tasks run on in their
// shims, and the next moatc command follows them again.
func (m *Manager) StopStack(ctx context.Context, force bool) error {
	runs, err := m.Store.List()
	if err != nil {
		return err
	}
	for _, r := range runs {
		if r.Active() && !force {
			return fmt.Errorf("run %s is active: stop it first (`moatc stop %s`), or use `moatc system stop --force`", r.Name, r.Name)
		}
	}
	if err := m.StopBuilder(ctx, 10*time.Second); err != nil {
		return err
	}
	if d := m.Conn.Daemon; d != nil {
		if err := d.Stop(ctx, 10*time.Second); err != nil {
			return err
		}
	}
	if _, err := m.SweepSandboxes(ctx, false); err != nil {
		return err
	}
	if err := m.PruneSandboxRoot(); err != nil {
		return err
	}
	return cni.Prune(ctx)
}
