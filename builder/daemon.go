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
	"github.com/moatc/moatc/internal/atomicfile"
)

// Daemon is a buildkitd that moatc starts itself: its own root, socket, pid file and log
// under Dir; the binary from Prefix; no OCI worker; the containerd worker on ContainerdAddress
// in Namespace, with Snapshotter (overlayfs when empty). RUN steps run in Sandbox.
type Daemon struct {
	Dir               string // e.g. ~/.moatc/buildkit; keep it short (socket paths are limited to 108 bytes)
	Prefix            string // where `make setup` installed buildkitd, e.g. /opt/moatc
	ContainerdAddress string // containerd's socket, e.g. ~/.moatc/containerd/containerd.sock
	Namespace         string // containerd namespace the images are built into, e.g. moatc
	Snapshotter       string // the runs' snapshotter, so built images are unpacked for them; default overlayfs
	// Sandbox is where RUN steps run. nil means runc in the host's network namespace: only
	// for measuring what the sandbox costs; moatc always sets it.
	Sandbox *Sandbox
}

// Sandbox confines a build's RUN steps the way runs are confined: a runtime (gVisor) and a
// network of moatc's making, with a run's rules (see cni.Manager.SetupShared).
type Sandbox struct {
	Runtime       string // containerd runtime, e.g. io.containerd.runsc.v1
	RuntimeConfig string // the runsc TOML passed to the shim as its ConfigPath
	CNIConfig     string // the conflist of the RUN steps' network
	CNIBinDir     string // where the CNI plugins are
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

func (d *Daemon) snapshotter() string {
	if d.Snapshotter == "" {
		return "overlayfs"
	}
	return d.Snapshotter
}

func (d *Daemon) socket() string     { return filepath.Join(d.Dir, "buildkitd.sock") }
func (d *Daemon) otelSocket() string { return filepath.Join(d.Dir, "otel.sock") }
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
		"--containerd-worker-snapshotter", d.snapshotter(),
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
		if err := atomicfile.Write(d.configPath(), []byte(d.config()), 0o600); err != nil {
			return err
		}
		return atomicfile.Write(d.argsPath(), []byte(d.settings()), 0o600)
	}); err != nil {
		return err
	}
	// BuildKit bind-mounts its tracing socket into every RUN step when the socket exists;
	// under gVisor the mount point then lands in the image as an empty /dev/otel-grpc.sock.
	// moatc traces nothing, so the socket goes.
	os.Remove(d.otelSocket())
	return d.checkArgs()
}

// checkArgs compares the running daemon's settings with d's.
func (d *Daemon) checkArgs() error {
	b, err := os.ReadFile(d.argsPath())
	if err != nil {
		return nil // started by something else on our socket: trust it
	}
	if want := d.settings(); string(b) != want {
		return fmt.Errorf("the buildkitd on %s runs with other settings (%s); stop it first (its pid is in %s)",
			d.Address(), strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", " "), d.process().PidPath())
	}
	return nil
}

// Stop stops the daemon: SIGTERM, then SIGKILL after the grace period. Builds in flight fail.
func (d *Daemon) Stop(ctx context.Context, grace time.Duration) error {
	return d.process().Stop(ctx, grace)
}

// settings is what a running daemon must agree on with d: its arguments and its config.
func (d *Daemon) settings() string {
	return strings.Join(d.args(), "\n") + "\n" + d.config()
}

// config keeps buildkitd from reading /etc/buildkit/buildkitd.toml, and sets the worker's
// network and runtime.
func (d *Daemon) config() string {
	q := strconv.Quote
	c := `# Written by moatc for its managed buildkitd; rewritten at each start.
root = ` + q(filepath.Join(d.Dir, "root")) + `

[otel]
  socketPath = ` + q(d.otelSocket()) + `

[worker.oci]
  enabled = false

[worker.containerd]
  enabled = true
  address = ` + q(d.ContainerdAddress) + `
  namespace = ` + q(d.Namespace) + `
  snapshotter = ` + q(d.snapshotter()) + `
`
	if d.Sandbox == nil {
		return c + `  networkMode = "host"
`
	}
	// Each RUN step gets a fresh network namespace from CNI (Build sets the sandbox hostname:
	// BuildKit's pooled namespaces are reused without a new ADD, and gVisor takes the address
	// off the interface it serves, so a reused one has none). runtime.options become the
	// runsc shim's runtimeoptions (keys are its Go field names).
	s := d.Sandbox
	return c + `  networkMode = "cni"
  cniConfigPath = ` + q(s.CNIConfig) + `
  cniBinaryPath = ` + q(s.CNIBinDir) + `
  [worker.containerd.runtime]
    name = ` + q(s.Runtime) + `
    options = { TypeUrl = "io.containerd.runsc.v1.options", ConfigPath = ` + q(s.RuntimeConfig) + ` }
`
}
