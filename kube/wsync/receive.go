package wsync

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// ReceiveOptions bound and tune Receive.
type ReceiveOptions struct {
	// Staging is the directory Receive makes its private staging directory in (and removes
	// it from afterwards). It should be on root's filesystem, so staged files are renamed
	// into place instead of copied. Default: root's parent, else the system temp dir.
	Staging string
	// MaxBytes bounds the total size of the files in the stream; 0 means no bound. Set it:
	// the stream is staged on disk before anything is applied.
	MaxBytes int64
	// MaxEntries bounds the number of entries in the stream; 0 means no bound.
	MaxEntries int
	// KeepOwner keeps the stream's uid/gid; honoured only when running as root, otherwise
	// (and by default) files belong to the current user.
	KeepOwner bool
}

// Result says what Receive did.
type Result struct {
	Written   int       `json:"written"`   // files, symlinks and directories created or replaced
	Deleted   int       `json:"deleted"`   // sent paths the pod no longer had
	Unchanged int       `json:"unchanged"` // entries identical to what was sent, left alone
	Skipped   []Skipped `json:"skipped,omitempty"`
	Stripped  []string  `json:"stripped,omitempty"` // written without their setuid/setgid/sticky bits
}

// Skipped is an entry (or deletion) Receive did not apply, and why.
type Skipped struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// staged is one validated entry of the returned stream, its content (for files) held in a
// staging file named blob.
type staged struct {
	path     string
	typ      EntryType
	mode     uint32 // as the stream said, set-id bits included (for comparing with sent)
	uid, gid int
	mtime    time.Time
	size     int64
	target   string
	blob     string
}

// Receive applies a stream made by Pack in the pod (and so written by the workload: hostile)
// onto root, the host workspace; sent is Send's manifest for the same run.
//
// The whole stream is read and checked into a staging directory first, so a truncated,
// oversized or invalid stream changes nothing in root: Receive returns an error, wrapping
// ErrInvalid or ErrLimit when the stream is at fault. Then, without following a symlink
// at any component of any path in root:
//
//   - paths in sent but not in the stream are deleted, deepest first; a path never sent is
//     never deleted, nor is a file or symlink changed on the host since it was sent, nor a
//     directory still holding entries that were not sent;
//   - entries identical to sent (type, size, mode, mtime, target) are left alone, whatever
//     root holds there now;
//   - other entries are created or atomically replaced; replacing something of another
//     kind is a deletion and follows the same rules. Same over same (file over file,
//     symlink over symlink) is written even if the host changed or made it since Send:
//     the pod's version wins.
//
// Set-id and sticky bits are dropped. Per-entry failures (a symlink in the way, a
// conflict) are listed in Result.Skipped rather than failing the rest. ctx is checked
// between reads; a Read blocked on r is only interrupted by closing r.
func Receive(ctx context.Context, r io.Reader, root string, sent Manifest, opt ReceiveOptions) (Result, error) {
	var res Result
	rootfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("receiving into %s: %w", root, &os.PathError{Op: "open", Path: root, Err: err})
	}
	defer unix.Close(rootfd)
	stage, err := makeStaging(opt.Staging, root)
	if err != nil {
		return res, fmt.Errorf("receiving into %s: making staging directory: %w", root, err)
	}
	defer os.RemoveAll(stage)
	stagefd, err := unix.Open(stage, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("receiving into %s: opening staging directory: %w", root, err)
	}
	defer unix.Close(stagefd)

	entries, err := readStream(ctxReader{ctx, r}, stagefd, opt)
	if err != nil {
		return res, fmt.Errorf("receiving into %s: %w", root, err)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("receiving into %s: %w", root, err)
	}
	a := applier{
		rootfd:    rootfd,
		stagefd:   stagefd,
		sent:      sent.Entries,
		got:       entries,
		keepOwner: opt.KeepOwner && os.Geteuid() == 0,
		res:       &res,
		skipped:   map[string]bool{},
		touched:   map[string]bool{},
	}
	a.apply()
	return res, nil
}

func makeStaging(parent, root string) (string, error) {
	if parent != "" {
		return os.MkdirTemp(parent, ".moatc-wsync-")
	}
	abs, err := filepath.Abs(root)
	if err == nil {
		if d, err := os.MkdirTemp(filepath.Dir(abs), ".moatc-wsync-"); err == nil {
			return d, nil
		}
	}
	return os.MkdirTemp("", "moatc-wsync-")
}

