package run

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"github.com/moatc/moatc/builder"
	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/deps"
	mountpin "github.com/moatc/moatc/mounts"
	"github.com/moatc/moatc/policy"
	"github.com/moatc/moatc/state"
	"github.com/moatc/moatc/trust"
)

// DefaultImage is what a run uses when neither the flags nor moatc.yaml name an image.
const DefaultImage = "debian:bookworm-slim"

// DefaultStopTimeout is the grace `moatc stop` gives a run that set no --stop-timeout.
const DefaultStopTimeout = 10

// Options are `moatc run`'s flags as given; Resolve merges them with moatc.yaml. A nil
// pointer or empty string means the flag was not given.
type Options struct {
	Home       string   // moatc's home: trust records and config.yaml
	Args       []string // the positional arguments: at most one, the workspace PATH (default .)
	Command    []string // after --
	Entrypoint string
	Name       string
	Image      string
	Env        []string // -e K=V or K
	EnvFiles   []string // --env-file
	Mounts     []string // -m HOST:CONTAINER[:ro|rw]
	Publish    []string
	HostPorts  []string
	Network    string
	Platform   string
	User       string
	Memory     string
	LogMax     string
	CPUs       *float64
	Pids       *int64
	Grants     []string
	Allow      []string
	Policy     string
	UpstreamCA string
	CapAdd     []string
	// DindImages are --dind-image: images of moatc's store copied into a dind run's engine.
	DindImages []string

	// Interactive (-i), TTY (-t) and NoSandbox are nil when the flag is not given: moatc.yaml
	// decides then, and a flag given either way beats the file.
	Interactive, TTY, NoSandbox *bool
	Detach, Debug               bool
	Terminal                    bool // stdin is a terminal
	Rebuild, Quiet              bool
	DryRun                      bool

	Remove      bool
	Workdir     string
	Init        bool
	ReadOnly    bool
	WorkspaceRO bool
	Tmpfs       []string
	Hostname    string
	Labels      []string
	StopTimeout *int64

	// Limits is what the host lets moatc limit (HostLimits() when nil).
	Limits *Limits

	// LookupEnv reads the host's environment (os.LookupEnv when nil).
	LookupEnv func(string) (string, bool)
	// Warn gets one-line warnings (os.Stderr when nil).
	Warn io.Writer
}

// UsageError is a mistake in the flags themselves (moatc exits 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usagef(format string, a ...any) error { return &UsageError{Err: fmt.Errorf(format, a...)} }

// Resolve checks every option and merges it with the workspace's moatc.yaml (flags win) into
// a request, before anything is created. It returns the config file too: an agent run is
// made from both.
func Resolve(o Options) (Request, *config.File, error) {
	var req Request
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.Warn == nil {
		o.Warn = os.Stderr
	}
	if len(o.Args) > 1 {
		return req, nil, usagef("run takes one workspace PATH, got %q; put the command after --, e.g. moatc run %s -- %s", o.Args, o.Args[0], strings.Join(o.Args[1:], " "))
	}
	ws, fi, err := resolveWorkspace(strings.Join(o.Args, ""))
	if err != nil {
		return req, nil, err
	}
	warnWorkspace(o.Warn, ws)
	file, err := config.Load(ws)
	if err != nil {
		return req, nil, err
	}
	if err := trust.Open(o.Home).Check(file); err != nil {
		return req, nil, err
	}
	req.Workspace, req.Name = ws, pick(o.Name, file.Name)
	s := &req.Spec
	steps := []func() error{
		func() error { return o.process(s, file, fi) },
		func() error { return o.environment(s, file) },
		func() error { return o.storage(s, file, ws) },
		func() error { return o.network(&req, file) },
		func() error { return o.limits(s, file) },
		func() error { return o.egress(s, file) },
		func() error { return o.dockerFlags(s) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return req, nil, err
		}
	}
	for _, it := range file.DockerImages {
		req.Spec.DindImages = append(req.Spec.DindImages, it.Text)
	}
	req.Spec.DindImages = append(req.Spec.DindImages, o.DindImages...)
	if len(file.Dependencies) > 0 {
		req.Deps = o.DepsRequest(ws, file)
		if _, _, _, err := Plan(*req.Deps); err != nil {
			return req, nil, err
		}
	}
	return req, file, nil
}

