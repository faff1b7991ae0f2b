package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	ctrdnetns "github.com/containerd/containerd/v2/pkg/netns"
	"github.com/vishvananda/netns"
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

// createNetNS makes a new network namespace pinned by a bind mount at /run/netns/NAME (named
// after the run, so Teardown and Paths need only the run id: containerd's pkg/netns would pick a
// random name). Inside it, IPv6 is off by default, so the eth0 the bridge plugin creates there
// never gets an IPv6 address; lo keeps ::1 (programs that try localhost over IPv6 first still work).
func createNetNS(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Return the thread to the host namespace when done; if that fails, keep it locked so
		// it dies with this goroutine instead of running other goroutines in the wrong netns.
		// (A dying thread would also fire the Pdeathsig of any child the process started from it.)
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		err = func() error {
			ns, err := netns.NewNamed(filepath.Base(path))
			if err != nil {
				return fmt.Errorf("making the namespace: %w", err)
			}
			ns.Close()
			// /proc/sys/net is resolved against the calling thread's namespace.
			return sysctl("net/ipv6/conf/default/disable_ipv6", "1")
		}()
		if netns.Set(orig) == nil {
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
	if err := ctrdnetns.LoadNetNS(path).Remove(); err != nil {
		return fmt.Errorf("removing netns %s: %w", path, err)
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
