package engine

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
)

// A copy from or into a stopped container holds it stopped: no start or removal meanwhile,
// and no copy through the mounted rootfs once it runs (the workload could change the tree the
// engine walks as root).
func TestCopyHoldsTheContainerStopped(t *testing.T) {
	e := &Engine{cfg: Config{}}
	c := &ctr{rec: record{ID: "abc", Name: "quiet", State: state{Status: container.StateExited}, Config: &container.Config{}}}
	c.copying = 1
	if err := e.startContainer(context.Background(), c); !errdefs.IsConflict(err) {
		t.Errorf("start during a copy: %v", err)
	}
	if err := e.removeContainer(context.Background(), c, true); !errdefs.IsConflict(err) {
		t.Errorf("rm -f during a copy: %v", err)
	}
	c.copying = 0
	c.rec.State.Status = container.StateRunning
	called := false
	err := e.withRootfs(context.Background(), c, true, func(string) error { called = true; return nil })
	if !errdefs.IsConflict(err) || called {
		t.Errorf("a copy through the rootfs of a running container: %v (fn called: %v)", err, called)
	}
}
