package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/containerd/console"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
	"github.com/moatc/moatc/trust"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:                   "run",
		Usage:                  "run a command in a container against a workspace",
		ArgsUsage:              "[PATH] [-- CMD ARGS...]",
		UseShortOptionHandling: true,
		Description: `Runs CMD (default /bin/sh) in a new container. PATH (default: the current directory) is
mounted read-write at /workspace, the working directory, and the command runs as the
workspace owner's uid:gid. Settings come from PATH/moatc.yaml (or agent.yaml, moat.yaml);
flags override it. moatc exits with the command's exit code; 125 means moatc itself failed,
126 that the command cannot run, 127 that it was not found. Ctrl-C and SIGTERM are passed on
to the command. Output is also recorded: see 'moatc logs'.

Flags come before PATH. Examples:
  moatc run -- make test
  moatc run --image busybox -e DEBUG=1 -m ../data:/data:ro ./proj -- ls /data
  moatc run -i                              # an interactive shell with a TTY
  moatc run -d -n agent -- ./agent.sh        # detached; 'moatc logs -f agent'`,
		Flags:  runFlags(false),
		Action: func(c *cli.Context) error { return runAction(c, "") },
	}
}

// runFlags are the flags of run, and of the agent commands (agent true), where -p is the
// prompt and --publish has no short form.
func runFlags(agent bool) []cli.Flag {
	publish := &cli.StringSliceFlag{Name: "publish", Aliases: []string{"p"}, Usage: "publish a port: `[IP:]HOST:CONTAINER[/tcp|udp]`, on 127.0.0.1 unless IP is given; repeatable"}
	if agent {
		publish.Aliases = nil
	}
	flags := []cli.Flag{
		&cli.StringFlag{Name: "image", Usage: "`IMAGE` to run (short names resolve as Docker's do; default " + run.DefaultImage + "; wins over moatc.yaml's image and base_image)"},
		&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set `K=V` in the container (K alone copies the host's value); repeatable"},
		&cli.StringFlag{Name: "name", Aliases: []string{"n"}, Usage: "`NAME` of the run (default: the workspace's name and a short id)"},
		&cli.StringSliceFlag{Name: "mount", Aliases: []string{"m"}, Usage: "bind mount `HOST:CONTAINER[:ro|rw]`; relative HOST paths are from the workspace; repeatable"},
		&cli.BoolFlag{Name: "interactive", Aliases: []string{"i"}, Usage: "pass stdin, with a TTY when stdin is a terminal"},
		&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "give the command a TTY (stdin must be a terminal); -t=false: none, even with -i"},
		&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "run in the background and print the run id"},
		&cli.BoolFlag{Name: "no-sandbox", Usage: "run under runc instead of gVisor (reduced isolation: the host kernel is shared)"},
		&cli.BoolFlag{Name: "cold", Usage: "start without the warm pool: boot a sandbox and make a network for this run alone (see 'moatc pool')"},
		&cli.StringFlag{Name: "sandbox-platform", Usage: "gVisor `PLATFORM`: systrap (default), kvm or ptrace"},
		&cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "run as `UID[:GID]` instead of the workspace owner"},
		publish,
		&cli.StringFlag{Name: "network", Usage: "network `MODE`: default (a private network with egress) or none (loopback only)"},
		&cli.StringFlag{Name: "memory", Usage: "memory limit `SIZE`, e.g. 512m or 2g"},
		&cli.Float64Flag{Name: "cpus", Usage: "CPU limit: `N` CPUs, e.g. 1.5"},
		&cli.Int64Flag{Name: "pids-limit", Usage: fmt.Sprintf("`N`: the most processes and threads at once (default %d; -1 for no limit)", config.DefaultPids)},
		&cli.StringSliceFlag{Name: "host-port", Usage: "let the run reach this host `PORT[/tcp|udp]` at moatc-host (the host is closed otherwise); repeatable"},
		&cli.StringFlag{Name: "log-max", Usage: "cap `SIZE` on the run's recorded output, e.g. 10m (default 100m); older output is dropped first"},
		&cli.StringSliceFlag{Name: "grant", Aliases: []string{"g"}, Usage: "let the run's proxy add the stored credential `NAME` to its requests (see 'moatc grant'); repeatable"},
		&cli.StringFlag{Name: "policy", Usage: "egress `POLICY`: permissive (default: anything but the host and other runs) or strict (only allowed hosts, through the proxy)"},
		&cli.StringSliceFlag{Name: "allow", Usage: "let a strict run reach `HOST` (api.example.com, *.example.com, host:port); implies --policy strict; repeatable"},
		&cli.StringFlag{Name: "upstream-ca", Usage: "a PEM `FILE` of CAs the proxy trusts for upstream servers, besides the system's (default: upstream_ca in moatc's config.yaml)"},
		&cli.StringSliceFlag{Name: "cap-add", Usage: "give the workload a `CAPABILITY` beyond Docker's default set, e.g. NET_ADMIN; repeatable"},
		&cli.StringFlag{Name: "entrypoint", Usage: "run the executable `CMD` with the arguments after -- (for an agent: instead of the agent, in its image, policy and state)"},
		&cli.StringSliceFlag{Name: "env-file", Usage: "read env from `FILE` in Docker's format (K=V or K per line, # comments); after moatc.yaml's env, before -e; repeatable"},
		&cli.BoolFlag{Name: "rm", Usage: "remove the run's record and log once it ends (with -d too: when the detached run ends)"},
		&cli.StringFlag{Name: "workdir", Aliases: []string{"w"}, Usage: "working directory `DIR` in the container (default /workspace)"},
		&cli.BoolFlag{Name: "init", Usage: "run a small init (tini) as PID 1 that forwards signals and reaps zombies"},
		&cli.BoolFlag{Name: "read-only", Usage: "mount the container's root filesystem read-only (/workspace, mounts and --tmpfs keep their modes)"},
		&cli.BoolFlag{Name: "workspace-ro", Usage: "mount the workspace read-only"},
		&cli.StringSliceFlag{Name: "tmpfs", Usage: "mount a tmpfs at `PATH[:OPTIONS]` (nosuid,nodev,noexec unless exec; e.g. /run:size=64m); repeatable"},
		&cli.StringFlag{Name: "hostname", Usage: "the container's host `NAME` (default: the run's name)"},
		&cli.StringSliceFlag{Name: "label", Usage: "set a container label `KEY=VALUE` (not moatc.*); repeatable"},
		&cli.StringSliceFlag{Name: "dind-image", Usage: "copy image `REF` of moatc's store into a docker:dind run's engine before it starts; repeatable"},
		&cli.Int64Flag{Name: "stop-timeout", Usage: "`SECONDS` 'moatc stop' waits before SIGKILL when not given -t (default 10)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "show what the run would be (image, mounts, grants, policy, proxy, trust) and start nothing"},
		&cli.BoolFlag{Name: "rebuild", Usage: "rebuild the dependency image even if the list is unchanged"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no build progress"},
		&cli.BoolFlag{Name: "json", Usage: "print the run's record as JSON (with -d: instead of the id; otherwise after the command ends)"},
	}
	if agent {
		flags = append(flags,
			&cli.StringFlag{Name: "prompt", Aliases: []string{"p"}, Usage: "run one `PROMPT` non-interactively, print the answer and exit with the agent's code"},
			&cli.StringFlag{Name: "agent-version", Usage: "the agent's npm `VERSION` (default: agent.version in moatc.yaml, else the latest)"})
	}
	return flags
}

