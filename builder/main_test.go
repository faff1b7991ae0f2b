package builder

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/internal/testnet"
)

// The real-stack tests share one private containerd and one buildkitd, started here and
// stopped (with every mount under the test directory) at the end, failed or not.
var (
	prefix     string
	testDir    string // short: socket paths are limited to 108 bytes
	ctrdSock   string
	testDaemon *Daemon
	setupErr   error
	ctrdDaemon *ctrd.Daemon
	testNets   *cni.Manager
	// files stands for the internet: a machine outside this one that builds reach through NAT.
	files *testnet.Machine
)

// testNetwork is the id of the tests' build network (bridge mc-bldtest).
const testNetwork = "bldtest"

const testNamespace = "moatc-test"

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	if os.Getenv(buildChildEnv) != "" {
		return buildChild() // a build for a test to kill, in a process of its own
	}
	prefix = os.Getenv("MOATC_PREFIX")
	if prefix == "" {
		prefix = "/opt/moatc"
	}
	var err error
	testDir, err = os.MkdirTemp("/tmp", "bk-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	setupErr = setUp()
	code := m.Run()
	if err := tearDown(); err != nil {
		fmt.Fprintf(os.Stderr, "builder tests: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func baseImageTar() string { return filepath.Join(prefix, "images", "debian-bookworm-slim.oci.tar") }

func setUp() error {
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "buildkitd", "runsc", "containerd-shim-runsc-v1"} {
		if _, err := os.Stat(filepath.Join(prefix, "bin", b)); err != nil {
			return fmt.Errorf("%s is not installed in %s: run `make setup`", b, prefix)
		}
	}
	if _, err := os.Stat(baseImageTar()); err != nil {
		return fmt.Errorf("%s is missing: run `make base-images`", baseImageTar())
	}
	ctrdDaemon = &ctrd.Daemon{Dir: filepath.Join(testDir, "c"), Prefix: prefix}
	ctrdSock = ctrdDaemon.Address()
	if err := ctrdDaemon.Start(context.Background()); err != nil {
		return err
	}
	start := time.Now()
	if out, err := ctr("images", "import", baseImageTar()); err != nil {
		return fmt.Errorf("importing %s: %v\n%s", baseImageTar(), err, out)
	}
	fmt.Fprintf(os.Stderr, "builder tests: containerd up, debian:bookworm-slim imported in %.1fs\n", time.Since(start).Seconds())
	sb, err := sandbox()
	if err != nil {
		return err
	}
	testDaemon = &Daemon{Dir: filepath.Join(testDir, "bk"), Prefix: prefix, ContainerdAddress: ctrdSock, Namespace: testNamespace, Sandbox: sb}
	files, err = testnet.New("mc-files", netip.MustParseAddr("198.18.254.2"), netip.MustParseAddr("198.18.254.1"))
	return err
}

// sandbox makes the build network and the runsc config, as moatc's run manager does.
func sandbox() (*Sandbox, error) {
	var err error
	testNets, err = cni.New(cni.Config{Prefix: prefix, ConfDir: filepath.Join(testDir, "cni", "conf"), StateDir: filepath.Join(testDir, "cni", "state")})
	if err != nil {
		return nil, err
	}
	conf, err := testNets.SetupShared(context.Background(), testNetwork)
	if err != nil {
		return nil, err
	}
	bin, err := testNets.PluginDir()
	if err != nil {
		return nil, err
	}
	rt := ctrd.GVisor{Prefix: prefix, Dir: filepath.Join(testDir, "runsc"), ForBuild: true}
	cfg, err := rt.ConfigFile()
	if err != nil {
		return nil, err
	}
	return &Sandbox{Runtime: rt.Shim(), RuntimeConfig: cfg, CNIConfig: conf, CNIBinDir: bin}, nil
}

// ctr runs ctr against the test containerd.
func ctr(args ...string) (string, error) { return ctrIn(testNamespace, args...) }

// ctrIn runs ctr against the test containerd in namespace ns.
func ctrIn(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(prefix, "bin", "ctr"), append([]string{"-a", ctrdSock, "-n", ns}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(prefix, "bin")+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	// Every client call on these hosts warns about cgroup v1; it is not output.
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.Contains(l, "cgroup v1") && !strings.Contains(l, "level=warning") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n"), err
}

func tearDown() error {
	var errs []error
	ctx := context.Background()
	if testDaemon != nil {
		if err := testDaemon.Stop(ctx, 20*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range extraDaemons {
		d.Stop(ctx, 10*time.Second)
	}
	if ctrdDaemon != nil {
		if err := ctrdDaemon.Stop(ctx, 20*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if testNets != nil {
		if err := testNets.Teardown(ctx, testNetwork); err != nil {
			errs = append(errs, err)
		}
		if err := cni.Prune(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if files != nil {
		if err := files.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	// Shims of containers a failed test left behind are killed by their socket directory
	// under /run/containerd: only those whose command line names this test's state dir.
	killShims()
	// runsc's state root for this test home, under /run: empty now, it goes too.
	if err := (ctrd.GVisor{Prefix: prefix, Dir: filepath.Join(testDir, "runsc")}).PruneStateRoot(); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(testDir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(testDir); err != nil {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, fmt.Errorf("test directory kept: %s", testDir))
	}
	return errors.Join(errs...)
}

// killShims ends runc shims whose command line names this test's containerd.
func killShims() {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "containerd-shim") && strings.Contains(cmd, ctrdSock) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder unmounts every mount below dir, deepest first, and reports any that stay.
func unmountUnder(dir string) error {
	mounts := func() []string {
		b, _ := os.ReadFile("/proc/self/mountinfo")
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
				out = append(out, f[4])
			}
		}
		sort.Slice(out, func(a, b int) bool { return len(out[a]) > len(out[b]) })
		return out
	}
	for _, m := range mounts() {
		unix.Unmount(m, unix.MNT_DETACH)
	}
	if left := mounts(); len(left) > 0 {
		return fmt.Errorf("mounts left under %s: %v", dir, left)
	}
	return nil
}

// requireStack fails in CI (CI=true) and skips elsewhere when the stack is missing.
func requireStack(t *testing.T) {
	t.Helper()
	if setupErr == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing in CI: %v", setupErr)
	}
	t.Skipf("prerequisite missing (not CI, so skipping): %v", setupErr)
}

var extraDaemons []*Daemon
