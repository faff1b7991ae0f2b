package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/builder"
	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/internal/lockfile"
	"github.com/moatc/moatc/policy"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// Docker modes of a run (the `docker:` dependency).
const (
	DockerHost = "host" // a shared engine namespace that outlives runs
	DockerDind = "dind" // a namespace private to the run, removed with it
)

// DockerSocketTarget is where a docker-mode run sees its engine's socket.
const DockerSocketTarget = "/var/run/docker.sock"

// HostNamespace is the containerd namespace docker:host runs share.
const HostNamespace = "moatc-docker"

// DindNamespace is run id's private containerd namespace (docker:dind).
func DindNamespace(id string) string { return "moatc-dind-" + id }

// DockerEngine is a running Docker Engine API server (engine.Engine).
type DockerEngine interface {
	Shutdown(ctx context.Context) error
	Destroy(ctx context.Context) error
}

// EngineSpec is what a docker-mode run's engine is started with; the engine package turns it
// into its Config (it imports run for its logs, so run cannot import it: cmd/moatc sets
// Manager.StartEngine).
type EngineSpec struct {
	Client       *ctrd.Client // connected to the engine's namespace
	Runtime      ctrd.Runtime
	Rootless     bool
	RunID        string
	StateDir     string
	Socket       string
	SocketTarget string
	VolumeDir    string
	Net          *cni.Manager // nil: loopback only
	NetRun       string
	Mounts       []EngineMount
	LoggerExe    string
	InitBinary   string
	Prefix       string
	LogMax       int64
	// Strict: the run's egress policy is strict (its engine pulls nothing).
	Strict bool
	// Build and HoldBuild carry out docker build on the runs' buildkitd (Manager.HoldBuilder).
	Build     *builder.Daemon
	HoldBuild func(ctx context.Context) (end func(), err error)
}

// EngineMount is one of the run's mounts as its workload sees it.
type EngineMount struct {
	Target, Source string
	ReadOnly       bool
}

// dockerNamespace is the engine namespace of run r.
func dockerNamespace(r *state.Run) string {
	if r.Spec.Docker == DockerHost {
		return HostNamespace
	}
	return DindNamespace(r.ID)
}

// engineSocket is run id's engine socket on the host.
func (m *Manager) engineSocket(id string) string {
	return filepath.Join(m.Store.Dir(id), "docker.sock")
}

// engineStateDir is run r's engine state: under the run for both modes (a docker:host run's
// containers are its own and go with it; its images and volumes are the shared namespace's).
func (m *Manager) engineStateDir(id string) string { return filepath.Join(m.Store.Dir(id), "engine") }

// DockerCLITarget is where a docker-mode run finds moatc's own Docker CLI.
const DockerCLITarget = "/usr/local/bin/docker"

// DockerComposeTarget is where a docker-mode run finds moatc's compose plugin: a directory
// the Docker CLI searches for plugins by itself.
const DockerComposeTarget = "/usr/local/lib/docker/cli-plugins/docker-compose"

