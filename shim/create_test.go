package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	errgrpc "github.com/containerd/errdefs/pkg/errgrpc"
)

func TestCgroupMonitorFailed(t *testing.T) {
	// As gVisor's Create returns them through its shim redirector (errgrpc.ToGRPC).
	for msg, want := range map[string]bool{
		"add cg to OOM monitor: open /sys/fs/cgroup/memory/x/cgroup.event_control: permission denied": true,
		"loading cgroup for 4242: cgroups: cgroup deleted":                                            true,
		"failed to open stdin fifo /run/x-stdin: no such file or directory":                           false,
		"OCI runtime create failed: creating container: cannot set up cgroup":                         false,
	} {
		if got := cgroupMonitorFailed(errgrpc.ToGRPC(errors.New(msg))); got != want {
			t.Errorf("%q: %v, want %v", msg, got, want)
		}
	}
}

// missingFIFOs is task IO whose FIFOs do not exist: gVisor's Create fails
// opening the stdin FIFO, after `runsc create` has started the sandbox.
type missingFIFOs struct{}

func (missingFIFOs) Config() cio.Config {
	return cio.Config{Stdin: "/nonexistent/stdin", Stdout: "/nonexistent/stdout", Stderr: "/nonexistent/stderr"}
}
func (missingFIFOs) Cancel()      {}
func (missingFIFOs) Wait()        {}
func (missingFIFOs) Close() error { return nil }

// TestFailedCreateLeavesNothing: a Create that fails once the sandbox is up
// leaves no shim, gofer or sandbox behind, and fails at once.
func TestFailedCreateLeavesNothing(t *testing.T) {
	s := startStack(t)
	id := "failed-create"
	c := s.container(t, id, oci.WithProcessArgs("sleep", "60"))
	defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)
	began := time.Now()
	tk, err := c.NewTask(s.ctx, func(string) (cio.IO, error) { return missingFIFOs{}, nil })
	if err == nil {
		tk.Delete(s.ctx, containerd.WithProcessKill)
		t.Fatal("task created with a missing stdin FIFO")
	}
	took := time.Since(began)
	t.Logf("create failed in %v: %v", took, err)
	if !strings.Contains(err.Error(), "stdin fifo") {
		t.Errorf("not the expected failure: %v", err)
	}
	if took > 10*time.Second {
		t.Errorf("the failed create took %v", took)
	}
	ours := func(exe, cmdline string) bool {
		return strings.Contains(cmdline, "\x00"+id+"\x00") || strings.Contains(cmdline, "/"+id+"/")
	}
	deadline := time.Now().Add(5 * time.Second)
	for left := s.processes(ours); len(left) > 0; left = s.processes(ours) {
		if time.Now().After(deadline) {
			t.Fatalf("left running after the failed create: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
