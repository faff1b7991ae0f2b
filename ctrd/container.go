package ctrd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Container describes a container moatc creates.
type Container struct {
	ID          string
	RunID       string
	Role        string
	Image       containerd.Image
	Snapshotter string
	Runtime     Runtime
	Args        []string
	Env         []string
	Cwd         string
	User        string // uid[:gid]
	Mounts      []specs.Mount
	TTY         bool
	Hostname    string
	Memory      int64    // bytes; 0 is unlimited
	CPUs        float64  // 0 is unlimited
	Pids        int64    // the most processes and threads at once; 0 is unlimited
	NetNS       string   // an existing network namespace; empty means a new, empty one
	CapAdd      []string // capabilities beyond Docker's default set, e.g. CAP_NET_ADMIN
	CapDrop     []string // capabilities of the default set taken away (before CapAdd)
	ReadOnly    bool     // the rootfs read-only (mounts keep their own modes)
	// Init, when set, is a host init binary (tini) mounted read-only at InitPath and run as
	// PID 1 with Args as its child: it forwards signals and reaps zombies.
	Init string
	// Labels are the person's own container labels; moatc's (LabelRunID, LabelRole) win.
	Labels map[string]string
	// Rootless: containerd runs in a user namespace with no cgroup of its own (cgroup v1,
	// nothing delegated). The spec then names no cgroup and sets no cgroup limit: runc 1.1
	// fails on either there. Memory and CPUs cannot be honoured and are refused; Pids is
	// kept where it needs no cgroup (gVisor's RLIMIT_NPROC) and dropped under runc.
	Rootless bool
	// Sandbox, under gVisor, is a booted sandbox (a warm pool's, see CreateSandbox) that this
	// container is started in, as its second container, instead of booting one of its own.
	Sandbox string

	// users are the container's passwd and group once read (CreateContainer sets it).
	users *userFiles
}

// InitPath is where Container.Init is mounted in the container.
const InitPath = "/sbin/moatc-init"

// CreateContainer creates the container and its rootfs snapshot, both labelled with the run.
func (c *Client) CreateContainer(ctx context.Context, s Container) (containerd.Container, error) {
	s.users = &userFiles{}
	spec, err := s.specOpts()
	if err != nil {
		return nil, err
	}
	rtOpts, err := s.Runtime.ContainerOpts()
	if err != nil {
		return nil, err
	}
	labels := map[string]string{LabelRunID: s.RunID, LabelRole: s.Role}
	ctrLabels := map[string]string{}
	for k, v := range s.Labels {
		ctrLabels[k] = v
	}
	for k, v := range labels {
		ctrLabels[k] = v
	}
	opts := append([]containerd.NewContainerOpts{
		containerd.WithContainerLabels(ctrLabels),
		containerd.WithImage(s.Image),
		containerd.WithSnapshotter(s.Snapshotter),
		containerd.WithNewSnapshot(s.ID, s.Image, snapshots.WithLabels(labels)),
		containerd.WithNewSpec(append([]oci.SpecOpts{checkUserFiles(s.Image, s.users), oci.WithImageConfig(s.Image)}, spec...)...),
	}, rtOpts...)
	lctx, done, err := c.OwnedLease(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	ctr, err := c.NewContainer(lctx, s.ID, opts...)
	if err != nil {
		// WithNewSnapshot may have made the snapshot before the container failed.
		c.SnapshotService(s.Snapshotter).Remove(ctx, s.ID)
		if errdefs.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating container %s: it already exists (a leftover? `moatc clean` removes it): %w", s.ID, err)
		}
		return nil, fmt.Errorf("creating container %s: %w", s.ID, err)
	}
	return ctr, nil
}

// specOpts are the edits to containerd's default spec, after the image's config.
func (s Container) specOpts() ([]oci.SpecOpts, error) {
	if g, ok := s.Runtime.(GVisor); ok && g.Rootless != s.Rootless {
		// A programming error: runsc would fail on cgroups, or drop the limits unasked.
		return nil, fmt.Errorf("creating container %s: the gVisor runtime has Rootless %v and the container %v", s.ID, g.Rootless, s.Rootless)
	}
	if s.Rootless {
		if err := s.checkRootless(); err != nil {
			return nil, err
		}
	}
	args, mounts := s.Args, s.Mounts
	if s.Init != "" {
		args = append([]string{InitPath, "--"}, args...)
		mounts = append(append([]specs.Mount(nil), mounts...), specs.Mount{Destination: InitPath, Type: "bind", Source: s.Init,
			Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	}
	spec := []oci.SpecOpts{
		oci.WithProcessArgs(args...),
		oci.WithEnv(s.Env),
		oci.WithMounts(mounts),
		oci.WithHostname(s.Hostname),
	}
	if s.ReadOnly {
		spec = append(spec, oci.WithRootFSReadonly())
	}
	if s.Cwd != "" {
		spec = append(spec, oci.WithProcessCwd(s.Cwd))
	}
	if s.User != "" {
		spec = append(spec, withUser(s.User, s.users))
	}
	if s.TTY {
		spec = append(spec, oci.WithTTY)
	}
	if s.NetNS != "" {
		spec = append(spec, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: s.NetNS}))
	}
	if s.Memory > 0 {
		spec = append(spec, oci.WithMemoryLimit(uint64(s.Memory)))
	}
	if s.CPUs > 0 {
		const period = 100000
		spec = append(spec, oci.WithCPUCFS(int64(s.CPUs*period), period))
	}
	if len(s.CapDrop) > 0 {
		spec = append(spec, oci.WithDroppedCapabilities(s.CapDrop))
	}
	if len(s.CapAdd) > 0 {
		// Before hardening: the seccomp profile opens the syscalls of the capabilities held.
		spec = append(spec, oci.WithAddedCapabilities(s.CapAdd))
	}
	spec = append(spec, hardening()...)
	spec = append(spec, s.Runtime.SpecOpts(s)...)
	if s.Rootless {
		spec = append(spec, withoutCgroup)
	}
	return spec, nil
}

