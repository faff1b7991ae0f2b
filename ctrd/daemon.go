package ctrd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/moatc/moatc/daemon"
	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/rootless"
)

// Daemon is the containerd that moatc starts itself when no --address is given: its own root,
// state and socket under Dir, binaries from Prefix, CRI off. It outlives the moatc command that
// started it, so the next command finds it warm.
type Daemon struct {
	Dir    string // e.g. ~/.moatc/containerd
	Prefix string // where `make setup` installed the stack, e.g. /opt/moatc
	// Kit, when set, makes the daemon rootless: containerd runs inside this rootlesskit's
	// namespaces, and the daemon moatc tracks (pid file, stop) is rootlesskit.
	Kit *rootless.Kit
}

// NotInstalledError says containerd is missing from the prefix.
type NotInstalledError struct{ Path string }

func (e *NotInstalledError) Error() string {
	return fmt.Sprintf("containerd is not installed (looked for %s): run `make setup` as root in the moatc source tree (or set MOATC_PREFIX), or point --address at a running containerd", e.Path)
}

// Address is the daemon's gRPC socket.
func (d *Daemon) Address() string { return filepath.Join(d.Dir, "containerd.sock") }

// Binary is the containerd executable used.
func (d *Daemon) Binary() string { return filepath.Join(d.Prefix, "bin", "containerd") }

// TaskDir is where the daemon keeps the task bundles (one directory per container) of
// namespace ns.
func (d *Daemon) TaskDir(ns string) string {
	return filepath.Join(d.Dir, "state", "io.containerd.runtime.v2.task", ns)
}

func (d *Daemon) configPath() string { return filepath.Join(d.Dir, "config.toml") }

func (d *Daemon) process() *daemon.Process {
	if d.Kit != nil {
		kit, _ := rootless.Binary()
		return &daemon.Process{
			Name: "containerd", Dir: d.Dir, Binary: kit, Args: d.Kit.Args(d.Binary(), "--config", d.configPath()),
			Socket: d.Address(), BinDir: filepath.Join(d.Prefix, "bin"),
		}
	}
	return &daemon.Process{
		Name: "containerd", Dir: d.Dir, Binary: d.Binary(), Args: []string{"--config", d.configPath()},
		Socket: d.Address(),
		// The prefix's bin comes first so containerd finds moatc's shims and runsc.
		BinDir: filepath.Join(d.Prefix, "bin"),
	}
}

// Answering reports whether something accepts connections on the socket.
func (d *Daemon) Answering() bool { return daemon.Answering(d.Address()) }

// Pid returns the daemon's pid when it runs.
func (d *Daemon) Pid() (int, bool) { return d.process().Pid() }

// Started returns when the daemon process started.
func (d *Daemon) Started() (time.Time, bool) { return d.process().Started() }

// Start starts the daemon unless it already answers. Concurrent callers (ten `moatc run`s at
// once on a cold machine) serialize on a lock, and only the first one starts it.
func (d *Daemon) Start(ctx context.Context) error {
	if d.Kit != nil && rootless.InUserNamespace() {
		// Inside the namespaces: the kit was started from outside before moatc entered them, and
		// a kit started from here would nest.
		if d.Answering() {
			return nil
		}
		return fmt.Errorf("the rootless containerd at %s is not running: run any moatc command again (it starts it), or `moatc system start`", d.Address())
	}
	return d.process().Start(ctx, func() error {
		if _, err := os.Stat(d.Binary()); err != nil {
			return &NotInstalledError{Path: d.Binary()}
		}
		if d.Kit != nil {
			if _, err := rootless.Binary(); err != nil {
				return err
			}
			if err := rootless.PreflightHome(filepath.Dir(d.Dir)); err != nil {
				return err
			}
			// rootlesskit makes its state directory anew; a dead kit's files would stop it.
			if err := os.RemoveAll(d.Kit.StateDir); err != nil {
				return fmt.Errorf("starting rootlesskit: %w", err)
			}
		}
		return atomicfile.Write(d.configPath(), []byte(d.config()), 0o600)
	})
}

// Stop stops the daemon: SIGTERM, then SIGKILL after the grace period. Tasks keep running in
// their shims; moatc's next command restarts the daemon and finds them again.
func (d *Daemon) Stop(ctx context.Context, grace time.Duration) error {
	return d.process().Stop(ctx, grace)
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
