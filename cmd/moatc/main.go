// Command moatc runs untrusted work in a sandboxed container against one workspace, on
// containerd, without Docker Engine.
package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/kube"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitStatus carries an exit code out of a command without printing anything.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func main() {
	// What moatc starts (the managed containerd, buildkitd, shims, supervisors) gets the fds
	// moatc passes on purpose and no others: not a lock or pipe moatc's caller left open.
	closeInheritedOnExec()
	// The shim runs `moatc _log VALUE` as a run's logger, once per run: straight to it, with
	// none of the command line's set-up.
	if len(os.Args) == 3 && os.Args[1] == run.LogCommand {
		if err := run.ServeLog(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "moatc: logger: %v\n", err)
			os.Exit(1)
		}
		return
	}
	// A run's bridge is deleted by `moatc _link-del NAME`, which outlives the run's moatc (see
	// cni.Config.DeleteLinkCommand).
	if len(os.Args) == 3 && os.Args[1] == linkDelCommand {
		if err := cni.DeleteLink(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "moatc: %v\n", err)
			os.Exit(1)
		}
		return
	}
	// rootlesskit runs `moatc _rootless-child CONTAINERD ARGS...` inside the namespaces it made.
	if len(os.Args) > 2 && os.Args[1] == rootless.ChildCommand {
		err := rootless.Child(os.Args[2:])
		fmt.Fprintf(os.Stderr, "moatc: %v\n", err)
		os.Exit(1)
	}
	// A completion request is never a command: after --, urfave/cli would take the flag for
	// the workload's argument and run the line typed so far.
	if n := len(os.Args); n > 1 && os.Args[n-1] == "--generate-bash-completion" && slices.Contains(os.Args[:n-1], "--") {
		return
	}
	app := newApp()
	err := app.Run(os.Args)
	os.Exit(exitCode(err))
}

// exitCode maps an error to moatc's exit code: the workload's own code, 126/127 for a command
// that cannot run or is not found, 125 for moatc's own failures (as Docker does).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	fmt.Fprintf(os.Stderr, "moatc: %v\n", err)
	var ee *run.ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 125
}

// usageError is a mistake in the command line itself.
type usageError struct{ error }

func newApp() *cli.App {
	home, _ := os.UserHomeDir()
	// -v is --verbose here, as in moat; --version keeps its long form.
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the version"}
	installHelp()
	return &cli.App{
		Name:    "moatc",
		Usage:   "run untrusted work in a sandboxed container against one workspace, on containerd",
		Version: version,
		Description: `moatc runs a command (an AI coding agent, a build, anything) in a container whose only
view of the host is the workspace directory, mounted at /workspace. Containers run under
gVisor by default; --no-sandbox uses runc. moatc drives containerd directly and starts its own
containerd from the prefix (see 'moatc system') unless --address names one.

Examples:
  moatc run -- echo hello                  # the current directory
  moatc run --image busybox ./proj -- ls   # another image and workspace
  moatc run -d -n web -- sh -c 'sleep 60'  # detached; then: moatc logs web
  moatc list                               # runs, their state and exit code`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "home", Usage: "moatc's state `DIR` (runs, managed containerd)", EnvVars: []string{"MOATC_HOME"}, Value: filepath.Join(home, ".moatc")},
			&cli.StringFlag{Name: "prefix", Usage: "the `DIR` where 'make setup' installed the stack", EnvVars: []string{"MOATC_PREFIX"}, Value: "/opt/moatc"},
			&cli.StringFlag{Name: "address", Usage: "use the containerd at this `SOCKET` (/run/x.sock or unix:///run/x.sock) instead of the managed one", EnvVars: []string{"MOATC_CONTAINERD_ADDRESS"}},
			&cli.StringFlag{Name: "namespace", Usage: "containerd `NAMESPACE`", EnvVars: []string{"MOATC_NAMESPACE"}, Value: ctrd.DefaultNamespace},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "more output (and runsc debug logs)"},
		},
		ExitErrHandler: func(*cli.Context, error) {}, // main prints errors and picks the code
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		EnableBashCompletion: true, // for `moatc completion`
		// -e A=a,b, --label k=a,b and --tmpfs /t:size=1m,exec keep their commas, as Docker's do.
		DisableSliceFlagSeparator: true,
		Commands: append([]*cli.Command{
			runCommand(), execCommand(), listCommand(), statusCommand(), logsCommand(), attachCommand(), waitCommand(), killCommand(), stopCommand(), restartCommand(),
			eventsCommand(), versionCommand(), completionCommand(),
			destroyCommand(), cleanCommand(), traceCommand(), imageCommand(), systemCommand(), doctorCommand(), buildCommand(), depsCommand(), trustCommand(), untrustCommand(), grantCommand(), revokeCommand(), superviseCommand(),
			topCommand(), statsCommand(), cpCommand(),
			engineCommand(), poolCommand(), kubeCommand(),
		}, agentCommands()...),
		CommandNotFound: commandNotFound,
	}
}

