package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"text/template"
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
		Description: `Filters (--filter KEY=VALUE, repeatable: values of one key OR, different keys AND):
  state=created|running|stopping|stopped|failed|exited   (exited: stopped or failed)
  name=NAME        a glob, such as web-*
  id=PREFIX
  label=KEY or label=KEY=VALUE

--format json is --json; any other --format is a Go template over each run's record, whose
fields are those of --json in Go's spelling: --format '{{.Name}} {{.State}} {{.Spec.Image}}'.`,
		Flags: []cli.Flag{
			jsonFlag,
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the runs' ids"},
			&cli.StringSliceFlag{Name: "filter", Aliases: []string{"f"}, Usage: "only runs matching `KEY=VALUE` (state, name, id, label; repeatable)"},
			&cli.StringFlag{Name: "format", Usage: "json, or a Go `TEMPLATE` per run such as '{{.ID}} {{.Name}}'"},
		},
		Action: func(c *cli.Context) error {
			f, err := state.ParseRunFilters(c.StringSlice("filter"))
			if err != nil {
				return usageError{err}
			}
			format := c.String("format")
			if c.Bool("json") {
				format = "json"
			}
			tmpl, err := runTemplate(format)
			if err != nil {
				return err
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			runs, err := e.mgr.Store.List()
			if err != nil {
				return err
			}
			return printRuns(f.Filter(runs), c.Bool("quiet"), format, tmpl)
		},
	}
}

// runTemplate parses --format when it is a template.
func runTemplate(format string) (*template.Template, error) {
	if format == "" || format == "json" {
		return nil, nil
	}
	t, err := template.New("format").Parse(format)
	if err == nil {
		// A field no run has fails now, not only when some run is listed.
		err = t.Execute(io.Discard, &state.Run{})
	}
	if err != nil {
		return nil, usageError{fmt.Errorf("--format: %w", err)}
	}
	return t, nil
}

func printRuns(runs []*state.Run, quiet bool, format string, tmpl *template.Template) error {
	switch {
	case quiet:
		for _, r := range runs {
			fmt.Println(r.ID)
		}
		return nil
	case format == "json":
		return printJSON(runs)
	case tmpl != nil:
		for _, r := range runs {
			var b strings.Builder
			if err := tmpl.Execute(&b, r); err != nil {
				return usageError{fmt.Errorf("--format: %w", err)}
			}
			fmt.Println(b.String())
		}
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tRUNTIME\tSTATE\tEXIT\tCREATED\tWORKSPACE")
	for _, r := range runs {
		exit := ""
		if r.ExitCode != nil {
			exit = fmt.Sprint(*r.ExitCode)
		}
		where := string(r.Spec.Runtime)
		if r.Kube != nil {
			where = "kube:" + r.Kube.Context + "/" + r.Kube.Namespace // a cluster run, its context
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\t%s\n", r.ID, r.Name, shortImage(r.Spec.Image),
			where, r.State, exit, ago(r.Created), r.Workspace)
	}
	return tw.Flush()
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
			ecs, err := e.mgr.EngineContainers(c.Context, r)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(struct {
					*state.Run
					EngineContainers []run.EngineContainer `json:"engine_containers,omitempty"`
				}{r, ecs})
			}
			tw, row := fieldTable()
			specRows(row, r, e.mgr.Store)
			lifeRows(row, r, e.mgr.Store)
			for _, ec := range ecs {
				// The containers the run's Docker engine made: name, image, state.
				row("Engine container", ec.Name+" "+ec.Image+" ("+ec.State+")")
			}
			return tw.Flush()
		},
	}
}

// specRows are what the run was asked to do.
func specRows(row func(k, v string), r *state.Run, store *state.Store) {
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
		if fileExists(filepath.Join(store.Dir(r.ID), "network.jsonl")) {
			row("Trace", filepath.Join(store.Dir(r.ID), "network.jsonl")+" (moatc trace "+r.Name+")")
		}
	}
	for _, h := range r.Spec.HostPorts {
		row("Host port", "moatc-host:"+h)
	}
	if r.Spec.Pids > 0 {
		row("Pids limit", fmt.Sprint(r.Spec.Pids))
	}
}

