// Package lockfile takes advisory locks (flock) on files, for moatc processes that must not
// step on each other: the kernel drops a lock when its process dies, so a crash never leaves
// one held.
package lockfile

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Flock takes a lock (unix.LOCK_EX or LOCK_SH, with LOCK_NB not to wait) on path, creating
// it, and returns its release.
func Flock(path string, how int) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
