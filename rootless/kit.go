// Package rootless is moatc for an ordinary user: its containerd runs inside rootlesskit's
// user, mount and network namespaces, and moatc enters those namespaces (as uid 0 of the user
// namespace) to do what needs privileges there: network namespaces, CNI, firewall rules, bind
// mounts. Everything stays under moatc's home; nothing needs root after the one-time set-up
// that Check describes.
package rootless

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Enabled reports whether moatc works rootless: run by a user other than root, or already
// inside a user namespace (moatc re-entered by Enter, or a process it started there).
func Enabled() bool { return os.Geteuid() != 0 || InUserNamespace() }

// InUserNamespace reports whether this process is in a user namespace other than the host's.
// The host's maps every id to itself.
// Read once: a process never changes user namespace (moatc enters one by executing anew), and
// every container, runtime and probe asks.
func InUserNamespace() bool { return inUserNamespace() }

var inUserNamespace = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
})

// Kit is the rootlesskit that holds moatc's namespaces. Its state directory holds child_pid
// (the process whose namespaces moatc enters) and api.sock (the port driver).
type Kit struct {
	StateDir string
	Self     string // the moatc binary, run as the kit's child (ChildCommand)
}

// ChildCommand is the hidden command rootlesskit runs inside the namespaces: it prepares the
// mount namespace (Child) and then becomes containerd.
const ChildCommand = "_rootless-child"

// Binary is rootlesskit's path.
func Binary() (string, error) {
	p, err := exec.LookPath("rootlesskit")
	if err != nil {
		return "", &MissingError{What: "rootlesskit", Fix: "sudo apt-get install -y rootlesskit slirp4netns uidmap"}
	}
	return p, nil
}

// MissingError says a part rootless mode needs is not installed.
type MissingError struct{ What, Fix string }

func (e *MissingError) Error() string {
	return fmt.Sprintf("rootless moatc needs %s, which is not installed: run `%s` (or `make setup` as root in the moatc source tree)", e.What, e.Fix)
}

// Args are rootlesskit's arguments for running child (containerd, through ChildCommand).
//
// slirp4netns is the network driver: rootlesskit 1.1 (Debian 12) has no pasta driver. The
// host's loopback is open to the namespace at slirp4netns's 10.0.2.2, so that a run can reach
// the host ports opened to it (--host-port); moatc's rules close it, and the host's own
// addresses, to runs otherwise (see the cni package). /etc, /run and /var/lib are copied up so
// the child can replace what it must own there (Child).
func (k Kit) Args(child ...string) []string {
	args := []string{
		"--state-dir=" + k.StateDir,
		"--net=slirp4netns", "--mtu=65520", "--slirp4netns-sandbox=auto", "--slirp4netns-seccomp=auto",
		"--port-driver=builtin",
		"--copy-up=/etc", "--copy-up=/run", "--copy-up=/var/lib",
		"--propagation=rslave",
		"--",
		k.Self, ChildCommand,
	}
	return append(args, child...)
}

// ChildPid is the pid of the kit's child: entering its namespaces is entering moatc's.
func (k Kit) ChildPid() (int, error) {
	b, err := os.ReadFile(filepath.Join(k.StateDir, "child_pid"))
	if err != nil {
		return 0, fmt.Errorf("finding rootlesskit's namespaces: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("finding rootlesskit's namespaces: %s holds no pid", filepath.Join(k.StateDir, "child_pid"))
	}
	return pid, nil
}

// APISocket is the kit's API (ports).
func (k Kit) APISocket() string { return filepath.Join(k.StateDir, "api.sock") }

// Inside reports whether this process is in the kit's user and network namespaces.
func (k Kit) Inside() bool {
	pid, err := k.ChildPid()
	if err != nil {
		return false
	}
	for _, ns := range []string{"user", "net"} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err1 != nil || err2 != nil || mine != its {
			return false
		}
	}
	return true
}

// Enter runs this moatc command again inside the kit's namespaces, replacing this process
// (same pid, same terminal, same signals), as uid 0 of the user namespace. It returns only on
// failure.
func (k Kit) Enter() error {
	pid, err := k.ChildPid()
	if err != nil {
		return err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return &MissingError{What: "nsenter", Fix: "sudo apt-get install -y util-linux"}
	}
	wd, err := os.Getwd()
	if err != nil {
		wd = "/"
	}
	// Entering the mount namespace moves the working directory to its root: keep ours.
	args := []string{"nsenter", "-U", "--preserve-credentials", "-m", "-n", "-t", strconv.Itoa(pid), "--wd=" + wd, "--", k.Self}
	args = append(args, os.Args[1:]...)
	err = syscall.Exec(nsenter, args, os.Environ())
	return fmt.Errorf("entering rootlesskit's namespaces: %w", err)
}

// keepInRun are the entries of the host's /run that stay visible in the mount namespace:
// the rest (containerd's, moatc's, netns, xtables.lock) belong to the host's root and are
// replaced by the namespace's own.
var keepInRun = map[string]bool{"user": true, "systemd": true, "resolvconf": true, "dbus": true, "shm": true, "lock": true}

// Child prepares the mount namespace rootlesskit made and then executes argv (containerd). It
// runs as uid 0 of the user namespace: /run and /var/lib are tmpfs copies whose entries are
// links to the host's (owned by the host's root, so not writable here). moatc's and
// containerd's directories there are made anew, private to the namespace.
func Child(argv []string) error {
	if len(argv) == 0 {
		return errors.New("rootless child: no command to run")
	}
	if err := replaceLinks("/run", func(name string) bool { return !keepInRun[name] }); err != nil {
		return err
	}
	if err := replaceLinks("/var/lib", func(name string) bool { return name == "cni" }); err != nil {
		return err
	}
	for _, d := range []string{"/run/containerd", "/run/netns", "/run/moatc", "/var/lib/cni"} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("rootless child: %w", err)
		}
	}
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("rootless child: %w", err)
	}
	return fmt.Errorf("rootless child: starting %s: %w", argv[0], syscall.Exec(bin, argv, os.Environ()))
}

// replaceLinks removes the symbolic links in dir whose names drop selects.
func replaceLinks(dir string, drop func(string) bool) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("rootless child: %w", err)
	}
	for _, e := range ents {
		if e.Type()&os.ModeSymlink == 0 || !drop(e.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("rootless child: %w", err)
		}
	}
	return nil
}

// HostUID is the user moatc acts for on the host: the effective uid outside a user
// namespace, and inside one the host uid that the namespace's uid maps to.
func HostUID() int {
	uid := os.Geteuid()
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return uid
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		in, err1 := strconv.Atoi(f[0])
		out, err2 := strconv.Atoi(f[1])
		n, err3 := strconv.Atoi(f[2])
		if err1 == nil && err2 == nil && err3 == nil && uid >= in && uid-in < n {
			return out + uid - in
		}
	}
	return uid
}
