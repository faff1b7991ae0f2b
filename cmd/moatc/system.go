package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/pool"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/snapshot"
)

func systemCommand() *cli.Command {
	return &cli.Command{
		Name:  "system",
		Usage: "manage the containerd that moatc starts itself",
		Description: `Without --address, moatc starts its own containerd from the prefix (its root, state and
socket under --home) on first use and leaves it running for the next command.`,
		Subcommands: []*cli.Command{
			{
				Name:   "start",
				Usage:  "start the managed containerd (moatc does this on demand)",
				Flags:  []cli.Flag{jsonFlag},
				Action: systemStartAction,
			},
			{
				Name:   "stop",
				Usage:  "stop the managed containerd",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "stop it even while runs are active"}, jsonFlag},
				Action: systemStopAction,
			},
			{
				Name:   "status",
				Usage:  "show the stack: containerd, runtimes, versions",
				Flags:  []cli.Flag{jsonFlag},
				Action: systemStatusAction,
			},
		},
	}
}

func systemStartAction(c *cli.Context) error {
	e, err := setup(c)
	if err != nil {
		return err
	}
	if err := e.daemon.Start(c.Context); err != nil {
		return err
	}
	pid, _ := e.daemon.Pid()
	if c.Bool("json") {
		return printJSON(daemonDone{State: "running", Pid: pid, Address: e.daemon.Address()})
	}
	fmt.Printf("containerd running (pid %d) on %s\n", pid, e.daemon.Address())
	return nil
}

// daemonDone is what system start and stop did, for --json.
type daemonDone struct {
	State   string `json:"state"` // running or stopped
	Pid     int    `json:"pid,omitempty"`
	Address string `json:"address"`
}

func systemStopAction(c *cli.Context) error {
	e, err := setup(c)
	if err != nil {
		return err
	}
	if err := e.mgr.StopStack(c.Context, c.Bool("force")); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(daemonDone{State: "stopped", Address: e.daemon.Address()})
	}
	fmt.Println("containerd stopped")
	return nil
}

func systemStatusAction(c *cli.Context) error {
	e, err := setup(c)
	if err != nil {
		return err
	}
	st := systemStatus(c.Context, e)
	if c.Bool("json") {
		return printJSON(st)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "containerd:\t%s\n", st.Containerd.State)
	fmt.Fprintf(tw, "  address:\t%s\n", st.Containerd.Address)
	fmt.Fprintf(tw, "  managed:\t%v\n", st.Containerd.Managed)
	if st.Containerd.Version != "" {
		fmt.Fprintf(tw, "  version:\t%s\n", st.Containerd.Version)
	}
	if st.Containerd.Pid != 0 {
		fmt.Fprintf(tw, "  pid:\t%d (up %s)\n", st.Containerd.Pid, st.Containerd.Uptime)
	}
	fmt.Fprintf(tw, "  namespace:\t%s\n", st.Containerd.Namespace)
	rl := st.Rootless
	if !rl.Enabled {
		fmt.Fprintf(tw, "rootless:\tno\n")
	} else {
		fmt.Fprintf(tw, "rootless:\tyes (user namespace of rootlesskit)\n")
		if rl.KitPid != 0 {
			fmt.Fprintf(tw, "  rootlesskit pid:\t%d\n", rl.KitPid)
		}
		if rl.StateDir != "" {
			fmt.Fprintf(tw, "  state:\t%s\n", rl.StateDir)
		}
		if rl.NetworkDriver != "" {
			fmt.Fprintf(tw, "  network driver:\t%s\n", rl.NetworkDriver)
			fmt.Fprintf(tw, "  port driver:\t%s\n", rl.PortDriver)
		}
	}
	fmt.Fprintf(tw, "snapshotter:\t%s (%s)\n", st.Snapshotter.Name, st.Snapshotter.Reason)
	fmt.Fprintf(tw, "limits:\t%s\n", st.Limits.Detail)
	fmt.Fprintf(tw, "prefix:\t%s\n", st.Prefix)
	for _, r := range st.Runtimes {
		fmt.Fprintf(tw, "runtime %s:\t%s (%s)\n", r.Name, r.Status, r.Shim)
		for _, b := range r.Binaries {
			fmt.Fprintf(tw, "  %s:\t%s\n", b.Name, b.Version)
		}
		if r.Flags != "" {
			fmt.Fprintf(tw, "  runsc flags:\t%s\n", r.Flags)
		}
	}
	fmt.Fprintf(tw, "buildkitd:\t%s\n", st.Buildkitd.State)
	fmt.Fprintf(tw, "  address:\t%s\n", st.Buildkitd.Address)
	if st.Buildkitd.Pid != 0 {
		fmt.Fprintf(tw, "  pid:\t%d\n", st.Buildkitd.Pid)
	}
	fmt.Fprintf(tw, "  version:\t%s\n", st.Buildkitd.Version)
	fmt.Fprintf(tw, "warm pool:\tkeeps %d; %d ready, %d being made, %d taken by runs (moatc pool status)\n", st.Pool.Want,
		st.Pool.States[pool.Ready], st.Pool.States[pool.Filling], st.Pool.States[pool.Claimed])
	fmt.Fprintf(tw, "  idle memory:\t%.1f MB\n", float64(st.Pool.MemoryKB)/1024)
	return tw.Flush()
}