// runAction is the body of run, and of an agent command (agentName set).
func runAction(c *cli.Context, agentName string) error {
	req, err := buildRequest(c, agentName)
	if err != nil {
		return err
	}
	if c.Bool("dry-run") {
		return dryRun(c, req)
	}
	if req.Spec.Runtime == state.Runc {
		fmt.Fprintln(warnings(c), "moatc: warning: running without the gVisor sandbox (runc): the workload shares the host kernel; reduced isolation")
	}
	e, err := setup(c)
	if err != nil {
		return err
	}
	defer e.mgr.Close()
	// A reader that goes away (`moatc run -- seq 1 1000000 | head -1`) must not end moatc
	// with SIGPIPE and orphan the run: with the signal caught, writes to the closed pipe
	// fail with EPIPE instead, the output still goes to the log and the run to its end.
	// Caught, not ignored: an ignored SIGPIPE would be inherited by what moatc starts.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	stdio := run.Stdio{Out: os.Stdout, Err: os.Stderr}
	// Only a real file: a nil *os.File in the interface would still count as stdin.
	if f := stdinFor(req.Spec); f != nil && !req.Spec.Detach {
		stdio.In = f
	}
	if req.Spec.TTY {
		con, err := console.ConsoleFromFile(os.Stdin)
		if err != nil {
			return fmt.Errorf("using the terminal: %w", err)
		}
		if err := con.SetRaw(); err != nil {
			return fmt.Errorf("setting the terminal to raw mode: %w", err)
		}
		defer con.Reset()
		stdio.Console, stdio.Out = con, con
		if stdio.In != nil {
			stdio.In = con
		}
	}
	r, code, err := e.mgr.Start(c.Context, req, stdio)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		b, _ := json.MarshalIndent(r, "", "  ")
		fmt.Println(string(b))
	} else if req.Spec.Detach {
		fmt.Println(r.ID)
	}
	if code != 0 {
		return exitStatus(code)
	}
	return nil
}

