// Package mounts resolves and pins the host side of a run's bind mounts. The workspace is the
// workload's to change between runs (and during them, from a detached run): a trusted
// `./data:/data` must not become /etc because data/ turned into a symlink. So a relative
// source is opened beneath the workspace, refusing any symlink that leaves it (openat2 with
// RESOLVE_BENEATH), and the directory opened is what gets mounted: it is bind-mounted from its
// file descriptor to a private path under moatc's home, and the container mounts that path.
// The pin only lives until the container has made its own mount (task create); Unpin removes it.
package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// EscapeError says a relative mount source leads out of the workspace.
type EscapeError struct{ Source, Workspace string }

func (e *EscapeError) Error() string {
	return fmt.Sprintf("mount source %s leads out of the workspace %s through a symbolic link; moatc never follows "+
		"a link out of the workspace: replace the link with the directory, or give the real path, e.g. -m /real/path:/data", e.Source, e.Workspace)
}

// Open opens a mount source as an O_PATH file. A relative source without ".." resolves
// beneath the workspace; an absolute one, or one with "..", is the person's own choice (a
// flag, or a trusted file) and resolves as usual.
func Open(workspace, source string) (*os.File, error) {
	if filepath.IsAbs(source) || hasDotDot(source) {
		p := source
		if !filepath.IsAbs(p) {
			p = filepath.Join(workspace, p)
		}
		fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("mount source %s: %w", p, err)
		}
		return os.NewFile(uintptr(fd), p), nil
	}
	dfd, err := unix.Open(workspace, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening workspace %s: %w", workspace, err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat2(dfd, source, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.EXDEV) {
		return nil, &EscapeError{Source: source, Workspace: workspace}
	}
	if err != nil {
		return nil, fmt.Errorf("mount source %s in the workspace: %w", source, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(workspace, source)), nil
}

func hasDotDot(p string) bool {
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return true
		}
	}
	return false
}

// RealPath is the path the kernel gives an open file: what was really opened.
func RealPath(f *os.File) (string, error) {
	return os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
}

// Pin bind-mounts the open file f (recursively, private) at dir/name and returns that path.
// dir must be moatc's, out of every run's reach.
func Pin(f *os.File, dir, name string) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("pinning mount source %s: %w", f.Name(), err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("pinning mount source %s: %w", f.Name(), err)
	}
	target := filepath.Join(dir, name)
	// The mount point matches the source: a directory, or a file for a file.
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		err := os.Mkdir(target, 0o700)
		if err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("pinning mount source %s: %w", f.Name(), err)
		}
	} else if err := os.WriteFile(target, nil, 0o600); err != nil {
		return "", fmt.Errorf("pinning mount source %s: %w", f.Name(), err)
	}
	src := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		os.Remove(target)
		return "", fmt.Errorf("pinning mount source %s: %w", f.Name(), err)
	}
	// Private: the container's copy must not share mount events with this one.
	if err := unix.Mount("", target, "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		unix.Unmount(target, unix.MNT_DETACH)
		os.Remove(target)
		return "", fmt.Errorf("pinning mount source %s: %w", f.Name(), err)
	}
	return target, nil
}

// Unpin unmounts whatever is mounted under dir (a crash may have left pins) and removes dir.
// It never deletes through a mount: the directory is removed only once nothing is mounted
// below it.
func Unpin(dir string) error {
	for _, mp := range under(dir) {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmounting %s: %w", mp, err)
		}
	}
	if left := under(dir); len(left) > 0 {
		return fmt.Errorf("unmounting %s: still mounted", left[0])
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// under lists mount points at or below dir, deepest first.
func under(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := Unescape(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Unescape undoes mountinfo's octal escapes (\040 for a space).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Inside reports whether path is dir or lies below it (both absolute and clean).
func Inside(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}