type binaryStatus struct {
	Name    string `json:"name"`
	Path    string `json:"path,omitempty"`
	Version string `json:"version"`
}

type runtimeStatus struct {
	Name     string         `json:"name"`
	Shim     string         `json:"shim"`
	Status   string         `json:"status"`
	Binaries []binaryStatus `json:"binaries"`
	Flags    string         `json:"runsc_flags,omitempty"`
}

type stackStatus struct {
	Prefix     string `json:"prefix"`
	Containerd struct {
		State     string `json:"state"`
		Address   string `json:"address"`
		Managed   bool   `json:"managed"`
		Version   string `json:"version,omitempty"`
		Pid       int    `json:"pid,omitempty"`
		Uptime    string `json:"uptime,omitempty"`
		Namespace string `json:"namespace"`
	} `json:"containerd"`
	Rootless    rootlessStatus `json:"rootless"`
	Snapshotter struct {
		Name   string `json:"name"`
		Reason string `json:"reason"`
	} `json:"snapshotter"`
	Limits struct {
		Available bool   `json:"available"` // memory, CPU and pids limits can all be applied
		Detail    string `json:"detail"`
	} `json:"limits"`
	Runtimes  []runtimeStatus `json:"runtimes"`
	Buildkitd struct {
		State   string `json:"state"`
		Address string `json:"address"`
		Pid     int    `json:"pid,omitempty"`
		Version string `json:"version"`
	} `json:"buildkitd"`
	// Pool is the warm pool: its members by state, and what the ready ones cost idle.
	Pool struct {
		Want     int            `json:"want"`
		States   map[string]int `json:"states"`
		MemoryKB int64          `json:"memory_kb"`
	} `json:"pool"`
}

// rootlessStatus is moatc's rootless mode: the rootlesskit that holds its namespaces.
type rootlessStatus struct {
	Enabled       bool   `json:"enabled"`
	KitPid        int    `json:"kit_pid,omitempty"` // rootlesskit; containerd runs under its child
	StateDir      string `json:"state_dir,omitempty"`
	NetworkDriver string `json:"network_driver,omitempty"` // e.g. slirp4netns
	PortDriver    string `json:"port_driver,omitempty"`    // e.g. builtin
}

