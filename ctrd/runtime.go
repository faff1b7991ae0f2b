package ctrd

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/moatc/moatc/internal/atomicfile"
)

// Runtime is how a container's processes are isolated from the host. moatc has two: gVisor
// (the default) and runc (--no-sandbox).
type Runtime interface {
	Name() string // "gvisor" or "runc", as recorded in a run
	Shim() string // containerd's runtime name, e.g. io.containerd.runsc.v1
	// Check says whether the binaries the runtime needs are present, with the fix if not.
	Check() error
	// Binaries names the executables the runtime uses, for probe caching and status.
	Binaries() []string
	// ContainerOpts select the runtime for a container; SpecOpts are its edits to the spec,
	// applied after moatc's hardening (see hardening.go).
	ContainerOpts() ([]containerd.NewContainerOpts, error)
	SpecOpts(Container) []oci.SpecOpts
}

// Runc runs containers with runc: the host kernel, namespaces and cgroups.
type Runc struct{ Prefix string }

func (Runc) Name() string { return "runc" }
func (Runc) Shim() string { return "io.containerd.runc.v2" }

func (Runc) Binaries() []string { return []string{"containerd-shim-runc-v2", "runc"} }

func (r Runc) Check() error {
	if _, err := findBinary(r.Prefix, "runc"); err != nil {
		return fmt.Errorf("runc is not installed: run `make setup` (or `apt-get install runc`)")
	}
	if _, err := findBinary(r.Prefix, "containerd-shim-runc-v2"); err != nil {
		return fmt.Errorf("containerd-shim-runc-v2 is not installed: run `make setup`")
	}
	return nil
}

func (r Runc) ContainerOpts() ([]containerd.NewContainerOpts, error) {
	bin, err := findBinary(r.Prefix, "runc")
	if err != nil {
		return nil, r.Check()
	}
	return []containerd.NewContainerOpts{containerd.WithRuntime(r.Shim(), &runcoptions.Options{BinaryName: bin})}, nil
}

func (Runc) SpecOpts(c Container) []oci.SpecOpts {
	opts := runcHardening(c)
	// The pids limit is a cgroup's: none rootless, where nothing else can stand in for it
	// (RLIMIT_NPROC would count every process of the user on the host).
	if c.Pids > 0 && !c.Rootless {
		opts = append(opts, oci.WithPidsLimit(c.Pids))
	}
	return opts
}

// GVisor runs containers in gVisor's user-space kernel through the io.containerd.runsc.v1
// shim. The runsc configuration is a TOML file moatc writes and passes per container.
// runsc keeps its state (one entry per sandbox) under StateRoot, one directory per moatc
// home, so everything a home's runs started can be found again (see sandboxes.go).
type GVisor struct {
	Prefix   string
	Dir      string // where the runsc config files go: the home's runsc directory
	Platform string // systrap (default), kvm or ptrace
	Debug    bool   // runsc debug logs next to the config
	// ForBuild configures runsc for BuildKit's RUN steps: their writes go straight to the
	// snapshot (overlay2 none; in gVisor's private overlay they would be missing from the
	// image), and the spec's seccomp profile is left to BuildKit (its clone3 rule means
	// ENOSYS, which runsc would answer as EPERM, breaking every glibc thread).
	ForBuild bool
	// Rootless: containerd runs in a user namespace with no cgroup delegated to it, so runsc
	// must not make or join cgroups (ignore-cgroups); containers get Container.Rootless too.
	Rootless bool
	// HostUDS lets the sandbox connect to a host unix socket bind-mounted into it (runsc's
	// host-uds=open): docker-mode runs (their engine's socket) and the engine's containers that
	// bind it.
	HostUDS bool
}

func (GVisor) Name() string { return "gvisor" }
func (GVisor) Shim() string { return "io.containerd.runsc.v1" }

// SandboxMissingError says gVisor cannot be used, how to fix it, and how to bypass it.
type SandboxMissingError struct{ Missing []string }