// readStream reads and validates the whole stream, file contents going to staging files.
// Every entry's parent must be a directory entry of the stream: that is what Pack writes,
// and it rules out a name reaching through an entry that is a symlink or a file.
func readStream(r io.Reader, stagefd int, opt ReceiveOptions) (map[string]*staged, error) {
	got := map[string]*staged{}
	tr := tar.NewReader(r)
	var total int64
	n, ended := 0, false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, readErr(err)
		}
		if ended {
			return nil, invalid(h.Name, "entry after the end marker")
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			if err := checkEnd(h, n); err != nil {
				return nil, err
			}
			ended = true
			continue
		}
		n++
		if opt.MaxEntries > 0 && n > opt.MaxEntries {
			return nil, fmt.Errorf("reading stream: more than %d entries: %w", opt.MaxEntries, ErrLimit)
		}
		name, isRoot, err := entryName(h)
		if err != nil {
			return nil, err
		}
		if isRoot {
			continue
		}
		if _, dup := got[name]; dup {
			return nil, invalid(h.Name, "duplicate entry")
		}
		e := &staged{path: name, mode: uint32(h.Mode) & modeBits, uid: h.Uid, gid: h.Gid, mtime: h.ModTime}
		switch h.Typeflag {
		case tar.TypeDir:
			e.typ = TypeDir
		case tar.TypeSymlink:
			if err := checkTarget(h.Name, h.Linkname); err != nil {
				return nil, err
			}
			e.typ, e.target = TypeSymlink, h.Linkname
		case tar.TypeReg, tar.TypeLink:
			e.typ = TypeFile
			e.size = h.Size
			var link *staged
			if h.Typeflag == tar.TypeLink {
				// A hard link is only accepted to a file earlier in the same stream, and
				// becomes a copy of it: no link to anything on the host is ever made.
				if why := nameProblem(h.Linkname); why != "" {
					return nil, invalid(h.Name, fmt.Sprintf("hard link target %q: %s", h.Linkname, why))
				}
				link = got[h.Linkname]
				if link == nil || link.typ != TypeFile {
					return nil, invalid(h.Name, "hard link to something not a file of the stream")
				}
				e.mode, e.uid, e.gid, e.mtime, e.size = link.mode, link.uid, link.gid, link.mtime, link.size
			}
			if e.size < 0 {
				return nil, invalid(h.Name, "negative size")
			}
			total += e.size
			if opt.MaxBytes > 0 && total > opt.MaxBytes {
				return nil, fmt.Errorf("reading stream: more than %d bytes: %w", opt.MaxBytes, ErrLimit)
			}
			e.blob = strconv.Itoa(n)
			if err := stageEntry(stagefd, e, tr, link); err != nil {
				return nil, fmt.Errorf("staging %s: %w", name, err)
			}
		default:
			// Devices and FIFOs (and anything else) are never made on the host; Pack does
			// not write them, so their presence means the stream was not made by Pack.
			return nil, invalid(h.Name, fmt.Sprintf("unsupported entry type %q", h.Typeflag))
		}
		got[name] = e
	}
	if !ended {
		return nil, errTruncated()
	}
	for name := range got {
		if p := parentOf(name); p != "." {
			if d := got[p]; d == nil || d.typ != TypeDir {
				return nil, invalid(name, "parent is not a directory of the stream")
			}
		}
	}
	return got, nil
}

// stageEntry writes e's content to its staging file, from the stream or, for a hard
// link, from the staged file it links to.
func stageEntry(stagefd int, e *staged, r io.Reader, link *staged) error {
	if link != nil {
		fd, err := unix.Openat(stagefd, link.blob, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), link.blob)
		defer f.Close()
		r = f
	}
	return stageFile(stagefd, e.blob, r, e.size)
}

func stageFile(stagefd int, blob string, r io.Reader, size int64) error {
	fd, err := unix.Openat(stagefd, blob, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), blob)
	n, err := io.Copy(f, io.LimitReader(r, size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("short content (%d of %d bytes): %w", n, size, ErrInvalid)
	}
	return err
}