func resolveWorkspace(arg string) (string, os.FileInfo, error) {
	ws, err := filepath.Abs(pick(arg, "."))
	if err != nil {
		return "", nil, err
	}
	fi, err := os.Stat(ws)
	if err != nil {
		return "", nil, fmt.Errorf("workspace %s does not exist: create it or name another directory", ws)
	}
	if !fi.IsDir() {
		return "", nil, fmt.Errorf("workspace %s is not a directory", ws)
	}
	return ws, fi, nil
}

// warnWorkspace says when the workspace, which the workload may rewrite, is / or the home.
func warnWorkspace(w io.Writer, ws string) {
	home, _ := os.UserHomeDir()
	real := func(p string) string {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		return filepath.Clean(p)
	}
	switch {
	case real(ws) == "/":
		fmt.Fprintln(w, "moatc: warning: the workspace is /: the workload can read and change the whole host filesystem its user can; run in a project directory instead")
	case home != "" && real(ws) == real(home):
		fmt.Fprintf(w, "moatc: warning: the workspace is your home directory %s: the workload can read and change all of it; run in a project directory instead\n", ws)
	}
}

// process fills the command, runtime, user and terminal settings.
func (o *Options) process(s *state.Spec, file *config.File, fi os.FileInfo) error {
	s.Image = pick(o.Image, file.Image, DefaultImage)
	s.Command = o.Command
	if o.Entrypoint != "" {
		s.Command = append([]string{o.Entrypoint}, o.Command...)
	}
	if len(s.Command) == 0 {
		s.Command = file.Command
	}
	if len(s.Command) == 0 {
		s.Command = []string{"/bin/sh"}
	}
	s.Runtime = state.GVisor
	if (o.NoSandbox == nil && file.Sandbox == "none") || (o.NoSandbox != nil && *o.NoSandbox) {
		s.Runtime = state.Runc
	}
	s.Platform = o.Platform
	switch s.Platform {
	case "", "systrap", "ptrace":
	case "kvm":
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("--sandbox-platform kvm needs a usable /dev/kvm (%v): use systrap (the default) instead", err)
		}
		f.Close()
	default:
		return usagef("--sandbox-platform %q: write systrap, kvm or ptrace", s.Platform)
	}
	s.Debug = o.Debug
	s.Interactive = file.Interactive != nil && *file.Interactive
	if o.Interactive != nil {
		s.Interactive = *o.Interactive
	}
	s.Detach = o.Detach
	if s.Interactive && s.Detach {
		return usagef("-i and -d do not go together: an interactive run needs your terminal")
	}
	// -i alone gives a TTY when stdin is one; -t asks for one (Docker's "the input device is
	// not a TTY" when stdin is not), -t=false refuses one.
	s.TTY = s.Interactive && o.Terminal
	if o.TTY != nil {
		if *o.TTY && s.Detach {
			return usagef("-t and -d do not go together: a detached run has no terminal")
		}
		if *o.TTY && !o.Terminal {
			return &NoTTYError{}
		}
		s.TTY = *o.TTY
	}
	s.User = defaultUser(fi)
	if o.User != "" {
		s.User = o.User
	}
	return nil
}

// NoTTYError refuses -t when stdin is not a terminal.
type NoTTYError struct{}

func (*NoTTYError) Error() string {
	return "the input device is not a TTY: drop -t, or run moatc from a terminal"
}

// defaultUser is the workspace owner's uid:gid: what the workload writes is theirs.
func defaultUser(fi os.FileInfo) string {
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}

// homeFor is the HOME of a run as user: /root for root, /tmp for anyone else.
func homeFor(user string) string {
	if user == "0" || strings.HasPrefix(user, "0:") || user == "root" {
		return "/root"
	}
	return "/tmp"
}