// dockerMounts are a docker-mode run's engine socket and moatc's own static Docker CLI
// (read-only: any base image, busybox too, gets a CLI that matches the engine, and no Docker
// daemon comes with it; dockerMode made sure it is installed), and its compose plugin when
// `make setup` could build it (optional).
func (m *Manager) dockerMounts(id string) []specs.Mount {
	mts := []specs.Mount{
		{Destination: DockerSocketTarget, Type: "bind", Source: m.engineSocket(id), Options: []string{"rbind", "rw", "nosuid", "nodev", "noexec"}},
		{Destination: DockerCLITarget, Type: "bind", Source: filepath.Join(m.Prefix, "bin", "docker"), Options: []string{"rbind", "ro", "nosuid", "nodev"}},
	}
	if compose := filepath.Join(m.Prefix, "lib", "docker", "cli-plugins", "docker-compose"); isFile(compose) {
		mts = append(mts, specs.Mount{Destination: DockerComposeTarget, Type: "bind", Source: compose, Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	}
	return mts
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// dockerEnv is what a docker-mode run's workload is told of its engine.
func dockerEnv(nw *cni.Network) []string {
	env := []string{"DOCKER_HOST=unix://" + DockerSocketTarget, "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE=" + DockerSocketTarget}
	if nw != nil && nw.Subnet.IsValid() {
		env = append(env, "TESTCONTAINERS_HOST_OVERRIDE="+cni.PortsAddr(nw.Subnet).String())
	}
	return env
}

// startEngine starts run r's engine in this process (the run's supervisor), answering on its
// socket before the workload starts. At the run's launch (first) a dind run first gets the
// images it asked for; an adopting supervisor finds them (or what the workload made of them).
func (m *Manager) startEngine(ctx context.Context, r *state.Run, netUp, first bool) (*runEngine, error) {
	if m.StartEngine == nil {
		return nil, errors.New("starting the run's Docker engine: this moatc has no engine")
	}
	// Held until the engine's end is done: destroy and clean wait for it, not race it.
	unlock, err := lockfile.Flock(m.engineLock(r.ID), unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		return nil, fmt.Errorf("starting the run's Docker engine: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unlock()
		}
	}()
	ns := dockerNamespace(r)
	c, err := ctrd.Connect(ctx, ctrd.Options{Address: m.Conn.Address, Namespace: ns, Daemon: m.Conn.Daemon})
	if err != nil {
		return nil, fmt.Errorf("starting the run's Docker engine: %w", err)
	}
	src := m.Conn.Namespace
	if src == "" {
		src = ctrd.DefaultNamespace
	}
	if first && r.Spec.Docker == DockerDind {
		for _, ref := range r.Spec.DindImages {
			if _, err := c.CopyImage(ctx, src, ref, snapshot.Default()); err != nil {
				c.Close()
				return nil, fmt.Errorf("making image %s available to the run's engine: %w", ref, err)
			}
		}
	}
	exe, err := m.loggerPath()
	if err != nil {
		c.Close()
		return nil, err
	}
	initBin, _ := m.InitBinary()
	mts := []EngineMount{{Target: "/workspace", Source: r.Workspace, ReadOnly: r.Spec.WorkspaceRO}}
	for _, mt := range r.Spec.Mounts {
		mts = append(mts, EngineMount{Target: mt.Container, Source: mt.Host, ReadOnly: mt.ReadOnly})
	}
	volumes := ""
	if r.Spec.Docker == DockerHost {
		volumes = filepath.Join(m.Dir, "engine", HostNamespace, "volumes")
	}
	spec := EngineSpec{
		Client: c, Runtime: m.Runtime(r.Spec), Rootless: rootless.Enabled(), RunID: r.ID,
		StateDir: m.engineStateDir(r.ID), Socket: m.engineSocket(r.ID), SocketTarget: DockerSocketTarget,
		VolumeDir: volumes, Mounts: mts, LoggerExe: exe, InitBinary: initBin, Prefix: m.Prefix, LogMax: r.Spec.LogMax,
		Build: m.BuildDaemon(), HoldBuild: m.HoldBuilder, Strict: r.Spec.Policy == policy.Strict,
	}
	if netUp {
		spec.Net, spec.NetRun = m.Net, r.ID
	}
	e, err := m.StartEngine(ctx, spec)
	if err != nil {
		c.Close()
		return nil, err
	}
	ok = true
	return &runEngine{DockerEngine: e, m: m, id: r.ID, c: c, dind: r.Spec.Docker == DockerDind, socket: spec.Socket, unlock: unlock}, nil
}

// runEngine is a run's engine with its connection.
type runEngine struct {
	DockerEngine
	m      *Manager
	id     string
	c      *ctrd.Client
	dind   bool
	socket string
	unlock func()
}

// end stops the engine at the run's end; a dind run's namespace goes with everything in it.
func (e *runEngine) end(ctx context.Context) {
	if e == nil {
		return
	}
	e.Shutdown(ctx)
	os.Remove(e.socket)
	var err error
	if e.dind {
		err = e.Destroy(ctx)
	} else {
		// A docker:host run's containers are its own; the namespace's images stay.
		err = e.m.removeHostContainers(ctx, e.id)
		os.RemoveAll(e.m.engineStateDir(e.id))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "moatc: warning: removing the run's Docker engine: %v (run `moatc clean` to retry)\n", err)
	}
	e.c.Close()
	e.unlock()
}

// engineLock is held by run id's supervisor while its engine lives.
func (m *Manager) engineLock(id string) string { return filepath.Join(m.Store.Dir(id), "engine.lock") }

// awaitEngineEnd waits (up to a minute) for run id's supervisor to finish its engine's end.
func (m *Manager) awaitEngineEnd(id string) {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		unlock, err := lockfile.Flock(m.engineLock(id), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			unlock()
			return
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return // no run directory: no engine
		}
	}
}

// removeEngineLeftovers removes what run id's engine left (a supervisor killed with -9): a
// dind run's namespace with all in it; a docker:host run's containers in the shared
// namespace; the engine's state. Nothing happens when there was no engine.
func (m *Manager) removeEngineLeftovers(ctx context.Context, id, docker string) error {
	m.awaitEngineEnd(id)
	os.RemoveAll(m.engineStateDir(id))
	if docker == DockerHost {
		if !m.daemonReachable() {
			return nil
		}
		return m.removeHostContainers(ctx, id)
	}
	ns := DindNamespace(id)
	if !m.daemonReachable() {
		return m.sweepDind(ctx, ns)
	}
	// containerd first, for what it knows; then the host, for what it lost (and what held
	// the namespace's snapshots, if that is why containerd could not remove them).
	err := m.destroyDind(ctx, ns)
	if serr := m.sweepDind(ctx, ns); serr != nil {
		return errors.Join(err, serr)
	}
	if err != nil {
		return m.destroyDind(ctx, ns)
	}
	return nil
}

// namespaces lists containerd's namespaces.
func (m *Manager) namespaces(ctx context.Context) ([]string, error) {
	c, err := m.Client(ctx)
	if err != nil {
		return nil, err
	}
	names, err := c.NamespaceService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing containerd's namespaces: %w", err)
	}
	return names, nil
}

