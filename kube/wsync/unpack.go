package wsync

import (
	"archive/tar"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Unpack extracts a stream made by Send into dir, in the pod. The stream comes from moatc,
// but names are still checked and no symlink is followed, so a bad stream cannot write
// outside dir. Owners are kept when running as root (as the helper does in the pod), and
// modes (set-id bits included) and mtimes always; missing parent directories are created.
func Unpack(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("unpacking into %s: %w", dir, err)
	}
	rootfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("unpacking into %s: %w", dir, err)
	}
	defer unix.Close(rootfd)
	chown := os.Geteuid() == 0
	type dirMeta struct {
		name string
		m    meta
	}
	var dirs []dirMeta
	tr := tar.NewReader(r)
	n, ended := 0, false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("unpacking: %w", readErr(err))
		}
		if ended {
			return fmt.Errorf("unpacking: %w", invalid(h.Name, "entry after the end marker"))
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			if err := checkEnd(h, n); err != nil {
				return fmt.Errorf("unpacking: %w", err)
			}
			ended = true
			continue
		}
		n++
		name, isRoot, err := entryName(h)
		if err != nil {
			return fmt.Errorf("unpacking: %w", err)
		}
		if isRoot {
			continue
		}
		m := meta{mode: uint32(h.Mode) & modeBits, uid: h.Uid, gid: h.Gid, chown: chown, mtime: h.ModTime}
		if err := unpackEntry(rootfd, name, h, tr, m); err != nil {
			return fmt.Errorf("unpacking %s: %w", name, err)
		}
		if h.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirMeta{name, m})
		}
	}
	if !ended {
		return fmt.Errorf("unpacking: %w", errTruncated())
	}
	// Deepest first, so setting a directory's mtime is not undone by finishing a child.
	slices.SortStableFunc(dirs, func(a, b dirMeta) int {
		return cmp.Compare(strings.Count(b.name, "/"), strings.Count(a.name, "/"))
	})
	for _, d := range dirs {
		if err := finishDir(rootfd, d.name, d.m, true); err != nil {
			return fmt.Errorf("unpacking %s: setting metadata: %w", d.name, err)
		}
	}
	return nil
}

func unpackEntry(rootfd int, name string, h *tar.Header, r io.Reader, m meta) error {
	switch h.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink:
	default:
		return fmt.Errorf("unsupported entry type %q: %w", h.Typeflag, ErrInvalid)
	}
	if h.Typeflag == tar.TypeSymlink {
		if err := checkTarget(name, h.Linkname); err != nil {
			return err
		}
	}
	pfd, err := mkdirAllBeneath(rootfd, parentOf(name))
	if err != nil {
		return fmt.Errorf("opening parent: %w", err)
	}
	defer unix.Close(pfd)
	base := baseOf(name)
	st, exists, err := lstatAt(pfd, base)
	if err != nil {
		return err
	}
	isDir := exists && kindOf(st.Mode) == TypeDir
	switch h.Typeflag {
	case tar.TypeDir:
		if exists && !isDir {
			if err := unix.Unlinkat(pfd, base, 0); err != nil {
				return err
			}
		}
		if !isDir {
			return unix.Mkdirat(pfd, base, 0o700)
		}
		return nil
	case tar.TypeReg:
		if isDir {
			return errors.New("a directory is in the way")
		}
		return writeFileAt(pfd, base, r, m)
	default:
		if isDir {
			return errors.New("a directory is in the way")
		}
		return symlinkAt(pfd, base, h.Linkname, m)
	}
}
