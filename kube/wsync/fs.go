package wsync

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// noOpenat2 is set once openat2 turns out to be unavailable (old kernel, or a seccomp
// filter answering ENOSYS), so later opens go straight to the component-by-component walk.
// Tests set it to exercise the fallback.
var noOpenat2 atomic.Bool

// openDirBeneath opens the directory rel (clean, relative, "." for dirfd itself) under
// dirfd without following a symlink at any component, so that nothing a workload (or
// anyone) turned into a symlink can redirect a write outside the tree.
func openDirBeneath(dirfd int, rel string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if rel == "." || rel == "" {
		return unix.Openat(dirfd, ".", flags, 0)
	}
	if !noOpenat2.Load() {
		how := unix.OpenHow{
			Flags:   flags,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		fd, err := unix.Openat2(dirfd, rel, &how)
		for i := 0; err == unix.EAGAIN && i < 16; i++ {
			// A concurrent rename somewhere under dirfd: the kernel asks to retry.
			fd, err = unix.Openat2(dirfd, rel, &how)
		}
		switch err {
		case unix.ENOSYS:
			noOpenat2.Store(true) // no openat2 here: walk from now on
		case unix.EPERM:
			// A seccomp filter refusing openat2 itself, most likely: let the walk answer.
		default:
			return fd, err
		}
	}
	// The fallback: one openat per component, each O_NOFOLLOW|O_DIRECTORY, so a symlink
	// anywhere fails with ELOOP (or ENOTDIR) just as RESOLVE_NO_SYMLINKS does. Names are
	// validated clean before getting here, so ".." never appears.
	cur, err := unix.Openat(dirfd, ".", flags, 0)
	if err != nil {
		return -1, err
	}
	for _, c := range strings.Split(rel, "/") {
		if c == ".." || c == "" || c == "." {
			unix.Close(cur)
			return -1, unix.EXDEV
		}
		next, err := unix.Openat(cur, c, flags, 0)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}

// mkdirAllBeneath is openDirBeneath that creates missing directories (mode 0700 until
// their real mode is set) on the way, for Unpack, whose input need not list parents.
func mkdirAllBeneath(dirfd int, rel string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	cur, err := unix.Openat(dirfd, ".", flags, 0)
	if err != nil {
		return -1, err
	}
	if rel == "." || rel == "" {
		return cur, nil
	}
	for _, c := range strings.Split(rel, "/") {
		if c == ".." || c == "" || c == "." {
			unix.Close(cur)
			return -1, unix.EXDEV
		}
		if err := unix.Mkdirat(cur, c, 0o700); err != nil && err != unix.EEXIST {
			unix.Close(cur)
			return -1, err
		}
		next, err := unix.Openat(cur, c, flags, 0)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}

// lstatAt stats name in dirfd without following it; ok is false when it does not exist.
func lstatAt(dirfd int, name string) (st unix.Stat_t, ok bool, err error) {
	err = unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == unix.ENOENT {
		return st, false, nil
	}
	return st, err == nil, err
}

// kindOf maps a stat mode to an entry type; "" for anything wsync does not carry.
func kindOf(mode uint32) EntryType {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return TypeFile
	case unix.S_IFDIR:
		return TypeDir
	case unix.S_IFLNK:
		return TypeSymlink
	}
	return ""
}

func tempName() string {
	var b [8]byte
	rand.Read(b[:])
	return ".wsync-" + hex.EncodeToString(b[:])
}

func timespecs(t time.Time) []unix.Timespec {
	ts := unix.NsecToTimespec(t.UnixNano())
	return []unix.Timespec{ts, ts}
}

// meta is what gets applied to a created object: owner only when chown is set.
type meta struct {
	mode     uint32 // permission and set-id bits
	uid, gid int
	chown    bool
	mtime    time.Time
}

// setFileMeta applies m to the open file fd; chown comes first because it clears set-id
// bits that chmod sets.
func setFileMeta(fd int, m meta) error {
	if m.chown {
		if err := unix.Fchown(fd, m.uid, m.gid); err != nil {
			return err
		}
	}
	return unix.Fchmod(fd, m.mode)
}

// writeFileAt replaces name in dirfd with a regular file holding r's content: it is written
// to a temporary name in the same directory and renamed over name, so readers see the old
// file or the new one, never half of it, and a symlink at name is replaced, not followed.
func writeFileAt(dirfd int, name string, r io.Reader, m meta) error {
	var tmp string
	var fd int
	for {
		tmp = tempName()
		var err error
		fd, err = unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == unix.EEXIST {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err := io.Copy(f, r)
	if err == nil {
		err = setFileMeta(fd, m)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.UtimesNanoAt(dirfd, tmp, timespecs(m.mtime), unix.AT_SYMLINK_NOFOLLOW)
	}
	if err == nil {
		err = unix.Renameat(dirfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
	}
	return err
}

// symlinkAt replaces name in dirfd with a symlink to target, atomically (made under a
// temporary name, then renamed). The target is only stored, never resolved.
func symlinkAt(dirfd int, name, target string, m meta) error {
	var tmp string
	for {
		tmp = tempName()
		err := unix.Symlinkat(target, dirfd, tmp)
		if err == unix.EEXIST {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	var err error
	if m.chown {
		err = unix.Fchownat(dirfd, tmp, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err == nil {
		err = unix.UtimesNanoAt(dirfd, tmp, timespecs(m.mtime), unix.AT_SYMLINK_NOFOLLOW)
	}
	if err == nil {
		err = unix.Renameat(dirfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
	}
	return err
}

// readlinkAt reads the target of the symlink name in dirfd.
func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
		if size > 1<<16 {
			return "", errors.New("symlink target too long")
		}
	}
}

// finishDir sets a directory's owner, mode and mtime once everything under it is written,
// since writing its children would otherwise move the mtime again (and a read-only mode
// would have stopped them being written).
func finishDir(rootfd int, rel string, m meta, setMode bool) error {
	fd, err := openDirBeneath(rootfd, rel)
	if err != nil {
		return err
	}
	if setMode {
		err = setFileMeta(fd, m)
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	pfd, err := openDirBeneath(rootfd, parentOf(rel))
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return unix.UtimesNanoAt(pfd, baseOf(rel), timespecs(m.mtime), unix.AT_SYMLINK_NOFOLLOW)
}

func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return "."
}

func baseOf(p string) string {
	return p[strings.LastIndexByte(p, '/')+1:]
}
