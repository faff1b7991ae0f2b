package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/moby/sys/signal"
	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
)

func execCommand() *cli.Command {
	return &cli.Command{
		Name:                   "exec",
		Usage:                  "run a command in a running run's container",
		ArgsUsage:              "RUN [--] CMD [ARG...]",
		UseShortOptionHandling: true,
		Description: `The command runs beside the workload, with its confinement: the same sandbox,
user, capabilities, seccomp profile and limits. Its output is yours; it does not go
into the run's log. moatc exits with the command's exit code.

Examples:
  moatc exec web -- ls -l /workspace
  moatc exec -it web -- sh
  moatc exec -e DEBUG=1 -w /tmp -u 0 web -- env`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "interactive", Aliases: []string{"i"}, Usage: "pass stdin to the command"},
			&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "give the command a terminal (stdin must be one)"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set `KEY=VALUE` (KEY alone: the host's value, if set)"},
			&cli.StringFlag{Name: "workdir", Aliases: []string{"w"}, Usage: "working `DIR` in the container (default: the run's)"},
			&cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "`USER` as uid[:gid] or a name from the image (default: the run's)"},
		},
		Action: execAction,
	}
}

func execAction(c *cli.Context) error {
	args := c.Args().Slice()
	if len(args) > 1 && args[1] == "--" {
		args = append(args[:1:1], args[2:]...)
	}
	if len(args) < 2 {
		return usageError{fmt.Errorf("exec needs a RUN and a command: moatc exec RUN -- CMD [ARG...]")}
	}
	o := run.ExecOptions{Args: args[1:], Env: envFromFlags(c.StringSlice("env")), Workdir: c.String("workdir"), User: c.String("user"), TTY: c.Bool("tty")}
	if o.Workdir != "" && !filepath.IsAbs(o.Workdir) {
		return usageError{fmt.Errorf("-w %q: the working directory must be absolute, like /workspace/src", o.Workdir)}
	}
	if o.TTY && !isTerminal(os.Stdin) {
		return fmt.Errorf("the input device is not a TTY: drop -t, or run moatc exec from a terminal")
	}
	e, err := setup(c)
	if err != nil {
		return err
	}
	defer e.mgr.Close()
	stdio := run.Stdio{Out: os.Stdout, Err: os.Stderr}
	if c.Bool("interactive") {
		stdio.In = os.Stdin
	}
	if o.TTY {
		con, err := console.ConsoleFromFile(os.Stdin)
		if err != nil {
			return fmt.Errorf("using the terminal: %w", err)
		}
		if err := con.SetRaw(); err != nil {
			return fmt.Errorf("setting the terminal to raw mode: %w", err)
		}
		defer con.Reset()
		stdio.Console, stdio.Out, stdio.Err = con, con, con
		if stdio.In != nil {
			stdio.In = con
		}
	}
	code, err := e.mgr.Exec(c.Context, args[0], o, stdio)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitStatus(code)
	}
	return nil
}

// envFromFlags applies Docker's -e rule: KEY=VALUE as given; KEY alone takes the host's
// value, and is left out when the host has none.
func envFromFlags(vals []string) []string {
	var out []string
	for _, v := range vals {
		if strings.Contains(v, "=") {
			out = append(out, v)
		} else if hv, ok := os.LookupEnv(v); ok {
			out = append(out, v+"="+hv)
		}
	}
	return out
}

func killCommand() *cli.Command {
	return &cli.Command{
		Name:      "kill",
		Usage:     "send a signal to runs' workloads (default SIGKILL)",
		ArgsUsage: "RUN...",
		Description: `The signal goes to the workload's PID 1, as with docker kill. A PID 1 without a
handler for it ignores it (except SIGKILL): run with --init to have an init pass it on.

Examples:
  moatc kill web
  moatc kill -s USR1 web`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "signal", Aliases: []string{"s"}, Value: "KILL", Usage: "`SIGNAL` by name (TERM, SIGUSR1) or number"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			sig, err := signal.ParseSignal(c.String("signal"))
			if c.NArg() > 0 && (err != nil || sig == 0) {
				return usageError{fmt.Errorf("%q is not a signal: use a name such as TERM, INT, USR1 or KILL, or a number (kill -l lists them)", c.String("signal"))}
			}
			return onEachRun(c, "signalled", func(e *env, ref string) (*state.Run, error) {
				return e.mgr.Kill(c.Context, ref, syscall.Signal(sig))
			})
		},
	}
}

func waitCommand() *cli.Command {
	return &cli.Command{
		Name:      "wait",
		Usage:     "wait until runs end, and print their exit codes",
		ArgsUsage: "RUN...",
		Description: `Prints one exit code per run, in order, as docker wait does; moatc itself exits 0
(125 when a run is unknown or ended without an exit code: see moatc status RUN).`,
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError{fmt.Errorf("wait needs a RUN (an id, id prefix or name; see `moatc list`)")}
			}
			ctx, cancel := signalContext(c)
			defer cancel()
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			runs := []*state.Run{}
			for _, ref := range c.Args().Slice() {
				r, err := e.mgr.Wait(ctx, ref)
				if err != nil {
					return err
				}
				if r.ExitCode == nil {
					return fmt.Errorf("run %s ended without an exit code (it is %s: %s)", r.Name, r.State, r.Error)
				}
				runs = append(runs, r)
				if !c.Bool("json") {
					fmt.Println(*r.ExitCode)
				}
			}
			if c.Bool("json") {
				return printJSON(runs)
			}
			return nil
		},
	}
}

func restartCommand() *cli.Command {
	return &cli.Command{
		Name:      "restart",
		Usage:     "stop runs if they run, and start them again, detached",
		ArgsUsage: "RUN...",
		Description: `A restarted run keeps its id, name, spec and log (the new output follows the
old); its container, writable layer and network are made afresh. It runs detached:
follow it with moatc logs -f RUN or moatc attach RUN.`,
		Flags: []cli.Flag{
			timeFlag,
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			grace, err := graceFlag(c)
			if err != nil {
				return err
			}
			return onEachRun(c, "restarted", func(e *env, ref string) (*state.Run, error) {
				return e.mgr.Restart(c.Context, ref, grace)
			})
		},
	}
}

var timeFlag = &cli.IntFlag{Name: "time", Aliases: []string{"t"}, Usage: "grace period in `SECONDS` before SIGKILL (default: the run's --stop-timeout, else 10)"}

// graceFlag is -t/--time as a duration; not given, it is negative: the run's own
// --stop-timeout, else 10 s (see run.Manager.Stop).
func graceFlag(c *cli.Context) (time.Duration, error) {
	if !c.IsSet("time") {
		return -time.Second, nil
	}
	if c.Int("time") < 0 {
		return 0, usageError{fmt.Errorf("--time must be 0 or more seconds")}
	}
	return time.Duration(c.Int("time")) * time.Second, nil
}

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "follow a running run's output until it ends, and exit with its code",
		ArgsUsage: "RUN",
		Description: `Prints what the run writes from now on (moatc logs RUN has what came before) and
passes Ctrl-C and other signals to the workload, as docker attach does; with
--no-sig-proxy, Ctrl-C ends only the attach. A detached run has no stdin to attach.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "no-sig-proxy", Usage: "do not pass signals to the workload"},
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
			ctx := c.Context
			if c.Bool("no-sig-proxy") {
				var cancel func()
				ctx, cancel = signalContext(c)
				defer cancel()
			}
			code, err := e.mgr.Attach(ctx, ref, !c.Bool("no-sig-proxy"), os.Stdout, os.Stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitStatus(code)
			}
			return nil
		},
	}
}
