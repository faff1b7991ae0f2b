package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/sys"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/shim/v1/runsc"
)

const (
	// shimOOMScore is the score gVisor's shim gives itself (one above the
	// least killable). Lowering a score needs CAP_SYS_RESOURCE.
	shimOOMScore = -999

	// groupAnnotation names the pod a CRI container belongs to; with shim
	// grouping on, all containers of a pod share one shim.
	groupAnnotation = "io.kubernetes.cri.sandbox-id"

	// moatcGroupAnnotation, on a container started in a booted sandbox (a
	// moatc warm pool's), names the sandbox whose shim serves it too: no shim
	// of its own is started, whatever the global grouping setting says.
	moatcGroupAnnotation = "dev.moatc.shim-group"
)

// manager is gVisor's shim manager with Start replaced and Stop wrapped. Name
// and Info are gVisor's.
type manager struct {
	shim.Manager
}

// deletedMarker is the file, in a container's bundle, by which the long-lived
// shim tells the `delete` command that the container's task was deleted: its
// `runsc delete` has succeeded and its rootfs was unmounted.
const deletedMarker = "runsc-deleted"

// markDeleted leaves deletedMarker in bundle (best effort: without it, Stop
// does the whole clean-up again).
func markDeleted(bundle string) {
	if err := os.WriteFile(filepath.Join(bundle, deletedMarker), nil, 0o644); err != nil {
		log.L.WithError(err).Debug("runsc shim: cannot mark task deleted")
	}
}

// Stop implements shim.Manager. It runs in the short-lived `delete` command
// that containerd execs in the bundle after every shim exits, also after a
// clean task Delete; that command sits between the task's Delete and the
// container's removal. gVisor's Stop runs `runsc delete --force` and unmounts
// the rootfs. When the shim has already deleted the task (deletedMarker), the
// runsc container no longer exists and `runsc delete --force` would only fail
// to find it, so just the (cheap, idempotent) unmount is done. Otherwise (the
// shim died, the task was never deleted) gVisor's Stop runs unchanged. Either
// way a binary logger still running is ended and its FIFOs are removed.
func (m *manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	// The binary logger of a task whose shim died, and its FIFOs (binaryio.go),
	// in parallel with the rest: both are bounded, and the delete command runs
	// under containerd's 5 s clean-up timeout.
	loggerDone := make(chan struct{})
	go func() {
		defer close(loggerDone)
		cleanLoggerFiles(".")
	}()
	defer func() { <-loggerDone }()
	if _, err := os.Stat(deletedMarker); err != nil {
		return m.Manager.Stop(ctx, id)
	}
	log.L.Debugf("StopShim, id: %v: task already deleted", id)
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	var st runsc.State
	if err := st.Load(cwd); err != nil {
		return shim.StopStatus{}, err
	}
	if err := mount.UnmountAll(st.Rootfs, 0); err != nil {
		log.L.Infof("failed to cleanup rootfs mount: %v", err)
	}
	// What gVisor's Stop returns; containerd ignores it after a clean delete.
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(unix.SIGKILL)}, nil
}