// environment sets the env: HOME (and TERM), then moatc.yaml's, then --env-file's, then -e's,
// each overriding the one before.
func (o *Options) environment(s *state.Spec, file *config.File) error {
	env := &envList{}
	env.set("HOME", homeFor(s.User))
	if s.TTY {
		term, _ := o.LookupEnv("TERM")
		env.set("TERM", pick(term, "xterm"))
	}
	for _, k := range sortedKeys(file.Env) {
		env.set(k, file.Env[k])
	}
	for _, path := range o.EnvFiles {
		data, err := os.ReadFile(path)
		if err != nil {
			return usagef("--env-file %s: %w", path, errors.Unwrap(err))
		}
		if err := ParseEnvFile(path, string(data), o.LookupEnv, env.set); err != nil {
			return &UsageError{Err: err}
		}
	}
	for _, kv := range o.Env {
		k, v, ok, err := envEntry(kv, o.LookupEnv)
		if err != nil {
			return usagef("-e %q: %v: write NAME=value (or NAME to copy the host's value)", kv, err)
		}
		if ok {
			env.set(k, v)
		}
	}
	s.Env = env.list
	return nil
}

// envEntry reads K=V, or K alone: the host's value of K, and ok false when the host has none
// (Docker's rule: the variable is then left unset in the container).
func envEntry(kv string, lookup func(string) (string, bool)) (k, v string, ok bool, err error) {
	k, v, hasValue := strings.Cut(kv, "=")
	if k == "" {
		return "", "", false, errors.New("no variable name")
	}
	if strings.ContainsAny(k, " \t\r\n\x00") {
		return "", "", false, fmt.Errorf("the name %q holds white space", k)
	}
	if strings.ContainsRune(v, 0) {
		return "", "", false, errors.New("the value holds a NUL byte")
	}
	if hasValue {
		return k, v, true, nil
	}
	v, ok = lookup(k)
	return k, v, ok, nil
}

// ParseEnvFile reads an env file in Docker's format: one K=V or K per line, the value taken
// as written (no quotes are removed); # starts a comment line; blank lines are skipped; K
// alone takes the host's value, and is left out when the host has none. Errors name
// path:line.
func ParseEnvFile(path, data string, lookup func(string) (string, bool), set func(k, v string)) error {
	data = strings.TrimPrefix(data, "\ufeff")
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimLeft(strings.TrimSuffix(line, "\r"), " \t")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok, err := envEntry(line, lookup)
		if err != nil {
			return fmt.Errorf("--env-file %s:%d: %v: write NAME=value, or NAME to copy the host's value", path, i+1, err)
		}
		if ok {
			set(k, v)
		}
	}
	return nil
}

// envList is an environment in order of first setting, a later value replacing an earlier.
type envList struct {
	list []string
	at   map[string]int
}

func (e *envList) set(k, v string) {
	if e.at == nil {
		e.at = map[string]int{}
	}
	if i, ok := e.at[k]; ok {
		e.list[i] = k + "=" + v
		return
	}
	e.at[k] = len(e.list)
	e.list = append(e.list, k+"="+v)
}

// storage fills the mounts: moatc.yaml's, then -m's.
func (o *Options) storage(s *state.Spec, file *config.File, ws string) error {
	for _, m := range file.Mounts {
		mt, err := ParseMount(ws, m.Text)
		if err != nil {
			return &config.Error{Path: file.Path, Line: m.Line, Key: "mounts", Msg: err.Error()}
		}
		s.Mounts = append(s.Mounts, mt)
	}
	for _, m := range o.Mounts {
		mt, err := ParseMount(ws, m)
		if err != nil {
			return err
		}
		s.Mounts = append(s.Mounts, mt)
	}
	return nil
}

