package ctrd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ReadRootfsFile reads the first of paths that is a regular file in the snapshot key (a
// container's rootfs), at most max bytes. It returns "" and no error when none is there.
// Paths resolve inside the rootfs (an image's symlink to /etc/shadow names the rootfs's own
// file, never the host's): the image is not trusted.
func (c *Client) ReadRootfsFile(ctx context.Context, snapshotter, key string, paths []string, max int64) (string, []byte, error) {
	mounts, err := c.SnapshotService(snapshotter).Mounts(ctx, key)
	if err != nil {
		return "", nil, fmt.Errorf("reading the rootfs of %s: %w", key, err)
	}
	var found string
	var data []byte
	err = mount.WithReadonlyTempMount(ctx, mounts, func(root string) (err error) {
		found, data, err = readInRoot(root, paths, max)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("reading the rootfs of %s: %w", key, err)
	}
	return found, data, nil
}

// readInRoot reads the first of paths that is a regular file under root, resolving every
// path and link inside root (RESOLVE_IN_ROOT): an absolute link or ../ names root's own
// files. Nothing but a regular file is opened for reading (a FIFO would block).
func readInRoot(root string, paths []string, max int64) (string, []byte, error) {
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	defer unix.Close(rootFd)
	for _, p := range paths {
		fd, err := unix.Openat2(rootFd, p, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
		})
		if err != nil {
			continue
		}
		f := os.NewFile(uintptr(fd), p)
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			f.Close()
			continue
		}
		data, err := io.ReadAll(io.LimitReader(f, max+1))
		f.Close()
		if err != nil {
			return "", nil, err
		}
		if int64(len(data)) > max {
			return "", nil, fmt.Errorf("%s is larger than %d bytes", p, max)
		}
		return p, data, nil
	}
	return "", nil, nil
}

// AddToSpec adds environment variables and mounts to a created container's spec; the task
// made after it sees them.
func (c *Client) AddToSpec(ctx context.Context, ctr containerd.Container, env []string, mounts []specs.Mount) error {
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return fmt.Errorf("updating container %s: %w", ctr.ID(), err)
	}
	if spec.Process == nil {
		return errors.New("updating container " + ctr.ID() + ": its spec has no process")
	}
	var opts []oci.SpecOpts
	if len(env) > 0 {
		opts = append(opts, oci.WithEnv(env))
	}
	if len(mounts) > 0 {
		opts = append(opts, oci.WithMounts(mounts))
	}
	update := func(ctx context.Context, client *containerd.Client, cs *containers.Container) error {
		return containerd.WithSpec(spec, opts...)(ctx, client, cs)
	}
	if err := ctr.Update(ctx, update); err != nil {
		return fmt.Errorf("updating container %s: %w", ctr.ID(), err)
	}
	return nil
}
