// Package run is moatc's run manager: it turns a request into a container on containerd,
// supervises it (IO, signals, the log, the final state) and reconciles runs whose supervisor
// died. Runs are recorded with the state package.
package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/internal/atomicfile"
	mountpin "github.com/moatc/moatc/mounts"
	"github.com/moatc/moatc/pool"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// Manager starts, supervises and cleans up runs.
type Manager struct {
	Store  *state.Store
	Conn   ctrd.Options
	Net    *cni.Manager // runs' networks; used unless a run says network none
	Prefix string       // the installed stack, e.g. /opt/moatc
	Dir    string       // moatc's home; runsc configs go below it
	// SuperviseCommand returns the argv that runs `moatc _supervise ID` with this manager's
	// settings; detached runs are handed to that process.
	SuperviseCommand func(id string) []string
	// StartEngine starts the Docker engine of a docker-mode run (engine.Engine; see
	// EngineSpec). Nil refuses such runs.
	StartEngine func(ctx context.Context, s EngineSpec) (DockerEngine, error)
	// Pool holds warm starts; nil starts every run cold.
	Pool *pool.Pool
	// Remote stops and removes cluster runs (records with Kube set); nil refuses them.
	Remote Remote

	mu     sync.Mutex
	client *ctrd.Client
}

// Request is a run to start, already resolved from flags and moatc.yaml.
type Request struct {
	Name      string
	Workspace string // absolute
	Spec      state.Spec
	// Ports are Spec.Publish parsed (Resolve fills both); when nil, Start parses Spec.Publish.
	Ports []cni.Port
	// Deps, when set, makes the image from declared dependencies (built once per distinct
	// list); Spec.Image is then ignored.
	Deps *Deps
	// Cold starts the run without the warm pool (--cold).
	Cold bool
}

// Stdio connects a foreground run to the caller's terminal or pipes. In nil means no stdin.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
	Console  console.Console // set when the run has a TTY
}

// ExitError is a failure with its own exit code (126: the command cannot run; 127: not found).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Client connects to containerd once per manager.
func (m *Manager) Client(ctx context.Context) (*ctrd.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.client != nil {
		return m.client, nil
	}
	c, err := ctrd.Connect(ctx, m.Conn)
	if err != nil {
		return nil, err
	}
	m.client = c
	return c, nil
}

// Close releases the containerd connection.
func (m *Manager) Close() {
	if m.client != nil {
		m.client.Close()
	}
}

// Runtime returns the runtime a spec asks for.
func (m *Manager) Runtime(s state.Spec) ctrd.Runtime {
	if s.Runtime == "runc" {
		return ctrd.Runc{Prefix: m.Prefix}
	}
	return ctrd.GVisor{Prefix: m.Prefix, Dir: filepath.Join(m.Dir, "runsc"), Platform: s.Platform, Debug: s.Debug, Rootless: rootless.Enabled(), HostUDS: s.Docker != ""}
}