// destroyDind removes dind namespace ns and all in it, if it exists.
func (m *Manager) destroyDind(ctx context.Context, ns string) error {
	names, err := m.namespaces(ctx)
	if err != nil {
		return err
	}
	if !slices.Contains(names, ns) {
		return nil
	}
	c, err := ctrd.Connect(ctx, ctrd.Options{Address: m.Conn.Address, Namespace: ns, Daemon: m.Conn.Daemon})
	if err != nil {
		return err
	}
	defer c.Close()
	return c.DestroyNamespace(ctx, snapshot.Default())
}

// removeHostContainers removes run id's containers from the shared docker:host namespace:
// they were the run's own (its images stay for later runs).
func (m *Manager) removeHostContainers(ctx context.Context, id string) error {
	names, err := m.namespaces(ctx)
	if err != nil || !slices.Contains(names, HostNamespace) {
		return err
	}
	c, owned, err := m.hostContainers(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	for ctr, run := range owned {
		if run == id {
			if _, err := c.RemoveContainer(ctx, ctr); err != nil {
				return err
			}
		}
	}
	return nil
}

// hostContainers connects to the shared docker:host namespace and lists the run each of its
// containers belongs to. The caller closes the client.
func (m *Manager) hostContainers(ctx context.Context) (*ctrd.Client, map[string]string, error) {
	c, err := ctrd.Connect(ctx, ctrd.Options{Address: m.Conn.Address, Namespace: HostNamespace, Daemon: m.Conn.Daemon})
	if err != nil {
		return nil, nil, err
	}
	owned, err := c.Owned(ctx)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, owned, nil
}

// cleanEngines removes the dind namespaces of runs that are not active (their record gone).
func (m *Manager) cleanEngines(ctx context.Context, rep *CleanReport, active map[string]bool, dry bool) error {
	names, err := m.namespaces(ctx)
	if err != nil {
		return err
	}
	// A namespace containerd no longer has may still have sandboxes on the host (their runsc
	// state is below the home's root, by namespace).
	if ents, err := os.ReadDir(m.sandboxScope().Root); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "moatc-dind-") && !slices.Contains(names, e.Name()) {
				names = append(names, e.Name())
			}
		}
	}
	for _, ns := range names {
		id, ok := strings.CutPrefix(ns, "moatc-dind-")
		if !ok || active[id] {
			continue
		}
		rep.Namespaces = append(rep.Namespaces, ns)
		if !dry {
			if err := m.removeEngineLeftovers(ctx, id, DockerDind); err != nil {
				return err
			}
		}
	}
	if slices.Contains(names, HostNamespace) {
		return m.cleanHostContainers(ctx, rep, active, dry)
	}
	return nil
}

