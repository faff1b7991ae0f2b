// Package wsync copies a workspace into a Kubernetes pod and its changes back, as tar
// streams (carried by the exec API). The host side (Send, Receive) treats what comes back
// as hostile: it is staged whole before anything is applied, and applied without following
// a symlink anywhere. The pod side (Unpack, Pack) is the helper that runs in the pod.
//
// Streams carry regular files, directories and symlinks (as links) with their mode, owner
// and mtime, and end with a marker entry so that a stream cut at an entry boundary (which
// a tar reader cannot tell from a complete one) is refused instead of read as "everything
// after this was deleted".
package wsync

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// EntryType is the kind of a workspace entry.
type EntryType string

// The kinds wsync carries; sockets, devices and FIFOs are left out.
const (
	TypeFile    EntryType = "file"
	TypeDir     EntryType = "dir"
	TypeSymlink EntryType = "symlink"
)

// Entry is one path's state as sent, enough to tell whether the pod changed it.
type Entry struct {
	Type   EntryType `json:"type"`
	Size   int64     `json:"size,omitempty"`
	Mode   uint32    `json:"mode"` // permission and set-id/sticky bits (07777)
	MTime  time.Time `json:"mtime"`
	Target string    `json:"target,omitempty"` // symlinks only
}

// Manifest is what Send put into the pod, keyed by slash-separated path relative to the
// workspace root. Receive needs it to delete only what the pod deleted (a path never sent
// is never deleted) and to skip rewriting what the pod left alone; it is JSON so moatc can
// keep it on disk between the two.
type Manifest struct {
	Entries map[string]Entry `json:"entries"`
}

// Errors the caller may want to tell apart; both mean nothing was applied.
var (
	// ErrInvalid: the stream is malformed, truncated or asks for something unsafe.
	ErrInvalid = errors.New("invalid workspace stream")
	// ErrLimit: the stream is larger than ReceiveOptions allow.
	ErrLimit = errors.New("workspace stream over limit")
)

const (
	endName   = "wsync-end"
	endRecord = "MOATC.wsync.entries"
	modeBits  = 0o7777
	specBits  = unix.S_ISUID | unix.S_ISGID | unix.S_ISVTX
)

// Send writes root's tree to w as a tar stream (see the package doc) and returns the
// manifest of what it sent, for Receive.
func Send(ctx context.Context, w io.Writer, root string) (Manifest, error) {
	m := Manifest{Entries: map[string]Entry{}}
	err := writeTree(ctx, w, root, func(p string, e Entry) { m.Entries[p] = e })
	if err != nil {
		return Manifest{}, fmt.Errorf("sending %s: %w", root, err)
	}
	return m, nil
}

// Pack writes dir's tree to w like Send; it runs in the pod, where no manifest is kept.
func Pack(w io.Writer, dir string) error {
	if err := writeTree(context.Background(), w, dir, nil); err != nil {
		return fmt.Errorf("packing %s: %w", dir, err)
	}
	return nil
}

// writeTree walks root by file descriptor (openat with O_NOFOLLOW at every step), so a
// directory swapped for a symlink during the walk cannot pull in anything outside root.
func writeTree(ctx context.Context, w io.Writer, root string, record func(string, Entry)) error {
	rootfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootfd)
	tw := tar.NewWriter(w)
	n := 0
	if err := walkDir(ctx, tw, rootfd, "", record, &n); err != nil {
		return err
	}
	end := &tar.Header{
		Typeflag:   tar.TypeXGlobalHeader,
		Name:       endName,
		PAXRecords: map[string]string{endRecord: strconv.Itoa(n)},
		Format:     tar.FormatPAX,
	}
	if err := tw.WriteHeader(end); err != nil {
		return err
	}
	return tw.Close()
}

func walkDir(ctx context.Context, tw *tar.Writer, dirfd int, prefix string, record func(string, Entry), n *int) error {
	dup, err := unix.Dup(dirfd)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(dup), prefix)
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("reading directory %s: %w", displayName(prefix), err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := prefix + name
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT { // removed while walking
				continue
			}
			return fmt.Errorf("stat %s: %w", p, err)
		}
		switch kindOf(st.Mode) {
		case TypeFile:
			if err := writeFileEntry(tw, dirfd, name, p, record); err != nil {
				return err
			}
		case TypeSymlink:
			target, err := readlinkAt(dirfd, name)
			if err != nil {
				return fmt.Errorf("reading symlink %s: %w", p, err)
			}
			h := header(p, tar.TypeSymlink, &st)
			h.Linkname = target
			if err := tw.WriteHeader(h); err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
			if record != nil {
				record(p, entryOf(TypeSymlink, &st, target))
			}
		case TypeDir:
			fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("opening directory %s: %w", p, err)
			}
			// Stat the opened directory, not the name: that is what gets walked.
			if err := unix.Fstat(fd, &st); err != nil {
				unix.Close(fd)
				return fmt.Errorf("stat %s: %w", p, err)
			}
			if err := tw.WriteHeader(header(p+"/", tar.TypeDir, &st)); err != nil {
				unix.Close(fd)
				return fmt.Errorf("writing %s: %w", p, err)
			}
			if record != nil {
				record(p, entryOf(TypeDir, &st, ""))
			}
			err = walkDir(ctx, tw, fd, p+"/", record, n)
			unix.Close(fd)
			if err != nil {
				return err
			}
		default:
			continue // sockets, devices, FIFOs: not workspace content
		}
		*n++
	}
	return nil
}

func writeFileEntry(tw *tar.Writer, dirfd int, name, p string, record func(string, Entry)) error {
	// O_NONBLOCK: if the name became a FIFO since the stat, opening must not hang.
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	if kindOf(st.Mode) != TypeFile {
		return fmt.Errorf("sending %s: changed type while sending", p)
	}
	h := header(p, tar.TypeReg, &st)
	h.Size = st.Size
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if n, err := io.CopyN(tw, f, st.Size); err != nil {
		if err == io.EOF {
			return fmt.Errorf("sending %s: file shrank while sending (%d of %d bytes)", p, n, st.Size)
		}
		return fmt.Errorf("sending %s: %w", p, err)
	}
	if record != nil {
		record(p, entryOf(TypeFile, &st, ""))
	}
	return nil
}

func header(name string, typ byte, st *unix.Stat_t) *tar.Header {
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     int64(st.Mode & modeBits),
		Uid:      int(st.Uid),
		Gid:      int(st.Gid),
		ModTime:  time.Unix(st.Mtim.Unix()),
		Format:   tar.FormatPAX, // PAX keeps nanosecond mtimes, so "unchanged" compares exactly
	}
}

func entryOf(t EntryType, st *unix.Stat_t, target string) Entry {
	e := Entry{Type: t, Mode: st.Mode & modeBits, MTime: time.Unix(st.Mtim.Unix()).UTC(), Target: target}
	if t == TypeFile {
		e.Size = st.Size
	}
	return e
}

func displayName(p string) string {
	if p == "" {
		return "."
	}
	return p
}
