package run

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// extractTar writes a tar stream made in a container (hostile: anything the workload could
// write) into the host directory dir. os.Root confines every operation to dir, whatever an
// entry says (.., absolute names, symlinks, hard links); on top of that no entry may go
// through a symlink, devices and FIFOs are refused, and set-id bits and owners are dropped,
// so nothing written can act on the host beyond being a file in dir.
//
// Every entry's first path component must be top (the name copied); it is written as as
// instead when as is set. With top "." the entries go into dir as they are.
func extractTar(r io.Reader, dir, top, as string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	type dirTimes struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirTimes
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		name, err := entryName(h.Name, top, as)
		if err != nil {
			return err
		}
		if err := noSymlinkOnTheWay(root, name); err != nil {
			return err
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := makeDir(root, name); err != nil {
				return err
			}
			if name != "." { // the destination's own mode stays the user's
				dirs = append(dirs, dirTimes{name, mode, h.ModTime})
			}
		case tar.TypeReg:
			if err := writeFile(root, name, tr, mode); err != nil {
				return err
			}
			root.Chtimes(name, h.ModTime, h.ModTime)
		case tar.TypeSymlink:
			// Kept as a link, never followed here: its target is the container's business.
			if err := clear(root, name); err != nil {
				return err
			}
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("making the symlink %s: %w", name, err)
			}
		case tar.TypeLink:
			target, err := entryName(h.Linkname, top, as)
			if err != nil {
				return fmt.Errorf("hard link %s: %w", h.Name, err)
			}
			if err := clear(root, name); err != nil {
				return err
			}
			// Root.Link refuses a target outside dir, and does not follow a symlink target.
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("making the hard link %s: %w", name, err)
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return fmt.Errorf("%s is a device or FIFO: cp copies files, directories and symlinks only", h.Name)
		case tar.TypeXGlobalHeader:
		default:
			return fmt.Errorf("%s: unsupported entry type %q", h.Name, h.Typeflag)
		}
	}
	// Modes last: a read-only directory must stay writable until its content is in.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := root.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("setting the mode of %s: %w", d.name, err)
		}
		root.Chtimes(d.name, d.mtime, d.mtime)
	}
	return nil
}

// entryName checks an entry's name and maps its first component from top to as.
func entryName(name, top, as string) (string, error) {
	clean := path.Clean(strings.TrimPrefix(name, "./"))
	if strings.HasPrefix(name, "/") || !filepath.IsLocal(clean) {
		return "", fmt.Errorf("the archive names %q, outside the copy: refused", name)
	}
	if top == "." {
		return clean, nil
	}
	first, rest, _ := strings.Cut(clean, "/")
	if first != top {
		return "", fmt.Errorf("the archive names %q, not under %q: refused", name, top)
	}
	if as == "" {
		return clean, nil
	}
	return path.Join(as, rest), nil
}

// noSymlinkOnTheWay refuses an entry below a symlink (tar never makes one; a hostile
// archive does, to write through it).
func noSymlinkOnTheWay(root *os.Root, name string) error {
	parts := strings.Split(name, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		fi, err := root.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("the archive writes %s through the symlink %s: refused", name, p)
		}
	}
	return nil
}

func makeDir(root *os.Root, name string) error {
	if name == "." {
		return nil
	}
	fi, err := root.Lstat(name)
	if err == nil && fi.IsDir() {
		return nil
	}
	if err == nil {
		return fmt.Errorf("%s exists and is not a directory", name)
	}
	if err := root.MkdirAll(name, 0o700); err != nil {
		return fmt.Errorf("making the directory %s: %w", name, err)
	}
	return nil
}

// clear removes what is at name, unless it is a directory, so an entry replaces a file.
func clear(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s exists and is a directory", name)
	}
	return root.Remove(name)
}

func writeFile(root *os.Root, name string, r io.Reader, mode fs.FileMode) error {
	if err := clear(root, name); err != nil {
		return err
	}
	// O_EXCL: a name made a symlink meanwhile is not followed.
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	// The mode after writing, set-id bits dropped: the umask does not apply, as in tar.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
