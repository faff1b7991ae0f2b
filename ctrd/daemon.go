package ctrd

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

// Daemon is the containerd that moatc starts itself when no --address is given: its own root,
// state and socket under Dir, binaries from Prefix, CRI off. It outlives the moatc command that
// started it, so the next command finds it warm.
type Daemon struct {
	Dir    string // e.g. ~/.moatc/containerd
	Prefix string // where `make setup` installed the stack, e.g. /opt/moatc
}

// NotInstalledError says containerd is missing from the prefix.
type NotInstalledError struct{ Path string }

func (e *NotInstalledError) Error() string {
	return fmt.Sprintf("containerd is not installed (looked for %s): run `make setup` as root in the moatc source tree (or set MOATC_PREFIX), or point --address at a running containerd", e.Path)
}

// Address is the daemon's gRPC socket.
func (d *Daemon) Address() string { return filepath.Join(d.Dir, "containerd.sock") }

// LogPath is where the daemon's output goes.
func (d *Daemon) LogPath() string { return filepath.Join(d.Dir, "containerd.log") }

func (d *Daemon) pidPath() string { return filepath.Join(d.Dir, "containerd.pid") }

// Binary is the containerd executable used.
func (d *Daemon) Binary() string { return filepath.Join(d.Prefix, "bin", "containerd") }

// Answering reports whether something accepts connections on the socket.
func (d *Daemon) Answering() bool { return answering(d.Address()) }

func answering(addr string) bool {
	c, err := net.DialTimeout("unix", addr, time.Second)
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

// Started returns when the daemon process started.
func (d *Daemon) Started() (time.Time, bool) {
	fi, err := os.Stat(d.pidPath())
	if err != nil {
		return time.Time{}, false
	}
	return fi.ModTime(), true
}

// Start starts the daemon unless it already answers. Concurrent callers (ten `moatc run`s at
// once on a cold machine) serialize on a lock, and only the first one starts it.
func (d *Daemon) Start(ctx context.Context) error {
	if d.Answering() {
		return nil
	}
	if _, err := os.Stat(d.Binary()); err != nil {
		return &NotInstalledError{Path: d.Binary()}
	}
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("starting containerd: %w", err)
	}
	unlock, err := state.Lock(filepath.Join(d.Dir, "start.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	if d.Answering() {
		return nil
	}
	cfg := filepath.Join(d.Dir, "config.toml")
	if err := state.WriteFile(cfg, []byte(d.config()), 0o600); err != nil {
		return err
	}
	os.Remove(d.Address())
	logf, err := os.OpenFile(d.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("starting containerd: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(d.Binary(), "--config", cfg)
	// The prefix's bin comes first so containerd finds moatc's shims and runsc.
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(d.Prefix, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = d.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not killed with the terminal
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting containerd: %w", err)
	}
	pid := cmd.Process.Pid
	if err := state.WriteFile(d.pidPath(), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		if d.Answering() {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("containerd exited at start (%v); its log is %s:\n%s", err, d.LogPath(), tail(d.LogPath(), 10))
		case <-deadline.C:
			return fmt.Errorf("containerd did not answer on %s within 30s; its log is %s", d.Address(), d.LogPath())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop stops the daemon: SIGTERM, then SIGKILL after the grace period. Tasks keep running in
// their shims; moatc's next command restarts the daemon and finds them again.
func (d *Daemon) Stop(ctx context.Context, grace time.Duration) error {
	pid, ok := d.Pid()
	if !ok {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping containerd (pid %d): %w", pid, err)
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
	os.Remove(d.Address())
	return nil
}

func (d *Daemon) config() string {
	q := strconv.Quote
	return `# Written by moatc for its managed containerd; rewritten at each start.
version = 3
root = ` + q(filepath.Join(d.Dir, "root")) + `
state = ` + q(filepath.Join(d.Dir, "state")) + `
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
]

[grpc]
  address = ` + q(d.Address()) + `

[ttrpc]
  address = ` + q(filepath.Join(d.Dir, "containerd.sock.ttrpc")) + `

[plugins."io.containerd.internal.v1.opt"]
  path = ` + q(filepath.Join(d.Dir, "opt")) + `
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
