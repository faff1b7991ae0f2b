package engine

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/run"
)

func init() {
	route("GET /containers/{id}/archive", archiveGet)
	route("HEAD /containers/{id}/archive", archiveGet)
	route("PUT /containers/{id}/archive", archivePut)
}

// statHeader is the header carrying a path's stat, base64 JSON of container.PathStat.
const statHeader = "X-Docker-Container-Path-Stat"

// A running container's files are read and written by tar inside it (its own view: under
// gVisor the sandbox's writes are not in the snapshot the host sees); a stopped one's through
// its snapshot mounted on the host, every path resolved inside that root.

// archiveGet is GET /containers/{id}/archive?path=: a tar of the path with its stat in the
// header; HEAD answers the stat alone. 404 when the path is not there.
func archiveGet(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, p, err := archiveTarget(e, r)
	if err != nil {
		return err
	}
	head := r.Method == http.MethodHead
	dir, base := splitArchivePath(p)
	e.mu.Lock()
	task, running := c.task, c.running()
	e.mu.Unlock()
	if running && task != nil {
		return e.archiveGetRunning(w, r, c, task, p, dir, base, head)
	}
	return e.withRootfs(r.Context(), c, true, func(root string) error {
		dfd, err := openInRoot(root, dir)
		if err != nil {
			return archiveNotFound(c, p, err)
		}
		defer unix.Close(dfd)
		src := fmt.Sprintf("/proc/self/fd/%d/%s", dfd, base)
		fi, err := os.Lstat(src)
		if err != nil {
			return archiveNotFound(c, p, err)
		}
		st := container.PathStat{Name: base, Size: fi.Size(), Mode: fi.Mode(), Mtime: fi.ModTime()}
		if fi.Mode()&fs.ModeSymlink != 0 {
			st.LinkTarget, _ = os.Readlink(src)
		}
		if err := setStatHeader(w, st); err != nil {
			return err
		}
		if head {
			w.WriteHeader(http.StatusOK)
			return nil
		}
		w.Header().Set("Content-Type", "application/x-tar")
		w.WriteHeader(http.StatusOK)
		e.containerEvent(events.ActionArchivePath, e.recOf(c), map[string]string{"path": p})
		// Headers are out: a failure now can only cut the stream short.
		run.WriteTar(w, src, base)
		return nil
	})
}

// archiveGetRunning streams tar's archive made in the container; the stat is its first entry.
func (e *Engine) archiveGetRunning(w http.ResponseWriter, r *http.Request, c *ctr, task containerd.Task, p, dir, base string, head bool) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := e.execIn(ctx, c, task, []string{"tar", "-C", dir, "-cf", "-", base}, nil, pw, &limited{w: &stderr, n: 4096})
		pw.Close()
		done <- result{code, err}
	}()
	var got bytes.Buffer
	hdr, herr := tar.NewReader(io.TeeReader(pr, &got)).Next()
	if herr != nil {
		pr.Close()
		res := <-done
		if res.err != nil {
			return fmt.Errorf("reading %s in container %s: %w", p, c.rec.Name, res.err)
		}
		if strings.Contains(stderr.String(), "No such file") || strings.Contains(stderr.String(), "Not a directory") {
			return archiveNotFound(c, p, errors.New(stderr.String()))
		}
		return fmt.Errorf("reading %s in container %s: tar exited %d: %s", p, c.rec.Name, res.code, printableShort(stderr.String()))
	}
	fi := hdr.FileInfo()
	st := container.PathStat{Name: base, Size: fi.Size(), Mode: fi.Mode(), Mtime: hdr.ModTime, LinkTarget: hdr.Linkname}
	if err := setStatHeader(w, st); err != nil {
		pr.Close()
		return err
	}
	if head {
		pr.Close()
		cancel()
		<-done
		w.WriteHeader(http.StatusOK)
		return nil
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	e.containerEvent(events.ActionArchivePath, e.recOf(c), map[string]string{"path": p})
	w.Write(got.Bytes())
	if _, err := io.Copy(w, pr); err != nil {
		pr.CloseWithError(err) // the client is gone: tar stops on the broken pipe
	}
	<-done
	return nil
}

