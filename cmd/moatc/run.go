package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/containerd/console"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/moatc/moatc/agent"
	"github.com/moatc/moatc/builder"
	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/deps"
	"github.com/moatc/moatc/mounts"
	"github.com/moatc/moatc/policy"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
	"github.com/moatc/moatc/trust"
)

const defaultImage = "debian:bookworm-slim"

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run a command in a container against a workspace",
		ArgsUsage: "[PATH] [-- CMD ARGS...]",
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
		&cli.StringFlag{Name: "image", Usage: "image to run (short names resolve as Docker's do; default " + defaultImage + ")"},
		&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set `K=V` in the container (K alone copies the host's value); repeatable"},
		&cli.StringFlag{Name: "name", Aliases: []string{"n"}, Usage: "name of the run (default: the workspace's name and a short id)"},
		&cli.StringSliceFlag{Name: "mount", Aliases: []string{"m"}, Usage: "bind mount `HOST:CONTAINER[:ro|rw]`; relative HOST paths are from the workspace; repeatable"},
		&cli.BoolFlag{Name: "interactive", Aliases: []string{"i"}, Usage: "pass stdin, with a TTY when stdin is a terminal"},
		&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "run in the background and print the run id"},
		&cli.BoolFlag{Name: "no-sandbox", Usage: "run under runc instead of gVisor (reduced isolation: the host kernel is shared)"},
		&cli.StringFlag{Name: "sandbox-platform", Usage: "gVisor platform: systrap (default), kvm or ptrace"},
		&cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "run as `UID[:GID]` instead of the workspace owner"},
		publish,
		&cli.StringFlag{Name: "network", Usage: "default (a private network with egress) or none (loopback only)"},
		&cli.StringFlag{Name: "memory", Usage: "memory limit, e.g. 512m or 2g"},
		&cli.Float64Flag{Name: "cpus", Usage: "CPU limit, e.g. 1.5"},
		&cli.Int64Flag{Name: "pids-limit", Usage: fmt.Sprintf("the most processes and threads at once (default %d; -1 for no limit)", config.DefaultPids)},
		&cli.StringSliceFlag{Name: "host-port", Usage: "let the run reach this host `PORT[/tcp|udp]` at moatc-host (the host is closed otherwise); repeatable"},
		&cli.StringFlag{Name: "log-max", Usage: "cap on the run's recorded output, e.g. 10m (default 100m); older output is dropped first"},
		&cli.StringSliceFlag{Name: "grant", Aliases: []string{"g"}, Usage: "let the run's proxy add the stored credential `NAME` to its requests (see 'moatc grant'); repeatable"},
		&cli.StringFlag{Name: "policy", Usage: "egress policy: permissive (default: anything but the host and other runs) or strict (only allowed hosts, through the proxy)"},
		&cli.StringSliceFlag{Name: "allow", Usage: "let a strict run reach `HOST` (api.example.com, *.example.com, host:port); implies --policy strict; repeatable"},
		&cli.StringFlag{Name: "upstream-ca", Usage: "a PEM `FILE` of CAs the proxy trusts for upstream servers, besides the system's (default: upstream_ca in moatc's config.yaml)"},
		&cli.StringSliceFlag{Name: "cap-add", Usage: "give the workload a `CAPABILITY` beyond Docker's default set, e.g. NET_ADMIN; repeatable"},
		&cli.StringFlag{Name: "entrypoint", Usage: "run the executable `CMD` with the arguments after -- (for an agent: instead of the agent, in its image, policy and state)"},
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
	if req.Spec.Runtime == "runc" {
		fmt.Fprintln(os.Stderr, "moatc: warning: running without the gVisor sandbox (runc): the workload shares the host kernel; reduced isolation")
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
		stdio.Console, stdio.In, stdio.Out = con, con, con
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

// buildRequest merges moatc.yaml and the flags into a run request, checking every input
// before anything is created. agentName is the agent command's (moatc claude), or "".
func buildRequest(c *cli.Context, agentName string) (run.Request, error) {
	var req run.Request
	pos, cmd := splitArgs(c)
	if len(pos) > 1 {
		return req, usageError{fmt.Errorf("run takes one workspace PATH, got %q; put the command after --, e.g. moatc run %s -- %s", pos, pos[0], strings.Join(pos[1:], " "))}
	}
	ws := "."
	if len(pos) == 1 {
		ws = pos[0]
	}
	ws, err := filepath.Abs(ws)
	if err != nil {
		return req, err
	}
	fi, err := os.Stat(ws)
	if err != nil {
		return req, fmt.Errorf("workspace %s does not exist: create it or name another directory", ws)
	}
	if !fi.IsDir() {
		return req, fmt.Errorf("workspace %s is not a directory", ws)
	}
	file, err := loadTrusted(c, ws)
	if err != nil {
		return req, err
	}
	req.Workspace = ws
	req.Name = pick(c.String("name"), file.Name)
	s := &req.Spec
	s.Image = pick(c.String("image"), file.Image, defaultImage)
	s.Command = cmd
	if ep := c.String("entrypoint"); ep != "" {
		s.Command = append([]string{ep}, cmd...)
	}
	if len(s.Command) == 0 {
		s.Command = file.Command
	}
	if len(s.Command) == 0 {
		s.Command = []string{"/bin/sh"}
	}
	s.Runtime = "gvisor"
	if c.Bool("no-sandbox") || file.Sandbox == "none" {
		s.Runtime = "runc"
	}
	s.Platform = c.String("sandbox-platform")
	switch s.Platform {
	case "", "systrap", "ptrace":
	case "kvm":
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
			return req, fmt.Errorf("--sandbox-platform kvm needs a usable /dev/kvm (%v): use systrap (the default) instead", err)
		} else {
			f.Close()
		}
	default:
		return req, usageError{fmt.Errorf("--sandbox-platform %q: write systrap, kvm or ptrace", s.Platform)}
	}
	s.Debug = c.Bool("verbose")
	s.Interactive = c.Bool("interactive") || (file.Interactive != nil && *file.Interactive)
	s.Detach = c.Bool("detach")
	if s.Interactive && s.Detach {
		return req, usageError{fmt.Errorf("-i and -d do not go together: an interactive run needs your terminal")}
	}
	s.TTY = s.Interactive && isTerminal(os.Stdin)

	// The workload runs as the workspace's owner, so what it writes is theirs.
	st := fi.Sys().(*syscall.Stat_t)
	s.User = fmt.Sprintf("%d:%d", st.Uid, st.Gid)
	if u := c.String("user"); u != "" {
		s.User = u
	}
	home := "/tmp"
	if s.User == "0" || strings.HasPrefix(s.User, "0:") || s.User == "root" {
		home = "/root"
	}
	s.Env = append(s.Env, "HOME="+home)
	if s.TTY {
		s.Env = append(s.Env, "TERM="+pick(os.Getenv("TERM"), "xterm"))
	}
	for _, k := range sortedKeys(file.Env) {
		s.Env = append(s.Env, k+"="+file.Env[k])
	}
	for _, kv := range c.StringSlice("env") {
		k, v, ok := strings.Cut(kv, "=")
		if k == "" || strings.ContainsAny(k, " \t\n") {
			return req, usageError{fmt.Errorf("-e %q: write NAME=value (or NAME to copy the host's value)", kv)}
		}
		if !ok {
			v = os.Getenv(k)
		}
		s.Env = append(s.Env, k+"="+v)
	}
	for _, m := range file.Mounts {
		mt, err := parseMount(ws, m.Text)
		if err != nil {
			return req, &config.Error{Path: file.Path, Line: m.Line, Key: "mounts", Msg: err.Error()}
		}
		s.Mounts = append(s.Mounts, mt)
	}
	for _, m := range c.StringSlice("mount") {
		mt, err := parseMount(ws, m)
		if err != nil {
			return req, err
		}
		s.Mounts = append(s.Mounts, mt)
	}
	s.Network = pick(c.String("network"), file.Network, "default")
	if s.Network != "default" && s.Network != "none" {
		return req, usageError{fmt.Errorf("--network %q: write default (a private network with egress) or none (loopback only)", s.Network)}
	}
	for _, p := range file.Ports {
		if _, err := cni.ParsePublish(p.Text); err != nil {
			return req, &config.Error{Path: file.Path, Line: p.Line, Key: "ports", Msg: err.Error()}
		}
		s.Publish = append(s.Publish, p.Text)
	}
	for _, p := range c.StringSlice("publish") {
		if _, err := cni.ParsePublish(p); err != nil {
			return req, usageError{fmt.Errorf("-p %s: %w", p, err)}
		}
		s.Publish = append(s.Publish, p)
	}
	if len(file.Dependencies) > 0 {
		req.Deps = depsRequest(c, ws, file)
		if _, _, _, err := run.Plan(*req.Deps); err != nil {
			return req, err
		}
	}
	s.Memory, s.CPUs = file.Memory, file.CPUs
	if m := c.String("memory"); m != "" {
		if s.Memory, err = config.ParseMemory(m); err != nil {
			return req, usageError{fmt.Errorf("--memory: %w", err)}
		}
	}
	if c.IsSet("cpus") {
		if s.CPUs = c.Float64("cpus"); s.CPUs <= 0 {
			return req, usageError{fmt.Errorf("--cpus %v: give a positive number such as 1.5", s.CPUs)}
		}
	}
	s.Pids = config.DefaultPids
	if file.Pids > 0 {
		s.Pids = file.Pids
	}
	if c.IsSet("pids-limit") {
		switch n := c.Int64("pids-limit"); {
		case n == -1:
			s.Pids = 0
		case n < 1:
			return req, usageError{fmt.Errorf("--pids-limit %d: give a positive number, or -1 for no limit", n)}
		default:
			s.Pids = n
		}
	}
	if v := c.String("log-max"); v != "" {
		if s.LogMax, err = config.ParseSize(v); err != nil {
			return req, usageError{fmt.Errorf("--log-max: %w", err)}
		}
		if s.LogMax < 256<<10 {
			return req, usageError{fmt.Errorf("--log-max %s: give at least 256k", v)}
		}
	}
	for _, p := range file.HostPorts {
		hp, err := cni.ParseHostPort(p.Text)
		if err != nil {
			return req, &config.Error{Path: file.Path, Line: p.Line, Key: "network.host", Msg: err.Error()}
		}
		s.HostPorts = append(s.HostPorts, hp.String())
	}
	for _, p := range c.StringSlice("host-port") {
		hp, err := cni.ParseHostPort(p)
		if err != nil {
			return req, usageError{fmt.Errorf("--host-port %s: %w", p, err)}
		}
		s.HostPorts = append(s.HostPorts, hp.String())
	}
	if err := egressRequest(c, file, s); err != nil {
		return req, err
	}
	if len(s.HostPorts) > 0 && s.Network == "none" {
		return req, usageError{fmt.Errorf("host ports cannot be opened with network none: drop --host-port/network.host or the network setting")}
	}
	// `moatc run` with no command in a workspace whose moatc.yaml names an agent starts it.
	if agentName == "" && file.Agent != nil && len(cmd) == 0 {
		agentName = file.Agent.Name
	}
	if agentName != "" {
		if err := agentRequest(c, &req, file, agentName, cmd); err != nil {
			return req, err
		}
	}
	return req, nil
}

