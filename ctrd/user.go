package ctrd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// userFileMax bounds what is read of an image's /etc/passwd or /etc/group.
const userFileMax = 4 << 20

// WithUser sets the process's user from spec ("name", "uid", "name:group", "uid:gid"), as
// Docker does, against the container's own /etc/passwd and /etc/group in its snapshot. Unlike
// containerd's oci.WithUser, which opens them as they come, an image's files are opened
// through an os.Root (no link out of the root file system) and only when they are regular
// files: a FIFO at /etc/passwd would block the open for ever, holding the temporary mount.
func WithUser(spec string) oci.SpecOpts {
	return withUser(spec, nil)
}

// withUser is WithUser reading the files through files (nil: its own).
func withUser(spec string, files *userFiles) oci.SpecOpts {
	if files == nil {
		files = &userFiles{}
	}
	return func(ctx context.Context, client oci.Client, c *containers.Container, s *specs.Spec) error {
		passwd, group, err := files.get(ctx, client, c)
		if err != nil {
			return err
		}
		eu, err := user.GetExecUser(spec, &user.ExecUser{Home: "/"}, bytes.NewReader(passwd), bytes.NewReader(group))
		if err != nil {
			return fmt.Errorf("user %q: %w", spec, err)
		}
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		s.Process.User = specs.User{UID: uint32(eu.Uid), GID: uint32(eu.Gid)}
		for _, g := range eu.Sgids {
			s.Process.User.AdditionalGids = append(s.Process.User.AdditionalGids, uint32(g))
		}
		return nil
	}
}

// userFiles are a container's /etc/passwd and /etc/group, read once from its snapshot for all
// the spec options of one create that need them (checkUserFiles, withUser).
type userFiles struct {
	read          bool
	passwd, group []byte
}

func (u *userFiles) get(ctx context.Context, client oci.Client, c *containers.Container) ([]byte, []byte, error) {
	if !u.read {
		p, g, err := readUserFiles(ctx, client, c)
		if err != nil {
			return nil, nil, err
		}
		u.passwd, u.group, u.read = p, g, true
	}
	return u.passwd, u.group, nil
}

// readUserFiles reads container c's /etc/passwd and /etc/group from its snapshot (see
// readUserFile).
func readUserFiles(ctx context.Context, client oci.Client, c *containers.Container) (passwd, group []byte, err error) {
	if c.SnapshotKey == "" {
		return nil, nil, nil
	}
	mounts, err := client.SnapshotService(c.Snapshotter).Mounts(ctx, c.SnapshotKey)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the container's users: %w", err)
	}
	err = mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
		var err error
		if passwd, err = readUserFile(root, "etc/passwd"); err != nil {
			return err
		}
		group, err = readUserFile(root, "etc/group")
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading the container's users: %w", err)
	}
	return passwd, group, nil
}

// checkUserFiles goes before containerd's oci.WithImageConfig, which resolves the image's
// USER with containerd's own reading of /etc/passwd and /etc/group: an image whose files
// are not regular (a FIFO would block that read for ever) is refused first.
func checkUserFiles(img containerd.Image, files *userFiles) oci.SpecOpts {
	return func(ctx context.Context, client oci.Client, c *containers.Container, _ *specs.Spec) error {
		cfg, err := img.Spec(ctx)
		if err != nil || cfg.Config.User == "" {
			return nil // oci.WithImageConfig reports a config it cannot read
		}
		_, _, err = files.get(ctx, client, c)
		return err
	}
}

// readUserFile reads file name below root: nothing when it is missing, an error when it is
// not a regular file or is over userFileMax.
func readUserFile(root, name string) ([]byte, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening /%s: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("/%s is not a regular file (%s)", name, fi.Mode().Type())
	}
	b, err := io.ReadAll(io.LimitReader(f, userFileMax+1))
	if err == nil && len(b) > userFileMax {
		err = fmt.Errorf("/%s is over %d MiB", name, userFileMax>>20)
	}
	return b, err
}