// archivePut is PUT /containers/{id}/archive?path=: the body, a tar, extracted into the
// directory path. 404 when it is not there, 400 when it is not a directory.
func archivePut(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, p, err := archiveTarget(e, r)
	if err != nil {
		return err
	}
	if c.rec.HostConfig != nil && c.rec.HostConfig.ReadonlyRootfs {
		return forbidden("container rootfs is marked read-only")
	}
	e.mu.Lock()
	task, running := c.task, c.running()
	e.mu.Unlock()
	if running && task != nil {
		var stderr bytes.Buffer
		code, err := e.execIn(r.Context(), c, task, []string{"tar", "-C", p, "-xf", "-"}, r.Body, io.Discard, &limited{w: &stderr, n: 4096})
		if err != nil {
			return fmt.Errorf("extracting into %s in container %s: %w", p, c.rec.Name, err)
		}
		if code != 0 {
			msg := stderr.String()
			switch {
			case strings.Contains(msg, "can't change directory") && strings.Contains(msg, "No such file"):
				return archiveNotFound(c, p, errors.New(msg))
			case strings.Contains(msg, "can't change directory") && strings.Contains(msg, "Not a directory"):
				return invalid("extraction point is not a directory")
			}
			return invalid("extracting into %s in container %s: tar exited %d: %s", p, c.rec.Name, code, printableShort(msg))
		}
	} else {
		err := e.withRootfs(r.Context(), c, false, func(root string) error {
			dfd, err := openInRoot(root, p)
			if err != nil {
				return archiveNotFound(c, p, err)
			}
			defer unix.Close(dfd)
			var st unix.Stat_t
			if err := unix.Fstat(dfd, &st); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return invalid("extraction point is not a directory")
			}
			if err := run.ExtractTar(r.Body, fmt.Sprintf("/proc/self/fd/%d", dfd)); err != nil {
				return invalid("extracting into %s in container %s: %v", p, c.rec.Name, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	e.containerEvent(events.ActionExtractToDir, e.recOf(c), map[string]string{"path": p})
	w.WriteHeader(http.StatusOK)
	return nil
}

func archiveTarget(e *Engine, r *http.Request) (*ctr, string, error) {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return nil, "", err
	}
	p := r.URL.Query().Get("path")
	if p == "" {
		return nil, "", invalid("no path given: ?path= is required")
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // relative to the container's root, as Docker takes it
	}
	return c, p, nil
}

func archiveNotFound(c *ctr, p string, _ error) error {
	return notFound("Could not find the file %s in container %s", p, c.rec.Name)
}

// splitArchivePath splits a container path into the directory tar works in and the name it
// archives; "DIR/." archives DIR's content as ".".
func splitArchivePath(p string) (dir, base string) {
	if strings.HasSuffix(p, "/.") {
		return path.Clean(p), "."
	}
	c := path.Clean(p)
	if c == "/" {
		return "/", "."
	}
	return path.Dir(c), path.Base(c)
}

// setStatHeader sets the X-Docker-Container-Path-Stat header.
func setStatHeader(w http.ResponseWriter, st container.PathStat) error {
	v, err := statHeaderValue(st)
	if err != nil {
		return err
	}
	w.Header().Set(statHeader, v)
	return nil
}

func statHeaderValue(st container.PathStat) (string, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return "", fmt.Errorf("encoding the path's stat: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// execIn runs a command as root in c's running task (tar for docker cp, as Docker's daemon
// reads and writes as root); its exit code.
func (e *Engine) execIn(ctx context.Context, c *ctr, task containerd.Task, args []string, stdin io.Reader, out, errw io.Writer) (int, error) {
	cc, err := e.cfg.Client.LoadContainer(ctx, c.rec.ID)
	if err != nil {
		return 0, err
	}
	code, err := e.execProcess(ctx, cc, task, nil, run.ExecOptions{Args: args, User: "0:0"}, stdin, out, errw)
	if err != nil && execFailCode(err) == 127 {
		return 0, fmt.Errorf("docker cp needs tar in the container's image: %w", err)
	}
	return code, err
}

// withRootfs mounts a stopped container's snapshot on a directory of the engine's for fn.
func (e *Engine) withRootfs(ctx context.Context, c *ctr, readOnly bool, fn func(root string) error) error {
	if e.cfg.Rootless {
		return notImplemented("moatc does not support copying files of a stopped container in rootless mode yet: start it first")
	}
	ctx = context.WithoutCancel(ctx) // never leave the mount behind
	// Stopped it stays until fn is done: a start now would let the workload change the tree
	// the engine walks as root.
	e.mu.Lock()
	if c.running() || c.starting || c.removing || c.removed {
		e.mu.Unlock()
		return conflict("container %s was started or removed meanwhile: copy again", c.rec.Name)
	}
	c.copying++
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		c.copying--
		e.mu.Unlock()
	}()
	cc, err := e.cfg.Client.LoadContainer(ctx, c.rec.ID)
	if err != nil {
		return err
	}
	info, err := cc.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return err
	}
	mounts, err := e.cfg.Client.SnapshotService(info.Snapshotter).Mounts(ctx, info.SnapshotKey)
	if err != nil {
		return fmt.Errorf("mounting the rootfs of container %s: %w", c.rec.Name, err)
	}
	if readOnly {
		for i := range mounts {
			mounts[i].Options = append(mounts[i].Options, "ro")
		}
	}
	dir, err := os.MkdirTemp(e.cfg.StateDir, "rootfs-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := mount.All(mounts, dir); err != nil {
		return fmt.Errorf("mounting the rootfs of container %s: %w", c.rec.Name, err)
	}
	defer mount.UnmountAll(dir, 0)
	return fn(dir)
}

// openInRoot opens the directory p of the tree at root, every link and ".." resolved inside
// it (an absolute link names root's own file, never the host's).
func openInRoot(root, p string) (int, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(rfd)
	rel := strings.TrimLeft(p, "/")
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(rfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
}

// limited keeps the first n bytes written to it.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// printableShort keeps a workload's message printable and short.
func printableShort(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return ' '
		}
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > 512 {
		s = s[:512] + "..."
	}
	return s
}
