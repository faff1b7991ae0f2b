// Package builder builds dependency images with BuildKit on containerd's worker: buildkitd is
// started from moatc's prefix on demand and left running (like moatc's containerd), builds go
// through BuildKit's Go client with the built-in dockerfile.v0 frontend, and the image lands
// unpacked in containerd's store, ready to run.
package builder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moatc/moatc/state"
)

// Daemon is a buildkitd that moatc starts itself: its own root, socket, pid file and log
// under Dir; the binary from Prefix; no OCI worker; the containerd worker on ContainerdAddress
// in Namespace, with the overlayfs snapshotter and host networking for RUN steps.
type Daemon struct {
	Dir               string // e.g. ~/.moatc/buildkit; keep it short (socket paths are limited to 108 bytes)
	Prefix            string // where `make setup` installed buildkitd, e.g. /opt/moatc
	ContainerdAddress string // containerd's socket, e.g. ~/.moatc/containerd/containerd.sock
	Namespace         string // containerd namespace the images are built into, e.g. moatc
}

// NotInstalledError says buildkitd is missing from the prefix.
type NotInstalledError struct{ Path string }

func (e *NotInstalledError) Error() string {
	return fmt.Sprintf("buildkitd is not installed (looked for %s): run `make setup` as root in the moatc source tree (or set MOATC_PREFIX to where it is installed)", e.Path)
}

// ContainerdDownError says the containerd the worker needs does not answer.
type ContainerdDownError struct{ Address string }

func (e *ContainerdDownError) Error() string {
	return fmt.Sprintf("containerd does not answer on %s; BuildKit's containerd worker needs it: start it first (moatc starts its managed containerd on demand)", e.Address)
}

// Address is the daemon's gRPC address, for BuildKit's client.
func (d *Daemon) Address() string { return "unix://" + d.socket() }

func (d *Daemon) socket() string { return filepath.Join(d.Dir, "buildkitd.sock") }

// LogPath is where the daemon's own output goes.
func (d *Daemon) LogPath() string { return filepath.Join(d.Dir, "buildkitd.log") }

func (d *Daemon) pidPath() string    { return filepath.Join(d.Dir, "buildkitd.pid") }
func (d *Daemon) configPath() string { return filepath.Join(d.Dir, "buildkitd.toml") }
func (d *Daemon) argsPath() string   { return filepath.Join(d.Dir, "buildkitd.args") }

// Binary is the buildkitd executable used.
func (d *Daemon) Binary() string { return filepath.Join(d.Prefix, "bin", "buildkitd") }

// Answering reports whether something accepts connections on the daemon's socket.
func (d *Daemon) Answering() bool { return answering(d.socket()) }

func answering(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Pid returns the daemon's pid when it runs.
func (d *Daemon) Pid() (int, bool) {
	b, err := os.ReadFile(d.pidPath())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || syscall.Kill(pid, 0) != nil {
		return 0, false
	}
	return pid, true
}

func (d *Daemon) args() []string {
	return []string{
		"--config", d.configPath(),
		"--root", filepath.Join(d.Dir, "root"),
		"--addr", d.Address(),
		"--oci-worker=false",
		"--containerd-worker=true",
		"--containerd-worker-addr", d.ContainerdAddress,
		"--containerd-worker-namespace", d.Namespace,
		"--containerd-worker-snapshotter", "overlayfs",
		// RUN steps share the host's network: no CNI setup per step, and a build reaches
		// what the host reaches (the package registries; a file server on 127.0.0.1).
		"--containerd-worker-net", "host",
	}
}

// Start starts the daemon unless it already answers. Concurrent callers serialize on a lock
// and only the first one starts it. A daemon already running with other settings (another
// containerd or namespace) is an error rather than a silent mismatch.
func (d *Daemon) Start(ctx context.Context) error {
	if d.Dir == "" || d.ContainerdAddress == "" || d.Namespace == "" {
		return errors.New("builder: Daemon needs Dir, ContainerdAddress and Namespace")
	}
	if d.Answering() {
		return d.checkArgs()
	}
	if _, err := os.Stat(d.Binary()); err != nil {
		return &NotInstalledError{Path: d.Binary()}
	}
	if !answering(strings.TrimPrefix(d.ContainerdAddress, "unix://")) {
		return &ContainerdDownError{Address: d.ContainerdAddress}
	}
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("starting buildkitd: %w", err)
	}
	unlock, err := state.Lock(filepath.Join(d.Dir, "start.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	if d.Answering() {
		return d.checkArgs()
	}
	if err := state.WriteFile(d.configPath(), []byte(d.config()), 0o600); err != nil {
		return err
	}
	args := d.args()
	if err := state.WriteFile(d.argsPath(), []byte(strings.Join(args, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	os.Remove(d.socket())
	logf, err := os.OpenFile(d.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("starting buildkitd: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(d.Binary(), args...)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(d.Prefix, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = d.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives the moatc command that started it
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting buildkitd: %w", err)
	}
	pid := cmd.Process.Pid
	if err := state.WriteFile(d.pidPath(), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		if d.Answering() {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("buildkitd exited at start (%v); its log is %s:\n%s", err, d.LogPath(), tail(d.LogPath(), 10))
		case <-deadline.C:
			return fmt.Errorf("buildkitd did not answer on %s within 60s; its log is %s", d.Address(), d.LogPath())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkArgs compares the running daemon's settings with d's.
func (d *Daemon) checkArgs() error {
	b, err := os.ReadFile(d.argsPath())
	if err != nil {
		return nil // started by something else on our socket: trust it
	}
	if want := strings.Join(d.args(), "\n") + "\n"; string(b) != want {
		return fmt.Errorf("the buildkitd on %s runs with other settings (%s); stop it first (its pid is in %s)",
			d.Address(), strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", " "), d.pidPath())
	}
	return nil
}

// Stop stops the daemon: SIGTERM, then SIGKILL after the grace period. Builds in flight fail.
func (d *Daemon) Stop(ctx context.Context, grace time.Duration) error {
	pid, ok := d.Pid()
	if !ok {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping buildkitd (pid %d): %w", pid, err)
	}
	deadline := time.Now().Add(grace)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	os.Remove(d.pidPath())
	os.Remove(d.socket())
	return nil
}

// config keeps buildkitd from reading /etc/buildkit/buildkitd.toml; the flags carry the rest.
func (d *Daemon) config() string {
	q := strconv.Quote
	return `# Written by moatc for its managed buildkitd; rewritten at each start.
root = ` + q(filepath.Join(d.Dir, "root")) + `

[worker.oci]
  enabled = false

[worker.containerd]
  enabled = true
  address = ` + q(d.ContainerdAddress) + `
  namespace = ` + q(d.Namespace) + `
  snapshotter = "overlayfs"
  networkMode = "host"
`
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
