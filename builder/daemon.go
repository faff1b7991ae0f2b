// Package builder builds dependency images with BuildKit on containerd's worker: buildkitd is
// started from moatc's prefix on demand and left running (like moatc's containerd), builds go
// through BuildKit's Go client with the built-in dockerfile.v0 frontend, and the image lands
// unpacked in containerd's store, ready to run.
package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moatc/moatc/daemon"
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

func (d *Daemon) socket() string     { return filepath.Join(d.Dir, "buildkitd.sock") }
func (d *Daemon) configPath() string { return filepath.Join(d.Dir, "buildkitd.toml") }
func (d *Daemon) argsPath() string   { return filepath.Join(d.Dir, "buildkitd.args") }

// Binary is the buildkitd executable used.
func (d *Daemon) Binary() string { return filepath.Join(d.Prefix, "bin", "buildkitd") }

func (d *Daemon) process() *daemon.Process {
	return &daemon.Process{
		Name: "buildkitd", Dir: d.Dir, Binary: d.Binary(), Args: d.args(), Socket: d.socket(),
		BinDir: filepath.Join(d.Prefix, "bin"), Timeout: 60 * time.Second,
	}
}

// LogPath is where the daemon's own output goes.
func (d *Daemon) LogPath() string { return d.process().LogPath() }

// Answering reports whether something accepts connections on the daemon's socket.
func (d *Daemon) Answering() bool { return daemon.Answering(d.socket()) }

// Pid returns the daemon's pid when it runs.
func (d *Daemon) Pid() (int, bool) { return d.process().Pid() }

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
	if !daemon.Answering(strings.TrimPrefix(d.ContainerdAddress, "unix://")) {
		return &ContainerdDownError{Address: d.ContainerdAddress}
	}
	if err := d.process().Start(ctx, func() error {
		if err := state.WriteFile(d.configPath(), []byte(d.config()), 0o600); err != nil {
			return err
		}
		return state.WriteFile(d.argsPath(), []byte(strings.Join(d.args(), "\n")+"\n"), 0o600)
	}); err != nil {
		return err
	}
	return d.checkArgs()
}

// checkArgs compares the running daemon's settings with d's.
func (d *Daemon) checkArgs() error {
	b, err := os.ReadFile(d.argsPath())
	if err != nil {
		return nil // started by something else on our socket: trust it
	}
	if want := strings.Join(d.args(), "\n") + "\n"; string(b) != want {
		return fmt.Errorf("the buildkitd on %s runs with other settings (%s); stop it first (its pid is in %s)",
			d.Address(), strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", " "), d.process().PidPath())
	}
	return nil
}

// Stop stops the daemon: SIGTERM, then SIGKILL after the grace period. Builds in flight fail.
func (d *Daemon) Stop(ctx context.Context, grace time.Duration) error {
	return d.process().Stop(ctx, grace)
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