// agentRequest makes req a run of the agent called name; args are its own arguments.
func agentRequest(c *cli.Context, req *run.Request, file *config.File, name string, args []string) error {
	a, err := agent.Lookup(name)
	if err != nil {
		if file.Agent != nil && name == file.Agent.Name {
			return &config.Error{Path: file.Path, Line: file.Agent.Line, Key: "agent", Msg: err.Error()}
		}
		return err
	}
	o := agent.Options{Home: c.String("home"), Terminal: isTerminal(os.Stdin), DryRun: c.Bool("dry-run"),
		PolicySet: c.IsSet("policy") || file.NetPolicy != "", Args: args}
	if c.Command.Name != "run" {
		o.Prompt, o.Version = c.String("prompt"), c.String("agent-version")
	}
	if file.Agent != nil && agentMatches(a, file.Agent.Name) {
		o.Version = pick(o.Version, file.Agent.Version)
		o.Args = append(append([]string(nil), file.Agent.Args...), o.Args...)
	}
	if req.Deps == nil {
		req.Deps = depsRequest(c, req.Workspace, file)
	}
	if err := agent.Apply(req, a, o); err != nil {
		return usageError{err}
	}
	if ep := c.String("entrypoint"); ep != "" {
		req.Spec.Command = append([]string{ep}, args...)
	}
	if _, _, _, err := run.Plan(*req.Deps); err != nil {
		return err
	}
	return nil
}