// probe runs a probe container under rt once per set of runtime binaries, so a runtime that
// is installed but cannot run here is reported before any run is created. The result is
// cached under Dir/probes, keyed by the binaries.
func (m *Manager) probe(ctx context.Context, c *ctrd.Client, rt ctrd.Runtime, img containerd.Image) error {
	kind := rt.Name()
	if g, ok := rt.(ctrd.GVisor); ok && g.Platform != "" {
		kind += "-" + g.Platform // a platform can fail where another works (kvm in a VM)
	}
	mark := filepath.Join(m.Dir, "probes", kind+"-"+ctrd.BinariesKey(m.Prefix, rt.Binaries()...))
	if _, err := os.Stat(mark); err == nil {
		return nil
	}
	// busybox is the smallest image with a shell; the run's own image otherwise.
	if bb, err := c.Image(ctx, "busybox", snapshot.Default()); err == nil {
		img = bb
	}
	if err := c.Probe(ctx, rt, img, snapshot.Default()); err != nil {
		return err
	}
	os.MkdirAll(filepath.Dir(mark), 0o700)
	return atomicfile.Write(mark, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
}

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// Start creates a run and, in the foreground, supervises it to its end and returns its exit
// code. A detached run is handed to a supervisor process and Start returns once it runs.
// Problems found before anything is created (bad input, a missing image or runtime, a name in
// use) leave nothing behind. A run with Spec.Remove is returned as it ended, its record gone.
func (m *Manager) Start(ctx context.Context, req Request, stdio Stdio) (*state.Run, int, error) {
	if err := m.check(ctx, req); err != nil {
		return nil, 0, err
	}
	rt := m.Runtime(req.Spec)
	if err := rt.Check(); err != nil {
		return nil, 0, err
	}
	c, err := m.Client(ctx)
	if err != nil {
		return nil, 0, err
	}
	var buildLog string
	if err := m.dockerMode(&req); err != nil {
		return nil, 0, err
	}
	if req.Deps != nil {
		if req.Spec.Image, buildLog, err = m.BuildImage(ctx, *req.Deps); err != nil {
			return nil, 0, err
		}
	}
	img, err := c.Image(ctx, req.Spec.Image, snapshot.Default())
	if err != nil {
		return nil, 0, err
	}
	if err := m.probe(ctx, c, rt, img); err != nil {
		return nil, 0, err
	}
	req.Spec.Image = img.Name()
	member := m.claim(ctx, req)
	r, err := m.record(c, req, buildLog, member)
	if err != nil {
		if member != nil {
			m.Pool.GiveBack(member)
		}
		return nil, 0, err
	}
	if req.Spec.Detach {
		if err := m.detach(r); err != nil {
			return nil, 0, err
		}
		r, err = m.Store.Get(r.ID)
		return r, 0, err
	}
	code, final, err := m.runToEnd(ctx, r, img, stdio, nil)
	if final != nil {
		r = final
	}
	return r, code, err
}

// check refuses, before anything is created, a request that cannot run: a bad name, a taken
// or impossible port, an exposed home, an unknown grant, a missing init.
func (m *Manager) check(ctx context.Context, req Request) error {
	if req.Name != "" && !validName.MatchString(req.Name) {
		return fmt.Errorf("%q is not a valid run name: use letters, digits, '_', '.' and '-', starting with a letter or digit", req.Name)
	}
	ports := req.Ports
	if ports == nil || req.Spec.Network == state.NetworkNone {
		var err error
		if ports, err = parsePorts(req.Spec); err != nil {
			return err
		}
	}
	// A taken host port is refused before anything exists (Setup binds them for real later).
	if err := m.Net.CheckPorts(ctx, ports); err != nil {
		return err
	}
	if err := m.checkExposure(req.Workspace, req.Spec.Mounts); err != nil {
		return err
	}
	if req.Spec.Network != state.NetworkNone {
		// An unknown grant, an unreadable store or a bad allow entry stops the run here.
		if _, err := m.ResolveEgress(req.Spec); err != nil {
			return err
		}
	} else if len(req.Spec.Grants) > 0 {
		return fmt.Errorf("grants reach the network through the run's proxy: drop --network none, or the grants")
	}
	if req.Spec.Init {
		if _, err := m.InitBinary(); err != nil {
			return err
		}
	}
	return nil
}

// record writes the new run's record, picking a free default name. A run that took a warm
// pool's member takes its id; the member is the run's from then on.
func (m *Manager) record(c *ctrd.Client, req Request, buildLog string, member *pool.Member) (*state.Run, error) {
	id := state.NewID()
	if member != nil {
		id = member.ID
	}
	r := &state.Run{
		ID: id, Name: req.Name, Workspace: req.Workspace, Spec: req.Spec, State: state.Created,
		ContainerID: "moatc-" + id, Namespace: c.Namespace, Address: c.Address,
		Created: time.Now().UTC(), Supervisor: state.Self(),
	}
	if member != nil {
		r.Warm, r.Sandbox = true, member.Sandbox
	}
	if err := m.create(r, req); err != nil {
		return nil, err
	}
	if buildLog != "" {
		// The run's directory keeps the log of the build that made its image.
		os.Link(buildLog, filepath.Join(m.Store.Dir(r.ID), "build.log"))
	}
	if member != nil {
		// The run's record now accounts for the member's sandbox and network.
		if err := m.Pool.Forget(member.ID); err != nil {
			fmt.Fprintf(os.Stderr, "moatc: warning: %v\n", err)
		}
	}
	return r, nil
}

// create writes r's record, picking a free default name when req names none.
func (m *Manager) create(r *state.Run, req Request) error {
	var err error
	// A default name carries 4 digits of the id; when another run has them too, more.
	for _, n := range []int{4, 8, len(r.ID)} {
		if req.Name == "" {
			r.Name = defaultName(req.Workspace, r.ID[:n])
		}
		err = m.Store.Create(r)
		if req.Name != "" || !errors.As(err, new(*state.NameInUseError)) {
			break
		}
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		err = fmt.Errorf("%w; free space in %s (df -h %s) and run again", err, m.Store.Dir(""), m.Store.Dir(""))
	}
	return err
}

// InitBinary is the host's tini-static, which --init mounts read-only as the run's PID 1.
func (m *Manager) InitBinary() (string, error) {
	for _, p := range []string{filepath.Join(m.Prefix, "bin", "tini-static"), "/usr/bin/tini-static"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("--init needs tini-static, which is not installed: run `apt-get install tini` (or `make setup`), or drop --init")
}

func defaultName(workspace, suffix string) string {
	base := strings.Trim(regexp.MustCompile(`[^a-zA-Z0-9_.-]+`).ReplaceAllString(filepath.Base(workspace), "-"), "-.")
	if base == "" || !validName.MatchString(base) {
		base = "run"
	}
	if len(base) > 40 {
		base = base[:40]
	}
	return base + "-" + suffix
}

// execute runs r to its end (see launch) and removes its record then if the run asked so.
func (m *Manager) execute(ctx context.Context, r *state.Run, img containerd.Image, stdio Stdio, started func(error)) (int, error) {
	code, _, err := m.runToEnd(ctx, r, img, stdio, started)
	return code, err
}

// runToEnd is execute, returning the run's final record too. A run with --rm loses its
// record once it has ended (Docker removes the container then, detached or not); one whose
// end could not be recorded keeps it, for the next moatc command to finish.
func (m *Manager) runToEnd(ctx context.Context, r *state.Run, img containerd.Image, stdio Stdio, started func(error)) (int, *state.Run, error) {
	code, err := m.launch(ctx, r, img, stdio, started)
	final, gerr := m.Store.Get(r.ID)
	if gerr != nil {
		return code, nil, err
	}
	if final.Spec.Remove && !final.Active() {
		if rerr := m.Store.Remove(r.ID); rerr != nil {
			fmt.Fprintf(os.Stderr, "moatc: warning: removing the record of run %s (--rm): %v; remove it with `moatc destroy %s`\n", r.Name, rerr, r.ID)
		}
	}
	return code, final, err
}

// launch creates the container and task, supervises them to the end and records the result.
// started, if set, is called once the task runs (or with the error that kept it from running).
func (m *Manager) launch(ctx context.Context, r *state.Run, img containerd.Image, stdio Stdio, started func(error)) (int, error) {
	l := &launching{m: m, r: r, img: img, stdio: stdio, started: started, bg: context.WithoutCancel(ctx), pins: m.pinDir(r.ID)}
	defer l.cleanup()
	c, err := m.Client(ctx)
	if err != nil {
		return l.failed(err, nil)
	}
	l.c = c
	if err := l.mounts(); err != nil {
		return l.failed(err, nil)
	}
	if err := l.create(ctx); err != nil {
		return l.failed(err, nil)
	}
	if l.nw != nil && l.nw.Proxy != nil {
		go l.nw.Proxy.Serve(l.bg)
	}
	if r.Spec.Docker != "" {
		// Before the task: the socket answers the workload's first instruction.
		e, err := m.startEngine(ctx, r, l.nw != nil, true)
		if err != nil {
			c.RemoveContainer(l.bg, r.ContainerID)
			return l.failed(err, nil)
		}
		l.engine = e
	}
	if err := l.openOutput(); err != nil {
		c.RemoveContainer(l.bg, r.ContainerID)
		return l.failed(err, nil)
	}
	if m.stopRequested(r.ID) {
		l.o.abort()
		c.RemoveContainer(l.bg, r.ContainerID)
		return m.stoppedBeforeStart(r.ID, l.notify)
	}
	if err := l.newTask(ctx); err != nil {
		l.o.abort()
		c.RemoveContainer(l.bg, r.ContainerID)
		return l.failed(err, exitCodeOf(err))
	}
	// `moatc stop` of a run not started yet: it is not started.
	if m.stopRequested(r.ID) {
		l.task.Delete(l.bg, containerd.WithProcessKill)
		l.o.abort()
		c.RemoveContainer(l.bg, r.ContainerID)
		return m.stoppedBeforeStart(r.ID, l.notify)
	}
	if err := <-l.hostReady; err != nil {
		l.task.Delete(l.bg, containerd.WithProcessKill)
		l.o.abort()
		c.RemoveContainer(l.bg, r.ContainerID)
		return l.failed(fmt.Errorf("%w; `moatc run --cold` starts without the warm pool", err), nil)
	}
	// The caller's signals are held from before the workload starts (it may act, and be
	// signalled, before Start returns here), and follow passes them on.
	early := make(chan os.Signal, 16)
	signal.Notify(early, forwardedSignals...)
	defer signal.Stop(early)
	if err := l.start(ctx); err != nil {
		return 0, err
	}
	l.notify(nil)
	refilled := make(chan struct{})
	go func() { m.refill(r); close(refilled) }()
	defer func() { <-refilled }()
	code, released, err := m.follow(l.bg, r, l.task, l.statusC, stdio.Console, l.o, early)
	l.netReleased = released
	return code, err
}

// launching is one run's way from its record to a started task.
type launching struct {
	m       *Manager
	r       *state.Run
	img     containerd.Image
	stdio   Stdio
	started func(error)
	bg      context.Context // cleanup must finish even when the caller's context is cancelled
	c       *ctrd.Client
	pins    string
	specMts []specs.Mount
	eg      *egress
	nw      *cni.Network
	netUsed bool // the network was asked for: it is released on every path out
	ctr     containerd.Container
	o       *runOutput
	task    containerd.Task
	statusC <-chan containerd.ExitStatus
	engine  *runEngine // a docker-mode run's
	// hostReady says when a warm sandbox has the run's hostname (nil at once when cold).
	hostReady chan error

	netReleased bool
}

func (l *launching) notify(err error) {
	if l.started != nil {
		l.started(err)
		l.started = nil
	}
}

// failed records that the run could not start and says so to whoever waits for the start.
func (l *launching) failed(err error, code *int) (int, error) {
	l.notify(err)
	l.m.fail(l.r.ID, err, code)
	return 0, err
}

// cleanup releases the network unless follow did (after the container is gone), the proxy,
// and the mount pins.
func (l *launching) cleanup() {
	l.engine.end(l.bg)
	if l.r.Sandbox != "" && !l.netReleased {
		if err := l.m.removeSandbox(l.bg, l.r.ID); err != nil {
			fmt.Fprintf(os.Stderr, "moatc: warning: %v (run `moatc clean` to retry)\n", err)
		}
	}
	if l.netUsed && !l.netReleased {
		l.m.Net.Teardown(l.bg, l.r.ID)
	}
	if l.eg != nil {
		l.eg.close()
	}
	mountpin.Unpin(l.pins)
}

// mounts makes the container's mounts: the workspace, each -m source opened again and pinned
// now (what is mounted is what was resolved, whatever the workload does to the path
// meanwhile; the pins go once the task exists), and the tmpfs mounts.
func (l *launching) mounts() error {
	spec := l.r.Spec
	// nosuid, nodev: a setuid file or device node the workload leaves in the workspace gains
	// nothing on the next run.
	wsMode := "rw"
	if spec.WorkspaceRO {
		wsMode = "ro"
	}
	l.specMts = []specs.Mount{{Destination: "/workspace", Type: "bind", Source: l.r.Workspace, Options: []string{"rbind", wsMode, "nosuid", "nodev"}}}
	for i, mt := range spec.Mounts {
		src, err := l.m.pin(l.r, i, mt)
		if err != nil {
			return err
		}
		mode := "rw"
		if mt.ReadOnly {
			mode = "ro"
		}
		l.specMts = append(l.specMts, specs.Mount{Destination: mt.Container, Type: "bind", Source: src, Options: []string{"rbind", mode, "nosuid", "nodev"}})
	}
	for _, t := range spec.Tmpfs {
		l.specMts = append(l.specMts, specs.Mount{Destination: t.Path, Type: "tmpfs", Source: "tmpfs", Options: t.Options})
	}
	if spec.Docker != "" {
		l.specMts = append(l.specMts, l.m.dockerMounts(l.r.ID)...)
	}
	return nil
}

// create makes the container and, side by side, its network and proxy (their names derive
// from the run id); both must be ready before the task, since gVisor copies the netns at
// task create. On failure nothing of the container is left.
func (l *launching) create(ctx context.Context) error {
	m, r, spec := l.m, l.r, l.r.Spec
	var netns string
	netReady := make(chan error, 1)
	if spec.Network != state.NetworkNone {
		// The run's proxy: grants decrypted, its port bound on the gateway during Setup.
		var err error
		if l.eg, err = m.newEgress(r); err != nil {
			return err
		}
		paths := m.Net.Paths(r.ID)
		netns = paths.NetNSPath
		l.specMts = append(l.specMts,
			specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: paths.HostsPath, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
			specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: paths.ResolvPath, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
		l.netUsed = true
		go func() {
			var err error
			l.nw, err = m.setupNetwork(ctx, r, l.eg)
			netReady <- err
		}()
	} else {
		netReady <- nil
	}
	var initBin string
	if spec.Init {
		var err error
		if initBin, err = m.InitBinary(); err != nil {
			<-netReady
			return err
		}
	}
	if spec.Docker != "" {
		// The engine's env names the run's subnet: the network first.
		err := <-netReady
		netReady <- err
		spec.Env = append(append([]string{}, spec.Env...), dockerEnv(l.nw)...)
	}
	l.hostReady = make(chan error, 1)
	if r.Sandbox != "" {
		// A warm sandbox has the pool's hostname; every container in it sees the sandbox's.
		// Set while the container and its task are made; the task starts once it is.
		go func() { l.hostReady <- l.c.SetHostname(ctx, r.Sandbox, pick(spec.Hostname, r.Name)) }()
	} else {
		l.hostReady <- nil
	}
	ctr, err := l.c.CreateContainer(ctx, ctrd.Container{
		ID: r.ContainerID, RunID: r.ID, Role: ctrd.RoleWorkload, Image: l.img, Snapshotter: snapshot.Default(),
		Runtime: m.Runtime(spec), Args: spec.Command, Env: spec.Env, Cwd: pick(spec.Workdir, "/workspace"), User: spec.User,
		Mounts: l.specMts, TTY: spec.TTY, Hostname: pick(spec.Hostname, r.Name), Memory: spec.Memory, CPUs: spec.CPUs, Pids: spec.Pids,
		NetNS: netns, CapAdd: spec.CapAdd, ReadOnly: spec.ReadOnly, Init: initBin, Labels: spec.Labels,
		Rootless: rootless.Enabled(), Sandbox: r.Sandbox,
	})
	if netErr := <-netReady; err == nil && netErr != nil {
		l.c.RemoveContainer(l.bg, r.ContainerID)
		err = netErr
	}
	if err == nil && l.eg != nil {
		// Before the task: the workload's first request already goes through the proxy.
		if err = l.eg.start(l.bg, l.nw); err == nil {
			err = l.eg.attach(ctx, ctr, l.img, l.nw)
		}
		if err != nil {
			l.c.RemoveContainer(l.bg, r.ContainerID)
		}
	}
	l.ctr = ctr
	return err
}

// openOutput prepares the run's log. The shim owns the output of a run with no stdin or
// terminal of moatc's; moatc records that of an interactive one itself.
func (l *launching) openOutput() error {
	logPath := l.m.Store.LogPath(l.r.ID)
	l.o = &runOutput{}
	var err error
	if l.stdio.In == nil && l.stdio.Console == nil {
		err = prepareLog(logPath)
	} else {
		l.o.rec, err = newRecorder(logPath, l.r.Spec.LogMax)
	}
	if err != nil {
		err = fmt.Errorf("opening the run's log: %w", err)
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			err = l.m.recordError("the run's output", err)
		}
	}
	return err
}

// newTask creates the task with its IO, then lets the mount pins go, and starts printing the
// shim's log of a foreground run.
func (l *launching) newTask(ctx context.Context) error {
	spec, stdio := l.r.Spec, l.stdio
	logPath := l.m.Store.LogPath(l.r.ID)
	var creator cio.Creator
	taskReady := make(chan struct{})
	if l.o.rec == nil {
		exe, err := l.m.loggerPath()
		if err != nil {
			return err
		}
		creator = shimLog(exe, logPath, spec.LogMax, spec.TTY)
	} else {
		var stdin io.Reader
		if stdio.In != nil {
			// At EOF the shim must be told to close the workload's stdin, or it never sees EOF.
			stdin = &stdinCloser{r: stdio.In, close: func() {
				<-taskReady
				if l.task != nil {
					l.task.CloseIO(l.bg, containerd.WithStdinCloser)
				}
			}}
		}
		outLog, errLog := l.o.rec.stream("stdout"), l.o.rec.stream("stderr")
		if spec.TTY {
			outLog = l.o.rec.stream("tty")
		}
		ioOpts := []cio.Opt{cio.WithStreams(stdin, tee(stdio.Out, outLog), tee(stdio.Err, errLog))}
		if spec.TTY {
			ioOpts = append(ioOpts, cio.WithTerminal)
		}
		creator = cio.NewCreator(ioOpts...)
	}
	task, err := l.ctr.NewTask(ctx, creator)
	l.task = task
	close(taskReady)
	// runc has made the container's mounts, and gVisor's gofer its own: the pins can go.
	if uerr := mountpin.Unpin(l.pins); uerr != nil {
		fmt.Fprintf(os.Stderr, "moatc: warning: %v (run `moatc clean` to retry)\n", uerr)
	}
	if err != nil {
		return startError(err)
	}
	if l.o.rec == nil && (stdio.Out != nil || stdio.Err != nil) {
		l.o.tail = tailOutput(logPath, stdio.Out, stdio.Err)
	}
	if stdio.Console != nil {
		// Size the TTY before the command starts, so its first look at the size is right.
		if sz, err := stdio.Console.Size(); err == nil {
			task.Resize(ctx, uint32(sz.Width), uint32(sz.Height))
		}
	}
	return nil
}

// start starts the task and records it running. On failure nothing is left but the record
// saying why, and the waiter is told.
func (l *launching) start(ctx context.Context) error {
	m, r, task, bg := l.m, l.r, l.task, l.bg
	statusC, err := task.Wait(bg)
	if err == nil {
		err = task.Start(ctx)
	}
	if err != nil {
		task.Delete(bg, containerd.WithProcessKill)
		l.o.abort()
		l.c.RemoveContainer(bg, r.ContainerID)
		_, err = l.failed(startError(err), exitCodeOf(startError(err)))
		return err
	}
	l.statusC = statusC
	now := time.Now().UTC()
	if _, err := m.Store.Update(r.ID, func(r *state.Run) error {
		if r.State == state.Created {
			r.State = state.Running
		}
		r.Pid, r.Started = int(task.Pid()), &now
		r.Output = l.o.owner()
		return nil
	}); err != nil {
		// A run that cannot be recorded is not left running unrecorded.
		ctrd.KillAll(bg, task)
		<-statusC
		task.Delete(bg)
		l.o.abort()
		l.c.RemoveContainer(bg, r.ContainerID)
		err = m.recordError("the start of run "+r.ID, err)
		l.notify(err)
		return err
	}
	return nil
}

// follow supervises a started task to its end: it forwards signals, waits (through containerd
// restarts), drains the output into the log, records the end, and removes the task, the
// container and the network. It reports whether the network was released; when the end
// cannot be recorded, the task and container stay for the next command to record.
func (m *Manager) follow(bg context.Context, r *state.Run, task containerd.Task, statusC <-chan containerd.ExitStatus,
	con console.Console, o *runOutput, early chan os.Signal) (int, bool, error) {
	defer o.tail.finish()
	c, err := m.Client(bg)
	if err != nil {
		return 0, false, err
	}
	stopSignals := m.forwardSignals(bg, task, con)
	if early != nil {
		// What came before forwardSignals took over goes on now, in order.
		signal.Stop(early)
		for len(early) > 0 {
			if s := (<-early).(syscall.Signal); s != syscall.SIGWINCH {
				task.Kill(bg, s)
			}
		}
	}
	status := <-statusC
	stopSignals()
	taskIO := task.IO()
	if status.Error() != nil {
		// containerd went away (a restart, an upgrade, `system stop --force`) while the task
		// runs on in its shim: follow it again once containerd answers. The end is recorded
		// only from a real exit status.
		var lost error
		if task, status, lost = m.rewait(bg, r, con, status.Error()); lost != nil {
			o.abort()
			m.fail(r.ID, lost, nil)
			return 0, false, lost
		}
		if nc, err := m.Client(bg); err == nil {
			c = nc // the connection rewait made
		}
	}
	code := int(status.ExitCode())
	if code == 128 && r.Sandbox != "" {
		// The whole warm sandbox was killed (its memory limit is the sandbox's): its second
		// container ends with 128 alone, where a cold run's sandbox reports the kill (137).
		if sc, ok := c.SandboxExit(bg, r.Sandbox); ok && sc > 128 {
			code = int(sc)
		}
	}
	var logErr error
	if o.rec != nil {
		// Drain the output before Delete: containerd v2.4's client closes the FIFOs in Delete
		// (cio's Cancel), cutting off whatever a slow reader had not copied yet. The shim
		// closes its ends once the container's processes are gone; the timeout covers a
		// stuck shim.
		drained := make(chan struct{})
		go func() { taskIO.Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(30 * time.Second):
		}
		if task.IO() != taskIO {
			taskIO.Cancel() // the task was followed again without IO: its FIFOs go here
			taskIO.Close()
		}
		// A log that could not be written (a full disk) is said, not hidden.
		logErr = o.rec.Close()
	}
	// The end is recorded before the task goes: if it cannot be, the stopped task keeps its
	// exit status in containerd, and the next moatc command records the real end from there.
	fin := time.Now().UTC()
	if _, err := m.Store.Update(r.ID, func(r *state.Run) error {
		r.State, r.ExitCode, r.Finished = state.Stopped, &code, &fin
		if logErr != nil {
			r.Error = "recording the output failed, the log is incomplete: " + logErr.Error()
		}
		return nil
	}); err != nil {
		return code, false, m.recordError(fmt.Sprintf("the end of run %s (exit code %d)", r.ID, code), err)
	}
	// For a shim-owned log, Delete returns once the logger has finished: the log is whole.
	task.Delete(bg)
	if o.rec == nil {
		logErr = m.noteLostOutput(r.ID)
	}
	if logErr != nil {
		fmt.Fprintf(os.Stderr, "moatc: warning: recording the run's output: %v; its log is incomplete\n", logErr)
	}
	// A warm run's container, sandbox and network go in a process of their own: the run's
	// end is recorded, and its moatc need not wait for them.
	if r.Warm && m.releaseDetached(r.ID) {
		return code, true, nil
	}
	// The task is gone: the network and the container are released side by side.
	netDown := make(chan struct{})
	go func() {
		defer close(netDown)
		if r.Sandbox != "" {
			if err := m.removeSandbox(bg, r.ID); err != nil {
				fmt.Fprintf(os.Stderr, "moatc: warning: %v (run `moatc clean` to retry)\n", err)
			}
		}
		if r.Spec.Network != "none" {
			if err := m.Net.Release(bg, r.ID); err != nil {
				fmt.Fprintf(os.Stderr, "moatc: warning: %v (run `moatc clean` to retry)\n", err)
			}
		}
	}()
	if _, err := c.RemoveContainer(bg, r.ContainerID); err != nil {
		fmt.Fprintf(os.Stderr, "moatc: warning: %v (run `moatc clean` to retry)\n", err)
	}
	<-netDown
	return code, true, nil
}

// runOutput is where a run's output goes: moatc's own recorder (rec, interactive runs) or
// the shim's logger, whose log a foreground run prints as it grows (tail).
type runOutput struct {
	rec  *recorder
	tail *outputTail
}

// owner is what the run's record says of it.
func (o *runOutput) owner() string {
	if o.rec != nil {
		return "moatc"
	}
	return "shim"
}

// abort ends the output of a run that did not get to its end.
func (o *runOutput) abort() {
	if o.rec != nil {
		o.rec.Close()
	}
	o.tail.finish()
}

// noteLostOutput records in run id's record the output its logger could not write, once the
// task is deleted (the logger has finished), and returns it as an error.
func (m *Manager) noteLostOutput(id string) error {
	st, ok := readLogStatus(m.Store.Dir(id))
	if !ok {
		return nil
	}
	lost := st.lostError()
	if lost == nil {
		return nil
	}
	m.Store.Update(id, func(r *state.Run) error {
		r.Error = "recording the output failed, the log is incomplete: " + lost.Error()
		return nil
	})
	return lost
}

// loggerPath is the moatc binary the shim runs as the logger.
func (m *Manager) loggerPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding the moatc binary for the run's logger: %w", err)
	}
	return exe, nil
}

