package engine

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
)

// copyUp fills each empty volume of a new container from the image's files at its mount
// path, as Docker does (not with nocopy, nor for a volume subpath): the container's snapshot
// is mounted read-only and read through an os.Root (no link of the image leads out of it);
// links are copied as links, devices and fifos are left out, modes and owners are kept, the
// mount point's own too (a database image's data directory keeps its owner).
func (e *Engine) copyUp(ctx context.Context, cc containerd.Container, ms []ctrMount) error {
	var todo []ctrMount
	for _, m := range ms {
		if m.Kind == kindVolume && !m.NoCopy && m.Subpath == "" && dirEmpty(e.volumeData(m.Source)) {
			todo = append(todo, m)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	info, err := cc.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return fmt.Errorf("filling the container's volumes from its image: %w", err)
	}
	mounts, err := e.cfg.Client.SnapshotService(info.Snapshotter).Mounts(ctx, info.SnapshotKey)
	if err != nil {
		return fmt.Errorf("filling the container's volumes from its image: %w", err)
	}
	return mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
		r, err := os.OpenRoot(root)
		if err != nil {
			return err
		}
		defer r.Close()
		for _, m := range todo {
			src := strings.TrimPrefix(path.Clean("/"+m.Dest), "/")
			if fi, err := r.Stat(src); err != nil || !fi.IsDir() {
				continue // nothing there to copy
			}
			dst := e.volumeData(m.Source)
			if err := copyTree(r, src, dst); err != nil {
				clearDir(dst)
				return fmt.Errorf("filling volume %s from the image's %s: %w", m.Source, m.Dest, err)
			}
		}
		return nil
	})
}

// copyTree copies directory src of root r into the existing directory dst.
func copyTree(r *os.Root, src, dst string) error {
	out, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	return fs.WalkDir(r.FS(), src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, src), "/")
		name := rel
		if rel == "" {
			name = "."
		}
		switch {
		case d.IsDir():
			if rel != "" {
				if err := out.Mkdir(rel, 0o700); err != nil {
					return err
				}
			}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := r.Readlink(p)
			if err != nil {
				return err
			}
			if err := out.Symlink(target, rel); err != nil {
				return err
			}
		case d.Type().IsRegular():
			if err := copyFile(r, p, out, rel); err != nil {
				return err
			}
		default:
			return nil // devices, fifos, sockets: not a volume's content
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			out.Lchown(name, int(st.Uid), int(st.Gid)) // as root; rootless keeps its own
		}
		if d.Type()&fs.ModeSymlink == 0 {
			return out.Chmod(name, fi.Mode()&(fs.ModePerm|fs.ModeSetgid|fs.ModeSticky))
		}
		return nil
	})
}

func copyFile(r *os.Root, src string, out *os.Root, dst string) error {
	in, err := r.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := out.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, in)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// dirEmpty reports whether dir is an empty directory.
func dirEmpty(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}

// clearDir removes what is in dir, keeping dir.
func clearDir(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}
