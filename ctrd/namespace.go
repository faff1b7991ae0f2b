package ctrd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// DestroyNamespace removes the client's namespace and everything in it: containers (their
// tasks and snapshots), images, leases, then whatever content and snapshots (of the given
// snapshotters) are still left, and the namespace. It is for namespaces made for one use
// (a docker:dind engine's), never moatc's own.
func (c *Client) DestroyNamespace(ctx context.Context, snapshotters ...string) error {
	if c.Namespace == "" || c.Namespace == DefaultNamespace {
		return fmt.Errorf("destroying namespace %q: moatc's own namespace is never destroyed", c.Namespace)
	}
	var errs []error
	ctrs, err := c.Containers(ctx)
	if err != nil {
		return fmt.Errorf("destroying namespace %s: listing containers: %w", c.Namespace, err)
	}
	for _, ctr := range ctrs {
		if _, err := c.RemoveContainer(ctx, ctr.ID()); err != nil {
			errs = append(errs, err)
		}
	}
	is := c.ImageService()
	imgs, err := is.List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing images: %w", err))
	}
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			opts = append(opts, images.SynchronousDelete()) // collect once, after the last
		}
		if err := is.Delete(ctx, img.Name, opts...); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing image %s: %w", img.Name, err))
		}
	}
	ls := c.LeasesService()
	all, err := ls.List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing leases: %w", err))
	}
	for _, l := range all {
		if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing lease %s: %w", l.ID, err))
		}
	}
	// Left after the collection: content and snapshots nothing referenced but that were
	// never collected (a label of their own keeps them, or a crash left them).
	cs := c.ContentStore()
	var blobs []content.Info
	if err := cs.Walk(ctx, func(i content.Info) error { blobs = append(blobs, i); return nil }); err != nil {
		errs = append(errs, fmt.Errorf("listing content: %w", err))
	}
	for _, b := range blobs {
		if err := cs.Delete(ctx, b.Digest); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing blob %s: %w", b.Digest, err))
		}
	}
	for _, sn := range snapshotters {
		errs = append(errs, removeSnapshots(ctx, c.SnapshotService(sn))...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("destroying namespace %s: %w", c.Namespace, errors.Join(errs...))
	}
	if err := c.NamespaceService().Delete(ctx, c.Namespace); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("destroying namespace %s: %w", c.Namespace, err)
	}
	RemoveNamespaceDirs(c.Namespace)
	return nil
}

// RemoveNamespaceDirs removes what the runtimes leave on the host for a namespace once its
// containers are gone: its cgroups (containerd's default path, /NAMESPACE/ID; empty ones
// only, with rmdir, so one still holding a process stays) and runc's state root for it.
func RemoveNamespaceDirs(ns string) {
	if ns == "" || ns == DefaultNamespace || strings.ContainsAny(ns, "/*?[") {
		return
	}
	cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns))
	for _, d := range append(cgs, filepath.Join("/sys/fs/cgroup", ns)) {
		if ents, err := os.ReadDir(d); err == nil {
			for _, e := range ents {
				if e.IsDir() {
					os.Remove(filepath.Join(d, e.Name()))
				}
			}
		}
		os.Remove(d)
	}
	os.Remove(filepath.Join("/run/containerd/runc", ns))
}

// removeSnapshots removes every snapshot, children before their parents.
func removeSnapshots(ctx context.Context, sn snapshots.Snapshotter) []error {
	for round := 0; round < 128; round++ {
		parents := map[string]bool{}
		var names []string
		if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			names = append(names, i.Name)
			if i.Parent != "" {
				parents[i.Parent] = true
			}
			return nil
		}); err != nil {
			if errdefs.IsNotFound(err) {
				return nil
			}
			return []error{fmt.Errorf("listing snapshots: %w", err)}
		}
		if len(names) == 0 {
			return nil
		}
		var errs []error
		for _, n := range names {
			if parents[n] {
				continue
			}
			if err := sn.Remove(ctx, n); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("removing snapshot %s: %w", n, err))
			}
		}
		if len(errs) > 0 {
			return errs
		}
	}
	return []error{errors.New("removing snapshots: they keep coming back")}
}