func systemStatus(ctx context.Context, e *env) stackStatus {
	var st stackStatus
	st.Prefix = e.prefix
	cd := &st.Containerd
	cd.Namespace = e.mgr.Conn.Namespace
	cd.Managed = e.mgr.Conn.Address == ""
	cd.Address = e.mgr.Conn.Address
	st.Rootless.Enabled = rootless.Enabled()
	if cd.Managed {
		cd.Address = e.daemon.Address()
		if pid, ok := e.daemon.Pid(); ok {
			cd.Pid = pid
			if t, ok := e.daemon.Started(); ok {
				cd.Uptime = time.Since(t).Round(time.Second).String()
			}
		}
		if k := e.daemon.Kit; k != nil {
			st.Rootless = kitStatus(*k)
			// The daemon moatc tracks is rootlesskit: containerd is its child's child.
			st.Rootless.KitPid, cd.Pid = cd.Pid, 0
			if child, err := k.ChildPid(); err == nil && st.Rootless.KitPid != 0 {
				cd.Pid = childNamed(child, "containerd")
			}
		}
	}
	sn := snapshot.Current()
	st.Snapshotter.Name, st.Snapshotter.Reason = sn.Snapshotter, sn.Reason
	lim := run.HostLimits()
	st.Limits.Available, st.Limits.Detail = lim.Available(), lim.Summary()
	cd.State = "not running"
	if cd.Managed && !e.daemon.Answering() {
		cd.State = "not running (moatc starts it on demand)"
	} else if cl, err := ctrd.Connect(ctx, e.mgr.Conn); err == nil {
		cd.State = "running"
		if v, err := cl.Version(ctx); err == nil {
			cd.Version = v.Version
		}
		cl.Close()
	} else {
		cd.State = "not answering: " + err.Error()
	}
	for _, rt := range []ctrd.Runtime{ctrd.GVisor{Prefix: e.prefix, Dir: filepath.Join(e.home, "runsc"), Rootless: rootless.Enabled()}, ctrd.Runc{Prefix: e.prefix}} {
		rs := runtimeStatus{Name: rt.Name(), Shim: rt.Shim(), Status: "available"}
		if err := rt.Check(); err != nil {
			rs.Status = "missing: run `make setup`"
		}
		bins := []string{"runc", "containerd-shim-runc-v2"}
		if g, ok := rt.(ctrd.GVisor); ok {
			bins = []string{"runsc", "containerd-shim-runsc-v1"}
			rs.Flags = g.Flags()
		}
		for _, b := range bins {
			rs.Binaries = append(rs.Binaries, binaryVersion(e.prefix, b))
		}
		st.Runtimes = append(st.Runtimes, rs)
	}
	bd := e.mgr.BuildDaemon()
	bk := &st.Buildkitd
	bk.Address, bk.State = bd.Address(), "not running (moatc starts it for the first build)"
	if pid, ok := bd.Pid(); ok && bd.Answering() {
		bk.State, bk.Pid = "running", pid
	}
	bk.Version = binaryVersion(e.prefix, "buildkitd").Version
	st.Pool.States = map[string]int{}
	if p := e.mgr.Pool; p != nil {
		st.Pool.Want = p.Want()
		ms, _ := p.Members()
		for _, m := range ms {
			st.Pool.States[m.State]++
			if m.State == pool.Ready {
				st.Pool.MemoryKB += m.MemoryKB
			}
		}
	}
	return st
}

// kitStatus describes kit from the arguments moatc starts it with.
func kitStatus(k rootless.Kit) rootlessStatus {
	st := rootlessStatus{Enabled: true, StateDir: k.StateDir}
	for _, a := range k.Args() {
		if v, ok := strings.CutPrefix(a, "--net="); ok {
			st.NetworkDriver = v
		}
		if v, ok := strings.CutPrefix(a, "--port-driver="); ok {
			st.PortDriver = v
		}
		if a == "--" {
			break
		}
	}
	return st
}

// childNamed is the pid of a child of pid whose command is name; 0 if none.
func childNamed(pid int, name string) int {
	for _, c := range children(pid) {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); strings.TrimSpace(string(comm)) == name {
			return c
		}
	}
	return 0
}

// children lists pid's children. Each thread lists those it forked, and a Go parent forks
// from any of its threads.
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func binaryVersion(prefix, name string) binaryStatus {
	path, version, err := ctrd.BinaryVersion(prefix, name)
	if err != nil {
		return binaryStatus{Name: name, Version: "not found"}
	}
	return binaryStatus{Name: name, Path: path, Version: version}
}
