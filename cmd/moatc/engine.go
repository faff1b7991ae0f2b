package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/engine"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// engineCommand is `moatc _engine`: the Docker Engine API on a socket, served from the
// managed containerd, for tests and development (runs serve it themselves: docker:host, docker:dind).
func engineCommand() *cli.Command {
	return &cli.Command{
		Name:   "_engine",
		Hidden: true,
		Usage:  "serve the Docker Engine API on a unix socket until SIGTERM (development)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "the unix socket `PATH` to serve on", Required: true},
			&cli.StringFlag{Name: "namespace", Usage: "the engine's own containerd `NAMESPACE`", Required: true},
			&cli.BoolFlag{Name: "no-sandbox", Usage: "run containers with runc instead of gVisor"},
			&cli.StringFlag{Name: "run-id", Usage: "the run `ID` its containers are labelled with (default: a new one)"},
			&cli.StringFlag{Name: "state", Usage: "the engine's state `DIR` (default: HOME/engine/NAMESPACE)"},
			&cli.StringSliceFlag{Name: "image", Usage: "make image `REF` of moatc's store available to the engine (copied by reference); repeatable"},
			&cli.StringSliceFlag{Name: "mount", Usage: "give the engine a run mount `TARGET=SOURCE[:ro]`: binds of TARGET/... map to SOURCE/... on the host; repeatable"},
			&cli.StringFlag{Name: "socket-target", Usage: "where the workload sees the engine's socket (`PATH`, e.g. /var/run/docker.sock): binding it gives a container the same engine"},
			&cli.BoolFlag{Name: "allow-private-registry", Usage: "let pulls reach registries on the host or internal networks (closed to runs; for tests)"},
			&cli.BoolFlag{Name: "no-network", Usage: "give the engine's containers loopback only (default: a network of the engine's run, as a run's)"},
			&cli.BoolFlag{Name: "ephemeral", Usage: "remove the namespace and all in it when the engine stops (as docker:dind will)"},
			jsonFlag,
		},
		Action: engineAction,
	}
}

func engineAction(c *cli.Context) error {
	// The global --namespace (moatc's store, where --image copies from) is the parent's: this
	// command's own --namespace shadows it.
	home, prefix, srcNS := c.String("home"), c.String("prefix"), c.Lineage()[1].String("namespace")
	ns, sock := c.String("namespace"), c.String("socket")
	if ns == srcNS || ns == ctrd.DefaultNamespace {
		return usageError{fmt.Errorf("--namespace %s is moatc's own: the engine needs a namespace of its own (e.g. moatc-engine-dev)", ns)}
	}
	addr, err := addressFlag(c)
	if err != nil {
		return err
	}
	d := &ctrd.Daemon{Dir: filepath.Join(home, "containerd"), Prefix: prefix}
	var kit *rootless.Kit
	if rootless.Enabled() {
		if kit, err = enterRootless(c, d, addr); err != nil {
			return err
		}
	}
	ctx, cancel := signalContext(c)
	defer cancel()
	client, err := ctrd.Connect(ctx, ctrd.Options{Address: addr, Namespace: ns, Daemon: d})
	if err != nil {
		return err
	}
	defer client.Close()
	mgr := &run.Manager{Prefix: prefix, Dir: home, Conn: ctrd.Options{Address: addr, Namespace: srcNS, Daemon: d}}
	// Builds run on the runs' buildkitd, its gVisor sandbox and its build network.
	nets, err := engineNetworks(home, prefix, kit)
	if err != nil {
		return err
	}
	mgr.Net = nets
	spec := state.Spec{}
	if c.Bool("no-sandbox") {
		spec.Runtime = "runc"
	}
	rt := mgr.Runtime(spec)
	if err := rt.Check(); err != nil {
		return err
	}
	for _, ref := range c.StringSlice("image") {
		if _, err := client.CopyImage(ctx, srcNS, ref, snapshot.Default()); err != nil {
			return err
		}
	}
	runID, dir := c.String("run-id"), c.String("state")
	if runID == "" {
		runID = state.NewID()
	}
	if dir == "" {
		dir = filepath.Join(home, "engine", ns)
	}
	mounts, err := engineMounts(c.StringSlice("mount"))
	if err != nil {
		return err
	}
	initBin, _ := mgr.InitBinary()
	ecfg := engine.Config{
		Client: client, Runtime: rt, Rootless: rootless.Enabled(), RunID: runID, StateDir: dir,
		Snapshotter: snapshot.Default(), LoggerExe: self(), InitBinary: initBin, Prefix: prefix, Version: version,
		Mounts: mounts, Socket: sock, SocketTarget: c.String("socket-target"),
		Builder:           &engine.Builder{Daemon: mgr.BuildDaemon(), Hold: mgr.HoldBuilder},
		PrivateRegistries: c.Bool("allow-private-registry"),
	}
	if !c.Bool("no-network") {
		// The engine's run gets a network as a run does; its containers join it.
		nets.Teardown(ctx, runID) // what an engine of this run killed -9 left
		if _, err := nets.Setup(ctx, runID, cni.Options{Hostname: "moatc-engine"}); err != nil {
			return err
		}
		defer func() {
			if err := nets.Teardown(context.WithoutCancel(c.Context), runID); err != nil {
				fmt.Fprintf(os.Stderr, "moatc: warning: %v\n", err)
			}
		}()
		ecfg.Net, ecfg.NetRun = nets, runID
	}
	eng, err := engine.New(ctx, ecfg)
	if err != nil {
		return err
	}
	l, err := engine.Listen(sock)
	if err != nil {
		eng.Close()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- eng.Serve(l) }()
	if c.Bool("json") {
		printJSON(map[string]any{"socket": sock, "namespace": ns, "run_id": runID, "runtime": rt.Name(), "pid": os.Getpid(), "network": !c.Bool("no-network")})
	} else {
		fmt.Fprintf(os.Stderr, "moatc: serving the Docker Engine API for namespace %s (%s) on unix://%s\n", ns, rt.Name(), sock)
	}
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(c.Context), 10*time.Second)
	defer scancel()
	eng.Shutdown(sctx)
	os.Remove(sock)
	if c.Bool("ephemeral") {
		if derr := eng.Destroy(context.WithoutCancel(c.Context)); derr != nil {
			return derr
		}
		if client.Managed {
			os.Remove(d.TaskDir(ns)) // containerd's, empty once the namespace's tasks are gone
		}
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving the engine: %w", err)
	}
	return nil
}

