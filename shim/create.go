package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	task "github.com/containerd/containerd/api/runtime/task/v2"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// initPidFile is where `runsc create`, run by gVisor's shim, writes the
// sandbox's pid in the bundle (proc.Init.Create).
const initPidFile = "init.pid"

// createFailed handles a failed Create of gVisor's task service, for container
// r (root: the root container of its sandbox). It returns what Create returns.
//
// gVisor's Create registers the container (its sandbox is then up and its
// task complete), then, as its last step, loads the sandbox's cgroup and adds
// it to its OOM monitor, and fails the Create if either fails. Under a
// rootless containerd on cgroup v1 with no cgroup delegated (runsc with
// ignore-cgroups), the sandbox stays in a cgroup the user cannot write, and
// opening its memory cgroup's cgroup.event_control fails with EACCES. The
// containerd runc shim only logs that failure; so does this shim: the
// container runs, without OOM events (there is no memory limit of its own to
// hit then). Any other failure stands, and the sandbox is discarded first:
// left running, it would keep the shim, runsc's gofer and the sandbox alive
// after containerd gave up on the task.
func (s *service) createFailed(ctx context.Context, r *task.CreateTaskRequest, root bool, createErr error) (*task.CreateTaskResponse, error) {
	st, err := s.TaskServiceExt.State(ctx, &task.StateRequest{ID: r.ID})
	registered := err == nil && st.Pid > 0
	if registered && cgroupMonitorFailed(createErr) {
		log.G(ctx).WithError(createErr).WithField("id", r.ID).
			Warn("runsc shim: cannot watch the sandbox's memory cgroup (rootless, with no cgroup delegated?); the container runs without OOM events")
		return &task.CreateTaskResponse{Pid: st.Pid}, nil
	}
	if root {
		s.discardSandbox(ctx, r, registered)
	}
	return nil, createErr
}

// cgroupMonitorFailed reports whether err is gVisor's Create failing in its
// last step, the OOM monitoring of the sandbox's cgroup (its messages in
// pkg/shim/v1/runsc/service.go, CreateWithFSRestore).
func cgroupMonitorFailed(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "add cg to OOM monitor: ") || strings.Contains(msg, "loading cgroup for ")
}

// discardSandbox ends the sandbox of a root container whose Create failed
// after `runsc create` succeeded. runsc cannot signal a container that was
// never started ("cannot signal container in state created"), and gVisor's
// Delete waits for the container's output to end, which the live sandbox
// holds open: containerd's Delete after the failed Create would time out, and
// the shim, the gofer and the sandbox would be left running. So the sandbox
// (this shim's child: `runsc create` has exited and the shim is its
// subreaper) is killed from here, the gofer ends with it, and a task gVisor
// registered is deleted (`runsc delete`, the rootfs unmounted). A task it did
// not register is cleaned up by the delete command (gVisor's Stop: `runsc
// delete --force`) that containerd runs when the shim exits.
func (s *service) discardSandbox(ctx context.Context, r *task.CreateTaskRequest, registered bool) {
	pid, err := runc.ReadPidFile(filepath.Join(r.Bundle, initPidFile))
	if err != nil || pid <= 0 {
		return // runsc create failed: it cleaned up after itself
	}
	// Only our own child: the pid file may outlive its process, and the pid
	// be reused by another.
	if ppid, err := parentOf(pid); err == nil && ppid == os.Getpid() {
		log.G(ctx).WithField("id", r.ID).Infof("runsc shim: create failed; killing its sandbox %d", pid)
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			log.G(ctx).WithError(err).WithField("id", r.ID).Warn("runsc shim: killing the sandbox of a failed create")
		}
	}
	if registered {
		if _, err := s.TaskServiceExt.Delete(ctx, &task.DeleteRequest{ID: r.ID}); err != nil {
			log.G(ctx).WithError(err).WithField("id", r.ID).Warn("runsc shim: deleting the task of a failed create")
		}
	}
}