// recordError says that what could not be recorded, and what to do: on a full disk, free
// space where the runs are kept.
func (m *Manager) recordError(what string, err error) error {
	fix := "see the error, then run any moatc command (it records what it can from containerd)"
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		fix = fmt.Sprintf("free space in %s (df -h %s), then run any moatc command: it records the run from containerd", m.Store.Dir(""), m.Store.Dir(""))
	}
	return fmt.Errorf("recording %s failed: %w; %s", what, err, fix)
}

// rewait follows run r's task again after its wait failed with cause: it waits for containerd
// to answer (never starting the managed one: someone stopped it), loads the task without
// touching its IO (moatc still holds the FIFOs) and waits on it, as often as containerd goes
// away. It returns the task and its real exit status, or why the run is lost.
func (m *Manager) rewait(ctx context.Context, r *state.Run, con console.Console, cause error) (containerd.Task, containerd.ExitStatus, error) {
	fmt.Fprintf(os.Stderr, "moatc: lost containerd while following run %s (%v); the workload runs on: waiting for containerd to answer again\n", r.Name, cause)
	for {
		time.Sleep(250 * time.Millisecond)
		c, err := m.reconnect(ctx)
		if err != nil {
			continue
		}
		ctr, err := c.LoadContainer(ctx, r.ContainerID)
		if errdefs.IsNotFound(err) {
			return nil, containerd.ExitStatus{}, fmt.Errorf("containerd came back without the run's container %s; its end is unknown", r.ContainerID)
		}
		if err != nil {
			continue
		}
		task, err := ctr.Task(ctx, nil)
		if errdefs.IsNotFound(err) {
			return nil, containerd.ExitStatus{}, fmt.Errorf("containerd came back without the run's task; its end is unknown")
		}
		if err != nil {
			continue
		}
		statusC, err := task.Wait(ctx)
		if err != nil {
			continue
		}
		stop := m.forwardSignals(ctx, task, con)
		st := <-statusC
		stop()
		if st.Error() == nil {
			return task, st, nil
		}
	}
}