// network fills the network mode, published ports and host ports.
func (o *Options) network(req *Request, file *config.File) error {
	s := &req.Spec
	s.Network = state.Network(pick(o.Network, file.Network, string(state.NetworkDefault)))
	if s.Network != state.NetworkDefault && s.Network != state.NetworkNone {
		return usagef("--network %q: write default (a private network with egress) or none (loopback only)", s.Network)
	}
	for _, p := range file.Ports {
		port, err := cni.ParsePublish(p.Text)
		if err != nil {
			return &config.Error{Path: file.Path, Line: p.Line, Key: "ports", Msg: err.Error()}
		}
		s.Publish, req.Ports = append(s.Publish, p.Text), append(req.Ports, port)
	}
	for _, p := range o.Publish {
		port, err := cni.ParsePublish(p)
		if err != nil {
			return usagef("-p %s: %w", p, err)
		}
		s.Publish, req.Ports = append(s.Publish, p), append(req.Ports, port)
	}
	if len(s.Publish) > 0 && s.Network == state.NetworkNone {
		return usagef("ports cannot be published with network none: drop -p/ports or the network setting")
	}
	for _, p := range file.HostPorts {
		hp, err := cni.ParseHostPort(p.Text)
		if err != nil {
			return &config.Error{Path: file.Path, Line: p.Line, Key: "network.host", Msg: err.Error()}
		}
		s.HostPorts = append(s.HostPorts, hp.String())
	}
	for _, p := range o.HostPorts {
		hp, err := cni.ParseHostPort(p)
		if err != nil {
			return usagef("--host-port %s: %w", p, err)
		}
		s.HostPorts = append(s.HostPorts, hp.String())
	}
	if len(s.HostPorts) > 0 && s.Network == state.NetworkNone {
		return usagef("host ports cannot be opened with network none: drop --host-port/network.host or the network setting")
	}
	return nil
}

// limits fills memory, CPUs, processes and the log's cap; a flag wins over moatc.yaml.
func (o *Options) limits(s *state.Spec, file *config.File) error {
	var err error
	s.Memory, s.CPUs = file.Memory, file.CPUs
	if o.Memory != "" {
		if s.Memory, err = config.ParseMemory(o.Memory); err != nil {
			return usagef("--memory: %w", err)
		}
	}
	if o.CPUs != nil {
		if s.CPUs = *o.CPUs; math.IsNaN(s.CPUs) || math.IsInf(s.CPUs, 0) || s.CPUs <= 0 || s.CPUs > 1<<20 {
			return usagef("--cpus %v: give a positive number such as 1.5", s.CPUs)
		}
	}
	host := HostLimits()
	if o.Limits != nil {
		host = *o.Limits
	}
	// The default pids limit is moatc's own safeguard: where it cannot be applied (rootless
	// without a delegated cgroup) runs go without it rather than fail.
	if host.Allows(PidsController) {
		s.Pids = config.DefaultPids
	}
	if file.Pids > 0 {
		s.Pids = file.Pids
	}
	if o.Pids != nil {
		switch n := *o.Pids; {
		case n == -1:
			s.Pids = 0
		case n < 1:
			return usagef("--pids-limit %d: give a positive number, or -1 for no limit", n)
		default:
			s.Pids = n
		}
	}
	if err := o.applicable(host, s, file); err != nil {
		return err
	}
	if o.LogMax != "" {
		if s.LogMax, err = config.ParseSize(o.LogMax); err != nil {
			return usagef("--log-max: %w", err)
		}
		if s.LogMax < 256<<10 {
			return usagef("--log-max %s: give at least 256k", o.LogMax)
		}
	}
	return nil
}

// applicable refuses the limits of s that host cannot apply, rather than run without them: a
// flag is a usage error, a moatc.yaml key an error of the file.
func (o *Options) applicable(host Limits, s *state.Spec, file *config.File) error {
	for _, l := range []struct {
		set             bool
		controller      string
		flag, flagValue string
		key, fileValue  string
	}{
		{s.Memory > 0, MemoryController, "--memory", o.Memory, "container.memory", formatSize(file.Memory)},
		{s.CPUs > 0, CPUController, "--cpus", floatFlag(o.CPUs), "container.cpus", fmt.Sprint(file.CPUs)},
		{s.Pids > 0, PidsController, "--pids-limit", intFlag(o.Pids), "container.pids", fmt.Sprint(file.Pids)},
	} {
		if !l.set || host.Allows(l.controller) {
			continue
		}
		if l.controller == PidsController && s.Runtime == state.GVisor {
			continue // gVisor's Sentry holds it as RLIMIT_NPROC, no cgroup needed
		}
		why := host.Why(l.controller)
		if l.controller == PidsController {
			why += " (gVisor runs, without --no-sandbox, keep a pids limit without a cgroup)"
		}
		if l.flagValue != "" {
			return usagef("%s %s cannot be applied: %s; or run without %s", l.flag, l.flagValue, why, l.flag)
		}
		return fmt.Errorf("%s: %s %s cannot be applied: %s; or remove %s from the file", file.Path, l.key, l.fileValue, why, l.key)
	}
	return nil
}

