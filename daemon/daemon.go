// Package daemon runs the background services moatc starts itself (containerd, buildkitd):
// started once under a lock however many moatc processes ask at the same moment, in a session
// of their own so they outlive the command that started them, tracked by a pid file, ready
// when their socket accepts connections, stopped with SIGTERM then SIGKILL.
package daemon

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

	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/state"
)

// Process describes one managed daemon. Its files are Dir/NAME.pid, Dir/NAME.log and
// Dir/start.lock.
type Process struct {
	Name    string        // e.g. containerd; names the files and the messages
	Dir     string        // its directory
	Binary  string        // the executable
	Args    []string      // its arguments
	Socket  string        // it is ready when this unix socket accepts connections
	BinDir  string        // put first on its PATH (where its helpers, e.g. shims, are)
	Timeout time.Duration // how long it may take to answer; 30s when zero
}

// LogPath is where the daemon's output goes.
func (p *Process) LogPath() string { return filepath.Join(p.Dir, p.Name+".log") }

// PidPath is the daemon's pid file.
func (p *Process) PidPath() string { return filepath.Join(p.Dir, p.Name+".pid") }

// Answering reports whether something accepts connections on the socket.
func (p *Process) Answering() bool { return Answering(p.Socket) }

// Answering reports whether something accepts connections on a unix socket.
func Answering(socket string) bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Pid returns the daemon's pid when it runs. The pid file holds the pid and the process's
// start time: after a reboot, or once the daemon died, the pid may belong to another process,
// which must never be taken for the daemon (and signalled by Stop).
func (p *Process) Pid() (int, bool) {
	b, err := os.ReadFile(p.PidPath())
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 {
		return 0, false
	}
	if len(f) >= 2 {
		start, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil || !(&state.Process{Pid: pid, Start: start}).Alive() {
			return 0, false
		}
		return pid, true
	}
	// A pid file of an older moatc, without the start time: the process must at least be
	// running the daemon's binary.
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != filepath.Base(p.Binary) {
		return 0, false
	}
	return pid, true
}

// pidFile is the pid file's content for process pid.
func pidFile(pid int) ([]byte, error) {
	pr, err := state.ProcessOf(pid)
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "%d %d\n", pid, pr.Start), nil
}

// Started returns when the daemon was started.
func (p *Process) Started() (time.Time, bool) {
	fi, err := os.Stat(p.PidPath())
	if err != nil {
		return time.Time{}, false
	}
	return fi.ModTime(), true
}

// Start starts the daemon unless it answers already, and waits until it answers. prepare,
// if set, runs under the lock right before the start (to write config files). Concurrent
// callers serialize on the lock, so only the first one starts it.
func (p *Process) Start(ctx context.Context, prepare func() error) error {
	if p.Answering() {
		return nil
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	unlock, err := state.Lock(filepath.Join(p.Dir, "start.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	if p.Answering() {
		return nil
	}
	if prepare != nil {
		if err := prepare(); err != nil {
			return err
		}
	}
	os.Remove(p.Socket)
	logf, err := os.OpenFile(p.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command(p.Binary, p.Args...)
	cmd.Env = append(os.Environ(), "PATH="+p.BinDir+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = p.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not killed with the terminal
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	content, err := pidFile(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	if err := atomicfile.Write(p.PidPath(), content, 0o600); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if p.Answering() {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("%s exited at start (%v); its log is %s:\n%s", p.Name, err, p.LogPath(), Tail(p.LogPath(), 10))
		case <-deadline.C:
			return fmt.Errorf("%s did not answer on %s within %s; its log is %s", p.Name, p.Socket, timeout, p.LogPath())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop stops the daemon: SIGTERM, then SIGKILL after the grace period.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	pid, ok := p.Pid()
	if !ok {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.Name, pid, err)
	}
	self, _ := state.ProcessOf(pid)
	deadline := time.Now().Add(grace)
	for self.Alive() {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	os.Remove(p.PidPath())
	os.Remove(p.Socket)
	return nil
}

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
