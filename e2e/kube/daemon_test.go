package kube

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemon is one long-running process of the cluster; its output goes to DIR/logs/NAME.log.
type daemon struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // its exit status, set before done is closed
}

// spawn starts a daemon. PATH has the prefix's bin first: containerd finds its shims there.
func (c *cluster) spawn(name, bin string, args ...string) (*daemon, error) {
	log := c.path("logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(prefix, "bin")+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	d := &daemon{name: name, log: log, cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	c.daemons[name] = d
	c.order = append(c.order, name)
	return d, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, after grace, SIGKILL. A daemon that already exited is left alone.
func (d *daemon) stop(grace time.Duration) {
	if d == nil || d.exited() {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// tail returns the last lines of the daemon's log, for errors.
func (d *daemon) tail() string {
	b, err := os.ReadFile(d.log)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// waitUntil polls ready until it succeeds; it gives up early when d exits, and on ctx's end.
// Either error carries the tail of d's log.
func waitUntil(ctx context.Context, what string, d *daemon, ready func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		last := ready(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("%s exited (%v) while waiting for %s; its log ends:\n%s", d.name, d.err, what, d.tail())
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %s (last: %v); %s's log ends:\n%s", what, last, d.name, d.tail())
		case <-tick.C:
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePorts returns n distinct free ports.
func freePorts(n int) ([]int, error) {
	var ports []int
	seen := map[int]bool{}
	for len(ports) < n {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// flags renders name=value pairs as --name=value arguments.
func flags(kv ...string) []string {
	var args []string
	for i := 0; i+1 < len(kv); i += 2 {
		args = append(args, "--"+kv[i]+"="+kv[i+1])
	}
	return args
}

// kubeBin and prefixBin name the installed binaries.
func kubeBin(name string) string   { return filepath.Join(prefix, "kube", "bin", name) }
func prefixBin(name string) string { return filepath.Join(prefix, "bin", name) }

// commandOutput runs a command and returns its combined output with the error.
func commandOutput(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
