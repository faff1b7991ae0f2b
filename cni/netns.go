package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps named network namespaces, so `ip netns` sees moatc's.
const netnsDir = "/run/netns"

func netnsPath(runID string) string { return filepath.Join(netnsDir, netName(runID)) }

// prepareNetnsDir makes /run/netns a shared mount point, as iproute2 does, so a namespace
// bind-mounted there later also appears in mount namespaces made earlier (containerd's, a
// shim's, `ip netns exec`).
func prepareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == unix.EINVAL { // not a mount point yet
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("making %s a shared mount: %w", netnsDir, err)
	}
	return nil
}

// createNetNS makes a new network namespace pinned by a bind mount at path. Inside it, IPv6 is
// off by default, so the eth0 the bridge plugin creates there never gets an IPv6 address;
// lo keeps ::1 (programs that try localhost over IPv6 first still work).
func createNetNS(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Return the thread to the host namespace when done; if that fails, keep it locked so
		// it dies with this goroutine instead of running other goroutines in the wrong netns.
		// (A dying thread would also fire the Pdeathsig of any child the process started from it.)
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		err = func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return os.NewSyscallError("unshare", err)
			}
			src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
			if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind-mounting the namespace on %s: %w", path, err)
			}
			// /proc/sys/net is resolved against the calling thread's namespace.
			return sysctl("net/ipv6/conf/default/disable_ipv6", "1")
		}()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		removeNetNS(path)
		return err
	}
	return nil
}

// removeNetNS unpins a named network namespace; the kernel frees it (and the veth end inside)
// once no process uses it. A missing one is not an error.
func removeNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// sysctl sets a value under /proc/sys; a key that does not exist because IPv6 is compiled
// out or disabled at boot is not an error (IPv6 is then off anyway).
func sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", key)
	if b, err := os.ReadFile(p); err == nil && string(b) == value+"\n" {
		return nil
	}
	err := os.WriteFile(p, []byte(value), 0)
	if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(key, "net/ipv6/") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("setting %s=%s: %w", key, value, err)
	}
	return nil
}
