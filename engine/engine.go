// Package engine serves the Docker Engine API on a unix socket and carries every call out on
// containerd, in a namespace of its own: no Docker daemon anywhere. The API's types are
// Docker's own (github.com/moby/moby/api); the router, the state and the streams are moatc's.
//
// One file an area of the API (system.go, container_*.go); each registers its endpoints in an
// init func (see router.go). Containers are containerd containers labelled with the engine's
// run (ctrd.LabelRunID, ctrd.LabelRole = Role); what Docker keeps of a container beyond that
// (its config, its state, its log) is in the engine's state directory, one directory a
// container.
package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/internal/lockfile"
)

// Role is the moatc.role label of the containers an engine makes.
const Role = "engine"

// LabelName holds a container's Docker name on its containerd container, so `ctr` and
// `moatc` show it.
const LabelName = "moatc.engine.name"

// Config is what an engine works with.
type Config struct {
	// Client is connected to the engine's own containerd namespace (Client.Namespace).
	Client *ctrd.Client
	// Runtime runs the containers: gVisor, or runc with --no-sandbox. Rootless must match it.
	Runtime  ctrd.Runtime
	Rootless bool
	// RunID is the run the engine serves: the moatc.run-id label of everything it makes.
	RunID string
	// StateDir keeps the containers' Docker configs, states and logs.
	StateDir    string
	Snapshotter string
	// LoggerExe is the moatc binary, which the shims run as the containers' logger.
	LoggerExe string
	// InitBinary is tini-static, for HostConfig.Init; "" refuses --init.
	InitBinary string
	// Prefix is where the stack is installed, for the runtime's version.
	Prefix string
	// Version is moatc's version, shown as the engine's.
	Version string
	// LogMax caps each container's log files; 0 is the runs' default.
	LogMax int64

	// Net and NetRun: containers join the network of run NetRun (made by Net.Setup before the
	// engine starts), so the run reaches them and they obey its rules. Nil: loopback only.
	Net    *cni.Manager
	NetRun string

	// Mounts are the run's own mounts as its workload sees them: bind sources of containers
	// made through the engine are paths in the workload's view, mapped through these.
	Mounts []Mount
	// Socket is the engine's socket on the host; SocketTarget is where the workload sees it
	// (/var/run/docker.sock). Binding SocketTarget gives a container the same engine.
	Socket       string
	SocketTarget string
	// VolumeDir holds named volumes; default StateDir/volumes. docker:host runs share one.
	VolumeDir string
	// Strict: the run's egress policy is strict, and its engine pulls nothing (image_registry.go).
	Strict bool
	// PrivateRegistries lets pulls reach registries on the host or internal networks, which
	// are closed to runs (`moatc _engine --allow-private-registry`, for development and tests).
	PrivateRegistries bool
	// ReaperExe is moatc-reaper, made into testcontainers' reaper image on demand (reaper.go);
	// default: next to LoggerExe.
	ReaperExe string

	// Builder carries out POST /build on moatc's buildkitd; nil answers builds with 501.
	Builder *Builder
}

// Mount is one of the run's mounts: Target as the workload sees it, Source on the host.
type Mount struct {
	Target   string
	Source   string
	ReadOnly bool
}

// Engine is one Docker Engine API server.
type Engine struct {
	cfg    Config
	id     string
	unlock func()

	mu      sync.Mutex
	ctrs    map[string]*ctr // by full id
	changed chan struct{}   // closed and replaced whenever a container's state changes
	// createMu makes a name's check and its taking one step: two clients racing on a
	// name get one container and one 409.
	createMu sync.Mutex
	// volMu makes a volume's check for users and its removal one step, against creates
	// that take it (see volume.go).
	volMu    sync.Mutex
	reaperMu sync.Mutex // one reaper image written at a time

	bg      context.Context // the watchers'; cancelled by Close
	cancel  context.CancelFunc
	workers sync.WaitGroup

	srvMu sync.Mutex
	srv   *http.Server

	events eventBus
	execs  execTable  // container_exec.go
	nw     netState   // network.go
	ports  portsState // network_ports.go
}