// reconnect replaces the manager's containerd connection with a new one, once containerd
// answers. The managed containerd is not started from here.
func (m *Manager) reconnect(ctx context.Context) (*ctrd.Client, error) {
	if m.Conn.Address == "" && m.Conn.Daemon != nil && !m.Conn.Daemon.Answering() {
		return nil, errors.New("containerd is not answering")
	}
	c, err := ctrd.Connect(ctx, m.Conn)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	old := m.client
	m.client = c
	m.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return c, nil
}

// stopRequested reports whether `moatc stop` marked run id before its workload started.
func (m *Manager) stopRequested(id string) bool {
	cur, err := m.Store.Get(id)
	return err == nil && cur.State == state.Stopping
}

// stoppedBeforeStart records that run id was stopped before its workload started (as if by
// SIGTERM: 143) and says so to whoever waits for the start.
func (m *Manager) stoppedBeforeStart(id string, notify func(error)) (int, error) {
	code := 143
	why := "the run was stopped (moatc stop) before its workload started"
	notify(&ExitError{Code: code, Err: errors.New(why)})
	fin := time.Now().UTC()
	m.Store.Update(id, func(r *state.Run) error {
		r.State, r.ExitCode, r.Finished, r.Error = state.Stopped, &code, &fin, why
		return nil
	})
	return code, nil
}