// engineMounts reads --mount TARGET=SOURCE[:ro]: the run mounts a development engine maps
// bind sources through.
func engineMounts(flags []string) ([]engine.Mount, error) {
	var out []engine.Mount
	for _, f := range flags {
		target, source, ok := strings.Cut(f, "=")
		m := engine.Mount{Target: target, Source: source}
		if s, ok := strings.CutSuffix(source, ":ro"); ok {
			m.Source, m.ReadOnly = s, true
		}
		if !ok || !filepath.IsAbs(m.Target) || !filepath.IsAbs(m.Source) {
			return nil, usageError{fmt.Errorf("--mount %s: want TARGET=SOURCE[:ro], both absolute paths", f)}
		}
		real, err := filepath.EvalSymlinks(m.Source)
		if err != nil {
			return nil, usageError{fmt.Errorf("--mount %s: %w", f, err)}
		}
		m.Source = real
		out = append(out, m)
	}
	return out, nil
}

// engineNetworks is the cni.Manager of runs, as setup makes it.
func engineNetworks(home, prefix string, kit *rootless.Kit) (*cni.Manager, error) {
	cfg, err := config.LoadSettings(filepath.Join(home, "config.yaml"))
	if err != nil {
		return nil, err
	}
	return runNetworks(home, prefix, cfg, kit)
}

// startRunEngine serves a docker-mode run's engine from the moatc process that supervises it.
func startRunEngine(ctx context.Context, s run.EngineSpec) (run.DockerEngine, error) {
	mts := make([]engine.Mount, 0, len(s.Mounts))
	for _, m := range s.Mounts {
		mts = append(mts, engine.Mount{Target: m.Target, Source: m.Source, ReadOnly: m.ReadOnly})
	}
	eng, err := engine.New(ctx, engine.Config{
		Client: s.Client, Runtime: s.Runtime, Rootless: s.Rootless, RunID: s.RunID, StateDir: s.StateDir,
		Snapshotter: snapshot.Default(), LoggerExe: s.LoggerExe, InitBinary: s.InitBinary, Prefix: s.Prefix,
		Version: version, LogMax: s.LogMax, Net: s.Net, NetRun: s.NetRun, Mounts: mts,
		Socket: s.Socket, SocketTarget: s.SocketTarget, VolumeDir: s.VolumeDir,
		Builder: &engine.Builder{Daemon: s.Build, Hold: s.HoldBuild}, Strict: s.Strict,
	})
	if err != nil {
		return nil, err
	}
	l, err := engine.Listen(s.Socket)
	if err != nil {
		eng.Close()
		return nil, err
	}
	// Every user of the container may use it, as Docker's group would allow (the image runs as
	// an unprivileged user); on the host it stays in the run's directory, which is 0700.
	if err := os.Chmod(s.Socket, 0o666); err != nil {
		eng.Close()
		l.Close()
		return nil, fmt.Errorf("opening the engine's socket to the run: %w", err)
	}
	go eng.Serve(l)
	return eng, nil
}