// New opens the engine's state, takes it over (one engine a namespace at a time), and follows
// the containers still running from an engine before it.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Client == nil || cfg.Runtime == nil || cfg.StateDir == "" || cfg.RunID == "" {
		return nil, errors.New("starting the engine: a containerd client, a runtime, a state directory and a run id are needed")
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "containers"), 0o700); err != nil {
		return nil, fmt.Errorf("starting the engine: %w", err)
	}
	unlock, err := lockfile.Flock(filepath.Join(cfg.StateDir, "engine.lock"), unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("starting the engine: another engine serves namespace %s (its state %s is locked): stop it first", cfg.Client.Namespace, cfg.StateDir)
		}
		return nil, fmt.Errorf("starting the engine: %w", err)
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e := &Engine{cfg: cfg, id: engineID(cfg.StateDir), unlock: unlock, ctrs: map[string]*ctr{}, changed: make(chan struct{}), bg: bg, cancel: cancel}
	if err := e.unpinAll(); err != nil {
		e.Close()
		return nil, err
	}
	if err := e.load(ctx); err != nil {
		e.Close()
		return nil, err
	}
	if cfg.Net != nil {
		e.reopenPorts()
	}
	return e, nil
}

// Handler is the engine's HTTP handler, for tests and for callers with their own server.
func (e *Engine) Handler() http.Handler { return e.newMux() }

// Serve answers on l until Shutdown; it returns http.ErrServerClosed then.
func (e *Engine) Serve(l net.Listener) error {
	srv := &http.Server{
		Handler: e.newMux(),
		// Headers must come quickly; bodies and streams (attach, logs -f, wait) may last.
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute, // a client that keeps a connection and goes quiet

		MaxHeaderBytes: 1 << 20,
		BaseContext:    func(net.Listener) context.Context { return e.bg },
	}
	e.srvMu.Lock()
	e.srv = srv
	e.srvMu.Unlock()
	return srv.Serve(l)
}

// Listen makes the unix socket at path (replacing a stale one), mode 0660.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("making the engine's socket: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("making the engine's socket: something already answers on %s", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("making the engine's socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("making the engine's socket: %w", err)
	}
	return l, nil
}

// Shutdown stops answering: no new requests, the ones in flight get until ctx ends. The
// containers keep running; the next engine on the namespace follows them again.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.srvMu.Lock()
	srv := e.srv
	e.srvMu.Unlock()
	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
		if err != nil {
			srv.Close()
		}
	}
	e.Close()
	return err
}

// Close stops following the containers and releases the state. Streams still open end.
func (e *Engine) Close() {
	e.cancel()
	e.workers.Wait()
	if e.unlock != nil {
		e.unlock()
		e.unlock = nil
	}
}

// Destroy removes everything the engine's namespace holds (containers, images, leases) and
// the namespace itself, then the engine's state: what a docker:dind run leaves behind is
// nothing. Call it after Shutdown, or on an engine never served.
func (e *Engine) Destroy(ctx context.Context) error {
	var errs []error
	e.mu.Lock()
	all := make([]*ctr, 0, len(e.ctrs))
	for _, c := range e.ctrs {
		all = append(all, c)
	}
	e.mu.Unlock()
	for _, c := range all {
		if err := e.removeContainer(ctx, c, true); err != nil {
			errs = append(errs, err)
		}
	}
	if err := e.cfg.Client.DestroyNamespace(ctx, e.cfg.Snapshotter); err != nil {
		errs = append(errs, err)
	}
	if g, ok := e.cfg.Runtime.(ctrd.GVisor); ok {
		// The shims' runsc root for the namespace: empty once its sandboxes are gone.
		os.Remove(filepath.Join(g.StateRoot(), e.cfg.Client.Namespace))
	}
	if err := e.unpinAll(); err != nil {
		errs = append(errs, err) // never remove the state through a pinned workspace
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(e.cfg.StateDir); err != nil {
			errs = append(errs, fmt.Errorf("removing the engine's state: %w", err))
		}
	}
	return errors.Join(errs...)
}

// notify wakes everyone waiting on a container's state. Call with e.mu held.
func (e *Engine) notify() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// waitChange waits for the next change of any container's state (got with e.mu held, as
// ch := e.changed), or ctx's end.
func waitChange(ctx context.Context, ch <-chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// engineID is the engine's ID in /info: stable for a state directory.
func engineID(dir string) string {
	p := filepath.Join(dir, "engine-id")
	if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
		return string(b)
	}
	id := newID()[:32]
	os.WriteFile(p, []byte(id), 0o600)
	return id
}
