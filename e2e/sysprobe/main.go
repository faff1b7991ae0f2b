// Command sysprobe makes system calls a workload may meet and prints each one's errno, for
// e2e's TestSeccompAnswers: `NAME=0` or `NAME=ERRNO-NAME`.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	f, err := os.CreateTemp("", "probe")
	if err != nil {
		fmt.Println("tempfile:", err)
		os.Exit(1)
	}
	f.Close()
	path, _ := unix.BytePtrFromString(f.Name())
	calls := []struct {
		name string
		nr   uintptr
		args [6]uintptr
	}{
		// The Sentry has not got fchmodat2; programs fall back to fchmodat on ENOSYS.
		{"fchmodat2", 452, [6]uintptr{uintptr(0xffffff9c), uintptr(unsafe.Pointer(path)), 0o644, unix.AT_SYMLINK_NOFOLLOW}},
		// Denied by the default profile (Docker's): they must stay EPERM.
		{"keyctl", unix.SYS_KEYCTL, [6]uintptr{0}},
		{"add_key", unix.SYS_ADD_KEY, [6]uintptr{}},
		{"request_key", unix.SYS_REQUEST_KEY, [6]uintptr{}},
		{"bpf", unix.SYS_BPF, [6]uintptr{}},
		{"userfaultfd", unix.SYS_USERFAULTFD, [6]uintptr{}},
		{"perf_event_open", unix.SYS_PERF_EVENT_OPEN, [6]uintptr{}},
		{"open_by_handle_at", unix.SYS_OPEN_BY_HANDLE_AT, [6]uintptr{}},
		{"acct", unix.SYS_ACCT, [6]uintptr{}},
		{"kexec_load", unix.SYS_KEXEC_LOAD, [6]uintptr{}},
		// Allowed: the profile's rules still come first.
		{"getpid", unix.SYS_GETPID, [6]uintptr{}},
	}
	for _, c := range calls {
		_, _, e := syscall.Syscall6(c.nr, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4], c.args[5])
		if e == 0 {
			fmt.Printf("%s=0\n", c.name)
		} else {
			fmt.Printf("%s=%s\n", c.name, unix.ErrnoName(e))
		}
	}
	os.Remove(f.Name())
}