// stdinFor decides what the workload reads: the caller's stdin with -i, as Docker does;
// nothing otherwise (the workload reads EOF), so a run in a script or CI never takes over an
// input it was not given. Without stdin, the shim owns the run's output (see run.ServeLog).
func stdinFor(s state.Spec) *os.File {
	if s.Interactive {
		return os.Stdin
	}
	return nil
}

// buildRequest fills run.Options from the flags and resolves them against moatc.yaml (see
// run.Resolve). agentName is the agent command's (moatc claude), or "".
func buildRequest(c *cli.Context, agentName string) (run.Request, error) {
	pos, cmd := run.SplitArgs(c.Args().Slice(), os.Args)
	o := run.Options{
		Home: c.String("home"), Args: pos, Command: cmd, Entrypoint: c.String("entrypoint"),
		Name: c.String("name"), Image: c.String("image"), Env: c.StringSlice("env"), EnvFiles: c.StringSlice("env-file"),
		Mounts: c.StringSlice("mount"), Publish: c.StringSlice("publish"), HostPorts: c.StringSlice("host-port"),
		Network: c.String("network"), Platform: c.String("sandbox-platform"), User: c.String("user"),
		Memory: c.String("memory"), LogMax: c.String("log-max"), Grants: c.StringSlice("grant"), Allow: c.StringSlice("allow"),
		Policy: c.String("policy"), UpstreamCA: c.String("upstream-ca"), CapAdd: c.StringSlice("cap-add"),
		Interactive: boolIfSet(c, "interactive"), TTY: boolIfSet(c, "tty"), NoSandbox: boolIfSet(c, "no-sandbox"),
		Detach: c.Bool("detach"), Debug: c.Bool("verbose"),
		Terminal: isTerminal(os.Stdin), Rebuild: c.Bool("rebuild"), Quiet: c.Bool("quiet"), DryRun: c.Bool("dry-run"),
		Remove: c.Bool("rm"), Workdir: c.String("workdir"), Init: c.Bool("init"), ReadOnly: c.Bool("read-only"),
		WorkspaceRO: c.Bool("workspace-ro"), Tmpfs: c.StringSlice("tmpfs"), Hostname: c.String("hostname"), Labels: c.StringSlice("label"), DindImages: c.StringSlice("dind-image"),
	}
	if c.IsSet("cpus") {
		v := c.Float64("cpus")
		o.CPUs = &v
	}
	if c.IsSet("pids-limit") {
		v := c.Int64("pids-limit")
		o.Pids = &v
	}
	if c.IsSet("stop-timeout") {
		v := c.Int64("stop-timeout")
		o.StopTimeout = &v
	}
	req, file, err := run.Resolve(o)
	req.Cold = c.Bool("cold")
	if err == nil {
		err = agentRequest(c, &req, &o, file, agentName)
	}
	var ue *run.UsageError
	if errors.As(err, &ue) {
		return req, usageError{err}
	}
	return req, err
}

// loadTrusted reads the workspace's config file and refuses it when it sets policy keys the
// person has not trusted as they are now.
func loadTrusted(c *cli.Context, ws string) (*config.File, error) {
	file, err := config.Load(ws)
	if err != nil {
		return nil, err
	}
	if err := trust.Open(c.String("home")).Check(file); err != nil {
		return nil, err
	}
	return file, nil
}

// depsRequest turns moatc.yaml's dependencies into a build request (see run.Options.DepsRequest).
func depsRequest(c *cli.Context, ws string, file *config.File) *run.Deps {
	o := run.Options{Image: c.String("image"), Rebuild: c.Bool("rebuild"), Quiet: c.Bool("quiet")}
	return o.DepsRequest(ws, file)
}

func pick(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// boolIfSet is a boolean flag's value when it was given (either way), nil otherwise.
func boolIfSet(c *cli.Context, name string) *bool {
	if !c.IsSet(name) {
		return nil
	}
	v := c.Bool(name)
	return &v
}

// isTerminal reports whether f is a terminal (not just a character device: /dev/null is one).
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
