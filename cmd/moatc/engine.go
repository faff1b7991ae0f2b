package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/engine"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// engineCommand is `moatc _engine`: the Docker Engine API on a socket, served from the
// managed containerd, for tests and development until runs serve it (docker:host, docker:dind).
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
	if rootless.Enabled() {
		if _, err := enterRootless(c, d, addr); err != nil {
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
	mgr := &run.Manager{Prefix: prefix, Dir: home}
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
	initBin, _ := mgr.InitBinary()
	eng, err := engine.New(ctx, engine.Config{
		Client: client, Runtime: rt, Rootless: rootless.Enabled(), RunID: runID, StateDir: dir,
		Snapshotter: snapshot.Default(), LoggerExe: self(), InitBinary: initBin, Prefix: prefix, Version: version,
	})
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
		printJSON(map[string]any{"socket": sock, "namespace": ns, "run_id": runID, "runtime": rt.Name(), "pid": os.Getpid()})
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
	})
	if err != nil {
		return nil, err
	}
	l, err := engine.Listen(s.Socket)
	if err != nil {
		eng.Close()
		return nil, err
	}
	go eng.Serve(l)
	return eng, nil
}