func floatFlag(f *float64) string {
	if f == nil {
		return ""
	}
	return fmt.Sprint(*f)
}

func intFlag(i *int64) string {
	if i == nil {
		return ""
	}
	return fmt.Sprint(*i)
}

// egress fills the grants, the policy, the upstream CA and extra capabilities.
func (o *Options) egress(s *state.Spec, file *config.File) error {
	seen := map[string]bool{}
	for _, g := range append(texts(file.Grants), o.Grants...) {
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
	for _, a := range o.Allow {
		if _, err := policy.ParsePattern(a); err != nil {
			return usagef("--allow: %w", err)
		}
		s.Allow = append(s.Allow, a)
	}
	s.Policy = pick(o.Policy, file.NetPolicy)
	if s.Policy == "" && len(o.Allow) > 0 {
		s.Policy = policy.Strict
	}
	s.Policy = pick(s.Policy, policy.Permissive)
	if _, err := policy.ParseMode(s.Policy); err != nil {
		return usagef("--policy: %w", err)
	}
	if s.Policy == policy.Permissive && len(o.Allow) > 0 {
		return usagef("--allow applies to a strict policy, and this run is permissive (which allows every host): drop --allow, or use --policy strict")
	}
	s.UpstreamCA = o.UpstreamCA
	if s.UpstreamCA == "" {
		set, err := config.LoadSettings(filepath.Join(o.Home, "config.yaml"))
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
	for _, cp := range o.CapAdd {
		name, err := ctrd.ParseCapability(cp)
		if err != nil {
			return usagef("--cap-add: %w", err)
		}
		s.CapAdd = append(s.CapAdd, name)
	}
	return nil
}

func texts(items []config.Item) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Text)
	}
	return out
}

// dockerFlags fills the settings named as Docker's: --rm, -w, --init, --read-only,
// --workspace-ro, --tmpfs, --hostname, --label and --stop-timeout.
func (o *Options) dockerFlags(s *state.Spec) error {
	s.Remove, s.Init, s.ReadOnly, s.WorkspaceRO = o.Remove, o.Init, o.ReadOnly, o.WorkspaceRO
	if o.Workdir != "" {
		if !filepath.IsAbs(o.Workdir) {
			return usagef("--workdir %q: give an absolute path, e.g. /workspace/src", o.Workdir)
		}
		if w := filepath.Clean(o.Workdir); w != "/workspace" {
			s.Workdir = w
		}
	}
	for _, t := range o.Tmpfs {
		tm, err := ParseTmpfs(t)
		if err != nil {
			return &UsageError{Err: err}
		}
		s.Tmpfs = append(s.Tmpfs, tm)
	}
	if o.Hostname != "" {
		if !validHostname.MatchString(o.Hostname) || len(o.Hostname) > 253 {
			return usagef("--hostname %q: use letters, digits and '-' in dot-separated parts of at most 63, e.g. web-1", o.Hostname)
		}
		s.Hostname = o.Hostname
	}
	labels, err := ParseLabels(o.Labels)
	if err != nil {
		return &UsageError{Err: err}
	}
	s.Labels = labels
	if o.StopTimeout != nil {
		n := *o.StopTimeout
		if n < 0 || n > 1<<31-1 {
			return usagef("--stop-timeout %d: give the seconds moatc stop waits before SIGKILL, 0 or more", n)
		}
		v := int(n)
		s.StopTimeout = &v
	}
	return nil
}