// pinDir is where run id's mount sources are pinned while its container is made.
func (m *Manager) pinDir(id string) string { return filepath.Join(m.Dir, "pins", id) }

// pin opens mount i of run r the way the request resolved it and pins what it opened; the
// record gets the host path really mounted.
func (m *Manager) pin(r *state.Run, i int, mt state.Mount) (string, error) {
	f, err := mountpin.Open(r.Workspace, pick(mt.Source, mt.Host))
	if err != nil {
		return "", err
	}
	defer f.Close()
	real, err := mountpin.RealPath(f)
	if err != nil {
		return "", err
	}
	if real != mt.Host {
		m.Store.Update(r.ID, func(r *state.Run) error {
			r.Spec.Mounts[i].Host = real
			return nil
		})
	}
	return mountpin.Pin(f, m.pinDir(r.ID), strconv.Itoa(i))
}

// checkExposure refuses a workspace, or a writable mount, that holds moatc's home or its
// prefix: the workload could rewrite what the person trusted, other runs' records, or the
// runtime's own binaries.
func (m *Manager) checkExposure(ws string, ms []state.Mount) error {
	real := func(p string) string {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		return filepath.Clean(p)
	}
	guarded := []struct{ what, path string }{{"moatc's home", real(m.Dir)}, {"moatc's installed stack", real(m.Prefix)}}
	for _, g := range guarded {
		if mountpin.Inside(g.path, real(ws)) {
			return fmt.Errorf("the workspace %s holds %s (%s), which the workload could then rewrite: run in a project directory instead, or move moatc's home with --home (MOATC_HOME)", ws, g.what, g.path)
		}
		for _, mt := range ms {
			if !mt.ReadOnly && mountpin.Inside(g.path, real(mt.Host)) {
				return fmt.Errorf("the writable mount %s:%s holds %s (%s), which the workload could then rewrite: mount it read-only (:ro) or mount a narrower directory", pick(mt.Source, mt.Host), mt.Container, g.what, g.path)
			}
		}
	}
	return nil
}