func (e *SandboxMissingError) Error() string {
	return fmt.Sprintf(`the gVisor sandbox is not available: %s not found in the moatc prefix or PATH.
Install it with `+"`make setup`"+` (as root, in the moatc source tree), which builds runsc and moatc's
containerd-shim-runsc-v1 into /opt/moatc/bin.
To run without the sandbox (reduced isolation: the workload shares the host kernel):
  moatc run --no-sandbox ...`, strings.Join(e.Missing, " and "))
}

func (GVisor) Binaries() []string { return []string{"containerd-shim-runsc-v1", "runsc"} }

func (g GVisor) Check() error {
	var missing []string
	for _, b := range g.Binaries() {
		if _, err := findBinary(g.Prefix, b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return &SandboxMissingError{Missing: missing}
	}
	return nil
}

// Config returns the runsc TOML moatc passes to the shim.
func (g GVisor) Config() (string, error) {
	bin, err := findBinary(g.Prefix, "runsc")
	if err != nil {
		return "", g.Check()
	}
	platform := g.Platform
	if platform == "" {
		platform = "systrap"
	}
	// network=sandbox: gVisor's own netstack serves the container's network namespace, so
	// the workload never touches the host's TCP/IP stack. overlay2=root:self: the rootfs gets a
	// writable overlay inside the sandbox, backed by a file next to the rootfs, so writes to
	// the image's files never reach the snapshot on the host.
	// oci-seccomp: the spec's seccomp profile is enforced by the Sentry too (runsc ignores
	// it otherwise), so a gVisor run gets the same system call policy as a runc one.
	flags := map[string]string{"platform": platform, "network": "sandbox", "overlay2": "root:self", "oci-seccomp": "true"}
	if g.ForBuild {
		flags["overlay2"] = "none"
		delete(flags, "oci-seccomp")
	}
	if g.Rootless {
		// Without it runsc makes a cgroup for the sandbox even when the spec names none, and
		// fails (mkdir /sys/fs/cgroup/cpuacct/...: permission denied).
		flags["ignore-cgroups"] = "true"
	}
	if g.HostUDS {
		flags["host-uds"] = "open"
	}
	if g.Debug {
		flags["debug"] = "true"
		flags["debug-log"] = filepath.Join(g.Dir, "logs") + "/"
	}
	keys := make([]string, 0, len(flags))
	for k := range flags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by moatc.\nbinary_name = %q\nroot = %q\n\n[runsc_config]\n", bin, g.StateRoot())
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s = %q\n", k, flags[k])
	}
	return b.String(), nil
}

// Flags returns the runsc flags moatc sets, for `moatc system status`.
func (g GVisor) Flags() string {
	c, err := g.Config()
	if err != nil {
		return ""
	}
	_, after, _ := strings.Cut(c, "[runsc_config]\n")
	return strings.Join(strings.Fields(strings.ReplaceAll(after, " = ", "=")), " ")
}

func (g GVisor) ContainerOpts() ([]containerd.NewContainerOpts, error) {
	path, err := g.ConfigFile()
	if err != nil {
		return nil, err
	}
	return []containerd.NewContainerOpts{containerd.WithRuntime(g.Shim(), &runtimeoptions.Options{
		TypeUrl:    "io.containerd.runsc.v1.options",
		ConfigPath: path,
	})}, nil
}

// ConfigFile writes the runsc config (once) and returns its path. One file per distinct
// config, named by its content, so concurrent runs never rewrite a file another run's shim
// is reading.
func (g GVisor) ConfigFile() (string, error) {
	cfg, err := g.Config()
	if err != nil {
		return "", err
	}
	// runsc makes its root itself; the owner file says which home a root belongs to.
	if err := g.makeStateRoot(); err != nil {
		return "", err
	}
	path := g.configPath(cfg)
	if _, err := os.Stat(path); err != nil {
		if err := os.MkdirAll(g.Dir, 0o700); err != nil {
			return "", fmt.Errorf("writing runsc config: %w", err)
		}
		if err := atomicfile.Write(path, []byte(cfg), 0o644); err != nil {
			return "", err
		}
	}
	return path, nil
}

