package run

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode"
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

// ExtractTar is extractTar for the Docker engine's archive upload into a stopped container's
// mounted root: the same confinement to dir.
func ExtractTar(r io.Reader, dir string) error { return extractTar(r, dir, ".", "") }

// WriteTar is writeTar for the Docker engine's archive download from a stopped container.
func WriteTar(w io.Writer, src, name string) error { return writeTar(w, src, name) }

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

// CopyOut copies src, a path in run ref's container, to dest on the host, as `docker cp`
// does: into dest when it is a directory, as dest otherwise; "SRC/." copies the content of a
// directory. dest "-" writes the tar stream to stdout. The container's own tar reads src,
// so every path (.., symlinks) resolves inside the container, as the workload would see it.
func (m *Manager) CopyOut(ctx context.Context, ref, src, dest string, stdout io.Writer) error {
	dir, base := containerPath(src)
	args := []string{"tar", "-C", dir, "-cf", "-", base}
	if dest == "-" {
		return m.tarExec(ctx, ref, args, nil, stdout, src)
	}
	into, as := dest, ""
	fi, err := os.Stat(dest)
	switch {
	case err == nil && fi.IsDir():
	case err == nil && base == ".":
		return fmt.Errorf("copying %s: %s is not a directory", src, dest)
	case err == nil || errors.Is(err, fs.ErrNotExist):
		into, as = filepath.Dir(dest), filepath.Base(dest)
		if pi, perr := os.Stat(into); perr != nil || !pi.IsDir() {
			return fmt.Errorf("copying %s: the directory %s does not exist", src, into)
		}
		if base == "." {
			if err := os.Mkdir(dest, 0o755); err != nil {
				return err
			}
			into, as = dest, ""
		}
	default:
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := extractTar(pr, into, base, as)
		if err == nil {
			// What follows the archive's end is read, within reason, so tar can exit.
			if n, _ := io.CopyN(io.Discard, pr, 1<<20); n == 1<<20 {
				err = fmt.Errorf("the container sent more than the archive")
			}
		}
		if err != nil {
			pr.CloseWithError(err)
			cancel()
		}
		done <- err
	}()
	err = m.tarExec(ctx, ref, args, nil, pw, src)
	pw.Close()
	if xerr := <-done; xerr != nil {
		return fmt.Errorf("copying %s from run %s: %w", src, ref, xerr)
	}
	return err
}

// CopyIn copies src on the host (a file, a directory, or "-": a tar stream on stdin) to
// dest in run ref's container, as `docker cp` does. The host side is read without following
// symlinks; the container's own tar writes, so every path resolves inside the container.
func (m *Manager) CopyIn(ctx context.Context, ref, src, dest string, stdin io.Reader) error {
	isDir, err := m.containerIsDir(ctx, ref, dest)
	if err != nil {
		return err
	}
	if src == "-" {
		if !isDir {
			return fmt.Errorf("copying a tar stream: %s is not a directory in run %s", dest, ref)
		}
		return m.tarExec(ctx, ref, []string{"tar", "-C", dest, "-xf", "-"}, stdin, nil, dest)
	}
	contents := strings.HasSuffix(src, "/.") || src == "."
	if _, err := os.Lstat(src); err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	dir, name := dest, filepath.Base(filepath.Clean(src))
	switch {
	case contents && !isDir:
		return fmt.Errorf("copying the content of %s: %s is not a directory in run %s", src, dest, ref)
	case contents:
		name = "."
	case !isDir:
		if strings.HasSuffix(dest, "/") {
			return fmt.Errorf("copying %s: no directory %s in run %s", src, dest, ref)
		}
		dir, name = path.Dir(path.Clean(dest)), path.Base(path.Clean(dest))
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, src, name)) }()
	err = m.tarExec(ctx, ref, []string{"tar", "-C", dir, "-xf", "-"}, pr, nil, dest)
	pr.Close()
	return err
}

// containerPath splits a container path into tar's -C directory and the name to archive;
// "DIR/." archives DIR's content.
func containerPath(p string) (dir, base string) {
	if strings.HasSuffix(p, "/.") || p == "." {
		return path.Clean(p), "."
	}
	c := path.Clean(p)
	if c == "/" {
		return "/", "."
	}
	return path.Dir(c), path.Base(c)
}

// containerIsDir says whether p is a directory in the container, by `test -d` there.
func (m *Manager) containerIsDir(ctx context.Context, ref, p string) (bool, error) {
	var stderr bytes.Buffer
	code, err := m.Exec(ctx, ref, ExecOptions{Args: []string{"test", "-d", p}}, Stdio{Err: &stderr})
	if notFound(code, err) {
		return false, fmt.Errorf("copying to run %s: cp needs tar and test in the image", ref)
	}
	if err != nil {
		return false, fmt.Errorf("copying to run %s: %w", ref, err)
	}
	return code == 0, nil
}

// tarExec runs tar in the container; what it says on failure is the workload's (hostile),
// so it is shown printable and short.
func (m *Manager) tarExec(ctx context.Context, ref string, args []string, in io.Reader, out io.Writer, what string) error {
	var stderr limitedBuffer
	code, err := m.Exec(ctx, ref, ExecOptions{Args: args}, Stdio{In: in, Out: out, Err: &stderr})
	if notFound(code, err) {
		return fmt.Errorf("copying %s: cp needs tar in the image of run %s", what, ref)
	}
	if err != nil {
		return fmt.Errorf("copying %s: %w", what, err)
	}
	if code != 0 {
		return fmt.Errorf("copying %s: tar in run %s failed (exit %d): %s", what, ref, code, printable(stderr.String()))
	}
	return nil
}

// notFound says whether an exec failed for want of its command: 127, or gVisor's own words
// for it (runsc's exec error is not the one runc's is).
func notFound(code int, err error) bool {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code == 127
	}
	if err != nil {
		return strings.Contains(err.Error(), "error finding executable")
	}
	return code == 127
}

// limitedBuffer keeps the first 4 KiB written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// printable keeps what a terminal shows as text: no escape sequences from the workload. Lines
// are joined with "; ", so tar's messages stay apart on one line.
func printable(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), "\n", " ;; ")), " ")
	s = strings.ReplaceAll(s, " ;; ", "; ")
	s = strings.Map(func(r rune) rune {
		if r == '\t' {
			return ' '
		}
		if r < 0x20 || r == 0x7f || !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

// writeTar archives the host path src under name ("." for the content of a directory),
// symlinks as symlinks. Owners are left out: the container's tar makes the files its user's.
func writeTar(w io.Writer, src, name string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !fi.Mode().IsRegular() && !fi.IsDir() {
			return fmt.Errorf("%s is not a file, directory or symlink: not copied", p)
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = path.Join(name, filepath.ToSlash(rel))
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