func pick(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// setupNetwork gives run r its network and records its address and ports.
func (m *Manager) setupNetwork(ctx context.Context, r *state.Run, eg *egress) (*cni.Network, error) {
	ports, err := parsePorts(r.Spec)
	if err != nil {
		return nil, err
	}
	var hostPorts []cni.HostPort
	for _, h := range r.Spec.HostPorts {
		hp, err := cni.ParseHostPort(h)
		if err != nil {
			return nil, err
		}
		hostPorts = append(hostPorts, hp)
	}
	o := cni.Options{Hostname: pick(r.Spec.Hostname, r.Name), Ports: ports, HostPorts: hostPorts}
	if eg != nil {
		o.Strict, o.Listen = eg.cfg.Policy.Strict, eg.listen
	}
	var nw *cni.Network
	if r.Warm {
		nw, err = m.Net.Finish(ctx, r.ID, o) // made ahead by the pool: the run's part only
	} else {
		nw, err = m.Net.Setup(ctx, r.ID, o)
		if full := new(cni.FullError); errors.As(err, &full) && m.Pool != nil {
			// Idle pool members hold addresses; a run needs one more than they do.
			if evicted, eerr := m.Pool.Evict(ctx); evicted && eerr == nil {
				fmt.Fprintf(os.Stderr, "moatc: the address pool %s is full: a warm pool member was removed to make room\n", full.Pool)
				nw, err = m.Net.Setup(ctx, r.ID, o)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	var published []string
	for _, p := range nw.Ports {
		published = append(published, fmt.Sprintf("%s:%d->%d/%s", p.HostIP, p.HostPort, p.ContainerPort, p.Proto))
	}
	m.Store.Update(r.ID, func(r *state.Run) error {
		r.IP, r.Gateway, r.Ports = nw.IP.String(), nw.Gateway.String(), published
		return nil
	})
	return nw, nil
}

func parsePorts(s state.Spec) ([]cni.Port, error) {
	if len(s.Publish) > 0 && s.Network == "none" {
		return nil, fmt.Errorf("ports cannot be published with network none: drop -p/ports or the network setting")
	}
	var ports []cni.Port
	for _, p := range s.Publish {
		port, err := cni.ParsePublish(p)
		if err != nil {
			return nil, err
		}
		ports = append(ports, port)
	}
	return ports, nil
}

// forwardSignals sends the signals moatc receives to the workload, and keeps a TTY's size in
// step with the caller's terminal. The returned func stops it.
// forwardedSignals are the signals moatc passes to a workload (SIGWINCH: a resize).
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

func (m *Manager) forwardSignals(ctx context.Context, task containerd.Process, con console.Console) func() {
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, forwardedSignals...)
	resize := func() {
		if con == nil {
			return
		}
		if sz, err := con.Size(); err == nil {
			task.Resize(ctx, uint32(sz.Width), uint32(sz.Height))
		}
	}
	resize()
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigc:
				if s == syscall.SIGWINCH {
					resize()
				} else {
					task.Kill(ctx, s.(syscall.Signal))
				}
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(sigc); close(done) }
}

// fail records that a run could not start or was lost.
func (m *Manager) fail(id string, cause error, code *int) {
	now := time.Now().UTC()
	m.Store.Update(id, func(r *state.Run) error {
		r.State, r.Error, r.Finished = state.Failed, cause.Error(), &now
		if code != nil {
			r.ExitCode = code
		}
		return nil
	})
}

// startError maps a runtime's refusal to start a command onto Docker's exit codes.
func startError(err error) error {
	msg := err.Error()
	// Only the runtime's own exec of the command counts; a shim or mount failure that happens
	// to say "permission denied" is moatc's problem (125).
	if !strings.Contains(msg, "exec:") && !strings.Contains(msg, "unable to start container process") {
		return fmt.Errorf("starting the container: %w", err)
	}
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"):
		return &ExitError{Code: 127, Err: fmt.Errorf("starting the command: not found in the image: %w", err)}
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "exec format error"):
		return &ExitError{Code: 126, Err: fmt.Errorf("starting the command: it cannot be run: %w", err)}
	}
	return fmt.Errorf("starting the container: %w", err)
}

func exitCodeOf(err error) *int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return &ee.Code
	}
	return nil
}

type stdinCloser struct {
	r     io.Reader
	close func()
	once  sync.Once
}

func (s *stdinCloser) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err == io.EOF {
		s.once.Do(func() { go s.close() })
	}
	return n, err
}