type applier struct {
	rootfd, stagefd int
	sent            map[string]Entry
	got             map[string]*staged
	keepOwner       bool
	res             *Result
	skipped         map[string]bool // directories not made: their subtrees are skipped
	touched         map[string]bool // directories whose entries changed: mtime to restore
	dirs            []*staged       // directories written: mode and mtime to set at the end
}

func (a *applier) skip(p, why string) {
	a.res.Skipped = append(a.res.Skipped, Skipped{Path: p, Reason: why})
	if e := a.got[p]; e != nil && e.typ == TypeDir {
		a.skipped[p] = true
	}
}

func (a *applier) apply() {
	// Deletions first, deepest first (a reverse sort puts "a/b" before "a"), so a
	// directory is empty of sent entries by the time it is removed or replaced.
	var dels []string
	for p := range a.sent {
		if _, ok := a.got[p]; !ok {
			dels = append(dels, p)
		}
	}
	slices.Sort(dels)
	slices.Reverse(dels)
	for _, p := range dels {
		a.delete(p, a.sent[p])
	}

	// Then writes, parents before children (a sort puts "a" before "a/b").
	names := make([]string, 0, len(a.got))
	for p := range a.got {
		names = append(names, p)
	}
	slices.Sort(names)
	for _, p := range names {
		e := a.got[p]
		if a.parentSkipped(p) {
			a.skip(p, "not written: its directory was skipped")
			continue
		}
		if s, ok := a.sent[p]; ok && same(s, e) {
			a.res.Unchanged++
			continue
		}
		a.write(e)
	}

	// Directory modes and mtimes last, deepest first (reverse sort), since writing
	// entries moves a directory's mtime and a read-only mode would have blocked them.
	fix := map[string]bool{} // directory -> also set its mode (it was written), not just the mtime
	for _, d := range a.dirs {
		fix[d.path] = true
	}
	for p := range a.touched {
		if e := a.got[p]; e != nil && e.typ == TypeDir && !a.skipped[p] && !fix[p] {
			fix[p] = false
		}
	}
	order := make([]string, 0, len(fix))
	for p := range fix {
		order = append(order, p)
	}
	slices.Sort(order)
	slices.Reverse(order)
	for _, p := range order {
		e := a.got[p]
		if err := finishDir(a.rootfd, p, a.metaOf(e), fix[p]); err != nil {
			a.res.Skipped = append(a.res.Skipped, Skipped{Path: p, Reason: "mode and mtime not set: " + reason(err)})
		}
	}
}

func (a *applier) parentSkipped(p string) bool {
	for q := parentOf(p); q != "."; q = parentOf(q) {
		if a.skipped[q] {
			return true
		}
	}
	return false
}

func same(s Entry, e *staged) bool {
	return s.Type == e.typ && s.Mode == e.mode && s.MTime.Equal(e.mtime) &&
		(e.typ != TypeFile || s.Size == e.size) &&
		(e.typ != TypeSymlink || s.Target == e.target)
}

func (a *applier) metaOf(e *staged) meta {
	m := meta{mode: e.mode &^ specBits, mtime: e.mtime}
	if a.keepOwner && e.uid >= 0 && e.gid >= 0 {
		m.uid, m.gid, m.chown = e.uid, e.gid, true
	}
	return m
}

// delete removes the sent path p, which the pod no longer has, unless the host has
// changed it since it was sent: that change is the host's, not the pod's to undo.
func (a *applier) delete(p string, s Entry) {
	pfd, err := openDirBeneath(a.rootfd, parentOf(p))
	if err == unix.ENOENT {
		return // its directory is gone already
	}
	if err != nil {
		a.skip(p, "not deleted: "+reason(err))
		return
	}
	defer unix.Close(pfd)
	base := baseOf(p)
	st, exists, err := lstatAt(pfd, base)
	if err != nil {
		a.skip(p, "not deleted: "+reason(err))
		return
	}
	if !exists {
		return
	}
	if why := changedOnHost(pfd, base, &st, s); why != "" {
		a.skip(p, "not deleted: "+why)
		return
	}
	flags := 0
	if s.Type == TypeDir {
		flags = unix.AT_REMOVEDIR
	}
	if err := unix.Unlinkat(pfd, base, flags); err != nil {
		a.skip(p, "not deleted: "+reason(err))
		return
	}
	a.res.Deleted++
	a.touched[parentOf(p)] = true
}