var validHostname = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$`)

// tmpfsOptions are the mount options --tmpfs takes; suid and dev are never given.
var tmpfsOptions = regexp.MustCompile(`^(rw|ro|exec|noexec|nosuid|nodev|size=[0-9]+[kmg%]?|mode=[0-7]{3,4}|uid=[0-9]+|gid=[0-9]+|nr_inodes=[0-9]+[kmg]?)$`)

// ParseTmpfs reads PATH[:OPTIONS]: a tmpfs at the absolute PATH, nosuid, nodev and (unless
// OPTIONS say exec) noexec, as Docker's.
func ParseTmpfs(spec string) (state.Tmpfs, error) {
	path, opts, _ := strings.Cut(spec, ":")
	if !filepath.IsAbs(path) || filepath.Clean(path) == "/" {
		return state.Tmpfs{}, fmt.Errorf("--tmpfs %q: give an absolute PATH other than /, then :OPTIONS if any, e.g. /run:size=64m", spec)
	}
	t := state.Tmpfs{Path: filepath.Clean(path), Options: []string{"nosuid", "nodev"}}
	exec := false
	if opts != "" {
		for _, op := range strings.Split(opts, ",") {
			if !tmpfsOptions.MatchString(op) {
				return state.Tmpfs{}, fmt.Errorf("--tmpfs %q: option %q is not one of rw, ro, exec, noexec, size=, mode=, uid=, gid=, nr_inodes=", spec, op)
			}
			switch op {
			case "exec":
				exec = true
			case "noexec":
				exec = false
			case "nosuid", "nodev":
			default:
				t.Options = append(t.Options, op)
			}
		}
	}
	if !exec {
		t.Options = append(t.Options, "noexec")
	}
	return t, nil
}

// ParseLabels reads K=V (or K, an empty value) labels; moatc.* keys are moatc's own.
func ParseLabels(specs []string) (map[string]string, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, l := range specs {
		k, v, _ := strings.Cut(l, "=")
		switch {
		case k == "" || strings.ContainsAny(k, " \t\r\n\x00"):
			return nil, fmt.Errorf("--label %q: write KEY=VALUE, with no white space in KEY", l)
		case strings.HasPrefix(strings.ToLower(k), "moatc."):
			return nil, fmt.Errorf("--label %q: keys starting with moatc. are moatc's own; choose another prefix", l)
		case len(k)+len(v) > 4096:
			return nil, fmt.Errorf("--label %q: too long (4096 bytes at most)", k)
		}
		out[k] = v
	}
	return out, nil
}

// DepsRequest turns moatc.yaml's dependencies into a build request. The base is the --image
// flag, else base_image, else the file's image, else DefaultBase.
func (o *Options) DepsRequest(ws string, file *config.File) *Deps {
	d := &Deps{Base: pick(o.Image, file.BaseImage, file.Image), Rebuild: o.Rebuild, Progress: os.Stderr,
		Scope: CacheScope(ws)}
	if o.Quiet {
		d.Mode = builder.ModeQuiet
	}
	for _, it := range file.Dependencies {
		d.Entries = append(d.Entries, deps.Entry{Text: it.Text, File: file.Path, Line: it.Line})
	}
	return d
}

// ParseMount parses HOST:CONTAINER[:ro|rw]. HOST is resolved now, so a bad or escaping
// source is refused before anything is made; the run resolves it again when it mounts it.
func ParseMount(ws, spec string) (state.Mount, error) {
	bad := func(why string) (state.Mount, error) {
		return state.Mount{}, usagef("mount %q: %s; write HOST:CONTAINER[:ro|rw], e.g. ../data:/data:ro", spec, why)
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
	f, err := mountpin.Open(ws, m.Source)
	if err != nil {
		var esc *mountpin.EscapeError
		if errors.As(err, &esc) {
			return state.Mount{}, err
		}
		if errors.Is(err, os.ErrNotExist) {
			return bad(fmt.Sprintf("host path %s does not exist", m.Source))
		}
		return bad(fmt.Sprintf("host path %s cannot be opened (%v)", m.Source, errors.Unwrap(err)))
	}
	defer f.Close()
	if m.Host, err = mountpin.RealPath(f); err != nil {
		return state.Mount{}, err
	}
	m.Container = filepath.Clean(m.Container)
	return m, nil
}

// SplitArgs splits a command line's arguments into the positional ones before "--" and the
// command after it. args are what the flag parser left; argv is the whole command line. The
// parser drops the "--" when it directly follows the flags and keeps it after a PATH, so the
// split is found from the end: the command is what follows the first "--" of argv.
func SplitArgs(args, argv []string) (pos, cmd []string) {
	for i, a := range argv {
		if a == "--" {
			cmd = argv[i+1:]
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