// closeInheritedOnExec marks every fd above stderr close-on-exec. moatc's own files are so
// already (Go opens them that way); the ones it inherited may not be.
func closeInheritedOnExec() {
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

const linkDelCommand = "_link-del"

// self is the path of this moatc binary, for the processes it starts of itself.
func self() string {
	exe, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return exe
}

// env is what every command works with.
type env struct {
	home, prefix string
	mgr          *run.Manager
	daemon       *ctrd.Daemon
}

// setup builds the run manager from the global flags and moatc's own config file, and
// reconciles the run records first, as every command does.
func setup(c *cli.Context) (*env, error) {
	home, prefix := c.String("home"), c.String("prefix")
	cfg, err := config.LoadSettings(filepath.Join(home, "config.yaml"))
	if err != nil {
		return nil, err
	}
	addr, err := addressFlag(c)
	if err != nil {
		return nil, err
	}
	if addr == "" {
		addr = cfg.Address
	}
	// From the app's own context: `moatc kube` has a -n/--namespace of its own, the cluster's.
	root := appContext(c)
	ns := root.String("namespace")
	if !root.IsSet("namespace") && cfg.Namespace != "" {
		ns = cfg.Namespace
	}
	store, err := state.Open(filepath.Join(home, "runs"))
	if err != nil {
		return nil, err
	}
	d := &ctrd.Daemon{Dir: filepath.Join(home, "containerd"), Prefix: prefix}
	snapshot.Configure(home, rootless.Enabled())
	var kit *rootless.Kit
	if rootless.Enabled() {
		// Outside the namespaces with no kit answering: one may have died (kill -9) and left
		// its workloads running where no containerd reaches them. Only from here can they be
		// seen, so they go before a fresh kit starts, and before system stop (status only looks).
		if !rootless.InUserNamespace() && addr == "" && c.Command.HelpName != "moatc system status" &&
			(c.Command.HelpName == "moatc system stop" || !d.Answering()) {
			found, err := run.SweepStaleKits(home)
			if len(found) > 0 {
				fmt.Fprintf(os.Stderr, "moatc: warning: a rootlesskit of this home had died and left processes running: killed those of %s\n", strings.Join(found, ", "))
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "moatc: warning: %v\n", err)
			}
		}
		if kit, err = enterRootless(c, d, addr); err != nil {
			return nil, err
		}
	}
	nets, err := runNetworks(home, prefix, cfg, kit)
	if err != nil {
		return nil, err
	}
	e := &env{home: home, prefix: prefix, daemon: d}
	e.mgr = &run.Manager{
		Store: store, Prefix: prefix, Dir: home, Net: nets,
		Conn: ctrd.Options{Address: addr, Namespace: ns, Daemon: d},
		SuperviseCommand: func(id string) []string {
			return []string{self(), "--home", home, "--prefix", prefix, "--address", addr, "--namespace", ns, "_supervise", id}
		},
		StartEngine: startRunEngine,
		Remote:      kube.Remote{},
	}
	e.mgr.Pool = warmPool(c, home, prefix, addr, ns, cfg, e.mgr)
	if err := e.mgr.Reconcile(c.Context); err != nil {
		return nil, fmt.Errorf("reconciling runs: %w", err)
	}
	return e, nil
}

// appContext is the context of moatc's global flags: the last of c's lineage that belongs to
// the app (above it is only the empty context urfave/cli starts from).
func appContext(c *cli.Context) *cli.Context {
	l := c.Lineage()
	for i := len(l) - 1; i >= 0; i-- {
		if l[i].App != nil && l[i].Command != nil {
			return l[i]
		}
	}
	return c
}

// addressFlag is --address (or $MOATC_CONTAINERD_ADDRESS) as a socket path; "" when unset.
func addressFlag(c *cli.Context) (string, error) {
	a := c.String("address")
	if a == "" {
		return "", nil
	}
	p, err := config.SocketPath(a)
	if err != nil {
		return "", usageError{fmt.Errorf("--address (or $MOATC_CONTAINERD_ADDRESS): %w", err)}
	}
	return p, nil
}

// signalContext is cancelled by SIGINT/SIGTERM for commands that do not forward signals.
func signalContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
}

// runNetworks is the cni.Manager of runs: the home's CNI state, config.yaml's overrides, and
// rootlesskit's namespace when moatc is rootless.
func runNetworks(home, prefix string, cfg *config.Settings, kit *rootless.Kit) (*cni.Manager, error) {
	nc := cni.Config{Prefix: prefix, ConfDir: filepath.Join(home, "cni", "conf"), StateDir: filepath.Join(home, "cni", "state"),
		DeleteLinkCommand: func(name string) []string { return []string{self(), linkDelCommand, name} }, Kit: kit}
	if cfg.CNIPluginDir != "" {
		nc.PluginDirs = []string{cfg.CNIPluginDir}
	}
	if cfg.CNIConfDir != "" {
		nc.ConfDir = cfg.CNIConfDir
	}
	if cfg.NetworkPool != "" {
		var err error
		if nc.Pool, err = netip.ParsePrefix(cfg.NetworkPool); err != nil {
			return nil, fmt.Errorf("%s: pool %q is not an IPv4 prefix such as 10.213.0.0/16", filepath.Join(home, "config.yaml"), cfg.NetworkPool)
		}
	}
	return cni.New(nc)
}