// checkRootless refuses the limits a rootless containerd cannot apply.
func (s Container) checkRootless() error {
	var what []string
	if s.Memory > 0 {
		what = append(what, "a memory limit (--memory, container.memory)")
	}
	if s.CPUs > 0 {
		what = append(what, "a CPU limit (--cpus, container.cpus)")
	}
	if len(what) == 0 {
		return nil
	}
	return fmt.Errorf("creating container %s: %s needs cgroups, which rootless containerd cannot use on this host (none are delegated to the user): run without it",
		s.ID, strings.Join(what, " and "))
}

// withoutCgroup leaves the container in containerd's own cgroup with no cgroup limit:
// rootless runc on cgroup v1 works only with no cgroups path and no resources. Device rules
// stay (runc ignores them rootless; gVisor's Sentry enforces its own device policy).
func withoutCgroup(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	if s.Linux == nil {
		return nil
	}
	s.Linux.CgroupsPath = ""
	if r := s.Linux.Resources; r != nil {
		s.Linux.Resources = &specs.LinuxResources{Devices: r.Devices}
	}
	return nil
}

// Removal says what RemoveContainer found.
type Removal struct {
	Existed    bool    // there was a container
	WasRunning bool    // its task was still running and had to be killed
	Exit       *uint32 // the task's exit status, when it had ended by itself
}

// RemoveContainer kills and deletes the container's task, then the container and its
// snapshot. A container or task that is already gone is not an error.
func (c *Client) RemoveContainer(ctx context.Context, id string) (Removal, error) {
	var rm Removal
	// A shim stuck on a sandbox that never started must not hang moatc forever.
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	ctr, err := c.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return rm, nil
	}
	if err != nil {
		return rm, fmt.Errorf("removing container %s: %w", id, err)
	}
	rm.Existed = true
	task, err := ctr.Task(ctx, nil)
	switch {
	case err == nil:
		st, err := task.Status(ctx)
		if err == nil && st.Status == containerd.Stopped {
			code := st.ExitStatus
			rm.Exit = &code
		} else if err == nil {
			// A task created but never started ran nothing of the workload.
			rm.WasRunning = st.Status != containerd.Created
			if wait, werr := task.Wait(ctx); werr == nil {
				// runsc cannot signal a container that was created but never started
				// ("cannot signal container in state created"), and a created task cannot
				// be deleted either: its sandbox is killed from the host instead, and the
				// shim reaps it like any sandbox exit.
				if st.Status != containerd.Created || !killTaskProcess(task.Pid(), id) {
					KillAll(ctx, task)
				}
				waitStopped(ctx, task, wait, 10*time.Second)
			}
		}
		// Killed and waited for above: a plain delete (WithProcessKill would wait again, unbounded).
		if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
			return rm, fmt.Errorf("deleting task of %s: %w", id, err)
		}
	case !errdefs.IsNotFound(err):
		return rm, fmt.Errorf("loading task of %s: %w", id, err)
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return rm, fmt.Errorf("deleting container %s: %w", id, err)
	}
	return rm, nil
}

// killTaskProcess kills the process of container id's task if it is a gVisor sandbox (whose
// command line ends with the id), and says whether it did.
func killTaskProcess(pid uint32, id string) bool {
	if pid == 0 {
		return false
	}
	return killIf(int(pid), func(argv []string) bool { return len(argv) > 1 && argv[len(argv)-1] == id })
}

// waitStopped waits up to d for the task to end: its exit, or a status saying so (the
// shim may record the end of a task that never started without publishing it to waiters).
func waitStopped(ctx context.Context, task containerd.Task, wait <-chan containerd.ExitStatus, d time.Duration) {
	deadline := time.After(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-wait:
			return
		case <-deadline:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
			if st, err := task.Status(ctx); err == nil && st.Status == containerd.Stopped {
				return
			}
		}
	}
}

// Owned lists moatc's containers (by label) and the run each belongs to.
func (c *Client) Owned(ctx context.Context) (map[string]string, error) {
	ctrs, err := c.Containers(ctx, "labels."+fmt.Sprintf("%q", LabelRunID))
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	out := map[string]string{}
	for _, ctr := range ctrs {
		l, err := ctr.Labels(ctx)
		if err != nil {
			continue
		}
		out[ctr.ID()] = l[LabelRunID]
	}
	return out, nil
}

// OwnedSnapshots lists snapshots that carry a run label, by name, with their run.
func (c *Client) OwnedSnapshots(ctx context.Context, snapshotter string) (map[string]string, error) {
	out := map[string]string{}
	err := c.SnapshotService(snapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if id, ok := info.Labels[LabelRunID]; ok {
			out[info.Name] = id
		}
		return nil
	}, "labels."+fmt.Sprintf("%q", LabelRunID))
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("listing snapshots: %w", err)
	}
	return out, nil
}

// RemoveSnapshot removes a snapshot; a missing one is not an error.
func (c *Client) RemoveSnapshot(ctx context.Context, snapshotter, name string) error {
	if err := c.SnapshotService(snapshotter).Remove(ctx, name); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing snapshot %s: %w", name, err)
	}
	return nil
}
