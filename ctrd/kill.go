package ctrd

import (
	"context"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
)

// KillAll sends SIGKILL to every process of the task. runc finds them through the task's
// cgroup; a rootless task on cgroup v1 has none and runc refuses, so then its init gets the
// signal: the kernel ends every process of a pid namespace whose init dies.
func KillAll(ctx context.Context, task containerd.Task) error {
	if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err == nil {
		return nil
	}
	return task.Kill(ctx, syscall.SIGKILL)
}
