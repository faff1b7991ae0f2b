package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/daemon"
	"github.com/moatc/moatc/internal/lockfile"
	"github.com/moatc/moatc/state"
)

// What a build leaves in containerd when its moatc is killed: buildkitd sees the client go,
// cancels the solve and removes the RUN step's container and half-written snapshot itself.
// What stays is BuildKit's cache (finished steps, cache mounts: the next build reuses them,
// BuildKit's GC bounds them) and its temporary leases (label buildkit/lease.temporary), which
// completed builds leave too: some expire after five minutes, but those that pin the views of
// exported layers never do, and buildkitd deletes them only when it starts. Sweep does what
// that start does, once no build is live.

// labelTemporary marks BuildKit's leases that belong to no cache record.
const labelTemporary = "buildkit/lease.temporary"

func (d *Daemon) marksDir() string  { return filepath.Join(d.Dir, "builds") }
func (d *Daemon) buildLock() string { return filepath.Join(d.Dir, "builds.lock") }

// Hold marks a build live until end: builds.lock held shared, which the kernel drops however
// the process ends, and a mark in builds/ named after the process, which stays when it is
// killed, for Abandoned to find. Build holds it; a caller that prepares what the build needs
// (its network) holds it from before that. Holds nest.
func (d *Daemon) Hold() (end func(), err error) {
	if err := os.MkdirAll(d.marksDir(), 0o700); err != nil {
		return nil, fmt.Errorf("marking the build: %w", err)
	}
	unlock, err := lockfile.Flock(d.buildLock(), unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	self := state.Self()
	if self == nil {
		unlock()
		return nil, errors.New("marking the build: cannot read this process's start time")
	}
	f, err := os.CreateTemp(d.marksDir(), fmt.Sprintf("%d-%d-", self.Pid, self.Start))
	if err != nil {
		unlock()
		return nil, fmt.Errorf("marking the build: %w", err)
	}
	f.Close()
	return func() {
		os.Remove(f.Name())
		unlock()
	}, nil
}

// markOwner reads the process out of a mark's name, PID-START-RANDOM.
func markOwner(name string) (*state.Process, bool) {
	f := strings.SplitN(name, "-", 3)
	if len(f) != 3 {
		return nil, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return nil, false
	}
	start, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return nil, false
	}
	return &state.Process{Pid: pid, Start: start}, true
}

// Abandoned reports whether a build's process died before the build ended. It reads one
// directory: cheap enough for every command's reconcile.
func (d *Daemon) Abandoned() bool {
	ents, _ := os.ReadDir(d.marksDir())
	for _, e := range ents {
		if p, ok := markOwner(e.Name()); ok && !p.Alive() {
			return true
		}
	}
	return false
}

// Sweep removes BuildKit's temporary leases (and the views and content only they hold) and
// the marks of killed builds, and returns the leases' ids. It touches nothing while a build
// of any moatc process runs on this buildkitd (the build lock says so) or while another
// buildkitd works in the same containerd namespace (a temporary lease does not say whose it
// is). An idle buildkitd is stopped first, as its leases are only safe to drop when it is
// gone; the next build starts it again. dry lists and changes nothing. A containerd that does
// not answer is not started: there is nothing to sweep then.
func (d *Daemon) Sweep(ctx context.Context, dry bool) ([]string, error) {
	if d.Dir == "" || d.ContainerdAddress == "" || d.Namespace == "" {
		return nil, errors.New("builder: Daemon needs Dir, ContainerdAddress and Namespace")
	}
	if _, err := os.Stat(d.Dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil // no build ever ran here
	}
	var ids []string
	_, err := d.WhenIdle(func() (err error) {
		if !dry {
			d.dropContextDirs()
		}
		ids, err = d.sweep(ctx, dry)
		return err
	})
	return ids, err
}

// contextDirPrefix names the directories a build writes its Dockerfile and context into.
const contextDirPrefix = "ctx-"

// dropContextDirs removes the context directories of builds that were killed (with no build
// live, every one of them is).
func (d *Daemon) dropContextDirs() {
	dirs, _ := filepath.Glob(filepath.Join(d.Dir, contextDirPrefix+"*"))
	for _, dir := range dirs {
		os.RemoveAll(dir)
	}
}

// WhenIdle runs fn while no build of any moatc process runs or starts on this buildkitd (the
// build lock held exclusively), and reports whether it did: not when a build is live.
func (d *Daemon) WhenIdle(fn func() error) (bool, error) {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return false, fmt.Errorf("locking out builds: %w", err)
	}
	unlock, ok, err := tryLock(d.buildLock())
	if err != nil || !ok {
		return false, err
	}
	defer unlock()
	return true, fn()
}

// sweep is Sweep under the build lock.
func (d *Daemon) sweep(ctx context.Context, dry bool) ([]string, error) {
	sock := strings.TrimPrefix(d.ContainerdAddress, "unix://")
	if !daemon.Answering(sock) {
		return nil, nil // the marks stay: the next command tries again
	}
	if d.sharedNamespace() {
		if !dry {
			d.dropMarks() // nothing here is ever this home's to remove
		}
		return nil, nil
	}
	c, err := containerd.New(sock, containerd.WithDefaultNamespace(d.Namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd on %s: %w", d.ContainerdAddress, err)
	}
	defer c.Close()
	ls, err := c.LeasesService().List(ctx, "labels."+strconv.Quote(labelTemporary))
	if err != nil {
		return nil, fmt.Errorf("listing BuildKit's leases: %w", err)
	}
	ids := []string{}
	for _, l := range ls {
		ids = append(ids, l.ID)
	}
	sort.Strings(ids)
	if dry {
		return ids, nil
	}
	if len(ls) > 0 && d.Answering() {
		if err := d.Stop(ctx, 10*time.Second); err != nil {
			return nil, fmt.Errorf("stopping the idle buildkitd: %w", err)
		}
	}
	for i, l := range ls {
		var opts []leases.DeleteOpt
		if i == len(ls)-1 {
			// containerd collects what the leases held before Sweep returns.
			opts = append(opts, leases.SynchronousDelete)
		}
		if err := c.LeasesService().Delete(ctx, l, opts...); err != nil && !errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("removing BuildKit's lease %s: %w", l.ID, err)
		}
	}
	d.dropMarks()
	return ids, nil
}

// dropMarks removes the marks of builds. Call it under the build lock held exclusively: every
// mark left then is a dead build's.
func (d *Daemon) dropMarks() {
	ents, _ := os.ReadDir(d.marksDir())
	for _, e := range ents {
		os.Remove(filepath.Join(d.marksDir(), e.Name()))
	}
}

// sharedNamespace reports whether another buildkitd (not on d's socket) has its containerd
// worker in d's containerd namespace: homes sharing one containerd with --address.
func (d *Daemon) sharedNamespace() bool {
	want := strings.TrimPrefix(d.ContainerdAddress, "unix://")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) != "buildkitd" {
			continue
		}
		flag := map[string]string{}
		for i := 1; i+1 < len(args); i++ {
			if strings.HasPrefix(args[i], "--") {
				flag[args[i]] = args[i+1]
			}
		}
		if strings.TrimPrefix(flag["--containerd-worker-addr"], "unix://") == want &&
			flag["--containerd-worker-namespace"] == d.Namespace && flag["--addr"] != d.Address() {
			return true
		}
	}
	return false
}

// tryLock takes path exclusively if no one holds it; ok is false when someone does.
func tryLock(path string) (unlock func(), ok bool, err error) {
	unlock, err = lockfile.Flock(path, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return nil, false, nil
	}
	return unlock, err == nil, err
}
