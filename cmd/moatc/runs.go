package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
)

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}

func printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

func listCommand() *cli.Command {
	return &cli.Command{
		Name:    "list",
		Aliases: []string{"ps"},
		Usage:   "list runs",
		Flags:   []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			runs, err := e.mgr.Store.List()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if runs == nil {
					runs = []*state.Run{}
				}
				return printJSON(runs)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tRUNTIME\tSTATE\tEXIT\tCREATED\tWORKSPACE")
			for _, r := range runs {
				exit := ""
				if r.ExitCode != nil {
					exit = fmt.Sprint(*r.ExitCode)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\t%s\n", r.ID, r.Name, shortImage(r.Spec.Image),
					r.Spec.Runtime, r.State, exit, ago(r.Created), r.Workspace)
			}
			return tw.Flush()
		},
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show one run",
		ArgsUsage: "RUN",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			ref, err := oneRun(c)
			if err != nil {
				return err
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			r, err := e.mgr.Get(ref)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(r)
			}
			tw, row := fieldTable()
			row("ID", r.ID)
			row("Name", r.Name)
			row("State", r.State)
			if r.ExitCode != nil {
				row("Exit code", fmt.Sprint(*r.ExitCode))
			}
			row("Error", r.Error)
			row("Workspace", r.Workspace)
			row("Image", r.Spec.Image)
			row("Runtime", string(r.Spec.Runtime))
			row("Command", strings.Join(r.Spec.Command, " "))
			row("User", r.Spec.User)
			for _, m := range r.Spec.Mounts {
				mode := "rw"
				if m.ReadOnly {
					mode = "ro"
				}
				from := ""
				if m.Source != "" && m.Source != m.Host {
					from = " from " + m.Source
				}
				row("Mount", m.Host+" -> "+m.Container+" ("+mode+")"+from)
			}
			row("Network", string(r.Spec.Network))
			if r.Spec.Network != "none" {
				row("Policy", pick(r.Spec.Policy, "permissive"))
				for _, a := range r.Spec.Allow {
					row("Allowed", a)
				}
				for _, g := range r.Spec.Grants {
					row("Grant", g)
				}
				if fileExists(filepath.Join(e.mgr.Store.Dir(r.ID), "network.jsonl")) {
					row("Trace", filepath.Join(e.mgr.Store.Dir(r.ID), "network.jsonl")+" (moatc trace "+r.Name+")")
				}
			}
			for _, h := range r.Spec.HostPorts {
				row("Host port", "moatc-host:"+h)
			}
			if r.Spec.Pids > 0 {
				row("Pids limit", fmt.Sprint(r.Spec.Pids))
			}
			row("Address", r.IP)
			row("moatc-host", r.Gateway)
			for _, p := range r.Ports {
				row("Port", p)
			}
			row("Container", r.ContainerID)
			row("Created", r.Created.Local().Format(time.RFC3339))
			if r.Started != nil {
				row("Started", r.Started.Local().Format(time.RFC3339))
			}
			if r.Finished != nil {
				row("Finished", r.Finished.Local().Format(time.RFC3339))
			}
			switch r.Output {
			case "shim":
				row("Log", e.mgr.Store.LogPath(r.ID)+" (written by the shim's logger)")
			case "moatc":
				row("Log", e.mgr.Store.LogPath(r.ID)+" (written by its moatc: stdin or a terminal attached)")
			default:
				row("Log", e.mgr.Store.LogPath(r.ID))
			}
			if bl := filepath.Join(e.mgr.Store.Dir(r.ID), "build.log"); fileExists(bl) {
				row("Build log", bl)
			}
			return tw.Flush()
		},
	}
}

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a run's recorded output (stdout to stdout, stderr to stderr)",
		ArgsUsage: "RUN",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing until the run ends"},
			&cli.IntFlag{Name: "tail", Aliases: []string{"n"}, Usage: "only the last `N` lines"},
			&cli.BoolFlag{Name: "timestamps", Aliases: []string{"t"}, Usage: "prefix each line with its time"},
		},
		Action: func(c *cli.Context) error {
			ref, err := oneRun(c)
			if err != nil {
				return err
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			ctx, cancel := signalContext(c)
			defer cancel()
			err = e.mgr.Logs(ctx, ref, run.LogOptions{Follow: c.Bool("follow"), Tail: c.Int("tail"), Timestamps: c.Bool("timestamps")}, os.Stdout, os.Stderr)
			if ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
}

func stopCommand() *cli.Command {
	return &cli.Command{
		Name:      "stop",
		Usage:     "stop runs: SIGTERM, then SIGKILL after the grace period",
		ArgsUsage: "RUN...",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "time", Aliases: []string{"t"}, Value: 10, Usage: "grace period in `SECONDS` before SIGKILL (default: the run's --stop-timeout, else 10)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError{fmt.Errorf("stop needs a RUN (an id, id prefix or name; see `moatc list`)")}
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			for _, ref := range c.Args().Slice() {
				grace := time.Duration(c.Int("time")) * time.Second
				if !c.IsSet("time") {
					grace = -1 // the run's --stop-timeout, else 10s
				}
				r, err := e.mgr.Stop(c.Context, ref, grace)
				if err != nil {
					return err
				}
				fmt.Println(r.ID)
			}
			return nil
		},
	}
}

