package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/ctrd"
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
	Runtimes  []runtimeStatus `json:"runtimes"`
	Buildkitd struct {
		State   string `json:"state"`
		Address string `json:"address"`
		Pid     int    `json:"pid,omitempty"`
		Version string `json:"version"`
	} `json:"buildkitd"`
}

func systemStatus(ctx context.Context, e *env) stackStatus {
	var st stackStatus
	st.Prefix = e.prefix
	cd := &st.Containerd
	cd.Namespace = e.mgr.Conn.Namespace
	cd.Managed = e.mgr.Conn.Address == ""
	cd.Address = e.mgr.Conn.Address
	if cd.Managed {
		cd.Address = e.daemon.Address()
		if pid, ok := e.daemon.Pid(); ok {
			cd.Pid = pid
			if t, ok := e.daemon.Started(); ok {
				cd.Uptime = time.Since(t).Round(time.Second).String()
			}
		}
	}
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
	for _, rt := range []ctrd.Runtime{ctrd.GVisor{Prefix: e.prefix, Dir: filepath.Join(e.home, "runsc")}, ctrd.Runc{Prefix: e.prefix}} {
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
	return st
}

func binaryVersion(prefix, name string) binaryStatus {
	path, version, err := ctrd.BinaryVersion(prefix, name)
	if err != nil {
		return binaryStatus{Name: name, Version: "not found"}
	}
	return binaryStatus{Name: name, Path: path, Version: version}
}