// changedOnHost says how base in pfd (st) differs from what Send saw there (s), or "" if
// it does not: only what is still as sent is the pod's to delete or replace.
func changedOnHost(pfd int, base string, st *unix.Stat_t, s Entry) string {
	if kindOf(st.Mode) != s.Type {
		return "changed on the host since it was sent"
	}
	switch s.Type {
	case TypeFile:
		if st.Size != s.Size || !time.Unix(st.Mtim.Unix()).Equal(s.MTime) {
			return "modified on the host since it was sent"
		}
	case TypeSymlink:
		if t, err := readlinkAt(pfd, base); err != nil || t != s.Target {
			return "changed on the host since it was sent"
		}
	}
	return ""
}

// write creates or replaces e in root.
func (a *applier) write(e *staged) {
	p := e.path
	pfd, err := openDirBeneath(a.rootfd, parentOf(p))
	if err != nil {
		a.skip(p, "not written: "+reason(err))
		return
	}
	defer unix.Close(pfd)
	base := baseOf(p)
	st, exists, err := lstatAt(pfd, base)
	if err != nil {
		a.skip(p, "not written: "+reason(err))
		return
	}
	host := kindOf(st.Mode)
	if exists && host != e.typ {
		// Replacing something of another kind deletes it: only allowed for what was
		// sent, unchanged in kind, since the pod may only change what it was given.
		s, ok := a.sent[p]
		if !ok {
			a.skip(p, "not replaced: made on the host since Send")
			return
		}
		if why := changedOnHost(pfd, base, &st, s); why != "" {
			a.skip(p, "not replaced: "+why)
			return
		}
		switch {
		case host == TypeDir:
			// Its sent entries are deleted by now; anything left was not sent.
			if err := unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR); err != nil {
				a.skip(p, "not replaced: "+reason(err))
				return
			}
			exists = false
		case e.typ == TypeDir:
			if err := unix.Unlinkat(pfd, base, 0); err != nil {
				a.skip(p, "not replaced: "+reason(err))
				return
			}
			exists = false
		}
		a.touched[parentOf(p)] = true
	}
	m := a.metaOf(e)
	switch e.typ {
	case TypeDir:
		if !exists {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				a.skip(p, "not written: "+reason(err))
				return
			}
			a.touched[parentOf(p)] = true
		}
		a.dirs = append(a.dirs, e)
	case TypeSymlink:
		if err := symlinkAt(pfd, base, e.target, m); err != nil {
			a.skip(p, "not written: "+reason(err))
			return
		}
		a.touched[parentOf(p)] = true
	case TypeFile:
		if err := a.placeFile(pfd, base, e, m); err != nil {
			a.skip(p, "not written: "+reason(err))
			return
		}
		a.touched[parentOf(p)] = true
	}
	a.res.Written++
	if e.typ != TypeSymlink && e.mode&specBits != 0 {
		a.res.Stripped = append(a.res.Stripped, p)
	}
}

// placeFile puts e's staged content at base in pfd: its metadata is set on the staged
// file, which is then renamed into place (atomic, and a symlink at base is replaced, not
// followed); from another filesystem it is copied to a temporary file there and renamed.
func (a *applier) placeFile(pfd int, base string, e *staged, m meta) error {
	fd, err := unix.Openat(a.stagefd, e.blob, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), e.blob)
	defer f.Close()
	if err := setFileMeta(fd, m); err != nil {
		return err
	}
	if err := unix.UtimesNanoAt(a.stagefd, e.blob, timespecs(m.mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	err = unix.Renameat(a.stagefd, e.blob, pfd, base)
	if err == unix.EXDEV {
		err = writeFileAt(pfd, base, f, m)
	}
	return err
}

// reason words the errors that mean "the host's tree is in the way".
func reason(err error) string {
	switch err {
	case unix.ELOOP, unix.ENOTDIR:
		return "a symlink or non-directory is in the way on the host"
	case unix.EXDEV:
		return "path leaves the workspace"
	case unix.ENOENT:
		return "its directory is missing on the host"
	case unix.ENOTEMPTY, unix.EEXIST:
		return "directory holds entries that were not sent"
	}
	return err.Error()
}