// ConfigPath is where ConfigFile writes the config; "" when runsc is missing.
func (g GVisor) ConfigPath() string {
	cfg, err := g.Config()
	if err != nil {
		return ""
	}
	return g.configPath(cfg)
}

// runscStateBase holds the runsc state roots of every moatc home on the host. It is on
// /run, like runsc's own default: the state describes processes, and goes with them at boot.
const runscStateBase = "/run/moatc/runsc"

// runscOwnerFile, in a state root, names the home whose root it is (for people and doctor).
const runscOwnerFile = "home"

// StateRoot is the runsc root of this home's sandboxes (runsc state, locks and control
// sockets), passed to the shim as the runsc `root` option; the shim adds the containerd
// namespace below it. One per home (named by a hash of Dir), so that one home's clean-up
// never touches another's, and all of a home's sandboxes can be found even when containerd
// lost track of them. Short, so runsc's control socket path stays under the 108-byte limit.
func (g GVisor) StateRoot() string {
	dir, err := filepath.Abs(g.Dir)
	if err != nil {
		dir = filepath.Clean(g.Dir)
	}
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(runscStateBase, hex.EncodeToString(sum[:8]))
}

func (g GVisor) makeStateRoot() error {
	root := g.StateRoot()
	owner := filepath.Join(root, runscOwnerFile)
	if _, err := os.Stat(owner); err == nil {
		return nil
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return fmt.Errorf("making runsc's state directory: %w", err)
	}
	dir, err := filepath.Abs(g.Dir)
	if err != nil {
		dir = g.Dir
	}
	return atomicfile.Write(owner, []byte(filepath.Dir(dir)+"\n"), 0o644)
}

func (g GVisor) configPath(cfg string) string {
	sum := sha256.Sum256([]byte(cfg))
	return filepath.Join(g.Dir, "runsc-"+hex.EncodeToString(sum[:6])+".toml")
}

func (GVisor) SpecOpts(c Container) []oci.SpecOpts {
	// The shim wires the container's stdio to `runsc create` only for a sandbox container;
	// without this annotation a non-CRI container's IO is never connected and it hangs.
	typ := map[string]string{"io.kubernetes.cri.container-type": "sandbox"}
	if c.Sandbox != "" {
		// A second container of a booted sandbox: runsc finds the sandbox by its id in the
		// state root (the same runsc config, so the same root), and the shim hands the IO to
		// `runsc start`.
		// The sandbox's shim serves it too (moatc's shim reads dev.moatc.shim-group): no
		// shim process of its own to start and stop.
		typ = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": c.Sandbox,
			"dev.moatc.shim-group": c.Sandbox}
	}
	return append([]oci.SpecOpts{oci.WithAnnotations(typ)}, gvisorHardening(c)...)
}

// findBinary looks in the prefix's bin, then PATH.
func findBinary(prefix, name string) (string, error) {
	p := filepath.Join(prefix, "bin", name)
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p, nil
	}
	return exec.LookPath(name)
}

// BinaryVersion finds an executable (prefix first, then PATH) and says which version it is:
// what `make setup` recorded for it in PREFIX/versions, else the first line of --version.
func BinaryVersion(prefix, name string) (path, version string, err error) {
	path, err = findBinary(prefix, name)
	if err != nil {
		return "", "", err
	}
	rec := map[string]string{"containerd": "containerd", "ctr": "containerd", "containerd-shim-runc-v2": "containerd",
		"containerd-shim-runsc-v1": "shim", "runsc": "runsc", "buildkitd": "buildkit", "buildctl": "buildkit"}[name]
	if rec != "" && strings.HasPrefix(path, filepath.Join(prefix, "bin")+"/") {
		if b, err := os.ReadFile(filepath.Join(prefix, "versions", rec)); err == nil {
			return path, strings.TrimSpace(string(b)), nil
		}
	}
	out, err := exec.Command(path, "--version").CombinedOutput()
	if err != nil {
		return path, "unknown", nil
	}
	return path, strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0], nil
}