func destroyCommand() *cli.Command {
	return &cli.Command{
		Name:      "destroy",
		Aliases:   []string{"rm"},
		Usage:     "remove runs: record, log, and any container left",
		ArgsUsage: "RUN...",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "kill a run that is still running"}},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError{fmt.Errorf("destroy needs a RUN (an id, id prefix or name; see `moatc list`)")}
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			for _, ref := range c.Args().Slice() {
				r, err := e.mgr.Destroy(c.Context, ref, c.Bool("force"))
				if err != nil {
					return err
				}
				fmt.Println(r.ID)
			}
			return nil
		},
	}
}

func cleanCommand() *cli.Command {
	return &cli.Command{
		Name:  "clean",
		Usage: "remove finished runs, and containers and snapshots no run accounts for",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "only say what would be removed"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			rep, err := e.mgr.Clean(c.Context, c.Bool("dry-run"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(rep)
			}
			verb := "removed"
			if c.Bool("dry-run") {
				verb = "would remove"
			}
			for _, g := range []struct {
				what  string
				items []string
			}{{"run", rep.Runs}, {"container", rep.Containers}, {"network", rep.Networks}, {"snapshot", rep.Snapshots}, {"sandbox", rep.Sandboxes}, {"lease", rep.Leases}, {"BuildKit lease", rep.BuildLeases}} {
				for _, i := range g.items {
					fmt.Printf("%s %s %s\n", verb, g.what, i)
				}
			}
			if len(rep.Runs)+len(rep.Networks)+len(rep.Containers)+len(rep.Snapshots)+len(rep.Sandboxes)+len(rep.Leases)+len(rep.BuildLeases) == 0 {
				fmt.Println("nothing to clean")
			}
			return nil
		},
	}
}

func superviseCommand() *cli.Command {
	return &cli.Command{
		Name:   "_supervise",
		Hidden: true,
		Usage:  "supervise a detached run (started by moatc run -d)",
		Flags:  []cli.Flag{&cli.BoolFlag{Name: "adopt", Usage: "take over a running run whose supervisor died"}},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			if c.Bool("adopt") {
				return e.mgr.Adopt(c.Context, c.Args().First())
			}
			return e.mgr.Supervise(c.Context, c.Args().First(), os.NewFile(3, "ready"))
		},
	}
}

// fieldTable prints "Key: value" lines aligned, leaving out empty values.
func fieldTable() (*tabwriter.Writer, func(k, v string)) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	return tw, func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func oneRun(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", usageError{fmt.Errorf("%s needs one RUN (an id, id prefix or name; see `moatc list`)", c.Command.Name)}
	}
	return c.Args().First(), nil
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Hour).String()
}