func agentMatches(a agent.Agent, name string) bool {
	b, err := agent.Lookup(name)
	return err == nil && b.Name == a.Name
}

// egressRequest fills in the grants, the policy, the upstream CA and extra capabilities.
func egressRequest(c *cli.Context, file *config.File, s *state.Spec) error {
	seen := map[string]bool{}
	for _, g := range file.Grants {
		if !seen[g.Text] {
			s.Grants, seen[g.Text] = append(s.Grants, g.Text), true
		}
	}
	for _, g := range c.StringSlice("grant") {
		if !seen[g] {
			s.Grants, seen[g] = append(s.Grants, g), true
		}
	}
	for _, a := range file.Allow {
		if _, err := policy.ParsePattern(a.Text); err != nil {
			return &config.Error{Path: file.Path, Line: a.Line, Key: "network.allow", Msg: err.Error()}
		}
		s.Allow = append(s.Allow, a.Text)
	}
	for _, a := range c.StringSlice("allow") {
		if _, err := policy.ParsePattern(a); err != nil {
			return usageError{fmt.Errorf("--allow: %w", err)}
		}
		s.Allow = append(s.Allow, a)
	}
	s.Policy = pick(c.String("policy"), file.NetPolicy)
	if s.Policy == "" && len(c.StringSlice("allow")) > 0 {
		s.Policy = policy.Strict
	}
	s.Policy = pick(s.Policy, policy.Permissive)
	if _, err := policy.ParseMode(s.Policy); err != nil {
		return usageError{fmt.Errorf("--policy: %w", err)}
	}
	if s.Policy == policy.Permissive && len(c.StringSlice("allow")) > 0 {
		return usageError{fmt.Errorf("--allow applies to a strict policy, and this run is permissive (which allows every host): drop --allow, or use --policy strict")}
	}
	s.UpstreamCA = c.String("upstream-ca")
	if s.UpstreamCA == "" {
		set, err := config.LoadSettings(filepath.Join(c.String("home"), "config.yaml"))
		if err != nil {
			return err
		}
		s.UpstreamCA = set.UpstreamCA
	}
	if s.UpstreamCA != "" {
		abs, err := filepath.Abs(s.UpstreamCA)
		if err != nil {
			return err
		}
		s.UpstreamCA = abs
	}
	for _, cp := range c.StringSlice("cap-add") {
		name, err := ctrd.ParseCapability(cp)
		if err != nil {
			return usageError{fmt.Errorf("--cap-add: %w", err)}
		}
		s.CapAdd = append(s.CapAdd, name)
	}
	return nil
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

// depsRequest turns moatc.yaml's dependencies into a build request. The base is base_image,
// else the run's image (flag or file), else run.DefaultBase.
func depsRequest(c *cli.Context, ws string, file *config.File) *run.Deps {
	d := &run.Deps{Base: pick(file.BaseImage, c.String("image"), file.Image), Rebuild: c.Bool("rebuild"), Progress: os.Stderr,
		Scope: run.CacheScope(ws)}
	if c.Bool("quiet") {
		d.Mode = builder.ModeQuiet
	}
	for _, it := range file.Dependencies {
		d.Entries = append(d.Entries, deps.Entry{Text: it.Text, File: file.Path, Line: it.Line})
	}
	return d
}

// parseMount parses HOST:CONTAINER[:ro|rw]. HOST is resolved now, so a bad or escaping
// source is refused before anything is made; the run resolves it again when it mounts it.
func parseMount(ws, spec string) (state.Mount, error) {
	bad := func(why string) (state.Mount, error) {
		return state.Mount{}, usageError{fmt.Errorf("mount %q: %s; write HOST:CONTAINER[:ro|rw], e.g. ../data:/data:ro", spec, why)}
	}
	parts := strings.Split(spec, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return bad("malformed")
	}
	m := state.Mount{Source: parts[0], Container: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			m.ReadOnly = true
		case "rw":
		default:
			return bad(fmt.Sprintf("mode %q is neither ro nor rw", parts[2]))
		}
	}
	if !filepath.IsAbs(m.Container) {
		return bad("the container path must be absolute")
	}
	f, err := mounts.Open(ws, m.Source)
	if err != nil {
		var esc *mounts.EscapeError
		if errors.As(err, &esc) {
			return state.Mount{}, err
		}
		if errors.Is(err, os.ErrNotExist) {
			return bad(fmt.Sprintf("host path %s does not exist", m.Source))
		}
		return bad(fmt.Sprintf("host path %s cannot be opened (%v)", m.Source, errors.Unwrap(err)))
	}
	defer f.Close()
	if m.Host, err = mounts.RealPath(f); err != nil {
		return state.Mount{}, err
	}
	m.Container = filepath.Clean(m.Container)
	return m, nil
}

// splitArgs returns the positional arguments before "--" and the command after it. urfave/cli
// drops the "--" when it directly follows the flags and keeps it after a PATH, so the split is
// found from the end: the command is what follows the first "--" of os.Args.
func splitArgs(c *cli.Context) (pos, cmd []string) {
	args := c.Args().Slice()
	for i, a := range os.Args {
		if a == "--" {
			cmd = os.Args[i+1:]
			break
		}
	}
	if len(cmd) > len(args) {
		cmd = args
	}
	pos = args[:len(args)-len(cmd)]
	if n := len(pos); n > 0 && pos[n-1] == "--" {
		pos = pos[:n-1]
	}
	return pos, cmd
}

func pick(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
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
