package ctrd

import (
	"context"
	"fmt"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// PausePath is where a pool sandbox's idle process (moatc-pause) is mounted.
const PausePath = "/moatc-pause"

// CreateSandbox creates and starts a warm pool's idle gVisor sandbox: the container s, with
// no image (its root is the empty directory rootfs) and moatc-pause (the host file pause) as
// its only process. A run later starts its own container in it (Container.Sandbox). Its spec
// is made as a run's is (hardening, limits, network namespace), so the sandbox a run gets is
// the one a cold run of the same limits would boot. On failure nothing is left.
func (c *Client) CreateSandbox(ctx context.Context, s Container, rootfs, pause string) (err error) {
	if _, ok := s.Runtime.(GVisor); !ok {
		return fmt.Errorf("creating sandbox %s: only gVisor runs in pool sandboxes", s.ID)
	}
	s.Args = []string{PausePath}
	s.Mounts = append(append([]specs.Mount(nil), s.Mounts...), specs.Mount{Destination: PausePath, Type: "bind", Source: pause,
		Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	s.ReadOnly = true
	// For SetHostname's sethostname alone: the sandbox's root container runs only moatc-pause,
	// and a run's container is another one, with its own capabilities and PID namespace.
	s.CapAdd = []string{"CAP_SYS_ADMIN"}
	spec, err := s.specOpts()
	if err != nil {
		return err
	}
	rtOpts, err := s.Runtime.ContainerOpts()
	if err != nil {
		return err
	}
	opts := append([]containerd.NewContainerOpts{
		containerd.WithContainerLabels(map[string]string{LabelRunID: s.RunID, LabelRole: s.Role}),
		containerd.WithNewSpec(append([]oci.SpecOpts{oci.WithRootFSPath(rootfs)}, spec...)...),
	}, rtOpts...)
	ctr, err := c.NewContainer(ctx, s.ID, opts...)
	if err != nil {
		return fmt.Errorf("creating sandbox %s: %w", s.ID, err)
	}
	defer func() {
		if err != nil {
			c.RemoveContainer(context.WithoutCancel(ctx), s.ID)
		}
	}()
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		return fmt.Errorf("booting sandbox %s: %w", s.ID, err)
	}
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("starting sandbox %s: %w", s.ID, err)
	}
	return nil
}

// SetHostname sets the hostname of pool sandbox id (its UTS namespace is the one every
// container in it sees) by running moatc-pause's hostname command in it.
func (c *Client) SetHostname(ctx context.Context, id, hostname string) error {
	fail := func(err error) error { return fmt.Errorf("setting the hostname of sandbox %s: %w", id, err) }
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return fail(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return fail(err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return fail(err)
	}
	p := *spec.Process
	p.Args = []string{PausePath, "hostname", hostname}
	p.Terminal = false
	proc, err := task.Exec(ctx, "hostname", &p, cio.NullIO)
	if err != nil {
		return fail(err)
	}
	defer proc.Delete(context.WithoutCancel(ctx))
	wait, err := proc.Wait(ctx)
	if err != nil {
		return fail(err)
	}
	if err := proc.Start(ctx); err != nil {
		return fail(err)
	}
	select {
	case st := <-wait:
		if st.ExitCode() != 0 {
			return fail(fmt.Errorf("moatc-pause hostname exited with %d", st.ExitCode()))
		}
	case <-ctx.Done():
		proc.Kill(context.WithoutCancel(ctx), syscall.SIGKILL)
		return fail(ctx.Err())
	}
	return nil
}

// SandboxRunning reports whether container id's task is running.
func (c *Client) SandboxRunning(ctx context.Context, id string) bool {
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return false
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return false
	}
	st, err := task.Status(ctx)
	return err == nil && st.Status == containerd.Running
}

// SandboxExit returns the exit status of container id's task once it has stopped: how a
// pool sandbox ended when the whole sandbox was killed (the OOM killer), which its second
// container only sees as 128.
func (c *Client) SandboxExit(ctx context.Context, id string) (uint32, bool) {
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return 0, false
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		return 0, false
	}
	// The sandbox's end is published a moment after its container's.
	for i := 0; i < 20; i++ {
		if st, err := task.Status(ctx); err == nil && st.Status == containerd.Stopped {
			return st.ExitStatus, true
		}
		time.Sleep(25 * time.Millisecond)
	}
	return 0, false
}