// cleanHostContainers removes the containers in the shared docker:host namespace of runs that
// are not active (a supervisor killed with -9 whose record is gone too); images stay.
func (m *Manager) cleanHostContainers(ctx context.Context, rep *CleanReport, active map[string]bool, dry bool) error {
	c, owned, err := m.hostContainers(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	for ctr, id := range owned {
		if active[id] {
			continue
		}
		// A run started since the list was read is spared.
		if r, err := m.Store.Get(id); err == nil && r.Active() {
			continue
		}
		rep.Containers = append(rep.Containers, HostNamespace+"/"+ctr)
		if dry {
			continue
		}
		m.awaitEngineEnd(id)
		if _, err := c.RemoveContainer(ctx, ctr); err != nil {
			return err
		}
	}
	return nil
}

// dockerMode records in req's spec the docker mode its dependencies ask for.
func (m *Manager) dockerMode(req *Request) error {
	if req.Deps != nil {
		plan, _, _, err := Plan(*req.Deps)
		if err != nil {
			return err
		}
		req.Spec.Docker = plan.Docker
	}
	if req.Spec.Docker != DockerDind && len(req.Spec.DindImages) > 0 {
		return fmt.Errorf("--dind-image and docker_images need docker:dind in the dependencies")
	}
	if req.Spec.Docker != "" && m.StartEngine == nil {
		return errors.New("this moatc cannot serve a Docker engine to runs")
	}
	if cli := filepath.Join(m.Prefix, "bin", "docker"); req.Spec.Docker != "" && !isFile(cli) {
		return fmt.Errorf("docker:%s gives the run moatc's Docker CLI, %s, which is not installed: run `make setup`", req.Spec.Docker, cli)
	}
	return nil
}

// EngineContainer is one container a docker-mode run's engine made, for `moatc status`.
type EngineContainer struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Image string `json:"image"`
	State string `json:"state"` // running, created, stopped, ... (containerd's task status)
}

// engineNameLabel is engine.LabelName (run cannot import engine).
const engineNameLabel = "moatc.engine.name"

// EngineContainers lists the containers run r's engine made, as containerd has them.
func (m *Manager) EngineContainers(ctx context.Context, r *state.Run) ([]EngineContainer, error) {
	if r.Spec.Docker == "" || !m.daemonReachable() {
		return nil, nil
	}
	names, err := m.namespaces(ctx)
	if err != nil || !slices.Contains(names, dockerNamespace(r)) {
		return nil, err
	}
	c, err := ctrd.Connect(ctx, ctrd.Options{Address: m.Conn.Address, Namespace: dockerNamespace(r), Daemon: m.Conn.Daemon})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctrs, err := c.Containers(ctx, fmt.Sprintf("labels.%q==%s", ctrd.LabelRunID, r.ID))
	if err != nil {
		return nil, fmt.Errorf("listing the run's engine containers: %w", err)
	}
	out := []EngineContainer{}
	for _, ct := range ctrs {
		info, err := ct.Info(ctx)
		if err != nil {
			continue
		}
		ec := EngineContainer{ID: ct.ID(), Name: info.Labels[engineNameLabel], Image: info.Image, State: "created"}
		if t, err := ct.Task(ctx, nil); err == nil {
			if st, err := t.Status(ctx); err == nil {
				ec.State = string(st.Status)
			}
		}
		out = append(out, ec)
	}
	slices.SortFunc(out, func(a, b EngineContainer) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