// Start implements shim.Manager. It runs in the short-lived `start` command
// that containerd execs: it forks the long-lived shim, hands it the listening
// socket and prints the bootstrap reply. It does what gVisor's Start does,
// except that failing to lower the shim's OOM score is not fatal: on hosts
// whose capability bounding set lacks CAP_SYS_RESOURCE (root all the same)
// the write to /proc/PID/oom_score_adj fails with EACCES, and the stock shim
// then kills the shim it just forked and fails the container.
//
// containerd reads this command's stdout and stderr together
// (exec.Cmd.CombinedOutput) and parses them as the bootstrap reply, so
// nothing may be printed to either: diagnostics go to the shim log FIFO that
// containerd reads into its own log.
func (m *manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ shim.BootstrapParams, retErr error) {
	restore := logToShimLog()
	defer restore()

	grouping := id
	if group := specAnnotation("config.json", moatcGroupAnnotation); group != "" {
		grouping = group
	} else if groupingEnabled() {
		if group := specAnnotation("config.json", groupAnnotation); group != "" {
			grouping = group
		}
	}

	cmd, err := shimCommand(ctx, id, opts)
	if err != nil {
		return shim.BootstrapParams{}, err
	}
	address, err := shim.SocketAddress(ctx, opts.Address, grouping, opts.Debug)
	if err != nil {
		return shim.BootstrapParams{}, err
	}
	reply := shim.BootstrapParams{Version: 2, Address: address, Protocol: "ttrpc"}

	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return shim.BootstrapParams{}, fmt.Errorf("create new shim socket: %w", err)
		}
		// Grouping: the pod's shim is already serving this address.
		if shim.CanConnect(address) {
			if err := writeAddress(address); err != nil {
				return shim.BootstrapParams{}, fmt.Errorf("write existing socket for shim: %w", err)
			}
			return reply, nil
		}
		// A stale socket left by a shim that died.
		if err := shim.RemoveSocket(address); err != nil {
			return shim.BootstrapParams{}, fmt.Errorf("remove pre-existing socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return shim.BootstrapParams{}, fmt.Errorf("try create new shim socket 2x: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()

	// The shim reads "address" back to remove its socket on shutdown.
	if err := writeAddress(address); err != nil {
		return shim.BootstrapParams{}, err
	}
	f, err := socket.File()
	if err != nil {
		return shim.BootstrapParams{}, err
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, f) // fd 3: the shim's listener
	if err := cmd.Start(); err != nil {
		f.Close()
		return shim.BootstrapParams{}, err
	}
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	go cmd.Wait()

	if err := shim.WritePidFile("shim.pid", cmd.Process.Pid); err != nil {
		return shim.BootstrapParams{}, err
	}
	// Best effort: a shim with the default score is still a working shim.
	if err := sys.SetOOMScore(cmd.Process.Pid, shimOOMScore); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).
			Warnf("runsc shim: cannot set OOM score %d on shim (needs CAP_SYS_RESOURCE); keeping the inherited score", shimOOMScore)
	}
	return reply, nil
}

// shimCommand is the command line of the long-lived shim: this binary again,
// in the bundle directory, in its own process group.
func shimCommand(ctx context.Context, id string, opts shim.StartOpts) (*exec.Cmd, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-address", opts.Address, "-id", id}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// logToShimLog sends logrus output (containerd/log) to the bundle's "log"
// FIFO, which containerd opened before running `start` and copies to its own
// log, or discards it when there is none. It returns a function restoring the
// previous output.
func logToShimLog() func() {
	std := logrus.StandardLogger()
	prev := std.Out
	var out io.Writer = io.Discard
	f, err := os.OpenFile("log", os.O_WRONLY|os.O_APPEND|syscall.O_NONBLOCK, 0)
	if err == nil {
		out = f
	}
	std.SetOutput(out)
	return func() {
		std.SetOutput(prev)
		if f != nil {
			f.Close()
		}
	}
}

func writeAddress(address string) error {
	return os.WriteFile("address", []byte(address), 0o644)
}

// groupingEnabled reads the shim's own config file, in the places gVisor's
// shim looks for it, for `grouping = true`.
func groupingEnabled() bool {
	for _, path := range []string{
		"/run/containerd/runsc/config.toml",
		"/etc/containerd/runsc/config.toml",
		"config.toml",
	} {
		if _, err := os.Stat(path); err != nil {
			continue
		}
		var opts runsc.Options
		if _, err := toml.DecodeFile(path, &opts); err != nil {
			return false
		}
		return opts.Grouping
	}
	return false
}

// specAnnotation returns one annotation of the OCI spec at path, or "".
func specAnnotation(path, key string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(b, &spec) != nil {
		return ""
	}
	return spec.Annotations[key]
}