// lifeRows are where the run is and what it left.
func lifeRows(row func(k, v string), r *state.Run, store *state.Store) {
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
		row("Log", store.LogPath(r.ID)+" (written by the shim's logger)")
	case "moatc":
		row("Log", store.LogPath(r.ID)+" (written by its moatc: stdin or a terminal attached)")
	default:
		row("Log", store.LogPath(r.ID))
	}
	if bl := filepath.Join(store.Dir(r.ID), "build.log"); fileExists(bl) {
		row("Build log", bl)
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

// didRun is one run a changing command acted on, for --json.
type didRun struct {
	ID       string `json:"id"`
	Name     string `json:"name,omitempty"`
	Action   string `json:"action"` // stopped, removed, signalled or restarted
	State    string `json:"state,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
}

// onEachRun is eachRun for a command that needs moatc's set-up: fn gets it with each RUN.
func onEachRun(c *cli.Context, action string, fn func(e *env, ref string) (*state.Run, error)) error {
	if c.NArg() == 0 {
		return eachRun(c, action, nil)
	}
	e, err := setup(c)
	if err != nil {
		return err
	}
	defer e.mgr.Close()
	return eachRun(c, action, func(ref string) (*state.Run, error) { return fn(e, ref) })
}

// eachRun applies do to every RUN argument in turn and prints each id (or, with --json, the
// list of what was done, also when a later run fails).
func eachRun(c *cli.Context, action string, do func(ref string) (*state.Run, error)) error {
	if c.NArg() == 0 {
		return usageError{fmt.Errorf("%s needs a RUN (an id, id prefix or name; see `moatc list`)", c.Command.Name)}
	}
	done := []didRun{}
	var err error
	for _, ref := range c.Args().Slice() {
		var r *state.Run
		if r, err = do(ref); err != nil {
			break
		}
		a := didRun{ID: r.ID, Name: r.Name, Action: action}
		if action != "removed" {
			a.State, a.ExitCode = r.State, r.ExitCode
		}
		done = append(done, a)
		if !c.Bool("json") {
			fmt.Println(r.ID)
		}
	}
	if c.Bool("json") {
		if perr := printJSON(done); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

func stopCommand() *cli.Command {
	return &cli.Command{
		Name:      "stop",
		Usage:     "stop runs: SIGTERM, then SIGKILL after the grace period",
		ArgsUsage: "RUN...",
		Flags: []cli.Flag{
			timeFlag,
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			grace, err := graceFlag(c)
			if err != nil {
				return err
			}
			return onEachRun(c, "stopped", func(e *env, ref string) (*state.Run, error) {
				return e.mgr.Stop(c.Context, ref, grace)
			})
		},
	}
}

func destroyCommand() *cli.Command {
	return &cli.Command{
		Name:      "destroy",
		Aliases:   []string{"rm"},
		Usage:     "remove runs: record, log, and any container left",
		ArgsUsage: "RUN...",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "kill a run that is still running"}, jsonFlag},
		Action: func(c *cli.Context) error {
			return onEachRun(c, "removed", func(e *env, ref string) (*state.Run, error) {
				return e.mgr.Destroy(c.Context, ref, c.Bool("force"))
			})
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
			}{{"run", rep.Runs}, {"container", rep.Containers}, {"network", rep.Networks}, {"snapshot", rep.Snapshots}, {"sandbox", rep.Sandboxes}, {"dind namespace", rep.Namespaces}, {"lease", rep.Leases}, {"BuildKit lease", rep.BuildLeases}, {"warm pool member", rep.Pool}} {
				for _, i := range g.items {
					fmt.Printf("%s %s %s\n", verb, g.what, i)
				}
			}
			if len(rep.Runs)+len(rep.Networks)+len(rep.Containers)+len(rep.Snapshots)+len(rep.Sandboxes)+len(rep.Namespaces)+len(rep.Leases)+len(rep.BuildLeases)+len(rep.Pool) == 0 {
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
		Flags: []cli.Flag{&cli.BoolFlag{Name: "adopt", Usage: "take over a running run whose supervisor died"},
			&cli.BoolFlag{Name: "release", Usage: "remove the warm sandbox and network of a run that ended"}},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			if c.Bool("release") {
				return e.mgr.ReleaseWarm(c.Context, c.Args().First())
			}
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
